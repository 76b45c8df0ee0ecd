/**
 * The checkpoint trigger: for volumes with `tender.io/trigger: checkpoint`, notice a newly
 * completed checkpoint and queue a backup at once, so the recovery point follows training rather
 * than the schedule.
 *
 * Linux inotify (fs.watch) on the volume directory and the directories up to two levels below it
 * (where trainers put `step-N/` or `run/checkpoint-N/`) wakes a scan, debounced; a poll every
 * `pollMs` covers what inotify misses (deeper directories, network filesystems, a watch limit).
 * Node 20's recursive fs.watch on Linux walks and watches every file of the tree, so it is not
 * used. A scan is src/checkpoint's findCheckpoints: a complete checkpoint whose completion time
 * (its newest file's mtime) was not seen before is new. At the first scan of a volume, a
 * checkpoint completed before the volume's last successful backup counts as seen.
 *
 * The latency metric: each new checkpoint waits here until a run of its volume that started
 * after it completed succeeds; then the time from its completion to that run's end is observed.
 */
import { type FSWatcher, watch } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { findCheckpoints } from '../checkpoint/completeness.js';
import type { ProtectedVolume } from './discovery.js';
import type { RunRecord } from './state.js';

export interface CheckpointWatchOptions {
  /** Queue a run of the volume (trigger `checkpoint`). */
  enqueue: (volume: ProtectedVolume) => void;
  /** End of the volume identity's last successful run (ms since the epoch), if any. */
  lastSuccess: (identity: string) => number | undefined;
  logger: Logger;
  /** Scan every volume this often whatever inotify says (default 10 s). */
  pollMs?: number;
  /** Wait this long after the last inotify event before scanning (default 250 ms). */
  debounceMs?: number;
}

/** Directories watched per volume at most (the volume and up to two levels below it). */
const maxWatchesPerVolume = 64;
/** Completed checkpoints waiting for their backup, per volume (the oldest are dropped). */
const maxPendingPerVolume = 100;

export class CheckpointWatcher {
  private readonly volumes = new Map<string, VolumeWatch>();
  private stopped = false;

  constructor(private readonly options: CheckpointWatchOptions) {}

  /** Watches exactly the given volumes that have a path and the checkpoint trigger. */
  sync(volumes: readonly ProtectedVolume[]): void {
    if (this.stopped) return;
    const wanted = new Map(volumes.filter((v) => v.onCheckpoint && v.path !== undefined).map((v) => [v.identity, v]));
    for (const [identity, w] of this.volumes) {
      const v = wanted.get(identity);
      if (!v || v.path !== w.volume.path) {
        w.close();
        this.volumes.delete(identity);
      } else {
        w.volume = v;
      }
    }
    for (const [identity, v] of wanted) {
      if (!this.volumes.has(identity)) this.volumes.set(identity, new VolumeWatch(v, this.options));
    }
  }

  /**
   * A run ended: if it succeeded, the checkpoints of its volume completed before it started are
   * stored; returns their latencies (seconds from completion to the run's end).
   */
  runFinished(run: RunRecord): number[] {
    const w = this.volumes.get(run.identity);
    if (!w || run.state !== 'succeeded' || !run.startedAt || !run.endedAt) return [];
    return w.stored(Date.parse(run.startedAt), Date.parse(run.endedAt));
  }

  stop(): void {
    this.stopped = true;
    for (const w of this.volumes.values()) w.close();
    this.volumes.clear();
  }
}

class VolumeWatch {
  /** Checkpoint directory → completion time of the version already seen. */
  private readonly seen = new Map<string, number>();
  /** Completion times of new checkpoints not yet stored. */
  private pending: number[] = [];
  private readonly watchers = new Map<string, FSWatcher>();
  private readonly poll: NodeJS.Timeout;
  private debounce: NodeJS.Timeout | undefined;
  private scanning: Promise<void> | undefined;
  private again = false;
  private first = true;
  private closed = false;
  private readonly log: Logger;

  constructor(
    public volume: ProtectedVolume,
    private readonly options: CheckpointWatchOptions,
  ) {
    this.log = options.logger.child({ namespace: volume.namespace, pod: volume.pod, volume: volume.volume });
    this.poll = setInterval(() => this.scan(), options.pollMs ?? 10_000);
    this.poll.unref();
    this.scan();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.poll);
    if (this.debounce) clearTimeout(this.debounce);
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }

  stored(startedAt: number, endedAt: number): number[] {
    const done = this.pending.filter((t) => t <= startedAt);
    this.pending = this.pending.filter((t) => t > startedAt);
    return done.map((t) => Math.max(0, endedAt - t) / 1000);
  }

  /** Scans now, or once more after the scan under way. */
  private scan(): void {
    if (this.closed) return;
    if (this.scanning) {
      this.again = true;
      return;
    }
    this.scanning = this.scanOnce()
      .catch((err) => this.log.warn({ err: (err as Error).message, path: this.volume.path }, 'checkpoint scan failed; retrying at the next event or poll'))
      .finally(() => {
        this.scanning = undefined;
        if (this.again) {
          this.again = false;
          this.scan();
        }
      });
  }

  private async scanOnce(): Promise<void> {
    const root = this.volume.path!;
    // Watches first: a file written after they are in place wakes another scan, so a checkpoint
    // completed while this scan runs is not left to the poll.
    await this.watchDirectories(root);
    const found = await findCheckpoints(root);
    const lastSuccess = this.first ? this.options.lastSuccess(this.volume.identity) : undefined;
    let fresh = false;
    for (const c of found) {
      if (!c.verdict.complete) continue;
      const completedAt = await completionTime(c.files);
      if (completedAt === undefined || this.seen.get(c.path) === completedAt) continue;
      this.seen.set(c.path, completedAt);
      if (this.first && lastSuccess !== undefined && completedAt <= lastSuccess) continue;
      this.log.info({ checkpoint: c.path, kind: c.kind, completedAt: new Date(completedAt).toISOString() }, `new complete checkpoint ${c.path}`);
      this.pending.push(completedAt);
      fresh = true;
    }
    // Forget checkpoints that are gone (rotated away), so the map stays the size of the volume's.
    const present = new Set(found.map((c) => c.path));
    for (const p of this.seen.keys()) if (!present.has(p)) this.seen.delete(p);
    if (this.pending.length > maxPendingPerVolume) this.pending.splice(0, this.pending.length - maxPendingPerVolume);
    this.first = false;
    if (fresh && !this.closed) this.options.enqueue(this.volume);
  }

  /**
   * inotify on the volume and the directories up to two levels below it (bounded). Each directory
   * is watched before it is listed: a subdirectory made after the listing wakes a scan through
   * its parent's watch, and that scan watches it.
   */
  private async watchDirectories(root: string): Promise<void> {
    const wanted = new Set<string>();
    let level = [root];
    for (let depth = 0; depth <= 2 && level.length > 0 && !this.closed; depth++) {
      const next: string[] = [];
      for (const dir of level) {
        if (wanted.size >= maxWatchesPerVolume) break;
        wanted.add(dir);
        this.watch(dir);
        if (depth === 2) continue;
        const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
        for (const e of entries) if (e.isDirectory()) next.push(path.join(dir, e.name));
      }
      level = next;
    }
    for (const [dir, w] of this.watchers) {
      if (!wanted.has(dir)) {
        w.close();
        this.watchers.delete(dir);
      }
    }
  }

  private watch(dir: string): void {
    if (this.closed || this.watchers.has(dir)) return;
    try {
      const w = watch(dir, { persistent: false }, () => this.changed());
      // A watched directory deleted, or the inotify limit reached: polling covers it.
      w.on('error', () => {
        w.close();
        this.watchers.delete(dir);
      });
      this.watchers.set(dir, w);
    } catch {
      // Same: the poll covers a directory that cannot be watched.
    }
  }

  private changed(): void {
    if (this.closed) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.scan(), this.options.debounceMs ?? 250);
    this.debounce.unref();
  }
}

/** The newest mtime of the files (ms): when the last of them was written. undefined if one is gone. */
async function completionTime(files: readonly string[]): Promise<number | undefined> {
  let newest = 0;
  for (const f of files) {
    const s = await lstat(f).catch(() => undefined);
    if (!s) return undefined;
    newest = Math.max(newest, s.mtimeMs);
  }
  return newest;
}
