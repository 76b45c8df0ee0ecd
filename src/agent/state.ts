/**
 * The agent's state directory: run records and, per volume identity, what the scheduler needs
 * (last success, last attempt). One JSON file, `agent-state.json`, always replaced atomically
 * (write a temporary file, fsync it, rename it over the old one, fsync the directory), so a
 * SIGKILL or a node crash leaves either the old or the new state, never half of one.
 *
 * Bounded: at most `maxFinishedRuns` finished runs and `maxVolumes` volume entries are kept (the
 * oldest go first); queued and running runs are bounded by the run queue itself. So the file,
 * and the memory that mirrors it, do not grow with the agent's age.
 */
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { TenderError, systemErrorCode } from '../errors/errors.js';
import type { SnapshotSummary } from '../repo/snapshot/snapshot.js';

export type RunState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'interrupted';
/**
 * `datamover`: a Velero DataUpload/DataDownload (src/velero/); such a run is never queued again.
 * `checkpoint`: a new complete checkpoint. `velero`: an emptyDir volume a Velero Backup covers.
 */
export type RunTrigger = 'schedule' | 'api' | 'startup' | 'datamover' | 'checkpoint' | 'velero';

export const finishedStates: ReadonlySet<RunState> = new Set(['succeeded', 'failed', 'cancelled', 'interrupted']);

export interface RunProgress {
  bytesDone: number;
  filesDone: number;
  totalBytes?: number;
  totalFiles?: number;
}

export interface RunRecord {
  id: string;
  namespace: string;
  pod: string;
  volume: string;
  /** The snapshot host of the volume (stable across pod restarts). */
  identity: string;
  state: RunState;
  trigger: RunTrigger;
  /** Tags for the snapshot besides the volume's own (a Velero backup's name and UID). */
  tags?: string[];
  /** ISO 8601 times. */
  queuedAt: string;
  startedAt?: string;
  endedAt?: string;
  progress: RunProgress;
  snapshotId?: string;
  summary?: SnapshotSummary;
  /** Why it failed, was cancelled or interrupted; for a success, files that could not be read. */
  error?: string;
  /** The error's code when it failed: a TenderError code, `POD_DELETED` or `VOLUME_UNAVAILABLE`. */
  errorCode?: string;
  /** Files or directories left out of the snapshot because they could not be read. */
  warnings?: number;
}

/** What the scheduler and the metrics remember about one volume identity. */
export interface VolumeState {
  identity: string;
  namespace: string;
  pod: string;
  volume: string;
  /** ISO times. */
  lastQueuedAt?: string;
  lastEndedAt?: string;
  lastSuccessAt?: string;
  lastOutcome?: RunState;
  lastSnapshotId?: string;
  consecutiveFailures: number;
}

export interface AgentStateData {
  version: 1;
  runs: RunRecord[];
  volumes: VolumeState[];
}

export interface StateStoreOptions {
  /** Finished runs kept (the newest). */
  maxFinishedRuns?: number;
  /** Volume identities remembered (the most recently used). */
  maxVolumes?: number;
  logger?: Logger;
  /** Called when a write fails (the agent counts it); the store keeps trying on the next change. */
  onWriteError?: (err: unknown) => void;
}

export const stateFileName = 'agent-state.json';

/** Keeps the newest `max` finished runs (by end time) and every unfinished one, in queue order. */
export function trimRuns(runs: RunRecord[], max: number): RunRecord[] {
  const finished = runs.filter((r) => finishedStates.has(r.state));
  if (finished.length <= max) return runs;
  const keep = new Set(
    finished
      .sort((a, b) => (b.endedAt ?? b.queuedAt).localeCompare(a.endedAt ?? a.queuedAt))
      .slice(0, max)
      .map((r) => r.id),
  );
  return runs.filter((r) => !finishedStates.has(r.state) || keep.has(r.id));
}

/** Keeps the `max` most recently used volume entries. */
export function trimVolumes(volumes: VolumeState[], max: number): VolumeState[] {
  if (volumes.length <= max) return volumes;
  const last = (v: VolumeState) => [v.lastEndedAt ?? '', v.lastQueuedAt ?? ''].sort().at(-1)!;
  return [...volumes].sort((a, b) => last(b).localeCompare(last(a))).slice(0, max);
}

/**
 * The state file. `load` once at startup; then `save(snapshot)` whenever something changed:
 * writes are serialised and coalesced (while one is in flight, only the newest pending state is
 * written after it), so a burst of progress updates costs one or two writes.
 */
export class StateStore {
  readonly file: string;
  readonly maxFinishedRuns: number;
  readonly maxVolumes: number;
  private pending: (() => AgentStateData) | undefined;
  private writing: Promise<void> | undefined;
  private lastError: string | undefined;

  constructor(
    readonly dir: string,
    private readonly options: StateStoreOptions = {},
  ) {
    this.file = path.join(dir, stateFileName);
    this.maxFinishedRuns = options.maxFinishedRuns ?? 100;
    this.maxVolumes = options.maxVolumes ?? 4096;
  }

  /**
   * Creates the directory if needed and reads the state (empty when there is none). A damaged
   * file is moved aside (`agent-state.json.damaged`) and the agent starts empty: the repository,
   * not this file, holds the backups. A directory that cannot be written is an error naming it.
   */
  async load(): Promise<AgentStateData> {
    try {
      await mkdir(this.dir, { recursive: true });
      // Prove it is writable now, not at the first run's end.
      const probe = path.join(this.dir, `.probe-${process.pid}`);
      const fh = await open(probe, 'w');
      await fh.close();
      await rm(probe, { force: true });
    } catch (err) {
      throw new TenderError('TENDER_USAGE', `the state directory ${this.dir} cannot be written: ${(err as Error).message}`, {
        hint: 'pass --state-dir with a writable directory (in a DaemonSet: a hostPath volume such as /var/lib/tender, so that run records survive agent restarts)',
      });
    }
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if (systemErrorCode(err) === 'ENOENT') return { version: 1, runs: [], volumes: [] };
      throw new TenderError('TENDER_IO', `cannot read the agent state ${this.file}: ${(err as Error).message}`);
    }
    try {
      const data = parseState(text);
      return {
        version: 1,
        runs: trimRuns(data.runs, this.maxFinishedRuns),
        volumes: trimVolumes(data.volumes, this.maxVolumes),
      };
    } catch (err) {
      const aside = `${this.file}.damaged`;
      this.options.logger?.error({ file: this.file, movedTo: aside, err: (err as Error).message }, 'the agent state file is damaged; starting with an empty run history');
      await rename(this.file, aside).catch(() => undefined);
      return { version: 1, runs: [], volumes: [] };
    }
  }

  /** Schedules a write of `snapshot()` (taken when the write starts, so it is the newest state). */
  save(snapshot: () => AgentStateData): Promise<void> {
    this.pending = snapshot;
    if (!this.writing) {
      this.writing = this.drain().finally(() => {
        this.writing = undefined;
      });
    }
    return this.writing;
  }

  /** Resolves once everything saved so far is on disk (or failed to get there). */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
  }

  private async drain(): Promise<void> {
    while (this.pending) {
      const take = this.pending;
      this.pending = undefined;
      const data = take();
      const bounded: AgentStateData = {
        version: 1,
        runs: trimRuns(data.runs, this.maxFinishedRuns),
        volumes: trimVolumes(data.volumes, this.maxVolumes),
      };
      try {
        await writeFileAtomic(this.file, JSON.stringify(bounded) + '\n');
        if (this.lastError) this.options.logger?.info({ file: this.file }, 'the agent state is written again');
        this.lastError = undefined;
      } catch (err) {
        this.options.onWriteError?.(err);
        const message = (err as Error).message;
        // Once per distinct failure, not once per progress update.
        if (message !== this.lastError) this.options.logger?.error({ file: this.file, err: message }, 'cannot write the agent state');
        this.lastError = message;
      }
    }
  }
}

/** tmp + fsync + rename + fsync(dir). */
export async function writeFileAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(text, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  const dir = await open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } catch {
    // Some file systems do not fsync directories; the rename is still atomic.
  } finally {
    await dir.close();
  }
}

function parseState(text: string): AgentStateData {
  const data = JSON.parse(text) as Partial<AgentStateData>;
  if (data.version !== 1 || !Array.isArray(data.runs) || !Array.isArray(data.volumes)) throw new Error('not an agent state (version 1)');
  const runs = data.runs.filter(
    (r): r is RunRecord =>
      typeof r === 'object' &&
      r !== null &&
      typeof r.id === 'string' &&
      typeof r.namespace === 'string' &&
      typeof r.pod === 'string' &&
      typeof r.volume === 'string' &&
      typeof r.identity === 'string' &&
      typeof r.state === 'string' &&
      typeof r.queuedAt === 'string',
  );
  for (const r of runs) r.progress ??= { bytesDone: 0, filesDone: 0 };
  const volumes = data.volumes.filter((v): v is VolumeState => typeof v === 'object' && v !== null && typeof v.identity === 'string');
  for (const v of volumes) v.consecutiveFailures ??= 0;
  return { version: 1, runs, volumes };
}
