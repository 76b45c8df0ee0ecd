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
