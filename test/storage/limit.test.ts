import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MemStorage } from '../../src/storage/mem.js';
import type { Storage } from '../../src/storage/storage.js';
import { LimitStorage } from '../../src/storage/wrap/limit.js';
import { type ByteBudget, TokenBucket } from '../../src/util/token-bucket.js';
import { FakeClock } from '../helpers/fake-clock.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A budget that grants at once and remembers what was asked. */
function recordingBudget(): ByteBudget & { taken: number[] } {
  const taken: number[] = [];
  return { taken, take: async (bytes) => void taken.push(bytes) };
}

describe('limit wrapper: what each operation takes from which budget', () => {
  const cases: Array<{ name: string; run: (s: Storage) => Promise<unknown>; upload: number[]; download: number[] }> = [
    { name: 'put of several parts takes their total', run: (s) => s.put('data/00/new', [randomBytes(1000), randomBytes(24), new Uint8Array(0)]), upload: [1024], download: [] },
    { name: 'put that finds the key takes it all the same (the bytes are sent)', run: (s) => s.put('data/00/k', [randomBytes(10)]), upload: [10], download: [] },
    { name: 'ranged get takes the range', run: (s) => s.get('data/00/k', { offset: 100, length: 300 }), upload: [], download: [300] },
    { name: 'whole get takes the object size', run: (s) => s.get('data/00/k'), upload: [], download: [5000] },
    { name: 'get into a buffer takes the object size', run: (s) => s.get('data/00/k', undefined, new Uint8Array(8000)), upload: [], download: [5000] },
    { name: 'stat takes nothing', run: (s) => s.stat('data/00/k'), upload: [], download: [] },
    {
      name: 'list takes nothing',
      run: async (s) => {
        for await (const _ of s.list('data/'));
      },
      upload: [],
      download: [],
    },
    { name: 'delete takes nothing', run: (s) => s.delete('data/00/k'), upload: [], download: [] },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const mem = new MemStorage();
      await mem.put('data/00/k', [randomBytes(5000)]);
      const upload = recordingBudget();
      const download = recordingBudget();
      await c.run(new LimitStorage(mem, { upload, download }));
      expect(upload.taken).toEqual(c.upload);
      expect(download.taken).toEqual(c.download);
    });
  }
});

/**
 * Runs `op` `count` times one after another through a LimitStorage whose budget runs on a fake
 * clock; returns the bytes moved per (fake) second, measured from the completion events.
 */
async function measuredRate(
  limits: (clock: FakeClock) => ConstructorParameters<typeof LimitStorage>[1],
  op: (s: Storage, i: number) => Promise<number>,
  count: number,
): Promise<{ rate: number; bytes: number }> {
  const clock = new FakeClock();
  const mem = new MemStorage();
  await mem.put('data/00/src', [randomBytes(4 * MiB)]);
  const s = new LimitStorage(mem, limits(clock));
  const done: Array<{ at: number; bytes: number }> = [];
  let finished = false;
  const worker = (async () => {
    for (let i = 0; i < count; i++) done.push({ at: clock.now(), bytes: await op(s, i) });
    finished = true;
  })();
  // Time moves only while the worker waits for the clock: it stands still while the storage works.
  for (let guard = 0; !finished && guard < 100_000; guard++) await clock.step();
  await worker;
  // From the first completion that had to wait for the bucket (after the burst) to the last.
  const firstWaited = done.findIndex((d) => d.at > 0);
  if (firstWaited < 1) return { rate: Number.POSITIVE_INFINITY, bytes: 0 };
  const bytes = done.slice(firstWaited).reduce((n, d) => n + d.bytes, 0);
  const spanMs = done.at(-1)!.at - done[firstWaited - 1]!.at;
  return { rate: spanMs > 0 ? (bytes / spanMs) * 1000 : Number.POSITIVE_INFINITY, bytes };
}

describe('limit wrapper: rate', () => {
  const rate = 2 * MiB;
  const bucket = (clock: FakeClock) => new TokenBucket({ bytesPerSecond: rate, burstBytes: 512 * KiB, clock });
  const cases = [
    {
      name: 'uploads of 256 KiB packs',
      limits: (clock: FakeClock) => ({ upload: bucket(clock) }),
      op: async (s: Storage, i: number) => {
        const body = randomBytes(256 * KiB);
        await s.put(`data/01/${i}`, [body.subarray(0, 1000), body.subarray(1000)]);
        return body.length;
      },
    },
    {
      name: 'ranged downloads of 100 KiB',
      limits: (clock: FakeClock) => ({ download: bucket(clock) }),
      op: async (s: Storage, i: number) => (await s.get('data/00/src', { offset: (i * 7919) % MiB, length: 100 * KiB })).length,
    },
    {
      name: 'whole-object downloads (paid after the answer)',
      limits: (clock: FakeClock) => ({ download: bucket(clock) }),
      op: async (s: Storage) => (await s.get('data/00/src')).length,
    },
  ];
  for (const c of cases) {
    it(`${c.name}: ${rate} B/s within 15%`, async () => {
      const { rate: measured, bytes } = await measuredRate(c.limits, c.op, 24);
      expect(bytes).toBeGreaterThan(0);
      expect(measured / rate).toBeGreaterThan(0.85);
      expect(measured / rate).toBeLessThan(1.15);
    });
  }

  it('without a budget the same measurement finds no limit (the check can fail)', async () => {
    const { rate: measured } = await measuredRate(() => ({}), cases[0]!.op, 24);
    expect(measured / rate < 1.15).toBe(false);
  });

  it('a limit on uploads does not slow downloads, and the reverse', async () => {
    const { rate: downloads } = await measuredRate((clock) => ({ upload: bucket(clock) }), cases[1]!.op, 24);
    const { rate: uploads } = await measuredRate((clock) => ({ download: bucket(clock) }), cases[0]!.op, 24);
    expect(downloads).toBe(Number.POSITIVE_INFINITY);
    expect(uploads).toBe(Number.POSITIVE_INFINITY);
  });

  it('an abort signal ends a wait for the budget', async () => {
    const clock = new FakeClock();
    const controller = new AbortController();
    const mem = new MemStorage();
    const s = new LimitStorage(mem, { upload: new TokenBucket({ bytesPerSecond: 1000, burstBytes: 1000, clock }), signal: controller.signal });
    const pending = s.put('data/00/big', [randomBytes(1 * MiB)]).then(
      () => 'stored',
      (e: unknown) => (e as Error).message,
    );
    controller.abort(new Error('cancelled'));
    expect(await pending).toBe('cancelled');
    expect(await mem.stat('data/00/big'), 'nothing was sent').toBeUndefined();
  });
});
