import pLimit from 'p-limit';
import { TenderError } from '../errors/errors.js';
import { BlobType } from '../repo/blob.js';
import { FormatError } from '../repo/binary.js';
import { hexToId, idToHex, storedObjectId } from '../repo/ids.js';
import type { IndexedPack } from '../repo/index/index-file.js';
import { decodePackHeader, packIdFromKey, packKey } from '../repo/pack/pack.js';
import type { Repository } from '../repo/repository.js';
import { BufferPool, sharedBuffer } from '../util/buffer-pool.js';
import { createExecutor, defaultWorkerCount } from '../workers/pool.js';

export interface CheckOptions {
  /** Read every pack and verify every blob (decrypt, decompress, hash). */
  readData?: boolean;
  /** Read only this subset of the packs: a fraction in (0, 1], or group n of t (by pack ID). */
  readDataSubset?: { fraction: number } | { group: number; of: number };
  workers?: number;
  onProgress?: (message: string) => void;
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
 * every blob a snapshot needs is indexed. With readData: every pack's header and every blob.
 * Packs no index lists are a warning (an interrupted backup), not damage.
 */
export async function check(repo: Repository, options: CheckOptions = {}): Promise<CheckReport> {
  const report: CheckReport = { problems: [], warnings: [], snapshots: 0, packs: 0, blobs: 0 };
  const problem = (object: string, text: string, affects?: string[]) => report.problems.push({ object, problem: text, ...(affects ? { affects } : {}) });
  const say = options.onProgress ?? (() => {});
  const limit = pLimit(8);

  say('checking key files');
  for await (const { key } of repo.storage.list('keys/')) {
    const bytes = await repo.storage.get(key);
    if (idToHex(storedObjectId([bytes])) !== key.slice('keys/'.length)) problem(key, 'does not match its name (damaged)');
  }

  say('loading index files');
  const indexKeys: string[] = [];
  for await (const { key } of repo.storage.list('index/')) indexKeys.push(key);
  const indexedPacks = new Map<string, IndexedPack>();
  await Promise.all(
    indexKeys.map((key) =>
      limit(async () => {
        try {
          const file = await repo.readIndexFile(key);
          repo.addIndexedPacks(file.packs);
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
  for await (const { key, size } of repo.storage.list('data/')) {
    const id = packIdFromKey(key);
    if (id) stored.set(id, size);
  }
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
    const executor = createExecutor(repo.keys, repo.config.compressionLevel, options.workers ?? defaultWorkerCount());
    const readers = pLimit(2);
    // Packs are read into reused shared buffers that the workers verify in place.
    const buffers = new BufferPool(repo.config.packSize + 1024 * 1024, 2);
    const verifyPack = async (id: string, pack: IndexedPack) => {
      const key = packKey(id);
      const pooled = pack.packSize <= buffers.bufferSize ? await buffers.acquire() : sharedBuffer(pack.packSize);
      try {
        const bytes = await repo.storage.get(key, undefined, pooled.view);
        try {
          const header = decodePackHeader(repo.keys.encryption, hexToId(id), bytes, bytes.length);
          const headerIds = new Set(header.map((b) => idToHex(b.id)));
          if (pack.blobs.some((b) => !headerIds.has(idToHex(b.id)))) problem(key, 'header does not list every blob its index entry has');
        } catch (err) {
          if (!(err instanceof FormatError)) throw err;
          problem(key, `header: ${err.message}`);
        }
        const opened = await executor.open(
          pooled.buffer,
          pack.blobs.map((b) => ({ type: b.type, id: b.id, flags: b.flags, rawLength: b.rawLength, offset: b.offset, storedLength: b.storedLength })),
        );
        opened.forEach((error, i) => {
          if (error === null) return;
          problem(key, `is damaged: ${error}`);
          damagedBlobs.set(idToHex(pack.blobs[i]!.id), `${key} is damaged`);
        });
      } finally {
        if (pooled.view.length === buffers.bufferSize) buffers.release(pooled);
      }
    };
    try {
      const toRead = [...indexedPacks].filter(([id, p]) => stored.get(id) === p.packSize && selected(id));
      await Promise.all(toRead.map(([id, pack]) => readers(() => verifyPack(id, pack))));
    } finally {
      await executor.close();
    }
  }

  say('checking snapshots');
  const snapshotIds = await repo.listSnapshotIds();
  report.snapshots = snapshotIds.length;
  const affected = new Map<string, string[]>();
  const noteUse = (blobHex: string, where: string) => {
    if (!damagedBlobs.has(blobHex) && repo.has(hexToId(blobHex))) return false;
    const list = affected.get(blobHex) ?? [];
    if (list.length < maxAffectedListed) list.push(where);
    affected.set(blobHex, list);
    return true;
  };
  const checkedTrees = new Set<string>();
  const walk = async (treeHex: string, where: string): Promise<void> => {
    if (checkedTrees.has(treeHex)) return;
    checkedTrees.add(treeHex);
    if (noteUse(treeHex, where)) return;
    let tree;
    try {
      tree = await repo.loadTree(treeHex);
    } catch (err) {
      if (!(err instanceof TenderError && err.code === 'TENDER_CORRUPT')) throw err;
      problem(`tree ${treeHex}`, err.message, [where]);
      return;
    }
    for (const node of tree.nodes) {
      const path = `${where}/${node.name}`;
      if (node.subtree) await walk(node.subtree, path);
      for (const hex of node.content ?? []) noteUse(hex, path);
      for (const hex of node.contentLists ?? []) {
        if (noteUse(hex, path)) continue;
        try {
          const list = await repo.loadBlob(hexToId(hex), BlobType.list);
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
      if (snapshot) await walk(snapshot.tree, `snapshot ${id.slice(0, 8)}:`);
    } catch (err) {
      if (!(err instanceof TenderError && err.code === 'TENDER_CORRUPT')) throw err;
      problem(key, err.message.replace(`${key} `, ''));
    }
  }
  for (const [blobHex, where] of affected) {
    problem(`blob ${blobHex}`, damagedBlobs.get(blobHex) ?? 'is not in any index (missing)', where);
  }
  report.blobs = repo.blobCount;
  return report;
}
