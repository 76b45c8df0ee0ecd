import type { IncompletePolicy } from '../backup/checkpoints.js';
import { TenderError } from '../errors/errors.js';

/** Commander reducer for repeatable options. */
export function collect(value: string, previous: string[]): string[] {
  if (value === '') throw new TenderError('TENDER_USAGE', 'empty option value');
  return [...previous, value];
}

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new TenderError('TENDER_USAGE', `${JSON.stringify(value)} is not a non-negative integer`);
  return n;
}

/** `--incomplete store | skip | wait=DURATION` (DURATION: 500ms, 30s, 2m). */
export function incompletePolicy(value: string): IncompletePolicy {
  if (value === 'store' || value === 'skip') return { mode: value };
  const wait = /^wait=(\d+)(ms|s|m)$/.exec(value);
  if (wait) return { mode: 'wait', ms: Number(wait[1]) * { ms: 1, s: 1000, m: 60_000 }[wait[2] as 'ms' | 's' | 'm'] };
  throw new TenderError('TENDER_USAGE', `--incomplete ${JSON.stringify(value)} is not store, skip or wait=DURATION`, {
    hint: 'e.g. --incomplete wait=30s: wait up to 30 s for incomplete checkpoints, then store them labelled incomplete',
  });
}
