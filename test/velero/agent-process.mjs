// A node agent with the Velero data mover in a process of its own, for datamover-restart.test.ts
// (which SIGKILLs it). Built code (dist/), like bin/tender.js; the settings come as JSON in argv[2]:
//   { kubeconfig, repo, password, nodeName, podsDir, stateDir, dataMover, hold?: { op, after, marker } }
// With `hold`, the op-th storage operation on data/ after `after` of them waits forever and the
// file `marker` is written: the test knows the agent is in the middle of moving data.
import { writeFileSync } from 'node:fs';
import { KubeConfig } from '@kubernetes/client-node';
import { pino } from 'pino';
import { Agent } from '../../dist/agent/agent.js';

const o = JSON.parse(process.argv[2]);
const kubeConfig = new KubeConfig();
kubeConfig.loadFromFile(o.kubeconfig);
const faults = o.hold
  ? (faulty) => {
      const gate = faulty.hold({ op: o.hold.op, prefix: 'data/', after: o.hold.after });
      void gate.reached.then(() => writeFileSync(o.hold.marker, `${process.pid}\n`));
    }
  : undefined;
const agent = new Agent({
  nodeName: o.nodeName,
  podsDir: o.podsDir,
  kubeConfig,
  listen: '127.0.0.1:0',
  stateDir: o.stateDir,
  repository: { url: o.repo, password: async () => o.password, workers: 1, ...(faults ? { storage: { faults } } : {}) },
  logger: pino({ level: 'info' }),
  discovery: { checkMounts: false },
  dataMover: o.dataMover,
});
await agent.start();
process.once('SIGTERM', () => void agent.stop().then(() => process.exit(0)));
