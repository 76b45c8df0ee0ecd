import { open } from 'node:fs/promises';
import path from 'node:path';
import { type CheckpointDir, fileCompleteness, findCheckpoints, mayHaveFileVerdict } from '../checkpoint/completeness.js';
import type { CheckpointRecord } from '../repo/snapshot/snapshot.js';
import type { TreeNode } from '../repo/snapshot/tree.js';
import { throwIfCancelled } from '../util/operation.js';
import { abortableSleep } from '../util/token-bucket.js';
import { type FileInspector, type FileStamp, type FileVerdict, stampOf } from './file-saver.js';
import { lstatPath } from './walk.js';

/**
 * What a backup does with a checkpoint directory that is incomplete when the backup reaches it:
 * `store` it labelled incomplete (the default: nothing the user has is left out), `skip` its
 * files, or `wait` up to `ms` for it to complete (re-checked every `pollMs`), then store it
 * labelled as it is.
 */
export type IncompletePolicy = { mode: 'store' } | { mode: 'skip' } | { mode: 'wait'; ms: number };

const pollMs = 500;

/** The file-level completeness check (safetensors, torch zip, npy), as the file saver calls it. */
export const inspectFile: FileInspector = {
  wants: mayHaveFileVerdict,
  async check(fd, filePath, size, headers) {
    const verdict = await fileCompleteness(fd, filePath, size, headers);
    if (!verdict) return undefined;
    return verdict.complete ? { complete: true } : { complete: false, reason: verdict.reason };
  },
};

/**
 * The format verdict now of a file whose stamps say it is unchanged since it was stored labelled
 * incomplete: header reads only, bracketed by the stamp. undefined when it changed meanwhile (it
 * is read again then). A file found incomplete only because a writer had it open is complete
 * once closed, with the same stamps: its stored copy then loses the label without a re-read.
 */
export async function recheckFile(filePath: string, stamp: FileStamp): Promise<{ verdict: FileVerdict | undefined } | undefined> {
  const handle = await open(filePath, 'r');
  try {
    const verdict = await fileCompleteness(handle.fd, filePath, stamp.size);
    const after = stampOf(await handle.stat({ bigint: true }));
    if (after.size !== stamp.size || after.mtimeNs !== stamp.mtimeNs || after.ctimeNs !== stamp.ctimeNs || after.ino !== stamp.ino) return undefined;
    return { verdict: verdict && (verdict.complete ? { complete: true } : { complete: false, reason: verdict.reason }) };
  } finally {
    await handle.close();
  }
}

/**
 * Checkpoint directories of one backup, root by root. `before` finds them (waiting if the policy
 * says so) and remembers their files; the walk reports each of those files as stored (`record`);
 * `after` finds them again and gives each its verdict for the stored copy. A checkpoint is
 * labelled complete only if it was complete before and after the read with the same files, every
 * file was stored from a clean read, and every file's stamp now still equals the stored one: then
 * what the second check examined is what was stored. Anything else (changed, deleted, appeared,
 * a file unreadable or torn) is labelled incomplete with the reason: a checkpoint deleted or
 * rewritten mid-read is never labelled complete. Memory: the checkpoints' file lists.
 */
export class CheckpointTracker {
  readonly records: CheckpointRecord[] = [];
  private found = new Map<string, CheckpointDir>();
  /** Files of the checkpoints found before reading. */
  private tracked = new Set<string>();
  /** Of those, the ones stored: their node. */
  private stored = new Map<string, TreeNode>();
  private skipped = new Set<string>();

  constructor(
    private readonly policy: IncompletePolicy,
    private readonly signal: AbortSignal,
    private readonly now: () => number,
  ) {}

  async before(root: string): Promise<void> {
    let found = await this.find(root);
    if (this.policy.mode === 'wait') {
      const deadline = this.now() + this.policy.ms;
      while (found.some((c) => !c.verdict.complete) && this.now() < deadline) {
        await abortableSleep(Math.min(pollMs, deadline - this.now()), this.signal).catch(() => throwIfCancelled(this.signal));
        found = await this.find(root);
      }
    }
    this.found = new Map(found.map((c) => [c.path, c]));
    this.tracked = new Set(found.flatMap((c) => c.files));
    this.stored = new Map();
    // Only the files inside: a Megatron checkpoint also lists the tracker file beside it, which
    // the other checkpoints there need.
    const inside = (c: CheckpointDir) => c.files.filter((f) => f.startsWith(`${c.path}${path.sep}`));
    this.skipped = new Set(this.policy.mode === 'skip' ? found.filter((c) => !c.verdict.complete).flatMap(inside) : []);
  }

  /** A file of a checkpoint that `--incomplete skip` leaves out. */
  skips(filePath: string): boolean {
    return this.skipped.has(filePath);
  }

  record(filePath: string, node: TreeNode): void {
    if (this.tracked.has(filePath)) this.stored.set(filePath, node);
  }

  async after(root: string, rootName: string): Promise<void> {
    const treePath = (dir: string) => `/${rootName}${path.relative(root, dir).split(path.sep).filter(Boolean).map((c) => `/${c}`).join('')}`;
    const again = await this.find(root);
    const seen = new Set<string>();
    for (const c of again) {
      seen.add(c.path);
      const first = this.found.get(c.path);
      if (first && this.policy.mode === 'skip' && !first.verdict.complete) continue;
      const reason = this.incompleteBecause(first, c);
      this.records.push({ path: treePath(c.path), kind: c.kind, complete: reason === undefined, ...(reason !== undefined ? { reason } : {}) });
    }
    for (const c of this.found.values()) {
      if (this.policy.mode === 'skip' && !c.verdict.complete) {
        this.records.push({ path: treePath(c.path), kind: c.kind, complete: false, reason: reasonOf(c), skipped: true });
      } else if (!seen.has(c.path) && c.files.some((f) => this.stored.has(f))) {
        this.records.push({ path: treePath(c.path), kind: c.kind, complete: false, reason: 'it was deleted or stopped being a checkpoint during the backup' });
      }
    }
    this.records.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  /** A search that met a directory being deleted (ENOENT mid-walk) is tried again, a few times. */
  private async find(root: string): Promise<CheckpointDir[]> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await findCheckpoints(root, { signal: this.signal });
      } catch (err) {
        throwIfCancelled(this.signal);
        if (attempt >= 3) throw err;
      }
    }
  }

  private incompleteBecause(first: CheckpointDir | undefined, now: CheckpointDir): string | undefined {
    if (!now.verdict.complete) return reasonOf(now);
    if (!first) return 'it appeared during the backup';
    if (!first.verdict.complete) return `${reasonOf(first)} (when the backup reached it)`;
    const files = new Set(first.files);
    if (files.size !== now.files.length || now.files.some((f) => !files.has(f))) return 'its files changed during the backup';
    for (const file of now.files) {
      const name = path.basename(file);
      const node = this.stored.get(file);
      if (!node) return `${name} could not be stored`;
      if (node.consistency) return `${name} is ${node.consistency}: ${node.consistencyReason ?? ''}`;
      const stat = lstatPath(file);
      if (stat instanceof Error || stat.size !== node.size || stat.mtimeNs !== node.mtime || stat.ctimeNs !== node.ctime || stat.ino !== node.inode) {
        return `${name} changed during the backup`;
      }
    }
    return undefined;
  }
}

function reasonOf(c: CheckpointDir): string {
  return c.verdict.complete ? 'complete' : c.verdict.reason;
}
