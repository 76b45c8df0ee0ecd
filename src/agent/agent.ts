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
import path from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { backup } from '../backup/archiver.js';
import { type BoxSizing, type CgroupBox, describeBox, detectBox, sizeToBox } from '../polite/cgroup.js';
import { Governor, type PolitePolicy } from '../polite/governor.js';
import type { GpuReader } from '../polite/gpu-reader.js';
import { type GpuSourceKind, gpuSourceTimeoutMs, openGpuReader } from '../polite/gpu-source.js';
import { findPodCgroup } from '../polite/psi.js';
import { Repository } from '../repo/repository.js';
import { listSnapshots } from '../snapshots/select.js';
import { TenderError } from '../errors/errors.js';
import { thawLeftFrozen } from '../quiesce/freeze.js';
import { withHost } from '../quiesce/hooks.js';
import { type QuiesceHooks, type QuiesceOptions, quiesceHooks } from '../quiesce/quiesce.js';
import { localRepositoryPath, openStorage } from '../storage/open.js';
import type { OpenStorageOptions } from '../storage/open.js';
import { type Identity, type OperationEventMap, createOperationContext, processIdentity } from '../util/operation.js';
import { Discovery, type ProtectedVolume } from './discovery.js';
import { CheckpointWatcher } from './checkpoint-watch.js';
import { AgentHttpServer, type Readiness, TokenSource } from './http.js';
import { DataMover, type DataMoverRuns, type RunContext, type RunEnd, type RunOutput } from '../velero/datamover.js';
import { AgentMetrics } from './metrics.js';
import { PolicyWatcher } from './policy.js';
import { type ExecuteContext, type ExecuteResult, type RunRecord, Runner, describeError, describeVolume } from './runs.js';
import { Scheduler } from './scheduler.js';
import { StateStore } from './state.js';
import { checkVolumePath, locateVolume, readMountPoints } from './volumes.js';
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
    /** Tests may add fault injection (`faults`). */
    storage?: OpenStorageOptions;
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
  /** Move Velero's CSI snapshot data (DataUploads/DataDownloads with spec.datamover "tender"); off unless given. */
  dataMover?: DataMoverSettings;
  /** The host's cgroup v2 mount as seen here, where the pods' cgroups (and their PSI) are found (default /sys/fs/cgroup). */
  cgroupRoot?: string;
  /** GPU utilisation for the politeness policy's GPU backoff; default: the config's gpuSource, opened at start. */
  gpuReader?: GpuReader;
  /** Where the node's pressure files are (default /proc/pressure; tests). */
  procPressure?: string;
  /** The checkpoint trigger's poll and debounce (tests). */
  checkpointWatch?: { pollMs?: number; debounceMs?: number };
  /** Back up the emptyDir volumes that each Velero Backup in this namespace covers (velero-backups.ts). */
  velero?: { namespace: string };
}

export interface DataMoverSettings {
  /** Velero's namespace. */
  namespace: string;
  /** The image of the pods that hold an exposed volume mounted (the agent's own image). */
  image: string;
  prepareTimeoutMs?: number;
  /** DataUploads/DataDownloads held at once (default 4). */
  maxJobs?: number;
  /** Tests: polling, progress and resync intervals. */
  pollMs?: number;
  progressIntervalMs?: number;
  resyncMs?: number;
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
  private checkpointWatcher!: CheckpointWatcher;
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
  private dataMover: DataMover | undefined;
  /** Data-mover runs: their work and who waits for their end, by run ID. */
  private readonly moverRuns = new Map<string, { work: (ctx: RunContext) => Promise<RunOutput>; ended: (end: RunEnd) => void }>();
  private governor!: Governor;
  private box!: { box: CgroupBox; sizing: BoxSizing };
  /** Limits set through the API; they stay until the config's politeness section changes. */
  private limitOverrides: Pick<PolitePolicy, 'readLimit' | 'uploadLimit'> = {};
  private appliedPoliteness = '';
  /** The GPU source found at start (undefined: none). */
  private gpuSource: { source: GpuSourceKind; gpus: number | undefined } | undefined;
  /** Pod UID → its cgroup v2 directory (undefined: not visible here), for the pods being read. */
  private readonly podCgroups = new Map<string, string | undefined>();

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
    this.thawLeftFrozen();
    const token = o.tokenFile ? await TokenSource.open(o.tokenFile) : undefined;

    this.policy = new PolicyWatcher({ ...(o.configFile ? { file: o.configFile } : {}), logger: this.log.child({ component: 'policy' }) });
    await this.policy.start();

    const box = detectBox();
    // --workers (repository.workers) overrides what the box suggests.
    this.box = { box, sizing: { ...sizeToBox(box), ...(o.repository.workers !== undefined ? { workers: o.repository.workers } : {}) } };
    this.log.info({ box, sizing: this.box.sizing }, `box: ${describeBox(box, this.box.sizing)}`);
    // Opened whether or not GPU backoff is on yet: a config change may turn it on. No GPU: one line says so.
    const found = o.gpuReader
      ? undefined
      : await openGpuReader({ ...this.policy.policy.gpuSource, timeoutMs: gpuSourceTimeoutMs, logger: this.log.child({ component: 'gpu' }) });
    const gpuReader = o.gpuReader ?? found ?? undefined;
    this.gpuSource = gpuReader ? { source: gpuReader.source, gpus: found?.gpus } : undefined;
    this.governor = new Governor({
      ...this.policy.policy.politeness,
      watch: () => this.trainerCgroups(),
      logger: this.log.child({ component: 'polite' }),
      ...(gpuReader ? { gpuReader } : {}),
      ...(o.procPressure ? { procPressure: o.procPressure } : {}),
    });
    this.appliedPoliteness = JSON.stringify(this.policy.policy.politeness);

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
      politeness: () => ({ decision: this.governor.current, policy: this.governor.settings }),
      box: this.box,
      gpuSource: this.gpuSource ?? null,
    });
    this.governor.on('change', (c) => this.metrics.throttleChanged(c));
    this.governor.start();
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

    this.checkpointWatcher = new CheckpointWatcher({
      enqueue: (v) => {
        this.runner.enqueue(v, 'checkpoint');
      },
      lastSuccess: (identity) => {
        const at = this.runner.volumeState(identity)?.lastSuccessAt;
        return at === undefined ? undefined : Date.parse(at);
      },
      logger: this.log.child({ component: 'checkpoint-watch' }),
      ...o.checkpointWatch,
    });

    const interrupted = this.runner.load(state);
    for (const run of interrupted) this.metrics.runFinished(run);
    this.runner.on('finished', (run: RunRecord) => {
      this.executing.delete(run.id);
      this.endMoverRun(run);
      this.metrics.runFinished(run);
      for (const seconds of this.checkpointWatcher.runFinished(run)) this.metrics.checkpointStored(seconds);
      this.scheduler.refresh();
    });
    this.policy.on('change', () => {
      if (o.maxConcurrentRuns === undefined) this.runner.setMaxConcurrent(this.policy.policy.maxConcurrentRuns);
      const politeness = JSON.stringify(this.policy.policy.politeness);
      if (politeness !== this.appliedPoliteness) {
        this.appliedPoliteness = politeness;
        this.limitOverrides = {};
        this.governor.reconfigure(this.policy.policy.politeness);
      }
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
      limits: {
        get: () => this.describeLimits(),
        set: (change) => {
          this.limitOverrides = { ...this.limitOverrides, ...change };
          this.governor.reconfigure({ ...this.policy.policy.politeness, ...this.limitOverrides });
          this.log.info({ change, readLimit: this.governor.settings.readLimit ?? null, uploadLimit: this.governor.settings.uploadLimit ?? null }, 'limits changed through the API');
          return this.describeLimits();
        },
      },
      ...(token ? { token } : {}),
      nodeName: o.nodeName,
      logger: this.log.child({ component: 'http' }),
    });
    const { port } = await this.http.start();

    this.opening = this.openRepository();
    if (o.dataMover) {
      this.dataMover = new DataMover({
        kubeConfig: o.kubeConfig,
        nodeName: o.nodeName,
        ...o.dataMover,
        repository: () => this.repo,
        runs: this.moverQueue(),
        volumePath: async (pod, volume, pvc, pv) => {
          const spec = pod.spec?.volumes?.find((v) => v.name === volume);
          if (!spec) return { ok: false, reason: `pod ${pod.metadata?.name} has no volume ${volume}` };
          const loc = locateVolume(pod, spec, o.podsDir, new Map([[pvc.metadata?.name ?? '', { pvc, pv }]]));
          const checkMounts = o.discovery?.checkMounts ?? true;
          return checkVolumePath(loc, { podsDir: o.podsDir, checkMounts, ...(checkMounts ? { mountPoints: await readMountPoints() } : {}) });
        },
        username: this.identity.username,
        logger: this.log.child({ component: 'datamover' }),
      });
      this.dataMover.start();
    }
    await this.discovery.start();
    this.scheduler.start();
    this.checkpointWatcher.sync(this.discovery.volumes());
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

  /** Freeze records live in the state directory (a hostPath): they outlive a restarted agent container. */
  private freezeRecordDir(): string {
    return path.join(this.options.stateDir, 'frozen');
  }

  /** The startup check: thaws what an earlier agent (killed with its freeze guard) left frozen. */
  private thawLeftFrozen(): void {
    for (const left of thawLeftFrozen(this.freezeRecordDir())) {
      if (left.error) this.log.error({ path: left.path, err: left.error }, 'a filesystem left frozen by an earlier run could not be thawed');
      else this.log.warn({ path: left.path, wasFrozen: left.thawed }, 'thawed a filesystem an earlier run had frozen');
    }
  }

  /** The quiesce hooks for a volume whose pod asks for them (http hooks with an empty host call the pod's IP). */
  private quiesceFor(volume: ProtectedVolume, signal: AbortSignal, log: Logger): QuiesceHooks | undefined {
    const q = volume.quiesce;
    if (!q) return undefined;
    if (q.problems) {
      throw new TenderError('TENDER_USAGE', `${describeVolume(volume)}: malformed quiesce annotations: ${q.problems.join('; ')}`, {
        hint: 'fix the pod annotations; the volume is not backed up unquiesced meanwhile',
      });
    }
    const repositoryDir = localRepositoryPath(this.options.repository.url);
    const options: QuiesceOptions = {
      ...(q.preHook ? { preHook: withHost(q.preHook, volume.podIP) } : {}),
      ...(q.postHook ? { postHook: withHost(q.postHook, volume.podIP) } : {}),
      hookTimeoutMs: q.hookTimeoutMs,
      onError: q.onError,
      fsfreeze: q.fsfreeze,
      freezeTimeoutMs: q.freezeTimeoutMs,
      recordDir: this.freezeRecordDir(),
      keepWritable: repositoryDir ? [this.options.stateDir, repositoryDir] : [this.options.stateDir],
    };
    return quiesceHooks(() => options, {
      signal,
      report: (o) => (o.quiesced && !o.postHookError ? log.info(o, 'quiesced') : log.warn(o, 'not fully quiesced')),
    });
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
    this.checkpointWatcher?.stop();
    await this.runner?.stop(2000);
    // After the runner: a data-mover job in a run ends with it (and fails its DataUpload/DataDownload).
    await this.dataMover?.stop();
    await Promise.allSettled([this.http?.close(), this.discovery?.stop(), this.policy?.stop(), this.veleroBackups?.stop()]);
    await this.opening?.catch(() => undefined);
    await this.governor?.close();
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
    const { url, storage: storageOptions, password } = this.options.repository;
    const { initialMs, maxMs } = this.options.repositoryBackoff ?? { initialMs: 1000, maxMs: 60_000 };
    let delay = initialMs;
    for (let attempt = 1; !this.stopped; attempt++) {
      try {
        // Every run's uploads share the one upload budget.
        const storage = await openStorage(url, { ...storageOptions, limits: { upload: this.governor.uploadBudget } });
        let repo: Repository;
        try {
          repo = await Repository.open(storage, password, { identity: this.identity, workers: this.box.sizing.workers });
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
    this.checkpointWatcher.sync(this.discovery.volumes());
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

  /** The run queue as the data mover sees it: a run of trigger `datamover` executes the work given. */
  private moverQueue(): DataMoverRuns {
    return {
      submit: (what, work) => {
        const queued = this.runner.enqueue(what, 'datamover');
        if (queued.outcome !== 'queued') {
          const error = queued.outcome === 'full' ? `the agent's run queue is full (${queued.queued} runs waiting) or the agent is stopping` : 'a run of this object is already queued';
          return { id: '', done: Promise.resolve({ state: 'failed', error }) };
        }
        const done = new Promise<RunEnd>((ended) => this.moverRuns.set(queued.run.id, { work, ended }));
        return { id: queued.run.id, done };
      },
      cancel: (id, message) => {
        // A queued run ends at once, without a 'finished' event.
        const result = this.runner.cancel(id, message);
        if (result.outcome === 'cancelled') this.endMoverRun(result.run);
      },
    };
  }

  private endMoverRun(run: RunRecord): void {
    const mover = this.moverRuns.get(run.id);
    if (!mover) return;
    this.moverRuns.delete(run.id);
    mover.ended({ state: run.state, ...(run.error ? { error: run.error } : {}) });
  }

  private async execute(run: RunRecord, ctx: ExecuteContext): Promise<ExecuteResult> {
    if (run.trigger === 'datamover') {
      const mover = this.moverRuns.get(run.id);
      if (!mover) throw new Error('this data-mover run belongs to an earlier agent process');
      return mover.work(ctx);
    }
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
    const hooks = this.quiesceFor(volume, ctx.signal, log);
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
        // A memory limit that leaves room for few read slots reads fewer files at once.
        ...(this.box.sizing.bufferBudgetBytes !== undefined && this.box.sizing.bufferBudgetBytes < 8 * repo.config.chunker.maxSize ? { fileConcurrency: 1 } : {}),
        hooks: { ...hooks, beforeRead: this.governor.beforeRead },
      },
      opCtx,
    );
    return { snapshotId: result.snapshotId, ...(result.snapshot.summary ? { summary: result.snapshot.summary } : {}), warnings: result.errors.length };
  }

  /**
   * The cgroup v2 directories of the pods whose volumes are being read: their PSI says whether
   * the trainers stall (the node's PSI counts tender's own stalls too). Empty when none is
   * visible (cgroup v1, or the host's cgroups not mounted here): the governor reads the node's.
   */
  private trainerCgroups(): string[] {
    const reading = new Set([...this.executing.values()].map((v) => v.podUid).filter((uid): uid is string => !!uid));
    for (const uid of this.podCgroups.keys()) if (!reading.has(uid)) this.podCgroups.delete(uid);
    const dirs: string[] = [];
    for (const uid of reading) {
      if (!this.podCgroups.has(uid)) this.podCgroups.set(uid, findPodCgroup(uid, this.options.cgroupRoot));
      const dir = this.podCgroups.get(uid);
      if (dir) dirs.push(dir);
    }
    return dirs;
  }

  /** For GET/PUT /v1/limits: the limits and backoff in force, what reading does now, and the box. */
  private describeLimits(): unknown {
    const p = this.governor.settings;
    const d = this.governor.current;
    return {
      read: { limit: p.readLimit ?? null, rate: d.rate ?? null, state: d.state, cause: d.cause, reason: d.reason },
      upload: { limit: p.uploadLimit ?? null },
      ...(p.pressure ? { pressureBackoff: p.pressure } : {}),
      ...(p.cpuShareCores !== undefined ? { cpuShare: p.cpuShareCores } : {}),
      ...(p.readFloor !== undefined ? { readFloor: p.readFloor } : {}),
      ...(p.gpu ? { gpu: p.gpu } : {}),
      // An override of "no limit" is undefined in the policy: null here, as PUT takes it.
      overrides: Object.fromEntries(Object.entries(this.limitOverrides).map(([k, v]) => [k, v ?? null])),
      box: { ...this.box.box, ...this.box.sizing },
    };
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
