import pLimit from 'p-limit';
import { TenderError } from '../errors/errors.js';
import { BlobFlag, BlobType } from '../repo/blob.js';
import { FormatError } from '../repo/binary.js';
import { hexToId, idToHex } from '../repo/ids.js';
import type { IndexedPack } from '../repo/index/index-file.js';
import { IndexView } from '../repo/index/index-view.js';
import { walkTree } from '../repo/snapshot/tree-walk.js';
import { decodePackHeader, packKey } from '../repo/pack/pack.js';
import type { Repository } from '../repo/repository.js';
import { sharedBuffer } from '../util/buffer-pool.js';
import { type OperationContext, throwIfCancelled } from '../util/operation.js';

export interface CheckOptions {
  /** Read every pack and verify every blob (decrypt, decompress, hash). */
  readData?: boolean;
  /** Read only this subset of the packs: a fraction in (0, 1], or group n of t (by pack ID). */
  readDataSubset?: { fraction: number } | { group: number; of: number };
}

export interface CheckProblem {
  /** The damaged or missing object: a storage key, or "blob <id>". */
  object: string;
  problem: string;
  /** Snapshots and paths that depend on it, when known. */
  affects?: string[];
}

export interface CheckReport {
  problems: CheckProblem[];
  warnings: string[];
  snapshots: number;
  packs: number;
  blobs: number;
}

const maxAffectedListed = 20;

/**
 * `tender check`: every object is examined on its own, so one damaged object never hides
 * another. Structure: keys, index files, pack presence and sizes, snapshots, trees, and that
 * every blob a snapshot needs is indexed, and the base of every delta blob. With readData: every
 * pack's header and every blob (a delta blob opened with its base).
 * Packs no index lists are a warning (an interrupted backup), not damage.
 */
export async function check(repo: Repository, options: CheckOptions, ctx: OperationContext): Promise<CheckReport> {
  const report: CheckReport = { problems: [], warnings: [], snapshots: 0, packs: 0, blobs: 0 };
  const problem = (object: string, text: string, affects?: string[]) => report.problems.push({ object, problem: text, ...(affects ? { affects } : {}) });
  const say = (message: string) => {
    throwIfCancelled(ctx.signal);
    ctx.logger.info(message);
    ctx.events.emit('progress', { message });
  };
  const limit = pLimit(8);

  say('checking key files');
  for (const key of await repo.listKeyFiles()) {
    if (!(await repo.keyFileIntact(key))) problem(key, 'does not match its name (damaged)');
  }

  say('loading index files');
  // A view of its own: every index file, damaged ones reported one by one.
  const view = new IndexView();
  const indexedPacks = new Map<string, IndexedPack>();
  await Promise.all(
    (await repo.listIndexFiles()).map((key) =>
      limit(async () => {
        try {
          const file = await repo.readIndexFile(key);
          view.addPacks(file.packs);
          for (const p of file.packs) indexedPacks.set(idToHex(p.packId), p);
        } catch (err) {
          if (!(err instanceof TenderError && err.code === 'TENDER_CORRUPT')) throw err;
          problem(key, err.message.replace(`${key} `, ''));
        }
      }),
    ),
  );

  say('checking packs');
  const stored = new Map<string, number>();
  for (const { packId, size } of await repo.listPacks()) stored.set(idToHex(packId), size);
  report.packs = stored.size;
  let unindexed = 0;
  for (const id of stored.keys()) if (!indexedPacks.has(id)) unindexed++;
  if (unindexed > 0) {
    report.warnings.push(`${unindexed} packs are in no index (left by an interrupted backup); \`tender repair\` indexes them, prune removes unused ones`);
  }
  const damagedBlobs = new Map<string, string>();
  for (const [id, pack] of indexedPacks) {
    const size = stored.get(id);
    const key = packKey(id);
    if (size === undefined) {
      problem(key, 'is missing');
      for (const b of pack.blobs) damagedBlobs.set(idToHex(b.id), `${key} is missing`);
    } else if (size !== pack.packSize) {
      problem(key, `has ${size} bytes, the index says ${pack.packSize} (truncated or overwritten)`);
      for (const b of pack.blobs) damagedBlobs.set(idToHex(b.id), `${key} has the wrong size`);
    }
  }

  if (options.readData || options.readDataSubset) {
    const subset = options.readDataSubset;
    const selected = (id: string) =>
      !subset ? true : 'fraction' in subset ? Math.random() < subset.fraction : parseInt(id.slice(0, 8), 16) % subset.of === subset.group - 1;
    say(subset ? 'reading a subset of the packs' : 'reading all packs');
    const executor = repo.executor();
    const readers = pLimit(2);
    // Packs are read into reused shared buffers that the workers verify in place.
    const lease = repo.leaseBuffers('check-reads', repo.config.packSize + 1024 * 1024, 2);
    const buffers = lease.pool;
    const verifyPack = async (id: string, pack: IndexedPack) => {
      const key = packKey(id);
      const pooled = pack.packSize <= buffers.bufferSize ? await buffers.acquire() : sharedBuffer(pack.packSize);
      try {
        throwIfCancelled(ctx.signal);
        const bytes = await repo.readPack(id, pooled.view);
        try {
          const header = decodePackHeader(repo.keys.encryption, hexToId(id), bytes, bytes.length);
          const headerIds = new Set(header.map((b) => idToHex(b.id)));
          if (pack.blobs.some((b) => !headerIds.has(idToHex(b.id)))) problem(key, 'header does not list every blob its index entry has');
        } catch (err) {
          if (!(err instanceof FormatError)) throw err;
          problem(key, `header: ${err.message}`);
        }
        const whole = pack.blobs.filter((b) => !(b.flags & BlobFlag.delta));
        const opened = await executor.open(
          pooled.buffer,
          whole.map((b) => ({ type: b.type, id: b.id, flags: b.flags, rawLength: b.rawLength, offset: b.offset, storedLength: b.storedLength })),
        );
        // A delta blob needs its base: loaded from its own pack (a base is read once per delta).
        for (const b of pack.blobs) {
          if (!(b.flags & BlobFlag.delta) || !view.has(b.base!)) continue;
          const error = await repo.loadBlob(b.id, undefined, view).then(
            () => null,
            (err: unknown) => {
              if (err instanceof TenderError && err.code === 'TENDER_CORRUPT') return err.message;
              throw err;
            },
          );
          opened.push(error);
          whole.push(b);
        }
        opened.forEach((error, i) => {
          if (error === null) return;
          problem(key, `is damaged: ${error}`);
          damagedBlobs.set(idToHex(whole[i]!.id), `${key} is damaged`);
        });
      } finally {
        if (pooled.view.length === buffers.bufferSize) buffers.release(pooled);
      }
    };
    const toRead = [...indexedPacks].filter(([id, p]) => stored.get(id) === p.packSize && selected(id));
    try {
      await Promise.all(toRead.map(([id, pack]) => readers(() => verifyPack(id, pack))));
    } finally {
      lease.release();
    }
  }

  say('checking delta bases');
  /** Delta blobs whose base is missing or not a base: unreadable, whether or not a snapshot uses them. */
  const baseless = new Map<string, string>();
  view.forEachBlob((id, loc) => {
    if (!loc.base) return;
    const baseHex = idToHex(loc.base);
    const base = view.lookup(loc.base);
    const wrong = !base
      ? 'which is not in any index (missing)'
      : base.type !== BlobType.data || base.flags & BlobFlag.delta || base.rawLength !== loc.rawLength
        ? 'which is not a whole data blob of its length'
        : damagedBlobs.has(baseHex)
          ? `which is damaged (${damagedBlobs.get(baseHex)})`
          : undefined;
    if (wrong === undefined) return;
    const text = `is a delta against base ${baseHex}, ${wrong}`;
    baseless.set(idToHex(id), text);
    damagedBlobs.set(idToHex(id), text);
  });

  say('checking snapshots');
  const snapshotIds = await repo.listSnapshotIds();
  report.snapshots = snapshotIds.length;
  const affected = new Map<string, string[]>();
  const noteUse = (blobHex: string, where: string) => {
    if (!damagedBlobs.has(blobHex) && view.hasHex(blobHex)) return false;
    const list = affected.get(blobHex) ?? [];
    if (list.length < maxAffectedListed) list.push(where);
    affected.set(blobHex, list);
    return true;
  };
  const checkedTrees = new Set<string>();
  /** Each tree once; one that is not indexed (or damaged) is noted with where it was needed. */
  const skip = (treeHex: string, where: string) => {
    if (checkedTrees.has(treeHex)) return true;
    checkedTrees.add(treeHex);
    return noteUse(treeHex, where);
  };
  const onError = (treeHex: string, where: string, err: unknown) => {
    if (!(err instanceof TenderError && err.code === 'TENDER_CORRUPT')) throw err;
    problem(`tree ${treeHex}`, err.message, [where]);
  };
  const walk = async (treeHex: string, where: string): Promise<void> => {
    for await (const step of walkTree(repo, treeHex, { view, prefix: where, skip, onError, signal: ctx.signal })) {
      if (step.kind !== 'entry') continue;
      const { path, node } = step;
      for (const hex of node.content ?? []) noteUse(hex, path);
      for (const hex of node.contentLists ?? []) {
        if (noteUse(hex, path)) continue;
        try {
          const list = await repo.loadBlob(hexToId(hex), BlobType.list, view);
          for (let i = 0; i < list.length; i += 32) noteUse(idToHex(list.subarray(i, i + 32)), path);
        } catch (err) {
          if (!(err instanceof TenderError && err.code === 'TENDER_CORRUPT')) throw err;
          problem(`list blob ${hex}`, err.message, [path]);
        }
      }
    }
  };
  for (const id of snapshotIds) {
    const key = `snapshots/${id}`;
    try {
      const snapshot = await repo.loadListedSnapshot(id);
      throwIfCancelled(ctx.signal);
      if (snapshot) await walk(snapshot.tree, `snapshot ${id.slice(0, 8)}:`);
    } catch (err) {
      if (!(err instanceof TenderError && err.code === 'TENDER_CORRUPT')) throw err;
      problem(key, err.message.replace(`${key} `, ''));
    }
  }
  for (const [blobHex, where] of affected) {
    problem(`blob ${blobHex}`, damagedBlobs.get(blobHex) ?? 'is not in any index (missing)', where);
  }
  for (const [blobHex, text] of baseless) if (!affected.has(blobHex)) problem(`blob ${blobHex}`, text);
  report.blobs = view.blobCount;
  return report;
}
