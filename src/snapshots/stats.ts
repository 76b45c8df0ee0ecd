import { BlobType, type TransformName, transformOf } from '../repo/blob.js';
import type { Repository } from '../repo/repository.js';
import { type KindSummary, type TransformFigures, type TransformSummary, compareKinds, emptyKindSummary } from '../repo/snapshot/snapshot.js';
import type { SnapshotEntry } from './select.js';

/**
 * `tender stats`: what the backups recorded per kind of data (their snapshot summaries, summed)
 * and what the repository holds per transform (its index, exact: every data blob once).
 */
export interface RepositoryStats {
  /** Snapshots whose summaries were summed; those without transform figures are listed apart. */
  snapshots: string[];
  withoutFigures: string[];
  kinds: KindSummary[];
  stageMs: TransformSummary['stageMs'];
  /** Data blobs in the index, per transform (one copy each, whichever pack holds it). */
  stored: Record<TransformName, Omit<TransformFigures, 'sealMs'>>;
}

export async function repositoryStats(repo: Repository, entries: readonly SnapshotEntry[]): Promise<RepositoryStats> {
  const kinds = new Map<string, KindSummary>();
  const stageMs = { read: 0, chunk: 0, hash: 0, seal: 0, store: 0 };
  const withoutFigures: string[] = [];
  for (const { id, snapshot } of entries) {
    const t = snapshot.summary?.transforms;
    if (!t) {
      withoutFigures.push(id);
      continue;
    }
    for (const k of t.kinds) {
      const key = `${k.layout}\0${k.dtype}`;
      let sum = kinds.get(key);
      if (!sum) {
        sum = emptyKindSummary(k.layout, k.dtype);
        kinds.set(key, sum);
      }
      sum.bytesIn += k.bytesIn;
      sum.bytesDeduplicated += k.bytesDeduplicated;
      for (const name of Object.keys(sum.transforms) as TransformName[]) {
        // Snapshots from before delta blobs have no figures for them.
        const from = k.transforms[name];
        if (!from) continue;
        const to = sum.transforms[name];
        to.blobs += from.blobs;
        to.bytes += from.bytes;
        to.stored += from.stored;
        to.sealMs += from.sealMs;
      }
    }
    for (const stage of Object.keys(stageMs) as Array<keyof typeof stageMs>) stageMs[stage] += t.stageMs[stage] ?? 0;
  }
  const stored = { delta: { blobs: 0, bytes: 0, stored: 0 }, planes: { blobs: 0, bytes: 0, stored: 0 }, zstd: { blobs: 0, bytes: 0, stored: 0 }, raw: { blobs: 0, bytes: 0, stored: 0 } };
  const index = await repo.loadIndex();
  index.forEachBlob((_id, loc) => {
    if (loc.type !== BlobType.data) return;
    const s = stored[transformOf(loc.flags)];
    s.blobs++;
    s.bytes += loc.rawLength;
    s.stored += loc.storedLength;
  });
  return { snapshots: entries.map((e) => e.id), withoutFigures, kinds: [...kinds.values()].sort(compareKinds), stageMs, stored };
}
