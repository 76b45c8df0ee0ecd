/**
 * The shared budgets: a RateBudget holds its rate (±15%) whether driven by a fake clock or by a
 * real backup reading a real file through BackupHooks.beforeRead, and uploads through the
 * storage stack's limit wrapper; rate changes, pauses and cancels take effect for takers that
 * already wait.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/archiver.js';
import { RateBudget } from '../../src/polite/budget.js';
import { Governor } from '../../src/polite/governor.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStorage } from '../../src/storage/fs.js';
import { stackStorage } from '../../src/storage/stack.js';
import { createOperationContext } from '../../src/util/operation.js';
import { FakeClock, flush } from '../helpers/fake-clock.js';

const MiB = 2 ** 20;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'tender-budget-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** `count` takes of `chunk` bytes one after another while the fake clock jumps from wake-up to wake-up. */
async function drain(budget: RateBudget, clock: FakeClock, count: number, chunk: number): Promise<number[]> {
  const granted: number[] = [];
  let done = false;
  const taker = (async () => {
    for (let i = 0; i < count; i++) {
      await budget.take(chunk);
      granted.push(clock.now());
    }
    done = true;
  })();
  for (let guard = 0; !done && guard < 100_000; guard++) await clock.step();
  await taker;
  return granted;
}

describe('RateBudget', () => {
  for (const { rate, chunk } of [
    { rate: MiB, chunk: 64 * 1024 },
    { rate: 50 * MiB, chunk: MiB },
    { rate: 200_000, chunk: 1000 },
    { rate: MiB, chunk: 4 * MiB },
  ]) {
    it(`holds ${rate} B/s within 15% (takes of ${chunk})`, async () => {
      const clock = new FakeClock();
      const budget = new RateBudget(rate, clock);
      const count = Math.max(20, Math.ceil((5 * rate) / chunk));
      const granted = await drain(budget, clock, count, chunk);
      const seconds = granted.at(-1)! / 1000;
      // The burst (a quarter second's worth) is there at the start.
      const measured = (count * chunk - Math.max(64 * 1024, rate / 4)) / seconds;
      expect(measured).toBeGreaterThan(rate * 0.85);
      expect(measured).toBeLessThan(rate * 1.15);
      expect(budget.granted).toBe(count * chunk);
    });
  }

  it('unlimited: takes return at once', async () => {
    const budget = new RateBudget(undefined, new FakeClock());
    await budget.take(10 * MiB);
    await budget.take(10 * MiB);
    expect(budget.granted).toBe(20 * MiB);
  });

  it('a pause holds waiting takers until resumed; a new rate applies to a taker that already waits', async () => {
    const clock = new FakeClock();
    const budget = new RateBudget(MiB, clock);
    await budget.take(MiB / 4); // the burst
    budget.setRate(0);
    let done = false;
    const waiting = budget.take(MiB).then(() => (done = true));
    await clock.advance(120_000);
    expect(done).toBe(false);
    const resumedAt = clock.now();
    budget.setRate(4 * MiB);
    for (let i = 0; i < 100 && !done; i++) await clock.step();
    await waiting;
    // 1 MiB at 4 MiB/s, from the resume: 250 ms (not the 1 s the old rate would have taken).
    expect(clock.now() - resumedAt).toBe(250);
  });

  it('a cut takes effect for a taker already waiting at the old rate', async () => {
    const clock = new FakeClock();
    const budget = new RateBudget(8 * MiB, clock);
    await budget.take(2 * MiB); // the burst
    let done = false;
    const waiting = budget.take(8 * MiB).then(() => (done = true));
    await clock.advance(100);
    budget.setRate(MiB);
    await clock.advance(900);
    expect(done).toBe(false);
    for (let i = 0; i < 100 && !done; i++) await clock.step();
    await waiting;
    // 0.8 MiB paid in the first 100 ms at 8 MiB/s, 7.2 MiB more at 1 MiB/s.
    expect(clock.now()).toBeCloseTo(100 + 7200, -1);
  });

  it('a cancelled taker rejects with the signal reason and gives its bytes back; takers behind it go on', async () => {
    const clock = new FakeClock();
    const budget = new RateBudget(MiB, clock);
    await budget.take(MiB / 4);
    budget.setRate(0);
    const controller = new AbortController();
    const first = budget.take(MiB, controller.signal);
    const second = budget.take(MiB / 4);
    await flush();
    controller.abort(new Error('stop'));
    await expect(first).rejects.toThrow('stop');
    budget.setRate(MiB);
    let done = false;
    void second.then(() => (done = true));
    for (let i = 0; i < 100 && !done; i++) await clock.step();
    await second;
    expect(budget.granted).toBe(MiB / 4 + MiB / 4);
    expect(clock.now()).toBeLessThanOrEqual(250);
  });

  it('rejects a negative or infinite rate', () => {
    expect(() => new RateBudget(-1)).toThrow(RangeError);
    expect(() => new RateBudget(Infinity)).toThrow(RangeError);
  });
});

describe('budgets through the engine (real files, real clock)', () => {
  it('a backup reading a real file through the read budget holds --read-limit within 15%, in steps of at most 1 MiB', async () => {
    const dir = path.join(tmp, 'data');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir);
    // 24 MiB of incompressible bytes in one large file and some small files.
    const block = Buffer.alloc(24 * MiB);
    for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((Math.imul(i, 2654435761) ^ (i >>> 7)) >>> 0, i);
    writeFileSync(path.join(dir, 'big'), block);
    for (let i = 0; i < 32; i++) writeFileSync(path.join(dir, `small-${i}`), block.subarray(i * 65536, i * 65536 + 60_000));
    const repo = await Repository.init(new FsStorage(path.join(tmp, 'repo')), 'pw', { workers: 1 });
    try {
      const rate = 12 * MiB;
      const governor = new Governor({ readLimit: rate });
      const sizes: number[] = [];
      // From the first read asked for to the last one granted: the backup's setup and final
      // flush are not reading.
      let first: number | undefined;
      let last = 0;
      const result = await backup(
        repo,
        {
          paths: [dir],
          hooks: {
            beforeRead: async (bytes, signal) => {
              first ??= performance.now();
              sizes.push(bytes);
              await governor.beforeRead(bytes, signal);
              last = performance.now();
            },
          },
        },
        createOperationContext(),
      );
      const seconds = (last - first!) / 1000;
      const total = result.snapshot.summary!.bytesRead;
      expect(total).toBe(24 * MiB + 32 * 60_000);
      expect(governor.readBudget.granted).toBe(total);
      expect(Math.max(...sizes)).toBeLessThanOrEqual(MiB);
      // The first quarter second's worth is a burst; the rest is paced.
      const measured = (total - rate / 4) / seconds;
      expect(measured).toBeGreaterThan(rate * 0.85);
      expect(measured).toBeLessThan(rate * 1.15);
    } finally {
      await repo.close();
    }
  });

  it('uploads through the storage stack pay the shared upload budget: --upload-limit holds within 15%', async () => {
    const rate = 8 * MiB;
    const governor = new Governor({ uploadLimit: rate });
    // From the first put asking to the last one let through (the disk's own time is not the budget's).
    let first: number | undefined;
    let last = 0;
    const upload = {
      take: async (bytes: number, signal?: AbortSignal) => {
        first ??= performance.now();
        await governor.uploadBudget.take(bytes, signal);
        last = performance.now();
      },
    };
    const storage = stackStorage(new FsStorage(path.join(tmp, 'uploads')), { limits: { upload } });
    const part = Buffer.alloc(MiB, 7);
    // Two writers sharing one budget.
    await Promise.all(
      [0, 1].map(async (w) => {
        for (let i = 0; i < 12; i++) await storage.put(`data/${w}-${i}`, [part]);
      }),
    );
    expect(governor.uploadBudget.granted).toBe(24 * MiB);
    const seconds = (last - first!) / 1000;
    const measured = (24 * MiB - rate / 4) / seconds;
    expect(measured).toBeGreaterThan(rate * 0.85);
    expect(measured).toBeLessThan(rate * 1.15);
    await storage.close();
  });
});
