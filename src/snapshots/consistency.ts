import type { Snapshot } from '../repo/snapshot/snapshot.js';

/** A snapshot's consistency at a glance (`tender snapshots`), from its checkpoint list and summary. */
export interface ConsistencySummary {
  checkpointsComplete: number;
  checkpointsIncomplete: number;
  /** Incomplete checkpoints `--incomplete skip` left out (counted in checkpointsIncomplete too). */
  checkpointsSkipped: number;
  filesTorn: number;
  filesIncomplete: number;
}

export function consistencySummary(snapshot: Snapshot): ConsistencySummary {
  const checkpoints = snapshot.checkpoints ?? [];
  return {
    checkpointsComplete: checkpoints.filter((c) => c.complete).length,
    checkpointsIncomplete: checkpoints.filter((c) => !c.complete).length,
    checkpointsSkipped: checkpoints.filter((c) => c.skipped).length,
    filesTorn: snapshot.summary?.filesTorn ?? 0,
    filesIncomplete: snapshot.summary?.filesIncomplete ?? 0,
  };
}

/** "2 checkpoints complete, 1 incomplete (1 skipped), 0 torn files, 1 incomplete file". */
export function describeConsistency(s: ConsistencySummary): string {
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
  return [
    `${plural(s.checkpointsComplete, 'checkpoint')} complete`,
    `${s.checkpointsIncomplete} incomplete${s.checkpointsSkipped > 0 ? ` (${s.checkpointsSkipped} skipped)` : ''}`,
    `${plural(s.filesTorn, 'torn file')}`,
    ...(s.filesIncomplete > 0 ? [plural(s.filesIncomplete, 'incomplete file')] : []),
  ].join(', ');
}
