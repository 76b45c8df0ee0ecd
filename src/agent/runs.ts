/**
 * Backup runs: a queue with fairness across pods, one run at a time per volume, a bounded
 * number at once per node, cancel, and run records persisted in the state directory.
 *
 * The runner knows nothing about backups: it calls an injected `execute(run, ctx)` (the agent
 * passes one that calls the engine's `backup(repo, options, ctx)`; tests pass a fake).
 *
 * A volume is identified by its identity (the snapshot host), not by its pod: a pod recreated
 * under a new name continues the same volume, and its runs must not overlap the old pod's.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { SnapshotSummary } from '../repo/snapshot/snapshot.js';
import {
  type AgentStateData,
  type RunProgress,
  type RunRecord,
  type RunState,
  type RunTrigger,
  StateStore,
  type VolumeState,
  finishedStates,
  trimRuns,
  trimVolumes,
} from './state.js';

export type { RunProgress, RunRecord, RunState, RunTrigger, VolumeState } from './state.js';

/** What a run needs to know about its volume. */
export interface RunVolume {
  namespace: string;
  pod: string;
  volume: string;
  identity: string;
}

/** Why a run's signal was aborted. */
export type AbortKind = 'cancel' | 'shutdown' | 'vanished';

export class RunAbort extends Error {
  constructor(
    readonly kind: AbortKind,
    message: string,
  ) {
    super(message);
    this.name = 'RunAbort';
  }
}

export interface ExecuteContext {
  readonly signal: AbortSignal;
  /** Progress of the backup (the engine's 'progress' events). */
  progress(p: Partial<RunProgress>): void;
}

export interface ExecuteResult {
  snapshotId: string;
  summary?: SnapshotSummary;
  /** Files or directories that could not be read (left out of the snapshot). */
  warnings?: number;
}

export type ExecuteFn = (run: Readonly<RunRecord>, ctx: ExecuteContext) => Promise<ExecuteResult>;

export interface RunnerOptions {
  execute: ExecuteFn;
  /** Persist run records here; without one they live in memory only (tests). */
  store?: StateStore;
  maxConcurrent?: number;
  /** Finished runs kept (in memory and in the state file). */
  maxFinishedRuns?: number;
  /** Queued runs accepted at most; more is refused (the API answers 429). */
  maxQueued?: number;
  logger: Logger;
  now?: () => number;
  /** Persist progress at most this often (ms). */
  progressPersistMs?: number;
}

export type EnqueueResult =
  | { outcome: 'queued'; run: RunRecord }
  /** A run of the same volume was already waiting: that one is returned. */
  | { outcome: 'existing'; run: RunRecord }
  | { outcome: 'full'; queued: number };

export type CancelResult = { outcome: 'cancelled' | 'cancelling'; run: RunRecord } | { outcome: 'finished'; run: RunRecord } | { outcome: 'unknown' };

/**
 * Queued runs, round-robin by pod: the next run comes from the pod that was served longest ago
 * (a pod with ten volumes does not starve a pod with one). Within a pod, oldest first. A run
 * whose volume is busy is skipped, not dropped.
 */
export class RunQueue {
  /** Pod (`namespace/pod`) → its queued runs; Map order is the service order. */
  private readonly pods = new Map<string, RunRecord[]>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  push(run: RunRecord): void {
    const key = podKey(run);
    const list = this.pods.get(key);
    if (list) list.push(run);
    else this.pods.set(key, [run]);
    this.count++;
  }

  /** The next run whose volume is not busy; its pod goes to the back of the line. */
  take(busy: (run: RunRecord) => boolean): RunRecord | undefined {
    for (const [key, list] of this.pods) {
      const i = list.findIndex((r) => !busy(r));
      if (i < 0) continue;
      const [run] = list.splice(i, 1);
      this.count--;
      this.pods.delete(key);
      if (list.length > 0) this.pods.set(key, list);
      return run;
    }
    return undefined;
  }

  remove(id: string): RunRecord | undefined {
    for (const [key, list] of this.pods) {
      const i = list.findIndex((r) => r.id === id);
      if (i < 0) continue;
      const [run] = list.splice(i, 1);
      this.count--;
      if (list.length === 0) this.pods.delete(key);
      return run;
    }
    return undefined;
  }

  find(predicate: (run: RunRecord) => boolean): RunRecord | undefined {
    for (const list of this.pods.values()) {
      const run = list.find(predicate);
      if (run) return run;
    }
    return undefined;
  }

  /** Every queued run, in the order they would be served if no volume were busy. */
  list(): RunRecord[] {
    const lists = [...this.pods.values()].map((l) => [...l]);
    const out: RunRecord[] = [];
    for (let round = 0; out.length < this.count; round++) for (const l of lists) if (l[round]) out.push(l[round]!);
    return out;
  }
}

function podKey(v: { namespace: string; pod: string }): string {
  return `${v.namespace}/${v.pod}`;
}

export function describeVolume(v: { namespace: string; pod: string; volume: string }): string {
  return `volume ${v.volume} of pod ${v.namespace}/${v.pod}`;
}

export function newRunId(now: number): string {
  return `${now.toString(36)}-${randomBytes(4).toString('hex')}`;
}

interface Active {
  run: RunRecord;
  controller: AbortController;
  done: Promise<void>;
}

/**
 * Events: 'queued', 'started', 'progress', 'finished' (each with the run record), 'changed'.
 */
export class Runner extends EventEmitter {
  private readonly queue = new RunQueue();
  private readonly active = new Map<string, Active>();
  /** Finished runs, oldest first, at most maxFinishedRuns. */
  private finished: RunRecord[] = [];
  private readonly volumeStates = new Map<string, VolumeState>();
  private ready = false;
  private stopping = false;
  private maxConcurrent: number;
  private readonly maxFinished: number;
  private readonly maxQueued: number;
  private readonly now: () => number;
  private readonly logger: Logger;
  private readonly lastProgressSave = new Map<string, number>();

  constructor(private readonly options: RunnerOptions) {
    super();
    this.maxConcurrent = Math.max(1, options.maxConcurrent ?? 1);
    this.maxFinished = options.maxFinishedRuns ?? options.store?.maxFinishedRuns ?? 100;
    this.maxQueued = options.maxQueued ?? 1000;
    this.now = options.now ?? Date.now;
    this.logger = options.logger;
  }

  /**
   * Restores the state: finished runs are kept for reporting; a run found `running` was cut
   * short by a crash or SIGKILL: it is marked `interrupted` and its volume is queued again
   * (trigger `startup`); queued runs stay queued. Nothing starts until `setReady(true)`. Data-mover
   * runs are not queued again: their work was a closure of the old process (the data mover fails
   * their DataUpload/DataDownload).
   */
  load(data: AgentStateData): RunRecord[] {
    const interrupted: RunRecord[] = [];
    for (const v of data.volumes) this.volumeStates.set(v.identity, v);
    const ended = new Date(this.now()).toISOString();
    for (const run of data.runs) {
      const again = run.trigger !== 'datamover';
      if (run.state === 'running') {
        run.state = 'interrupted';
        run.endedAt = ended;
        run.error = `the agent stopped during this run (killed, crashed or its node restarted)${again ? '; the volume was queued again' : ''}`;
        if (again) interrupted.push(run);
        this.finished.push(run);
        this.noteFinished(run);
      } else if (run.state === 'queued' && !again) {
        run.state = 'interrupted';
        run.endedAt = ended;
        run.error = 'the agent stopped before this run started';
        this.finished.push(run);
      } else if (run.state === 'queued') {
        if (!this.queue.find((r) => r.identity === run.identity)) this.queue.push(run);
      } else if (finishedStates.has(run.state)) {
        this.finished.push(run);
      }
    }
    this.finished.sort((a, b) => (a.endedAt ?? a.queuedAt).localeCompare(b.endedAt ?? b.queuedAt));
    this.finished = trimRuns(this.finished, this.maxFinished);
    for (const run of interrupted) {
      this.logger.warn({ run: run.id, namespace: run.namespace, pod: run.pod, volume: run.volume }, `run ${run.id} of ${describeVolume(run)} was interrupted by an agent restart; queued again`);
      this.enqueue(run, 'startup', run.tags ?? []);
    }
    this.persist();
    return interrupted;
  }

  setMaxConcurrent(n: number): void {
    this.maxConcurrent = Math.max(1, n);
    this.pump();
  }

  /** Runs start only while ready (the repository is open). */
  setReady(ready: boolean): void {
    this.ready = ready;
    this.pump();
  }

  get queueDepth(): number {
    return this.queue.size;
  }

  get runningCount(): number {
    return this.active.size;
  }

  /** Queued or running for this volume identity. */
  isActive(identity: string): boolean {
    return this.queue.find((r) => r.identity === identity) !== undefined || [...this.active.values()].some((a) => a.run.identity === identity);
  }

  isRunning(identity: string): boolean {
    return [...this.active.values()].some((a) => a.run.identity === identity);
  }

  volumeState(identity: string): VolumeState | undefined {
    return this.volumeStates.get(identity);
  }

  /**
   * Queues a run of the volume. When one of the same volume is already waiting, that one is
   * returned instead (a second request adds nothing: it would back up the same data). A running
   * one does not count: an API request during a run gets a fresh run after it.
   */
  enqueue(volume: RunVolume, trigger: RunTrigger, tags: string[] = []): EnqueueResult {
    if (this.stopping) return { outcome: 'full', queued: this.queue.size };
    const waiting = this.queue.find((r) => r.identity === volume.identity);
    if (waiting) {
      // The waiting run backs up the same data after the same moment: its snapshot carries these tags too.
      if (tags.length > 0) {
        waiting.tags = [...new Set([...(waiting.tags ?? []), ...tags])];
        this.changed();
      }
      return { outcome: 'existing', run: waiting };
    }
    if (this.queue.size >= this.maxQueued) return { outcome: 'full', queued: this.queue.size };
    const run = this.queuedRecord(volume, trigger, tags);
    this.queue.push(run);
    const vs = this.volumeStateFor(run);
    vs.lastQueuedAt = run.queuedAt;
    this.logger.info({ run: run.id, namespace: run.namespace, pod: run.pod, volume: run.volume, trigger }, `queued run ${run.id} of ${describeVolume(run)} (${trigger})`);
    this.emit('queued', run);
    this.changed();
    this.pump();
    return { outcome: 'queued', run };
  }

  get(id: string): RunRecord | undefined {
    return this.active.get(id)?.run ?? this.queue.find((r) => r.id === id) ?? this.finished.find((r) => r.id === id);
  }

  /** Running, then queued (in service order), then finished (newest first). */
  list(): RunRecord[] {
    return [...[...this.active.values()].map((a) => a.run), ...this.queue.list(), ...[...this.finished].reverse()];
  }

  /**
   * Cancels a queued run (at once) or a running one (its signal is aborted; it ends
   * `cancelled` once the backup has stopped and indexed what it stored).
   */
  cancel(id: string, message = 'cancelled on request'): CancelResult {
    const active = this.active.get(id);
    if (active) {
      if (!active.controller.signal.aborted) {
        this.logger.info({ run: id, namespace: active.run.namespace, pod: active.run.pod, volume: active.run.volume }, `cancelling run ${id} of ${describeVolume(active.run)}`);
        active.controller.abort(new RunAbort('cancel', message));
      }
      return { outcome: 'cancelling', run: active.run };
    }
    const queued = this.queue.remove(id);
    if (queued) {
      this.finish(queued, 'cancelled', { error: message });
      return { outcome: 'cancelled', run: queued };
    }
    const done = this.finished.find((r) => r.id === id);
    return done ? { outcome: 'finished', run: done } : { outcome: 'unknown' };
  }

  /** Aborts a running run whose pod went away (it ends `failed`, code POD_DELETED). */
  abortVanished(id: string, message: string): void {
    const a = this.active.get(id);
    if (a && !a.controller.signal.aborted) a.controller.abort(new RunAbort('vanished', message));
  }

  /** The runs running now. */
  runningRuns(): RunRecord[] {
    return [...this.active.values()].map((a) => a.run);
  }

  /**
   * Stops: no new runs; running ones are aborted and wait at most `timeoutMs` to stop. They are
   * recorded `interrupted` and queued again (trigger `startup`), so the next agent resumes them.
   */
  async stop(timeoutMs = 2500): Promise<void> {
    this.stopping = true;
    this.ready = false;
    const active = [...this.active.values()];
    for (const a of active) a.controller.abort(new RunAbort('shutdown', 'the agent was shut down during this run'));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled(active.map((a) => a.done)), new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
    // Those that did not stop in time: recorded as interrupted all the same (the process ends).
    for (const a of this.active.values()) this.finishInterrupted(a.run, 'the agent was shut down during this run');
    this.active.clear();
    this.persist();
    await this.options.store?.flush();
  }

  /** Resolves when nothing is queued or running (tests). */
  async idle(): Promise<void> {
    while (this.active.size > 0 || (this.ready && this.queue.size > 0)) {
      await new Promise((resolve) => this.once('finished', resolve));
    }
  }

  private finishInterrupted(run: RunRecord, message: string): void {
    this.finish(run, 'interrupted', { error: message });
    // Queued again, for the next agent.
    if (run.trigger !== 'datamover' && !this.queue.find((r) => r.identity === run.identity)) this.queue.push(this.queuedRecord(run, 'startup', run.tags ?? []));
  }

  /** A new run of the volume, waiting in the queue. */
  private queuedRecord(volume: RunVolume, trigger: RunTrigger, tags: string[]): RunRecord {
    const now = this.now();
    return {
      id: newRunId(now),
      namespace: volume.namespace,
      pod: volume.pod,
      volume: volume.volume,
      identity: volume.identity,
      state: 'queued',
      trigger,
      ...(tags.length > 0 ? { tags } : {}),
      queuedAt: new Date(now).toISOString(),
      progress: { bytesDone: 0, filesDone: 0 },
    };
  }

  private pump(): void {
    while (this.ready && !this.stopping && this.active.size < this.maxConcurrent) {
      const run = this.queue.take((r) => this.isRunning(r.identity));
      if (!run) return;
      this.start(run);
    }
  }

  private start(run: RunRecord): void {
    const controller = new AbortController();
    run.state = 'running';
    run.startedAt = new Date(this.now()).toISOString();
    const log = { run: run.id, namespace: run.namespace, pod: run.pod, volume: run.volume };
    this.logger.info(log, `started run ${run.id} of ${describeVolume(run)}`);
    const ctx: ExecuteContext = {
      signal: controller.signal,
      progress: (p) => {
        if (run.state !== 'running') return;
        const next: RunProgress = { ...run.progress };
        if (p.bytesDone !== undefined) next.bytesDone = p.bytesDone;
        if (p.filesDone !== undefined) next.filesDone = p.filesDone;
        if (p.totalBytes !== undefined) next.totalBytes = p.totalBytes;
        if (p.totalFiles !== undefined) next.totalFiles = p.totalFiles;
        run.progress = next;
        this.emit('progress', run);
        const last = this.lastProgressSave.get(run.id) ?? 0;
        if (this.now() - last >= (this.options.progressPersistMs ?? 5000)) {
          this.lastProgressSave.set(run.id, this.now());
          this.persist();
        }
      },
    };
    const active: Active = { run, controller, done: Promise.resolve() };
    this.active.set(run.id, active);
    this.emit('started', run);
    this.changed();
    active.done = (async () => {
      try {
        // Not synchronously: a throwing execute must still be reported as a failed run.
        const result = await Promise.resolve().then(() => this.options.execute(run, ctx));
        if (run.state !== 'running') return; // recorded by stop() already
        const warnings = result.warnings ?? 0;
        this.finish(run, 'succeeded', {
          snapshotId: result.snapshotId,
          ...(result.summary ? { summary: result.summary } : {}),
          ...(warnings > 0 ? { warnings, error: `${warnings} files or directories could not be read and are not in the snapshot` } : {}),
        });
        this.logger.info({ ...log, snapshot: result.snapshotId, warnings }, `run ${run.id} of ${describeVolume(run)} saved snapshot ${result.snapshotId.slice(0, 8)}`);
      } catch (err) {
        if (run.state !== 'running') return;
        const reason = controller.signal.aborted ? controller.signal.reason : undefined;
        if (reason instanceof RunAbort) {
          if (reason.kind === 'shutdown') {
            this.finishInterrupted(run, reason.message);
          } else {
            this.finish(run, reason.kind === 'cancel' ? 'cancelled' : 'failed', {
              error: reason.message,
              ...(reason.kind === 'vanished' ? { errorCode: 'POD_DELETED' } : {}),
            });
          }
          this.logger.warn({ ...log, reason: reason.message }, `run ${run.id} of ${describeVolume(run)} stopped: ${reason.message}`);
        } else {
          const message = describeError(err);
          const code = (err as { code?: unknown })?.code;
          this.finish(run, 'failed', { error: message, ...(typeof code === 'string' ? { errorCode: code } : {}) });
          this.logger.error({ ...log, err: message, code: (err as { code?: string })?.code }, `run ${run.id} of ${describeVolume(run)} failed: ${message}`);
        }
      } finally {
        this.active.delete(run.id);
        this.lastProgressSave.delete(run.id);
        this.emit('finished', run);
        this.changed();
        this.pump();
      }
    })();
  }

  private finish(run: RunRecord, state: RunState, fields: Partial<RunRecord>): void {
    Object.assign(run, fields);
    run.state = state;
    run.endedAt = new Date(this.now()).toISOString();
    this.finished.push(run);
    if (this.finished.length > this.maxFinished) this.finished.splice(0, this.finished.length - this.maxFinished);
    this.noteFinished(run);
    this.persist();
  }

  private noteFinished(run: RunRecord): void {
    const vs = this.volumeStateFor(run);
    vs.namespace = run.namespace;
    vs.pod = run.pod;
    vs.volume = run.volume;
    vs.lastEndedAt = run.endedAt!;
    vs.lastOutcome = run.state;
    if (run.state === 'succeeded') {
      vs.lastSuccessAt = run.endedAt!;
      if (run.snapshotId) vs.lastSnapshotId = run.snapshotId;
      vs.consecutiveFailures = 0;
    } else if (run.state === 'failed' || run.state === 'interrupted') {
      vs.consecutiveFailures++;
    }
  }

  private volumeStateFor(run: RunVolume): VolumeState {
    let vs = this.volumeStates.get(run.identity);
    if (!vs) {
      vs = { identity: run.identity, namespace: run.namespace, pod: run.pod, volume: run.volume, consecutiveFailures: 0 };
      this.volumeStates.set(run.identity, vs);
      if (this.volumeStates.size > (this.options.store?.maxVolumes ?? 4096)) {
        const keep = new Set(trimVolumes([...this.volumeStates.values()], this.options.store?.maxVolumes ?? 4096).map((v) => v.identity));
        keep.add(run.identity);
        for (const id of this.volumeStates.keys()) if (!keep.has(id)) this.volumeStates.delete(id);
      }
    }
    return vs;
  }

  private changed(): void {
    this.emit('changed');
    this.persist();
  }

  /** The state as it is now (runs in queue order, then finished). */
  snapshot(): AgentStateData {
    return {
      version: 1,
      runs: [...[...this.active.values()].map((a) => a.run), ...this.queue.list(), ...this.finished].map((r) => ({ ...r, progress: { ...r.progress } })),
      volumes: [...this.volumeStates.values()].map((v) => ({ ...v })),
    };
  }

  private persist(): void {
    void this.options.store?.save(() => this.snapshot());
  }
}

/** An error's message and, for tender's own errors, its hint. */
export function describeError(err: unknown): string {
  if (err instanceof Error) {
    const hint = (err as { hint?: string }).hint;
    return hint ? `${err.message} (${hint})` : err.message;
  }
  return String(err);
}
