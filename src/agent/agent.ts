/**
 * The node agent's composition root: the repository (opened once, shared by every run), the
 * policy file, pod discovery, the scheduler, the runner and the HTTP API. No backup logic of its
 * own: a run is `backup(repo, options, ctx)` with the volume's identity as the snapshot host,
 * its tags, and the newest snapshot of that identity as the parent.
 *
 * What may fail while the agent runs (the repository not there yet, a wrong password, the API
 * server away, a volume unreadable or gone, a state file that cannot be written) is logged with
 * the pod and volume concerned, counted in the metrics and retried; it never ends the process.
 * Until the repository opens, /readyz says why and no run starts.
 */
import { EventEmitter } from 'node:events';
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { backup } from '../backup/archiver.js';
import { Repository } from '../repo/repository.js';
import { listSnapshots } from '../snapshots/select.js';
import { openStorage } from '../storage/open.js';
import type { StorageOptions } from '../storage/open.js';
import { type Identity, type OperationEventMap, createOperationContext, processIdentity } from '../util/operation.js';
import { Discovery, type ProtectedVolume } from './discovery.js';
import { AgentHttpServer, type Readiness, TokenSource } from './http.js';
import { AgentMetrics } from './metrics.js';
import { PolicyWatcher } from './policy.js';
import { type ExecuteContext, type ExecuteResult, type RunRecord, Runner, describeError, describeVolume } from './runs.js';
import { Scheduler } from './scheduler.js';
import { StateStore } from './state.js';
import { type VeleroVolume, VeleroBackups } from './velero-backups.js';

export interface AgentOptions {
  nodeName: string;
  /** The kubelet's pods directory as mounted in the agent (/host_pods). */
  podsDir: string;
  kubeConfig: KubeConfig;
  /** `HOST:PORT` or `:PORT`. */
  listen: string;
  /** The policy file (YAML; a mounted ConfigMap), reloaded when it changes. */
  configFile?: string;
  stateDir: string;
  tokenFile?: string;
  /** Overrides the policy's maxConcurrentRuns. */
  maxConcurrentRuns?: number;
  /** Finished runs kept in the state directory. */
  maxFinishedRuns?: number;
  repository: {
    url: string;
    storage?: StorageOptions;
    /** Read at each attempt to open the repository (a Secret may be fixed meanwhile). */
    password: () => Promise<string>;
    workers?: number;
  };
  logger: Logger;
  /** Delays between attempts to open the repository: from initialMs, doubling, up to maxMs. */
  repositoryBackoff?: { initialMs: number; maxMs: number };
  /** Discovery settings for tests (resync, mount checks). */
  discovery?: { resyncMs?: number; checkMounts?: boolean };
  /** Retry a failed scheduled run after this long (or the interval, if shorter). */
  failureRetryMs?: number;
  /** Back up the emptyDir volumes that each Velero Backup in this namespace covers (velero-backups.ts). */
  velero?: { namespace: string };
}

/** A volume that cannot be backed up now (gone, not mounted, unreadable). */
class VolumeUnavailable extends Error {
  readonly code = 'VOLUME_UNAVAILABLE';
}

export class Agent {
  private readonly log: Logger;
  private readonly identity: Identity;
  private store!: StateStore;
  private policy!: PolicyWatcher;
  private discovery!: Discovery;
  private runner!: Runner;
  private scheduler!: Scheduler;
  private metrics!: AgentMetrics;
  private http!: AgentHttpServer;
  private veleroBackups: VeleroBackups | undefined;
  private repo: Repository | undefined;
  private repoProblem: string | undefined = 'the repository is being opened';
  private stopped = false;
  private readonly stopSignal = new AbortController();
  private opening: Promise<void> | undefined;
  private readyTimer: NodeJS.Timeout | undefined;
  /** The volume each running run backs up (to abort it when its pod goes away). */
  private readonly executing = new Map<string, ProtectedVolume>();
  private stopping: Promise<void> | undefined;

  constructor(private readonly options: AgentOptions) {
    this.log = options.logger;
    this.identity = { hostname: options.nodeName, username: processIdentity().username };
  }

  /** Starts everything; resolves with the HTTP port once the API serves (the repository may still be opening). */
  async start(): Promise<{ port: number }> {
    const o = this.options;
    this.store = new StateStore(o.stateDir, {
      ...(o.maxFinishedRuns !== undefined ? { maxFinishedRuns: o.maxFinishedRuns } : {}),
      logger: this.log,
      onWriteError: () => this.metrics?.error('state_write'),
    });
    const state = await this.store.load();
    const token = o.tokenFile ? await TokenSource.open(o.tokenFile) : undefined;

    this.policy = new PolicyWatcher({ ...(o.configFile ? { file: o.configFile } : {}), logger: this.log.child({ component: 'policy' }) });
    await this.policy.start();

    this.runner = new Runner({
      execute: (run, ctx) => this.execute(run, ctx),
      store: this.store,
      maxConcurrent: o.maxConcurrentRuns ?? this.policy.policy.maxConcurrentRuns,
      ...(o.maxFinishedRuns !== undefined ? { maxFinishedRuns: o.maxFinishedRuns } : {}),
      logger: this.log.child({ component: 'runs' }),
    });
    this.discovery = new Discovery({
      kubeConfig: o.kubeConfig,
      nodeName: o.nodeName,
      podsDir: o.podsDir,
      policy: () => this.policy.policy,
      logger: this.log.child({ component: 'discovery' }),
      ...(o.discovery?.resyncMs !== undefined ? { resyncMs: o.discovery.resyncMs } : {}),
      ...(o.discovery?.checkMounts !== undefined ? { checkMounts: o.discovery.checkMounts } : {}),
    });
    this.metrics = new AgentMetrics({
      queueDepth: () => this.runner.queueDepth,
      running: () => this.runner.runningCount,
      volumes: () => this.discovery.volumes(),
      lastSuccess: (identity) => {
        const at = this.runner.volumeState(identity)?.lastSuccessAt;
        return at === undefined ? undefined : Date.parse(at);
      },
      repositoryReady: () => this.repo !== undefined,
    });
    this.scheduler = new Scheduler({
      // Volumes without a path are not scheduled: discovery logged why, the metrics count them.
      volumes: () => this.discovery.volumes().filter((v) => v.path !== undefined),
      state: (identity) => this.runner.volumeState(identity),
      isActive: (identity) => this.runner.isActive(identity),
      enqueue: (v) => {
        this.runner.enqueue(v as ProtectedVolume, 'schedule');
      },
      logger: this.log.child({ component: 'scheduler' }),
      ...(o.failureRetryMs !== undefined ? { failureRetryMs: o.failureRetryMs } : {}),
    });

    const interrupted = this.runner.load(state);
    for (const run of interrupted) this.metrics.runFinished(run);
    this.runner.on('finished', (run: RunRecord) => {
      this.executing.delete(run.id);
      this.metrics.runFinished(run);
      this.scheduler.refresh();
    });
    this.policy.on('change', () => {
      if (o.maxConcurrentRuns === undefined) this.runner.setMaxConcurrent(this.policy.policy.maxConcurrentRuns);
      void this.discovery.refresh();
    });
    this.discovery.on('change', (change: { removed: ProtectedVolume[] }) => this.onVolumesChanged(change.removed));
    this.discovery.on('watch-error', () => this.metrics.error('discovery'));

    this.http = new AgentHttpServer({
      listen: o.listen,
      runner: this.runner,
      volumes: {
        find: (ns, pod, volume) => this.discovery.find(ns, pod, volume),
        list: () => this.describeVolumes(),
      },
      readiness: () => this.readiness(),
      metrics: this.metrics,
      ...(token ? { token } : {}),
      nodeName: o.nodeName,
      logger: this.log.child({ component: 'http' }),
    });
    const { port } = await this.http.start();

    this.opening = this.openRepository();
    await this.discovery.start();
    this.scheduler.start();
    if (o.velero) {
      // After the first pod list: a Backup in progress at startup then finds this node's volumes.
      this.veleroBackups = new VeleroBackups({
        kubeConfig: o.kubeConfig,
        namespace: o.velero.namespace,
        volumes: () => this.veleroVolumes(),
        backedUp: (uid) => this.identitiesBackedUp(uid),
        enqueue: (v, tags) => {
          const r = this.runner.enqueue(v, 'velero', tags);
          if (r.outcome === 'full') this.log.error({ namespace: v.namespace, pod: v.pod, volume: v.volume }, `the run queue is full (${r.queued}); ${describeVolume(v)} is not backed up with this Velero backup`);
        },
        logger: this.log.child({ component: 'velero' }),
      });
      await this.veleroBackups.start();
    }
    this.updateReady();
    // Readiness also changes without an event (the pod list arriving after a failed first list).
    this.readyTimer = setInterval(() => this.updateReady(), 2000);
    this.readyTimer.unref();
    this.log.info(
      { node: o.nodeName, podsDir: o.podsDir, stateDir: o.stateDir, repository: o.repository.url, port, interrupted: interrupted.map((r) => r.id) },
      'tender agent started',
    );
    return { port };
  }

  /** Stops: runs are interrupted (and queued again for the next start), the state written, everything closed. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.stopped = true;
    this.stopSignal.abort();
    this.log.info('tender agent stopping');
    if (this.readyTimer) clearInterval(this.readyTimer);
    this.scheduler?.stop();
    await this.runner?.stop(2000);
    await Promise.allSettled([this.http?.close(), this.discovery?.stop(), this.policy?.stop(), this.veleroBackups?.stop()]);
    await this.opening?.catch(() => undefined);
    await this.repo?.close().catch(() => undefined);
    await this.store?.flush();
    this.log.info('tender agent stopped');
  }

  readiness(): Readiness {
    const reasons: string[] = [];
    if (this.stopped) reasons.push('the agent is stopping');
    if (!this.repo) reasons.push(`repository ${this.options.repository.url}: ${this.repoProblem ?? 'not open yet'}`);
    if (this.discovery && !this.discovery.stats().synced) reasons.push(`the pods of node ${this.options.nodeName} have not been listed yet (is the API server reachable?)`);
    return { ready: reasons.length === 0, reasons };
  }

  private updateReady(): void {
    if (this.stopped) return;
    this.runner.setReady(this.repo !== undefined && this.discovery.stats().synced);
  }

  /** Opens the repository, retrying with backoff until it opens or the agent stops. */
  private async openRepository(): Promise<void> {
    const { url, storage: storageOptions, password, workers } = this.options.repository;
    const { initialMs, maxMs } = this.options.repositoryBackoff ?? { initialMs: 1000, maxMs: 60_000 };
    let delay = initialMs;
    for (let attempt = 1; !this.stopped; attempt++) {
      try {
        const storage = await openStorage(url, storageOptions ?? {});
        let repo: Repository;
        try {
          repo = await Repository.open(storage, password, { identity: this.identity, ...(workers !== undefined ? { workers } : {}) });
        } catch (err) {
          await storage.close().catch(() => undefined);
          throw err;
        }
        if (this.stopped) {
          await repo.close();
          return;
        }
        this.repo = repo;
        this.repoProblem = undefined;
        this.log.info({ repository: url, id: repo.config.repository, attempt }, `opened repository ${url}`);
        this.updateReady();
        return;
      } catch (err) {
        this.repoProblem = describeError(err);
        this.metrics.error('repository_open');
        this.log.error(
          { repository: url, err: (err as Error).message, hint: (err as { hint?: string }).hint, code: (err as { code?: string }).code, attempt, retryInMs: delay },
          `cannot open the repository ${url}: ${this.repoProblem}; retrying in ${Math.round(delay / 1000)} s`,
        );
        await sleep(delay, this.stopSignal.signal);
        delay = Math.min(delay * 2, maxMs);
      }
    }
  }

  /** Volumes gone: a run backing one of them up is aborted (the pod and its files are going away). */
  private onVolumesChanged(removed: ProtectedVolume[]): void {
    for (const gone of removed) {
      for (const [id, v] of this.executing) {
        if (v.key === gone.key && v.podUid === gone.podUid) {
          this.log.warn({ run: id, namespace: v.namespace, pod: v.pod, volume: v.volume }, `pod ${v.namespace}/${v.pod} went away during run ${id}; stopping it`);
          this.runner.abortVanished(id, `pod ${v.namespace}/${v.pod} was deleted (or stopped being protected) during the backup`);
        }
      }
    }
    this.scheduler.refresh();
  }

  /** The run's volume now: the same pod, or (a pod recreated under a new name) the same identity. */
  private resolve(run: RunRecord): ProtectedVolume | undefined {
    return (
      this.discovery.find(run.namespace, run.pod, run.volume) ??
      this.discovery.volumes().find((v) => v.identity === run.identity && v.path !== undefined) ??
      this.discovery.volumes().find((v) => v.identity === run.identity)
    );
  }

  private async execute(run: RunRecord, ctx: ExecuteContext): Promise<ExecuteResult> {
    const what = describeVolume(run);
    const volume = this.resolve(run);
    if (!volume) {
      this.metrics.error('volume');
      throw new VolumeUnavailable(`${what} is no longer protected on node ${this.options.nodeName} (pod deleted, or the volume no longer selected)`);
    }
    if (volume.path === undefined) {
      this.metrics.error('volume');
      throw new VolumeUnavailable(`${describeVolume(volume)} cannot be backed up: ${volume.problem ?? 'its directory was not found'}`);
    }
    try {
      if (!(await stat(volume.path)).isDirectory()) throw new Error('not a directory');
      await access(volume.path, constants.R_OK | constants.X_OK);
    } catch (err) {
      this.metrics.error('volume');
      throw new VolumeUnavailable(`${describeVolume(volume)}: cannot read ${volume.path}: ${(err as Error).message}`);
    }
    const repo = this.repo;
    if (!repo) throw new Error('the repository is not open');
    // The pod may be a new one: the record names the pod that is backed up.
    run.namespace = volume.namespace;
    run.pod = volume.pod;
    run.volume = volume.volume;
    this.executing.set(run.id, volume);
    const log = this.log.child({ run: run.id, namespace: volume.namespace, pod: volume.pod, volume: volume.volume });
    // Parent: the newest snapshot of this identity, whatever its path (the pod UID is in the path).
    const parent = (await listSnapshots(repo, { host: volume.identity })).at(-1);
    const events = new EventEmitter<OperationEventMap>();
    events.on('progress', (p) => ctx.progress(p as { bytesDone: number; filesDone: number; totalBytes?: number; totalFiles?: number }));
    events.on('warning', (w) => log.warn({ path: w.path, err: w.message }, `skipped ${w.path}: ${w.message}`));
    events.on('resume', (r) => {
      if (r.packs > 0) log.info({ packs: r.packs }, `resumed: indexed ${r.packs} packs an interrupted backup had stored`);
      for (const key of r.damaged) log.error({ object: key }, `${key} is damaged and was not indexed; run \`tender check --read-data\``);
    });
    const opCtx = createOperationContext({ signal: ctx.signal, events, logger: log, identity: { hostname: volume.identity, username: this.identity.username } });
    const result = await backup(
      repo,
      {
        paths: [volume.path],
        // The root is named after the volume, so `tender restore latest:<volume>` finds it
        // whatever the plugin calls the directory (a CSI volume's is `mount`).
        rootNames: [volume.volume],
        tags: [...volume.tags, ...(run.tags ?? [])],
        hostname: volume.identity,
        ...(parent ? { parent } : {}),
        cacheNeutral: this.policy.policy.cacheNeutral,
        scan: true,
      },
      opCtx,
    );
    return { snapshotId: result.snapshotId, ...(result.snapshot.summary ? { summary: result.snapshot.summary } : {}), warnings: result.errors.length };
  }

  /** The protected emptyDir volumes of this node's pods, with their pods' labels (for a Backup's label selector). */
  private veleroVolumes(): VeleroVolume[] {
    return this.discovery.volumes().flatMap((v) => {
      const pod = this.discovery.pod(v.namespace, v.pod);
      const spec = pod?.spec?.volumes?.find((x) => x.name === v.volume);
      return pod && spec?.emptyDir ? [{ ...v, podLabels: pod.metadata?.labels ?? {} }] : [];
    });
  }

  /**
   * The volume identities with a snapshot of this Velero Backup UID. Waits for the repository to
   * open: at startup, a Backup still in progress must not be taken for a new one.
   */
  private async identitiesBackedUp(uid: string): Promise<Set<string>> {
    await this.opening;
    if (!this.repo) return new Set(); // stopping
    return new Set((await listSnapshots(this.repo, { tags: [`velero.io/backup-uid=${uid}`] })).map((e) => e.snapshot.hostname));
  }

  /** For GET /v1/volumes: each protected volume with its next due time and last run. */
  private describeVolumes(): unknown[] {
    const due = this.scheduler.dueTimes();
    return this.discovery.volumes().map((v) => {
      const s = this.runner.volumeState(v.identity);
      const next = v.path === undefined ? undefined : due.get(v.identity);
      return {
        ...v,
        ...(next !== undefined ? { nextRunAt: new Date(next).toISOString() } : {}),
        ...(s?.lastSuccessAt ? { lastSuccessAt: s.lastSuccessAt, lastSnapshotId: s.lastSnapshotId } : {}),
        ...(s?.lastOutcome ? { lastOutcome: s.lastOutcome, lastEndedAt: s.lastEndedAt } : {}),
      };
    });
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done);
  });
}
