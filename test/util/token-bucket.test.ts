import { describe, expect, it } from 'vitest';
import { type ByteBudget, TokenBucket } from '../../src/util/token-bucket.js';
import { FakeClock } from '../helpers/fake-clock.js';

/**
 * Takes `count` x `chunk` bytes from `budget` one after another while the fake clock runs in
 * steps from one wake-up to the next; returns the fake time at which each take was granted.
 */
async function drain(budget: ByteBudget, clock: FakeClock, count: number, chunk: number): Promise<number[]> {
  const granted: number[] = [];
  let done = false;
  const taker = (async () => {
    for (let i = 0; i < count; i++) {
      await budget.take(chunk);
      granted.push(clock.now());
    }
    done = true;
  })();
  for (let guard = 0; !done && guard < 1_000_000; guard++) await clock.step();
  await taker;
  return granted;
}

/** Bytes per second granted after the burst: from the first grant that had to wait to the last. */
function sustainedRate(granted: number[], chunk: number, burstChunks: number): number {
  const waited = granted.slice(burstChunks);
  const spanMs = waited.at(-1)! - granted[burstChunks - 1]!;
  return (waited.length * chunk) / (spanMs / 1000);
}

describe('TokenBucket', () => {
  const cases = [
    { rate: 1 << 20, burst: 256 << 10, chunk: 64 << 10 },
    { rate: 10 << 20, burst: 1 << 20, chunk: 128 << 10 },
    { rate: 100_000, burst: 10_000, chunk: 1000 },
    // Takes larger than the burst: allowed, they wait for the debt.
    { rate: 1 << 20, burst: 64 << 10, chunk: 512 << 10 },
  ];
  for (const { rate, burst, chunk } of cases) {
    it(`holds ${rate} B/s within 15% (burst ${burst}, takes of ${chunk})`, async () => {
      const clock = new FakeClock();
      const bucket = new TokenBucket({ bytesPerSecond: rate, burstBytes: burst, clock });
      const count = 40;
      const granted = await drain(bucket, clock, count, chunk);
      expect(granted).toHaveLength(count);
      const burstChunks = Math.max(1, Math.floor(burst / chunk));
      const measured = sustainedRate(granted, chunk, burstChunks);
      expect(measured / rate).toBeGreaterThan(0.85);
      expect(measured / rate).toBeLessThan(1.15);
      // And the hard bound: by time t no more than burst + rate * t bytes were granted.
      granted.forEach((t, i) => expect((i + 1) * chunk).toBeLessThanOrEqual(burst + (rate * t) / 1000 + chunk));
    });
  }

  it('the measurement catches a budget that does not limit (the check can fail)', async () => {
    const clock = new FakeClock();
    const unlimited: ByteBudget = { take: async () => undefined };
    const granted = await drain(unlimited, clock, 40, 64 << 10);
    // Everything was granted at time 0: no rate at all within 15% of 1 MiB/s.
    const measured = sustainedRate(granted, 64 << 10, 4);
    expect(Number.isFinite(measured) && measured / (1 << 20) < 1.15).toBe(false);
  });

  it('grants the burst at once after an idle spell, and no more', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ bytesPerSecond: 1000, burstBytes: 5000, clock });
    await clock.advance(60_000);
    const granted: number[] = [];
    const takes = Array.from({ length: 7 }, () => bucket.take(1000).then(() => granted.push(clock.now())));
    await clock.advance(0);
    expect(granted).toEqual([60_000, 60_000, 60_000, 60_000, 60_000]);
    await clock.advance(2000);
    await Promise.all(takes);
    expect(granted.slice(5)).toEqual([61_000, 62_000]);
  });

  it('serves concurrent takers in the order they came', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ bytesPerSecond: 1000, burstBytes: 1000, clock });
    const order: number[] = [];
    const takes = [3000, 10, 500, 10].map((n, i) => bucket.take(n).then(() => order.push(i)));
    await clock.advance(10_000);
    await Promise.all(takes);
    expect(order).toEqual([0, 1, 2, 3]);
  });

  it('an aborted take rejects and gives its bytes back', async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ bytesPerSecond: 1000, burstBytes: 1000, clock });
    await bucket.take(1000); // the burst is spent
    const controller = new AbortController();
    const aborted = bucket.take(5000, controller.signal).then(
      () => 'granted',
      (e: unknown) => (e as Error).message,
    );
    controller.abort(new Error('cancelled'));
    expect(await aborted).toBe('cancelled');
    // The 5000 bytes were returned: the next 1000 take only 1 s, not 6 s.
    let at = -1;
    const next = bucket.take(1000).then(() => (at = clock.now()));
    await clock.advance(1000);
    await next;
    expect(at).toBe(1000);
  });

  it('refuses a rate that is not a positive number', () => {
    for (const bytesPerSecond of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => new TokenBucket({ bytesPerSecond })).toThrow(RangeError);
    }
  });
});
