/**
 * Deletion plans (`plans/<sha256>`, sealed JSON): packs a prune has marked for deletion. While a
 * plan exists, backups must not come to depend on its packs (docs/design.md, "Garbage collection").
 */
export interface DeletionPlan {
  version: 1;
  createdMs: number;
  /** Pack IDs (hex) to delete. */
  packs: string[];
  /** Snapshot IDs the mark phase saw; any other snapshot is re-checked before the sweep. */
  snapshots: string[];
}
