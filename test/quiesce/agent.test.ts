/**
 * Quiesce in the node agent: the pod annotations (parsed, and refused where malformed), then the
 * real `tender agent` process against the real API server: a pod whose annotations ask for HTTP
 * hooks on its IP and fsfreeze has its volume (a real loop-mounted ext4 in the fake kubelet pods
 * directory) quiesced around the backup; and an agent that starts while a record names a
 * filesystem left frozen by a dead owner thaws it before anything else.
 */
import { type ChildProcess, execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { DEFAULT_POLICY, podPolicy } from '../../src/agent/policy.js';
import { startTender, tenderOk, writeRandomFile } from '../helpers/cli.js';
import { createNamespace, createPod, emptyDir, randomName, testKubeConfig, volumeDir } from '../helpers/kube.js';
import { freePort } from '../setup/minio.js';
import { type LoopFs, cleanupLoopFs, makeLoopFs, startWriter, untilBlocked, unmount } from './loopfs.js';

const token = 'quiesce-agent-token-0123456789';

/** The agent's JSON log records (pino), skipping anything else it printed. */
function logLines(output: string): Array<Record<string, unknown>> {
  return output.split('\n').flatMap((line) => {
    try {
      return [JSON.parse(line) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}

function pod(annotations: Record<string, string>): V1Pod {
  return { metadata: { name: 'trainer-0', namespace: 'ml', annotations: { 'tender.io/backup-volumes': 'ckpt', ...annotations } }, spec: { containers: [], volumes: [emptyDir('ckpt')] } };
}

describe('quiesce annotations', () => {
  it('are read into the pod policy', () => {
    const p = podPolicy(
      pod({
        'tender.io/pre-hook': 'http://:8080/quiesce',
        'tender.io/post-hook': 'file:.tender-quiesce',
        'tender.io/hook-timeout': '45s',
        'tender.io/hook-on-error': 'continue',
        'tender.io/fsfreeze': 'true',
        'tender.io/freeze-timeout': '3s',
      }),
      DEFAULT_POLICY,
    );
    expect(p.errors).toEqual([]);
    expect(p.quiesce).toEqual({
      preHook: { kind: 'http', url: 'http://:8080/quiesce' },
      postHook: { kind: 'file', marker: '.tender-quiesce' },
      hookTimeoutMs: 45_000,
      onError: 'continue',
      fsfreeze: true,
      freezeTimeoutMs: 3000,
    });
  });

  it('are absent without any quiesce annotation, and default the rest', () => {
    expect(podPolicy(pod({}), DEFAULT_POLICY).quiesce).toBeUndefined();
    expect(podPolicy(pod({ 'tender.io/fsfreeze': 'true' }), DEFAULT_POLICY).quiesce).toEqual({
      hookTimeoutMs: 30_000,
      onError: 'fail',
      fsfreeze: true,
      freezeTimeoutMs: 10_000,
    });
  });

  it('malformed ones are errors naming pod and annotation, and make the runs fail (never unquiesced)', () => {
    const p = podPolicy(
      pod({
        'tender.io/pre-hook': 'curl -X POST localhost:8080/quiesce',
        'tender.io/hook-timeout': 'forever',
        'tender.io/fsfreeze': 'yes',
        'tender.io/hook-on-error': 'ignore',
      }),
      DEFAULT_POLICY,
    );
    const expected = [
      'pod ml/trainer-0: annotation tender.io/pre-hook: "curl -X POST localhost:8080/quiesce" is neither an http:// URL nor file:NAME',
      'pod ml/trainer-0: annotation tender.io/hook-timeout: "forever" is not a timeout',
      'pod ml/trainer-0: annotation tender.io/hook-on-error: "ignore" is neither "fail" nor "continue"',
      'pod ml/trainer-0: annotation tender.io/fsfreeze: "yes" is neither "true" nor "false"',
    ];
    expect([...p.errors].sort()).toEqual([...expected].sort());
    expect([...p.quiesce!.problems!].sort()).toEqual([...expected].sort());
    expect(p.volumes).toEqual([{ name: 'ckpt' }]);
  });
});

describe('tender agent with quiesce (real API server, real ext4)', () => {
  let kc: KubeConfig;
  let ns: string;
  let node: string;
  let work: string;
  let repo: string;
  let podsDir: string;
  let stateDir: string;
  let fs: LoopFs;
  let trainer: http.Server;
  let trainerPort: number;
  const calls: string[] = [];
  let agent: ChildProcess | undefined;
  let agentOutput = '';
  let base = '';

  beforeAll(async () => {
    kc = testKubeConfig();
    ns = await createNamespace(kc);
    node = randomName('node');
    work = mkdtempSync(path.join(os.tmpdir(), 'tender-quiesce-agent-'));
    repo = path.join(work, 'repo');
    podsDir = path.join(work, 'pods');
    stateDir = path.join(work, 'state');
    writeFileSync(path.join(work, 'policy.yaml'), `namespaces: [${ns}]\nschedule: "0 0 1 1 *"\n`);
    writeFileSync(path.join(work, 'token'), `${token}\n`);
    await tenderOk(['--repo', repo, 'init']);
    trainer = http.createServer((req, res) => {
      calls.push(req.url!);
      req.resume();
      req.on('end', () => res.writeHead(200).end('ok'));
    });
    await new Promise<void>((resolve) => trainer.listen(0, '127.0.0.1', resolve));
    trainerPort = (trainer.address() as net.AddressInfo).port;
  });

  afterAll(async () => {
    try {
      if (agent && agent.exitCode === null && agent.signalCode === null) {
        agent.kill('SIGKILL');
        await new Promise((resolve) => agent!.once('exit', resolve));
      }
      trainer?.closeAllConnections();
      await new Promise((resolve) => trainer?.close(resolve));
      cleanupLoopFs();
    } finally {
      if (work) rmSync(work, { recursive: true, force: true });
    }
  });

  async function until<T>(what: string, check: () => Promise<T | undefined | false>): Promise<T> {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const v = await check().catch(() => undefined);
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n--- agent output\n${agentOutput.slice(-10_000)}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  const call = async (method: string, url: string, body?: unknown) => {
    const res = await fetch(base + url, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    return { status: res.status, json: (await res.json().catch(() => undefined)) as any };
  };

  it('the agent thaws, at its start, a filesystem whose freezer died', async () => {
    const stray = makeLoopFs(work, 'ext4', 64, 'stray');
    execFileSync('fsfreeze', ['-f', stray.mount]);
    // A record as a dead tender leaves it: its owner is a process that has exited.
    const dead = spawnSync('true').pid!;
    mkdirSync(path.join(stateDir, 'frozen'), { recursive: true });
    writeFileSync(path.join(stateDir, 'frozen', `${dead}-1.json`), JSON.stringify({ path: stray.mount, ownerPid: dead, ownerStart: '0', deadlineAt: Date.now() + 600_000 }));
    const writer = startWriter(path.join(stray.mount, 'after-agent-start'));
    await untilBlocked(writer.child.pid!);

    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    agent = startTender(
      [
        '--repo', repo, 'agent', '--node-name', node, '--pods-dir', podsDir, '--kubeconfig', inject('kubeconfig'),
        '--listen', `127.0.0.1:${port}`, '--config', path.join(work, 'policy.yaml'), '--state-dir', stateDir,
        '--token-file', path.join(work, 'token'),
      ],
      { env: { TENDER_LOG_LEVEL: 'info' } },
    );
    agent.stdin!.end();
    agent.stdout!.on('data', (b: Buffer) => (agentOutput += b.toString()));
    agent.stderr!.on('data', (b: Buffer) => (agentOutput += b.toString()));
    await writer.done;
    await until('the agent to be ready', async () => (await call('GET', '/readyz')).status === 200);
    expect(readdirSync(path.join(stateDir, 'frozen'))).toEqual([]);
    const thawed = logLines(agentOutput).find((l) => l.msg === 'thawed a filesystem an earlier run had frozen');
    expect(thawed).toMatchObject({ path: stray.mount, wasFrozen: true });
  });

  it('quiesces an annotated volume: HTTP hooks on the pod IP, fsfreeze on its filesystem', async () => {
    const created = await createPod(kc, ns, {
      name: 'trainer-0',
      nodeName: node,
      volumes: [emptyDir('ckpt')],
      annotations: {
        'tender.io/backup-volumes': 'ckpt',
        'tender.io/pre-hook': `http://:${trainerPort}/quiesce`,
        'tender.io/post-hook': `http://:${trainerPort}/resume`,
        'tender.io/fsfreeze': 'true',
        'tender.io/freeze-timeout': '5s',
      },
    });
    const dir = await volumeDir(podsDir, created, 'kubernetes.io~empty-dir/ckpt');
    fs = makeLoopFs(work, 'ext4', 128, 'volume');
    // The volume's directory is the filesystem: mount it there instead of where makeLoopFs put it.
    unmount(fs.mount);
    execFileSync('mount', [fs.device, dir]);
    fs.mount = dir;
    await writeRandomFile(path.join(dir, 'model.bin'), 1 << 20);
    // No kubelet here: give the pod its IP through the status subresource.
    const core = kc.makeApiClient(CoreV1Api);
    const current = await core.readNamespacedPod({ name: 'trainer-0', namespace: ns });
    current.status = { ...current.status, phase: 'Running', podIP: '127.0.0.1', podIPs: [{ ip: '127.0.0.1' }] };
    await core.replaceNamespacedPodStatus({ name: 'trainer-0', namespace: ns, body: current });

    await until('the volume to be protected with the pod IP', async () => {
      const r = await call('GET', '/v1/volumes');
      return (r.json.volumes as Array<Record<string, unknown>>).some((v) => v.pod === 'trainer-0' && v.podIP === '127.0.0.1' && v.path === dir);
    });
    await until('the run to be accepted', async () => {
      const r = await call('POST', '/v1/runs', { namespace: ns, pod: 'trainer-0', volume: 'ckpt' });
      return r.status === 202 && r.json.id;
    }).then(async (id: string) => {
      const run = await until('the run to finish', async () => {
        const r = await call('GET', `/v1/runs/${id}`);
        return ['succeeded', 'failed', 'cancelled', 'interrupted'].includes(r.json?.state) && r.json;
      });
      expect(run.state, JSON.stringify(run) + agentOutput.slice(-5000)).toBe('succeeded');
    });
    expect(calls).toEqual(['/quiesce', '/resume']);
    const snapshots = JSON.parse((await tenderOk(['--repo', repo, '--json', 'snapshots'])).stdout) as Array<{ quiesce?: Array<Record<string, unknown>> }>;
    const quiesce = snapshots.at(-1)!.quiesce!;
    expect(quiesce).toEqual([{ path: dir, quiesced: true, frozenMs: expect.any(Number) }]);
    expect(existsSync(path.join(stateDir, 'frozen')) ? readdirSync(path.join(stateDir, 'frozen')) : []).toEqual([]);
  });
});
