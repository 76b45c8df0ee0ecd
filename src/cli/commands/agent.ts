import { type Command, Option } from 'commander';
import { pino } from 'pino';
import { TenderError } from '../../errors/errors.js';
import { cancelOnInterrupt } from '../../util/interrupt.js';
import { positiveInt } from '../args.js';
import { globalOptions } from '../context.js';
import { loadKubeConfig } from '../kubeconfig.js';
import { readPassword, repositoryPassword } from '../password.js';

interface AgentCliOptions {
  nodeName?: string;
  podsDir: string;
  kubeconfig?: string;
  listen: string;
  config?: string;
  stateDir: string;
  tokenFile?: string;
  maxConcurrentRuns?: number;
  maxFinishedRuns: number;
  dataMover?: boolean;
  veleroNamespace: string;
  dataMoverImage?: string;
  dataMoverPrepareTimeout: number;
  dataMoverMaxJobs: number;
  cgroupRoot: string;
  veleroBackups?: boolean;
}

/**
 * `tender agent`: the node agent (one per node, a DaemonSet). It runs until SIGTERM; then
 * running backups stop and are queued again for the next start, and it exits with 143.
 */
export function registerAgent(program: Command): void {
  program
    .command('agent')
    .description("protect the annotated volumes of this node's pods: scheduled and on-demand backups, an HTTP API and Prometheus metrics")
    .option('--node-name <name>', 'the node this agent runs on (env NODE_NAME; in a DaemonSet: fieldRef spec.nodeName)')
    .option('--pods-dir <dir>', "the kubelet's pods directory (/var/lib/kubelet/pods on the host) as mounted here", '/host_pods')
    .option('--kubeconfig <file>', 'kubeconfig to reach the API server (env KUBECONFIG; default: in-cluster service account)')
    .option('--listen <addr>', 'HTTP API and metrics address: HOST:PORT or :PORT', ':8085')
    .option('--config <file>', 'policy file (YAML, e.g. a mounted ConfigMap), reloaded when it changes')
    .option('--state-dir <dir>', 'where run records are kept across restarts', '/var/lib/tender')
    .option('--token-file <file>', 'bearer token required by POST, PUT and DELETE (env TENDER_AGENT_TOKEN_FILE; e.g. a mounted Secret)')
    .option('--cgroup-root <dir>', "the host's cgroup v2 mount as seen here, where the pods' cgroups and their PSI are found", '/sys/fs/cgroup')
    .addOption(new Option('--max-concurrent-runs <n>', 'backups running at once on this node (default: the policy file, else 1)').argParser(positiveInt))
    .option('--velero-backups', "back up the opted-in emptyDir volumes each Velero Backup covers when it starts, tagged with the backup")
    .addOption(new Option('--max-finished-runs <n>', 'finished runs kept in the state directory').argParser(positiveInt).default(100))
    .option('--data-mover', "also be Velero's data mover for `velero backup create --snapshot-move-data --data-mover tender` (DataUploads/DataDownloads)")
    .option('--velero-namespace <ns>', "Velero's namespace (with --data-mover and --velero-backups; env VELERO_NAMESPACE)", process.env.VELERO_NAMESPACE || 'velero')
    .option('--data-mover-image <image>', 'image of the pods that hold an exposed volume mounted: the agent\'s own (env TENDER_IMAGE)')
    .addOption(new Option('--data-mover-prepare-timeout <seconds>', 'how long a snapshot may take to be exposed on this node before the DataUpload fails').argParser(positiveInt).default(1800))
    .addOption(new Option('--data-mover-max-jobs <n>', 'DataUploads/DataDownloads this agent takes at once (more are left to other agents)').argParser(positiveInt).default(4))
    .action(async (opts: AgentCliOptions, command: Command) => {
      const g = globalOptions(command);
      const nodeName = opts.nodeName ?? process.env.NODE_NAME;
      if (!nodeName) {
        throw new TenderError('TENDER_USAGE', 'the agent needs the name of its node', {
          hint: 'pass --node-name or set NODE_NAME (in a DaemonSet: env NODE_NAME with valueFrom.fieldRef.fieldPath: spec.nodeName)',
        });
      }
      const url = g.repo ?? process.env.TENDER_REPOSITORY;
      if (!url) throw new TenderError('TENDER_USAGE', 'no repository given', { hint: 'pass --repo or set TENDER_REPOSITORY' });
      const passwordSource = repositoryPassword(g.passwordFile);
      if (!passwordSource.file && !process.env.TENDER_PASSWORD_FILE && !process.env.TENDER_PASSWORD) {
        throw new TenderError('TENDER_NO_PASSWORD', 'the agent needs the repository password, and there is no terminal to ask', {
          hint: 'pass --password-file or set TENDER_PASSWORD_FILE (e.g. a mounted Secret)',
        });
      }
      if (opts.maxConcurrentRuns === 0) throw new TenderError('TENDER_USAGE', '--max-concurrent-runs must be at least 1');
      if (opts.maxFinishedRuns === 0) throw new TenderError('TENDER_USAGE', '--max-finished-runs must be at least 1');
      const image = opts.dataMoverImage ?? process.env.TENDER_IMAGE;
      if (opts.dataMover && !image) {
        throw new TenderError('TENDER_USAGE', '--data-mover needs the image of the pods that hold exposed volumes', {
          hint: 'pass --data-mover-image or set TENDER_IMAGE (the agent\'s own image; the Helm chart sets it)',
        });
      }
      // Loaded here, not at the top: the Kubernetes client and the agent cost every other command
      // half a second of startup.
      const { Agent } = await import('../../agent/agent.js');
      const kubeConfig = await loadKubeConfig(opts.kubeconfig ?? process.env.KUBECONFIG);
      const logger = pino({ level: process.env.TENDER_LOG_LEVEL ?? 'info', base: { pid: process.pid, node: nodeName } });
      // One bad promise somewhere must not take every volume's protection down with it.
      process.on('unhandledRejection', (err) => logger.error({ err: (err as Error)?.stack ?? String(err) }, 'internal error (unhandled rejection); the agent goes on'));

      const tokenFile = opts.tokenFile ?? process.env.TENDER_AGENT_TOKEN_FILE;
      const agent = new Agent({
        nodeName,
        podsDir: opts.podsDir,
        kubeConfig,
        listen: opts.listen,
        ...(opts.config ? { configFile: opts.config } : {}),
        stateDir: opts.stateDir,
        ...(tokenFile ? { tokenFile } : {}),
        ...(opts.maxConcurrentRuns !== undefined ? { maxConcurrentRuns: opts.maxConcurrentRuns } : {}),
        maxFinishedRuns: opts.maxFinishedRuns,
        ...(opts.dataMover ? { dataMover: { namespace: opts.veleroNamespace, image: image!, prepareTimeoutMs: opts.dataMoverPrepareTimeout * 1000, maxJobs: opts.dataMoverMaxJobs } } : {}),
        cgroupRoot: opts.cgroupRoot,
        ...(opts.veleroBackups ? { velero: { namespace: opts.veleroNamespace } } : {}),
        repository: {
          url,
          storage: {
            ...(g.s3Endpoint ? { s3Endpoint: g.s3Endpoint } : {}),
            ...(g.caBundle ? { caBundle: g.caBundle } : {}),
          },
          password: () => readPassword(passwordSource, 'open'),
          ...(g.workers !== undefined ? { workers: g.workers } : {}),
        },
        logger,
      });
      // SIGTERM / Ctrl-C (bin/tender.js) aborts this controller: the agent stops and the command returns.
      const lifetime = new AbortController();
      const unregister = cancelOnInterrupt(lifetime);
      const stopped = new Promise<void>((resolve) => lifetime.signal.addEventListener('abort', () => resolve(), { once: true }));
      try {
        await agent.start();
      } catch (err) {
        await agent.stop().catch(() => undefined);
        unregister();
        throw err;
      }
      await stopped;
      await agent.stop();
      unregister();
    });
}
