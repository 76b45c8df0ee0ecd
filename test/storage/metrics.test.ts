import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { isTenderError } from '../../src/errors/errors.js';
import { MemStorage } from '../../src/storage/mem.js';
import type { Storage } from '../../src/storage/storage.js';
import { FaultyStorage } from '../../src/storage/wrap/faults.js';
import { MetricsStorage, type StorageCounters, type StorageOpEvent, StorageMetrics } from '../../src/storage/wrap/metrics.js';
import { RetryStorage } from '../../src/storage/wrap/retry.js';

const zero: StorageCounters = { lists: 0, stats: 0, gets: 0, puts: 0, deletes: 0, bytesRead: 0, bytesWritten: 0, errors: 0 };

describe('metrics wrapper: counts what really moved', () => {
  const body = randomBytes(10_000);
  const cases: Array<{ name: string; run: (s: Storage) => Promise<unknown>; want: Partial<StorageCounters> }> = [
    { name: 'put of parts: their total', run: (s) => s.put('data/00/new', [body.subarray(0, 3000), body.subarray(3000, 7001)]), want: { puts: 1, bytesWritten: 7001 } },
    { name: 'put that finds the key', run: (s) => s.put('data/00/k', [body.subarray(0, 10)]), want: { puts: 1, bytesWritten: 10 } },
    { name: 'whole get: the object size', run: (s) => s.get('data/00/k'), want: { gets: 1, bytesRead: 10_000 } },
    { name: 'ranged get: the range', run: (s) => s.get('data/00/k', { offset: 9000, length: 999 }), want: { gets: 1, bytesRead: 999 } },
    { name: 'get into a larger buffer: the object size', run: (s) => s.get('data/00/k', undefined, new Uint8Array(65_536)), want: { gets: 1, bytesRead: 10_000 } },
    { name: 'get of a missing key: an error, no bytes', run: (s) => s.get('data/00/missing').catch(() => undefined), want: { gets: 1, errors: 1 } },
    { name: 'stat', run: (s) => s.stat('data/00/k'), want: { stats: 1 } },
    { name: 'delete', run: (s) => s.delete('data/00/k'), want: { deletes: 1 } },
    {
      name: 'list (one per listing, not per object)',
      run: async (s) => {
        for await (const _ of s.list('data/'));
      },
      want: { lists: 1 },
    },
    {
      name: 'list the caller stops early',
      run: async (s) => {
        for await (const _ of s.list('')) break;
      },
      want: { lists: 1 },
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const mem = new MemStorage();
      await mem.put('data/00/k', [body]);
      await mem.put('data/00/j', [body]);
      const metrics = new StorageMetrics();
      await c.run(new MetricsStorage(mem, metrics));
      expect(metrics.snapshot()).toEqual({ ...zero, ...c.want });
    });
  }

  it('adds up a workload, matching the bytes the backend holds and returned', async () => {
    const mem = new MemStorage();
    const metrics = new StorageMetrics();
    const s = new MetricsStorage(mem, metrics);
    let written = 0;
    let read = 0;
    for (let i = 0; i < 20; i++) {
      const b = randomBytes(1000 + i * 37);
      await s.put(`data/${i}`, [b]);
      written += b.length;
    }
    for (let i = 0; i < 20; i += 3) read += (await s.get(`data/${i}`)).length;
    const held = (await Promise.all(Array.from({ length: 20 }, (_, i) => mem.stat(`data/${i}`)))).reduce((n, o) => n + o!.size, 0);
    const m = metrics.snapshot();
    expect(m.bytesWritten).toBe(written);
    expect(m.bytesWritten, 'what the backend holds').toBe(held);
    expect(m.bytesRead).toBe(read);
    expect(m.puts).toBe(20);
    expect(m.gets).toBe(7);
  });

  it('the snapshot is a plain copy: changing it changes nothing', async () => {
    const metrics = new StorageMetrics();
    const s = new MetricsStorage(new MemStorage(), metrics);
    await s.put('k', [Buffer.from('abc')]);
    const snap = metrics.snapshot();
    snap.puts = 99;
    expect(Object.getPrototypeOf(snap)).toBe(Object.prototype);
    expect(JSON.parse(JSON.stringify(snap))).toEqual(snap);
    expect(metrics.snapshot().puts).toBe(1);
  });

  it('tells a listener about every operation, with the counters after it', async () => {
    const events: Array<StorageOpEvent & { puts: number }> = [];
    const metrics = new StorageMetrics((e, c) => events.push({ ...e, puts: c.puts }));
    const s = new MetricsStorage(new MemStorage(), metrics);
    await s.put('a', [Buffer.from('12345')]);
    await s.put('a', [Buffer.from('12345')]);
    await s.get('a', { offset: 1, length: 2 });
    await s.get('b').catch(() => undefined);
    expect(events.map((e) => [e.op, e.key, e.bytes, e.result ?? null, e.error === undefined, e.puts])).toEqual([
      ['put', 'a', 5, 'stored', true, 1],
      ['put', 'a', 5, 'exists', true, 2],
      ['get', 'a', 2, null, true, 2],
      ['get', 'b', 0, null, false, 2],
    ]);
    expect(isTenderError(events[3]!.error, 'TENDER_NOT_FOUND')).toBe(true);
    for (const e of events) expect(e.durationMs).toBeGreaterThanOrEqual(0);
  });

  it('a listener that throws does not fail the operation; unsubscribe stops it', async () => {
    const metrics = new StorageMetrics();
    let calls = 0;
    const stop = metrics.subscribe(() => {
      calls++;
      throw new Error('exporter bug');
    });
    const s = new MetricsStorage(new MemStorage(), metrics);
    expect(await s.put('a', [Buffer.from('x')])).toBe('stored');
    stop();
    await s.put('b', [Buffer.from('x')]);
    expect(calls).toBe(1);
    expect(metrics.snapshot().puts).toBe(2);
  });

  it('inside the retry wrapper, every attempt counts (failed ones as errors)', async () => {
    const faulty = new FaultyStorage(new MemStorage());
    faulty.add({ op: 'put', times: 2 });
    const metrics = new StorageMetrics();
    const s = new RetryStorage(new MetricsStorage(faulty, metrics), { sleep: async () => undefined });
    expect(await s.put('data/00/k', [Buffer.alloc(100)])).toBe('stored');
    expect(metrics.snapshot()).toEqual({ ...zero, puts: 3, errors: 2, bytesWritten: 100 });
  });

  it('several wrappers can share one set of counters', async () => {
    const metrics = new StorageMetrics();
    const a = new MetricsStorage(new MemStorage(), metrics);
    const b = new MetricsStorage(new MemStorage(), metrics);
    await a.put('k', [Buffer.alloc(10)]);
    await b.put('k', [Buffer.alloc(20)]);
    expect(metrics.snapshot()).toMatchObject({ puts: 2, bytesWritten: 30 });
  });
});
