import { type KindSummary, type TransformSummary, compareKinds, emptyKindSummary } from '../repo/snapshot/snapshot.js';

/** A backup's figures per kind of data and per stage, for the snapshot summary (TransformSummary). */
export class TransformStats {
  private readonly kinds = new Map<string, KindSummary>();
  readonly stageMs = { read: 0, chunk: 0, hash: 0, seal: 0 };

  /** The figures of one layout and dtype ("none": unknown), created at first use. */
  kind(layout: string, dtype: string): KindSummary {
    const key = `${layout}\0${dtype}`;
    let kind = this.kinds.get(key);
    if (!kind) {
      kind = emptyKindSummary(layout, dtype);
      this.kinds.set(key, kind);
    }
    return kind;
  }

  /** `storeMs`: the writer's pack upload time (RepositoryWriter.storeMs). */
  summary(storeMs: number): TransformSummary {
    const round = (ms: number) => Math.round(ms * 1000) / 1000;
    const kinds = [...this.kinds.values()].sort(compareKinds);
    for (const k of kinds) for (const t of Object.values(k.transforms)) t.sealMs = round(t.sealMs);
    const { read, chunk, hash, seal } = this.stageMs;
    return { kinds, stageMs: { read: round(read), chunk: round(chunk), hash: round(hash), seal: round(seal), store: round(storeMs) } };
  }
}
