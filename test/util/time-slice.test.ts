/**
 * TimeSlice (src/util/time-slice.ts): a loop of microtasks goes back to the event loop once its
 * slice is used up, and not before. Observed through a setImmediate callback queued before the
 * call: it runs only if the call went back to the event loop.
 */
import { describe, expect, it } from 'vitest';
import { TimeSlice } from '../../src/util/time-slice.js';

async function ranMacrotaskDuring(call: () => Promise<void>): Promise<boolean> {
  let ran = false;
  const queued = setImmediate(() => (ran = true));
  await call();
  clearImmediate(queued);
  return ran;
}

describe('TimeSlice', () => {
  it('goes back to the event loop once the slice is used up', async () => {
    const slice = new TimeSlice(0);
    expect(await ranMacrotaskDuring(() => slice.yieldIfDue())).toBe(true);
    // A new slice starts after each yield: with no time to spare, every call yields.
    expect(await ranMacrotaskDuring(() => slice.yieldIfDue())).toBe(true);
  });

  it('stays in the microtask chain while the slice lasts', async () => {
    const slice = new TimeSlice(Number.POSITIVE_INFINITY);
    for (let i = 0; i < 100; i++) expect(await ranMacrotaskDuring(() => slice.yieldIfDue())).toBe(false);
  });
});
