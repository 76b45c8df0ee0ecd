import { TenderError } from '../errors/errors.js';
import { BlobType } from '../repo/blob.js';
import { hexToId, idToHex } from '../repo/ids.js';
import { IdTable } from '../repo/index/id-table.js';
import type { IndexedPack } from '../repo/index/index-file.js';
import type { DeletionPlan } from '../repo/plans.js';
import type { IndexView, Repository } from '../repo/repository.js';
import { maxBeatAgeMs } from '../repo/sessions.js';
import { walkTree } from '../repo/snapshot/tree-walk.js';
import { type OperationContext, throwIfCancelled } from '../util/operation.js';

/**
 * Garbage collection without a lock (docs/design.md, "Garbage collection"):
 *   mark   — find packs no snapshot needs (and repack partly used ones), store a deletion plan;
 *   sweep  — once every backup that started before the plan has ended (or is dead), re-check the
 *            snapshots written since, write an index without the doomed packs, then delete them.
 * Backups that start after a plan exists never use its packs (Repository.refreshIndex excludes them).
 * Prune reads through an index view of its own (doomed packs included), never the shared one.
 */
export interface PruneOptions {
  dryRun?: boolean;
  /** A session whose newest heartbeat is older than this is dead. Must exceed twice the heartbeat. */
  graceMs?: number;
  /** Sessions that started up to this long after a plan still count as started before it. */
  clockSkewMs?: number;
  /** Repack packs with at least this fraction of unused bytes. */
  repackUnusedFraction?: number;
}

export interface PruneReport {
  /** Packs (and bytes) the mark phase found unused or repacked, in the new plan. */
  planned: { packs: number; bytes: number; repacked: number; blobsRepacked: number };
  plansSwept: number;
  plansWaiting: number;
  packsDeleted: number;
  bytesDeleted: number;
  /** Packs a sweep kept because a snapshot written after its plan uses them. */
  packsRescued: number;
}

export const defaultGraceMs = 30 * 60_000;

/** The grace period must outlast a live backup's longest silence (twice its heartbeat). */
export function validateGrace(graceMs: number): void {
  if (graceMs <= maxBeatAgeMs) {
    throw new TenderError('TENDER_USAGE', `the grace period must exceed ${maxBeatAgeMs / 1000} s (twice the backup heartbeat)`);
  }
}

export async function prune(repo: Repository, options: PruneOptions, ctx: OperationContext): Promise<PruneReport> {
  const graceMs = options.graceMs ?? defaultGraceMs;
  validateGrace(graceMs);
  const log = (message: string) => {
    ctx.logger.info(message);
    ctx.events.emit('progress', { message });
  };
  const report: PruneReport = {
    planned: { packs: 0, bytes: 0, repacked: 0, blobsRepacked: 0 },
    plansSwept: 0,
    plansWaiting: 0,
    packsDeleted: 0,
    bytesDeleted: 0,
    packsRescued: 0,
  };
  const pending = await repo.listDeletionPlans();
  const alreadyDoomed = new Set(pending.flatMap((p) => p.plan.packs));
  // The whole index, doomed packs included: snapshots written since a pending plan may need them.
  // Snapshots first, index second: every snapshot listed has its trees in an index file that
  // exists by the time the index is read (a backup stores its index before its snapshot).
  const snapshots = await repo.listSnapshotIds();
  const view = await repo.loadIndex({ includeDoomed: true });
  const plan = await mark(repo, view, snapshots, alreadyDoomed, options, report, log, ctx);
  if (options.dryRun) return report;
  if (plan) pending.push(plan);
  for (const { key, plan: p } of pending) {
    throwIfCancelled(ctx.signal);
    if (await sweep(repo, view, key, p, graceMs, options.clockSkewMs ?? 60_000, report, log, ctx)) report.plansSwept++;
    else report.plansWaiting++;
  }
  await removeDeadSessions(repo, graceMs, ctx);
  return report;
}

async function mark(
  repo: Repository,
  view: IndexView,
  snapshots: string[],
  alreadyDoomed: ReadonlySet<string>,
  options: PruneOptions,
  report: PruneReport,
  log: (m: string) => void,
  ctx: OperationContext,
): Promise<{ key: string; plan: DeletionPlan } | undefined> {
  log(`marking blobs used by ${snapshots.length} snapshots`);
  const used = new IdTable();
  const seenTrees = new Set<string>();
  for (const id of snapshots) {
    const snapshot = await repo.loadListedSnapshot(id);
    if (snapshot) await markTree(repo, view, snapshot.tree, used, seenTrees, ctx.signal);
  }

  const packs = await indexedPacks(repo, [...view.indexFiles], alreadyDoomed);
  // Packs no index lists (interrupted backups, or one being written now: the sweep waits for it).
  for (const p of await repo.listUnindexedPacks(view, alreadyDoomed)) {
    const hex = idToHex(p.packId);
    if (!alreadyDoomed.has(hex)) packs.set(hex, { packId: p.packId, packSize: p.size, blobs: [] });
  }

  const doomed: string[] = [];
  const repack: IndexedPack[] = [];
  const threshold = options.repackUnusedFraction ?? 0.25;
  for (const [hex, pack] of packs) {
    let usedBytes = 0;
    for (const b of pack.blobs) if (isCanonicalUse(view, used, b.id, pack.packId, alreadyDoomed)) usedBytes += b.storedLength;
    if (usedBytes === 0) doomed.push(hex);
    else if ((pack.packSize - usedBytes) / pack.packSize >= threshold) repack.push(pack);
    if (usedBytes === 0) report.planned.bytes += pack.packSize;
  }
  report.planned.packs = doomed.length;
  report.planned.repacked = repack.length;
  if (options.dryRun || (doomed.length === 0 && repack.length === 0)) {
    for (const p of repack) report.planned.bytes += p.packSize;
    return undefined;
  }

  // Copy the live blobs of partly used packs into new packs (sealed bytes as they are: a blob's
  // encryption binds it to its ID, not to its pack), and index them before anything is doomed.
  if (repack.length > 0) {
    const writer = repo.openWriter();
    try {
      for (const pack of repack) {
        throwIfCancelled(ctx.signal);
        const bytes = await repo.readPack(pack.packId);
        for (const b of pack.blobs) {
          if (!isCanonicalUse(view, used, b.id, pack.packId, alreadyDoomed)) continue;
          await writer.saveSealed(b.type, b.id, b.rawLength, bytes.subarray(b.offset, b.offset + b.storedLength), b.flags, b.base);
          report.planned.blobsRepacked++;
        }
        doomed.push(idToHex(pack.packId));
        report.planned.bytes += pack.packSize;
      }
      await writer.flush();
    } finally {
      await writer.close();
    }
  }

  // The plan's time is taken just before it is stored: a backup that starts later (plus clock
  // skew) is sure to see it; one that started earlier blocks the sweep.
  const plan: DeletionPlan = { version: 1, createdMs: repo.now(), packs: doomed, snapshots };
  const key = await repo.saveDeletionPlan(plan);
  log(`deletion plan ${key}: ${doomed.length} packs`);
  return { key, plan };
}

/**
 * Whether the blob is used and this pack holds a copy that must stay: the copy the index points
 * at, or any copy when that one is in a pack a pending plan already dooms (e.g. blobs an earlier
 * prune repacked: the new copy is what remains once that plan is swept).
 */
function isCanonicalUse(view: IndexView, used: IdTable, id: Uint8Array, packId: Uint8Array, doomed: ReadonlySet<string>): boolean {
  if (!used.has(id)) return false;
  const loc = view.lookup(id);
  if (loc === undefined) return false;
  const canonical = view.packIdAt(loc.packIndex);
  return canonical.equals(packId) || doomed.has(idToHex(canonical));
}

async function indexedPacks(repo: Repository, indexFiles: readonly string[], excluded: ReadonlySet<string>): Promise<Map<string, IndexedPack>> {
  const packs = new Map<string, IndexedPack>();
  for (const key of indexFiles) {
    const file = await repo.readIndexFile(key).catch((err) => {
      if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') return undefined;
      throw err;
    });
    for (const p of file?.packs ?? []) {
      const hex = idToHex(p.packId);
      if (!excluded.has(hex)) packs.set(hex, p);
    }
  }
  return packs;
}

const markedLocation = { packIndex: 0, offset: 0, storedLength: 0, rawLength: 0, type: 0, flags: 0 };

async function markTree(repo: Repository, view: IndexView, treeHex: string, used: IdTable, seenTrees: Set<string>, signal: AbortSignal): Promise<void> {
  // A subtree shared with a snapshot marked before is marked already, with all below it.
  const skip = (id: string) => {
    if (seenTrees.has(id)) return true;
    seenTrees.add(id);
    return false;
  };
  /** A data blob, and the base it needs when it is a delta (docs/design.md, "Delta blobs"). */
  const markData = (id: Uint8Array) => {
    if (!used.add(id, markedLocation)) return;
    const base = view.lookup(id)?.base;
    if (base) used.add(base, markedLocation);
  };
  for await (const step of walkTree(repo, treeHex, { view, skip, signal })) {
    if (step.kind === 'tree') {
      used.add(hexToId(step.id), markedLocation);
      continue;
    }
    const { node } = step;
    for (const hex of node.content ?? []) markData(hexToId(hex));
    for (const hex of node.contentLists ?? []) {
      const listId = hexToId(hex);
      if (!used.add(listId, markedLocation)) continue;
      const list = await repo.loadBlob(listId, BlobType.list, view);
      for (let i = 0; i < list.length; i += 32) markData(list.subarray(i, i + 32));
    }
  }
}

async function sweep(
  repo: Repository,
  marked: IndexView,
  key: string,
  plan: DeletionPlan,
  graceMs: number,
  clockSkewMs: number,
  report: PruneReport,
  log: (m: string) => void,
  ctx: OperationContext,
): Promise<boolean> {
  const now = repo.now();
  const blocking = (await repo.listSessions()).filter((s) => s.startedMs < plan.createdMs + clockSkewMs && now - s.beatMs < graceMs);
  if (blocking.length > 0) {
    log(`plan ${key} waits for ${blocking.length} backups that started before it`);
    return false;
  }
  // Snapshots written since the mark may use doomed packs (their backups started before the plan).
  const seen = new Set(plan.snapshots);
  const newer = (await repo.listSnapshotIds()).filter((id) => !seen.has(id));
  // Their trees may be in index files written since this prune read the index.
  const view = newer.length > 0 ? await repo.loadIndex({ includeDoomed: true }) : marked;
  const usedSince = new IdTable();
  const seenTrees = new Set<string>();
  for (const id of newer) {
    const snapshot = await repo.loadListedSnapshot(id);
    if (snapshot) await markTree(repo, view, snapshot.tree, usedSince, seenTrees, ctx.signal);
  }
  const doomed = new Set(plan.packs);
  const rescued: IndexedPack[] = [];
  if (usedSince.size > 0) {
    for (const hex of plan.packs) {
      const size = await repo.packSize(hex);
      if (size === undefined) continue;
      const blobs = await repo.readPackHeader(hexToId(hex), size);
      if (blobs.some((b) => usedSince.has(b.id))) {
        doomed.delete(hex);
        rescued.push({ packId: hexToId(hex), packSize: size, blobs });
      }
    }
  }
  report.packsRescued += rescued.length;
  // One new index for everything indexed now, less the doomed packs, superseding every current
  // index file; stored before anything is deleted. Index files written after this listing come
  // from backups that started after the plan, which never use doomed packs.
  const indexFiles = await repo.listIndexFiles();
  const kept = await indexedPacks(repo, indexFiles, doomed);
  for (const p of rescued) kept.set(idToHex(p.packId), p);
  const newIndex = await repo.saveIndexFile({
    superseded: indexFiles.map((k) => hexToId(k.slice('index/'.length))),
    packs: [...kept.values()],
  });
  for (const hex of doomed) {
    const size = await repo.packSize(hex);
    await repo.deletePack(hex);
    if (size !== undefined) {
      report.packsDeleted++;
      report.bytesDeleted += size;
    }
  }
  for (const file of indexFiles) if (file !== newIndex) await repo.deleteIndexFile(file);
  await repo.deleteDeletionPlan(key);
  log(`plan ${key} done: ${doomed.size} packs deleted`);
  return true;
}

async function removeDeadSessions(repo: Repository, graceMs: number, ctx: OperationContext): Promise<void> {
  const now = repo.now();
  for (const s of await repo.listSessions()) {
    if (now - s.beatMs < graceMs) continue;
    ctx.logger.info({ session: s.id }, 'removing the marker of a dead session');
    await repo.removeSession(s);
  }
}
