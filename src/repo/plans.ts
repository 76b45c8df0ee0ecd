import { TenderError } from '../errors/errors.js';
import type { Repository } from './repository.js';

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

export async function listDeletionPlans(repo: Repository): Promise<Array<{ key: string; plan: DeletionPlan }>> {
  const plans: Array<{ key: string; plan: DeletionPlan }> = [];
  for await (const { key } of repo.storage.list('plans/')) {
    try {
      plans.push({ key, plan: await repo.loadSealedJson<DeletionPlan>(key) });
    } catch (err) {
      // A plan swept (deleted) between the listing and the read is simply done.
      if (!(err instanceof TenderError && err.code === 'TENDER_NOT_FOUND')) throw err;
    }
  }
  return plans.sort((a, b) => a.plan.createdMs - b.plan.createdMs);
}

/** Hex IDs of every pack some pending plan will delete: writers must not come to depend on them. */
export async function doomedPacks(repo: Repository): Promise<Set<string>> {
  const doomed = new Set<string>();
  for (const { plan } of await listDeletionPlans(repo)) for (const p of plan.packs) doomed.add(p);
  return doomed;
}
