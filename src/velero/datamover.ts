/**
 * tender as a Velero data mover (`velero backup create --snapshot-move-data --data-mover tender`):
 * a controller in the node agent for the DataUploads and DataDownloads in Velero's namespace
 * whose spec.datamover is "tender" (never Velero's own: "" or "velero").
 *
 * Every agent watches them; one wins each New object by an optimistic-concurrency replace
 * (phase Accepted, acceptedByNode), exposes the volume on its own node (expose.ts), marks it
 * Prepared, then InProgress, moves the data through the agent's run queue (so concurrency limits
 * apply), and ends it Completed, Failed or Canceled; the intermediate objects are deleted on every
 * outcome. The data path is in this process: an agent that restarts finds the objects it had
 * accepted without their run and fails them (with cleanup); Velero's backup then reports the
 * volume as failed.
 *
 * Velero never tells a data mover that a backup was deleted: the controller watches
 * DeleteBackupRequests and, once the Backup with that UID is gone, forgets the snapshots tagged
 * with its name and UID.
 */
import { EventEmitter } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { KubeConfig } from '@kubernetes/client-node';
import { backup } from '../backup/archiver.js';
import { TenderError } from '../errors/errors.js';
import type { Repository } from '../repo/repository.js';
import type { SnapshotSummary } from '../repo/snapshot/snapshot.js';
import { restore } from '../restore/restorer.js';
import { listSnapshots } from '../snapshots/select.js';
import { type OperationEventMap, createOperationContext } from '../util/operation.js';
import {
  BACKUP_NAME_LABEL,
  BACKUP_UID_LABEL,
  type DataDownload,
  type DataUpload,
  type DeleteBackupRequest,
  type MoverObject,
  type MoverStatus,
  type Progress,
  decodeSnapshotRef,
  describe,
  encodeSnapshotRef,
  isTenders,
  phaseOf,
  resources,
  terminalPhases,
} from './contract.js';
import { Exposer, type VolumePathFn } from './expose.js';
import { kubeErrorText } from '../util/kube-errors.js';
import { Kube, type Resource, WatchLoop, accept, timestamp } from './kube.js';

/** What the data mover needs from the agent's run queue. */
export interface DataMoverRuns {
  /**
   * Queue `work` as a run (it waits for a slot like any backup); `done` resolves when the run has
   * ended, however it ended.
   */
  submit(what: { namespace: string; pod: string; volume: string; identity: string }, work: (ctx: RunContext) => Promise<RunOutput>): { id: string; done: Promise<RunEnd> };
  cancel(id: string, message: string): void;
}

export interface RunContext {
  readonly signal: AbortSignal;
  progress(p: { bytesDone?: number; totalBytes?: number; filesDone?: number; totalFiles?: number }): void;
}

export interface RunOutput {
  snapshotId: string;
  summary?: SnapshotSummary;
}

export interface RunEnd {
  state: 'succeeded' | 'failed' | 'cancelled' | 'interrupted' | 'queued' | 'running';
  error?: string;
}

export interface DataMoverOptions {
  kubeConfig: KubeConfig;
  /** Velero's namespace (default velero). */
  namespace: string;
  nodeName: string;
  /** The image of the pods that hold a volume mounted (the agent's own image: it runs `sleep`). */
  image: string;
  /** The open repository, or undefined while it is not open (nothing is accepted then). */
  repository: () => Repository | undefined;
  runs: DataMoverRuns;
  volumePath: VolumePathFn;
  /** The snapshots' username. */
  username: string;
  logger: Logger;
  /** From acceptance until the volume is mounted on this node (default 30 min, as Velero's node-agent). */
  prepareTimeoutMs?: number;
  /** Between checks while waiting for the API server (default 1 s). */
  pollMs?: number;
  /** Status progress is written at most this often (default 10 s). */
  progressIntervalMs?: number;
  /** Full relist of the watched objects (default 60 s). */
  resyncMs?: number;
  /**
   * DataUploads/DataDownloads this agent holds at once, from acceptance to the end (default 4);
   * beyond that it accepts nothing and leaves new ones to other agents, so one node does not
   * collect every exposed volume while its run queue is busy.
   */
  maxJobs?: number;
}

interface Job {
  key: string;
  obj: MoverObject;
  controller: AbortController;
  cancelled?: string;
  runId?: string;
}

const CANCELLED = Symbol('cancelled');

export class DataMover {
  private readonly kube: Kube;
  private readonly exposer: Exposer;
  private readonly log: Logger;
  private readonly jobs = new Map<string, Job>();
  /** Objects found accepted by this node with no job (a restart): being failed now. */
  private readonly orphans = new Set<string>();
  /** New objects seen while at maxJobs (logged once each). */
  private readonly deferred = new Set<string>();
  /** DeleteBackupRequests whose snapshots were forgotten, by `name/uid` of the backup. */
  private readonly forgotten = new Set<string>();
  private readonly loops: WatchLoop[] = [];
  private readonly tasks = new Set<Promise<void>>();
  private stopped = false;
  private readonly prepareTimeoutMs: number;
  private readonly progressIntervalMs: number;

  private readonly maxJobs: number;

  constructor(private readonly o: DataMoverOptions) {
    this.kube = new Kube(o.kubeConfig);
    this.log = o.logger;
    this.prepareTimeoutMs = o.prepareTimeoutMs ?? 30 * 60_000;
    this.progressIntervalMs = o.progressIntervalMs ?? 10_000;
    this.maxJobs = Math.max(1, o.maxJobs ?? 4);
    this.exposer = new Exposer({ kube: this.kube, namespace: o.namespace, nodeName: o.nodeName, image: o.image, volumePath: o.volumePath, pollMs: o.pollMs ?? 1000 });
  }

  start(): void {
    const ns = this.o.namespace;
    const resyncMs = this.o.resyncMs ?? 60_000;
    const watch = (r: Resource, on: (type: string, obj: never) => void): void => {
      const loop = new WatchLoop({
        kubeConfig: this.o.kubeConfig,
        path: `/apis/${r.group}/${r.version}/namespaces/${ns}/${r.plural}`,
        list: async () => {
          const list = await this.kube.list<never>(r, ns);
          for (const item of list.items) on('LISTED', item);
          return list.resourceVersion;
        },
        onEvent: (type, obj) => on(type, obj as never),
        resyncMs,
        logger: this.log,
        what: `${r.plural} in namespace ${ns}`,
      });
      this.loops.push(loop);
      loop.start();
    };
    watch(resources.dataUpload, (type, obj: DataUpload) => this.observe(type, { ...obj, kind: 'DataUpload' }));
    watch(resources.dataDownload, (type, obj: DataDownload) => this.observe(type, { ...obj, kind: 'DataDownload' }));
    watch(resources.deleteBackupRequest, (_type, obj: DeleteBackupRequest) =>
      this.track(
        this.onDeleteBackupRequest(obj).catch((err: unknown) =>
          this.log.warn({ request: obj.metadata?.name, err: messageOf(err) }, `cannot act on DeleteBackupRequest ${obj.metadata?.name}: ${messageOf(err)}; again at the next event or relist`),
        ),
      ),
    );
    this.log.info({ namespace: ns, node: this.o.nodeName }, `Velero data mover started: DataUploads and DataDownloads in namespace ${ns} with spec.datamover "tender"`);
  }

  /**
   * Stops watching; jobs still preparing are failed and cleaned up. Call it after the run queue
   * has stopped (a running job ends with its run). Waits at most timeoutMs for the jobs to end;
   * what is left is failed by the next agent on this node.
   */
  async stop(timeoutMs = 5000): Promise<void> {
    this.stopped = true;
    for (const loop of this.loops) loop.stop();
    for (const job of this.jobs.values()) job.controller.abort(new Error('the agent is stopping'));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled([...this.tasks]), new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
  }

  private track(task: Promise<void>): void {
    const t = task.catch((err: unknown) => this.log.error({ err: (err as Error)?.stack ?? String(err) }, 'internal error in the Velero data mover'));
    this.tasks.add(t);
    void t.finally(() => this.tasks.delete(t));
  }

  /** Every event and every listed object comes here; the decisions are idempotent. */
  private observe(type: string, obj: MoverObject): void {
    if (this.stopped || !obj?.metadata || !isTenders(obj)) return;
    const key = `${obj.kind}/${obj.metadata.uid}`;
    const job = this.jobs.get(key);
    if (job) {
      if (type === 'DELETED') this.cancel(job, `${describe(obj)} was deleted`);
      else if (obj.spec.cancel) this.cancel(job, `${describe(obj)} was canceled (spec.cancel)`);
      return;
    }
    const phase = phaseOf(obj);
    if (type === 'DELETED' || phase !== 'New') this.deferred.delete(key);
    if (type === 'DELETED' || terminalPhases.has(phase)) return;
    if (phase === 'New') {
      if (obj.spec.cancel) {
        this.track(this.cancelNew(obj));
        return;
      }
      if (!this.o.repository()) return; // not before the repository is open: another agent may take it
      if (this.jobs.size >= this.maxJobs) {
        if (!this.deferred.has(key)) {
          this.deferred.add(key);
          this.log.info({ object: describe(obj), jobs: this.jobs.size }, `${describe(obj)} left to another agent: ${this.jobs.size} DataUploads/DataDownloads in hand already (maxJobs)`);
        }
        return;
      }
      this.deferred.delete(key);
      const fresh: Job = { key, obj, controller: new AbortController() };
      this.jobs.set(key, fresh);
      this.track(
        this.runJob(fresh).finally(() => {
          this.jobs.delete(key);
          // Room for one more: look again at what is waiting now, not at the next relist.
          if (this.deferred.size > 0 && !this.stopped) for (const loop of this.loops) loop.relist();
        }),
      );
      return;
    }
    if (obj.status?.acceptedByNode === this.o.nodeName && !this.orphans.has(key)) {
      this.orphans.add(key);
      this.track(this.failOrphan(obj).finally(() => this.orphans.delete(key)));
    }
  }

  private cancel(job: Job, why: string): void {
    if (job.cancelled) return;
    job.cancelled = why;
    this.log.info({ object: describe(job.obj) }, `canceling: ${why}`);
    job.controller.abort(CANCELLED);
    if (job.runId) {
      // The run stops at its next check; until then the object says Canceling.
      this.track(
        this.setStatus(job.obj, (s) => {
          if (s.phase !== 'InProgress') return false;
          s.phase = 'Canceling';
          return true;
        }).then(() => undefined),
      );
      this.o.runs.cancel(job.runId, why);
    }
  }

  /** Canceled before anyone accepted it: nothing to clean up. */
  private async cancelNew(obj: MoverObject): Promise<void> {
    await this.setStatus(obj, (s) => {
      if (s.phase && s.phase !== 'New') return false;
      s.phase = 'Canceled';
      s.message = 'canceled before the data mover accepted it';
      s.completionTimestamp = timestamp(new Date());
      return true;
    });
  }

  /** Accepted by this node before a restart: its run died with the old process. */
  private async failOrphan(obj: MoverObject): Promise<void> {
    const phase = phaseOf(obj);
    const written = await this.setStatus(obj, (s) => {
      if (terminalPhases.has(s.phase || 'New') || s.acceptedByNode !== this.o.nodeName) return false;
      const was = s.phase === 'Canceling' ? 'being canceled' : s.phase;
      s.phase = 'Failed';
      s.message =
        `the tender agent on node ${this.o.nodeName} restarted while this ${obj.kind} was ${was}; ` +
        `the ${obj.kind === 'DataUpload' ? 'backup' : 'restore'} of this volume did not finish (run it again)`;
      s.completionTimestamp = timestamp(new Date());
      return true;
    });
    if (!written) return; // ended meanwhile (a late event of a job that finished here)
    this.log.warn({ object: describe(obj), phase }, `${describe(obj)} was ${phase} on this node when the agent restarted: failed`);
    await this.exposer.cleanUp(obj);
  }

  // -----------------------------------------------------------------------------------------------
  // One DataUpload or DataDownload, from acceptance to the end

  private async runJob(job: Job): Promise<void> {
    const r = job.obj.kind === 'DataUpload' ? resources.dataUpload : resources.dataDownload;
    const accepted = await accept(this.kube, r, job.obj, this.o.nodeName, new Date()).catch((err: unknown) => {
      this.log.warn({ object: describe(job.obj), err: kubeErrorText(err) }, `cannot accept ${describe(job.obj)}: ${kubeErrorText(err)}`);
      return undefined;
    });
    if (!accepted) {
      this.log.debug({ object: describe(job.obj) }, `${describe(job.obj)} was taken by another node`);
      return;
    }
    accepted.kind = job.obj.kind;
    job.obj = accepted;
    const what = describe(accepted);
    const log = this.log.child({ object: what });
    log.info(`accepted ${what}`);
    const signal = job.controller.signal;
    const deadline = Date.now() + this.prepareTimeoutMs;
    let outcome: Partial<MoverStatus> & { path?: string; snapshotID?: string };
    try {
      outcome = accepted.kind === 'DataUpload' ? await this.upload(job, accepted, deadline, signal, log) : await this.download(job, accepted, deadline, signal, log);
      outcome.phase = 'Completed';
    } catch (err) {
      if (job.cancelled) {
        outcome = { phase: 'Canceled', message: job.cancelled };
      } else if (signal.aborted && !job.runId) {
        outcome = { phase: 'Failed', message: `the tender agent on node ${this.o.nodeName} stopped while this ${accepted.kind} was prepared (run it again)` };
      } else {
        outcome = { phase: 'Failed', message: messageOf(err) };
      }
    }
    try {
      await this.exposer.cleanUp(accepted);
    } catch (err) {
      log.warn({ err: kubeErrorText(err) }, `cannot delete the intermediate objects of ${what}: ${kubeErrorText(err)}`);
    }
    // The outcome must land (a stored snapshot must not turn into an orphan's failure later):
    // the job stays in hand while the API server is away, retrying from 1 s, doubling to 30 s.
    for (let attempt = 0; ; attempt++) {
      try {
        await this.setStatus(accepted, (s) => {
          if (terminalPhases.has(s.phase || 'New')) return false;
          Object.assign(s, outcome, { completionTimestamp: timestamp(new Date()) });
          return true;
        });
        break;
      } catch (err) {
        if (attempt >= 10) throw err;
        const wait = Math.min(30_000, 1000 * 2 ** attempt);
        log.warn({ err: kubeErrorText(err), retryInMs: wait }, `cannot write the outcome of ${what} (${outcome.phase}): ${kubeErrorText(err)}; again in ${wait} ms`);
        await delay(wait);
      }
    }
    (outcome.phase === 'Completed' ? log.info.bind(log) : log.warn.bind(log))({ phase: outcome.phase, message: outcome.message }, `${what}: ${outcome.phase}: ${outcome.message}`);
  }

  private async upload(job: Job, du: DataUpload, deadline: number, signal: AbortSignal, log: Logger): Promise<Partial<MoverStatus> & { path: string; snapshotID: string; nodeOS: string }> {
    await this.exposer.exposeSnapshot(du, deadline, signal);
    const exposed = await this.exposer.waitExposed(du, deadline, signal);
    await this.moveOn(du, 'Prepared', signal);
    await this.moveOn(du, 'InProgress', signal);
    const host = `velero:${du.spec.sourceNamespace}/${du.spec.sourcePVC}`;
    const tags = [
      `${BACKUP_NAME_LABEL}=${du.metadata.labels?.[BACKUP_NAME_LABEL] ?? ''}`,
      `${BACKUP_UID_LABEL}=${du.metadata.labels?.[BACKUP_UID_LABEL] ?? ''}`,
      `velero.io/data-upload=${du.metadata.name}`,
      `velero.io/source-pvc=${du.spec.sourceNamespace}/${du.spec.sourcePVC}`,
    ];
    let summary: SnapshotSummary | undefined;
    const snapshotId = await this.viaQueue(job, du, host, log, async (repo, ctx, opCtx) => {
      const parent = (await listSnapshots(repo, { host })).at(-1);
      const result = await backup(repo, { paths: [exposed.path], rootNames: [du.spec.sourcePVC], tags, hostname: host, ...(parent ? { parent } : {}), scan: true }, opCtx);
      if (result.errors.length > 0) {
        // Not a complete copy of the volume: never reported as one.
        await repo.deleteSnapshot(result.snapshotId).catch(() => undefined);
        const first = result.errors[0]!;
        throw new TenderError('TENDER_IO', `${result.errors.length} files or directories of the volume could not be read (first: ${first.path}: ${first.message}); the incomplete snapshot was discarded`, {
          hint: 'check the volume\'s file permissions and the agent\'s logs, then run the backup again',
        });
      }
      summary = result.snapshot.summary;
      ctx.progress({ bytesDone: summary?.totalBytes, totalBytes: summary?.totalBytes });
      return { snapshotId: result.snapshotId, ...(summary ? { summary } : {}) };
    });
    const total = summary?.totalBytes ?? 0;
    return {
      snapshotID: encodeSnapshotRef({ snapshotId, root: du.spec.sourcePVC }),
      path: exposed.path,
      // Velero's restore copies it into the DataDownload; tender runs on Linux nodes only.
      nodeOS: 'linux',
      node: this.o.nodeName,
      progress: { totalBytes: total, bytesDone: total },
      message: `stored as tender snapshot ${snapshotId.slice(0, 8)}: ${summary?.files ?? 0} files, ${total} bytes (${summary?.bytesAdded ?? 0} bytes new, ${summary?.bytesStored ?? 0} stored)`,
    };
  }

  private async download(job: Job, dd: DataDownload, deadline: number, signal: AbortSignal, log: Logger): Promise<Partial<MoverStatus>> {
    const ref = decodeSnapshotRef(dd.spec.snapshotID, describe(dd));
    await this.exposer.exposeTarget(dd, deadline, signal);
    const exposed = await this.exposer.waitExposed(dd, deadline, signal);
    await this.moveOn(dd, 'Prepared', signal);
    await this.moveOn(dd, 'InProgress', signal);
    let bytes = 0;
    await this.viaQueue(job, dd, `velero-restore:${dd.spec.targetVolume.namespace}/${dd.spec.targetVolume.pvc}`, log, async (repo, ctx, opCtx) => {
      let snapshot;
      try {
        snapshot = await repo.loadSnapshot(ref.snapshotId);
      } catch (err) {
        if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') {
          throw new TenderError('TENDER_SNAPSHOT_NOT_FOUND', `tender snapshot ${ref.snapshotId.slice(0, 8)} is not in the repository (forgotten, or another repository)`, {
            hint: 'the Velero backup may have been deleted; restore from another backup',
          });
        }
        throw err;
      }
      const result = await restore(repo, snapshot, { target: exposed.path, subpath: ref.root, overwrite: true }, opCtx);
      if (result.errors.length > 0) {
        const first = result.errors[0]!;
        throw new TenderError('TENDER_IO', `${result.errors.length} files could not be restored (first: ${first.path}: ${first.message})`, { hint: 'check the free space of the target volume, then restore again' });
      }
      bytes = result.bytes;
      ctx.progress({ bytesDone: bytes, totalBytes: bytes });
      return { snapshotId: ref.snapshotId };
    });
    await this.exposer.rebind(dd, exposed.pvName, deadline, signal);
    return {
      node: this.o.nodeName,
      progress: { totalBytes: bytes, bytesDone: bytes },
      message: `restored tender snapshot ${ref.snapshotId.slice(0, 8)} (${bytes} bytes) into PersistentVolume ${exposed.pvName}, bound to ${dd.spec.targetVolume.namespace}/${dd.spec.targetVolume.pvc}`,
    };
  }

  /**
   * Runs the data movement as a run of the agent's queue; status.progress follows it (written at
   * most every progressIntervalMs). Resolves with the snapshot ID, or throws why it did not end well.
   */
  private async viaQueue(
    job: Job,
    obj: MoverObject,
    volume: string,
    log: Logger,
    move: (repo: Repository, ctx: RunContext, opCtx: ReturnType<typeof createOperationContext>) => Promise<RunOutput>,
  ): Promise<string> {
    let latest: Progress | undefined;
    let written: Progress | undefined;
    let timer: NodeJS.Timeout | undefined;
    const flush = (): void => {
      timer = undefined;
      if (!latest || latest === written) return;
      const p = (written = latest);
      void this.setStatus(obj, (s) => {
        if (s.phase !== 'InProgress') return false;
        s.progress = { ...p };
        return true;
      }).catch((err: unknown) => log.warn({ err: kubeErrorText(err) }, `cannot write the progress of ${describe(obj)}`));
    };
    let output: RunOutput | undefined;
    let failure: unknown;
    const submitted = this.o.runs.submit(
      { namespace: obj.metadata.namespace, pod: obj.metadata.name, volume, identity: `velero/${obj.kind}/${obj.metadata.uid}` },
      async (ctx) => {
        const repo = this.o.repository();
        if (!repo) throw new Error('the repository is not open');
        const events = new EventEmitter<OperationEventMap>();
        events.on('progress', (p) => {
          const q = p as { bytesDone?: number; totalBytes?: number };
          ctx.progress(q);
          latest = { ...(q.totalBytes !== undefined ? { totalBytes: q.totalBytes } : {}), bytesDone: q.bytesDone ?? 0 };
          timer ??= setTimeout(flush, this.progressIntervalMs);
        });
        events.on('warning', (w) => log.warn({ path: w.path, err: w.message }, `${w.path}: ${w.message}`));
        const opCtx = createOperationContext({ signal: ctx.signal, events, logger: log, identity: { hostname: volume, username: this.o.username } });
        try {
          output = await move(repo, ctx, opCtx);
          return output;
        } catch (err) {
          failure = err;
          throw err;
        }
      },
    );
    job.runId = submitted.id;
    if (job.cancelled) this.o.runs.cancel(submitted.id, job.cancelled);
    const end = await submitted.done;
    clearTimeout(timer);
    if (end.state === 'succeeded' && output) return output.snapshotId;
    if (job.cancelled) throw new Error(job.cancelled);
    if (end.state === 'failed' && failure) throw failure;
    throw new Error(end.error ?? `the run ended ${end.state}`);
  }

  /** Phase change of an accepted object; throws if it was canceled meanwhile. */
  private async moveOn(obj: MoverObject, phase: 'Prepared' | 'InProgress', signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const written = await this.setStatus(obj, (s) => {
      if (terminalPhases.has(s.phase || 'New') || s.acceptedByNode !== this.o.nodeName) return false;
      s.phase = phase;
      s.node = this.o.nodeName;
      if (phase === 'InProgress') s.startTimestamp = timestamp(new Date());
      return true;
    });
    if (!written) throw new Error(`${describe(obj)} was ended or taken by someone else meanwhile`);
    this.log.info({ object: describe(obj) }, `${describe(obj)}: ${phase}`);
  }

  /** Changes the status of the object as it is now (a canceled spec is never overwritten). */
  private async setStatus(obj: MoverObject, change: (s: MoverStatus & Record<string, unknown>) => boolean): Promise<boolean> {
    const r = obj.kind === 'DataUpload' ? resources.dataUpload : resources.dataDownload;
    const written = await this.kube.update<MoverObject>(r, obj.metadata.namespace, obj.metadata.name, (fresh) => {
      if (fresh.metadata.uid !== obj.metadata.uid) return false;
      fresh.status ??= {};
      return change(fresh.status as MoverStatus & Record<string, unknown>);
    });
    return written !== undefined;
  }

  // -----------------------------------------------------------------------------------------------
  // Backup deletion

  /**
   * A DeleteBackupRequest: once the Backup with the request's UID is gone (Velero deleted it),
   * forget the snapshots tagged with its name and UID. A request Velero refused (the Backup is
   * still there) forgets nothing; the next event or resync looks again.
   */
  private async onDeleteBackupRequest(dbr: DeleteBackupRequest): Promise<void> {
    const name = dbr.metadata?.labels?.[BACKUP_NAME_LABEL];
    const uid = dbr.metadata?.labels?.[BACKUP_UID_LABEL];
    const repo = this.o.repository();
    if (!name || !uid || !repo || this.forgotten.has(`${name}/${uid}`)) return;
    const backupObj = await this.kube.get<{ metadata: { uid: string } }>(resources.backup, this.o.namespace, dbr.spec.backupName);
    if (backupObj && backupObj.metadata.uid === uid) return;
    const doomed = await listSnapshots(repo, { tags: [`${BACKUP_NAME_LABEL}=${name}`, `${BACKUP_UID_LABEL}=${uid}`] });
    for (const s of doomed) await repo.deleteSnapshot(s.id);
    this.forgotten.add(`${name}/${uid}`);
    this.log.info({ backup: dbr.spec.backupName, uid, snapshots: doomed.map((s) => s.id) }, `Velero backup ${dbr.spec.backupName} was deleted: forgot its ${doomed.length} tender snapshots (a prune frees their data)`);
  }
}

function messageOf(err: unknown): string {
  if (err instanceof TenderError) return err.hint ? `${err.message} (${err.hint})` : err.message;
  return kubeErrorText(err);
}
