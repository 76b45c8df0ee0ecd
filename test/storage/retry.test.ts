import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type ErrorCode, TenderError, isTenderError } from '../../src/errors/errors.js';
import { MemStorage } from '../../src/storage/mem.js';
import { markPermanent, type Storage } from '../../src/storage/storage.js';
import { FaultyStorage } from '../../src/storage/wrap/faults.js';
import { RetryStorage, isRetryable } from '../../src/storage/wrap/retry.js';

const noSleep = async () => undefined;

async function failure(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error('expected a failure');
    },
    (err: unknown) => err,
  );
}

describe('retry wrapper: what is retried', () => {
  const storageError = () => new TenderError('TENDER_STORAGE', 'reset');
  const cases: Array<{ name: string; error: () => Error; retried: boolean }> = [
    { name: 'transient TENDER_STORAGE', error: storageError, retried: true },
    { name: 'TENDER_STORAGE marked permanent', error: () => markPermanent(storageError()), retried: false },
    { name: 'TENDER_NOT_FOUND', error: () => new TenderError('TENDER_NOT_FOUND', 'gone'), retried: false },
    { name: 'TENDER_STORAGE_AUTH', error: () => new TenderError('TENDER_STORAGE_AUTH', 'denied'), retried: false },
    { name: 'TENDER_STORAGE_CONFIG', error: () => new TenderError('TENDER_STORAGE_CONFIG', 'no bucket'), retried: false },
    { name: 'TENDER_DISK_FULL', error: () => new TenderError('TENDER_DISK_FULL', 'full'), retried: false },
    { name: 'a plain Error (a bug)', error: () => new TypeError('x is undefined'), retried: false },
  ];
  const ops: Array<{ op: 'put' | 'get' | 'stat' | 'delete' | 'list'; run: (s: Storage) => Promise<unknown> }> = [
    { op: 'put', run: (s) => s.put('data/00/k', [Buffer.from('x')]) },
    { op: 'get', run: (s) => s.get('data/00/k') },
    { op: 'stat', run: (s) => s.stat('data/00/k') },
    { op: 'delete', run: (s) => s.delete('data/00/k') },
    {
      op: 'list',
      run: async (s) => {
        for await (const _ of s.list('data/'));
      },
    },
  ];

  for (const c of cases) {
    for (const { op, run } of ops) {
      it(`${op}: ${c.name} is ${c.retried ? 'retried up to maxAttempts' : 'not retried'}`, async () => {
        const mem = new MemStorage();
        await mem.put('data/00/k', [Buffer.from('x')]);
        const faulty = new FaultyStorage(mem);
        faulty.add({ op, error: c.error });
        const s = new RetryStorage(faulty, { maxAttempts: 4, sleep: noSleep });
        const err = await failure(run(s));
        expect(isRetryable(err)).toBe(c.retried);
        expect(faulty.calls[op], 'attempts made').toBe(c.retried ? 4 : 1);
        if (c.retried) expect((err as Error).message).toMatch(/gave up after 4 attempts/);
      });
    }
  }

  it('succeeds on the attempt after the last failure (transient failures fewer than maxAttempts)', async () => {
    for (const failures of [0, 1, 2, 3, 4]) {
      const mem = new MemStorage();
      const faulty = new FaultyStorage(mem);
      faulty.add({ op: 'put', times: failures });
      const s = new RetryStorage(faulty, { maxAttempts: 5, sleep: noSleep });
      expect(await s.put('data/00/k', [Buffer.from('body')])).toBe('stored');
      expect(faulty.calls.put).toBe(failures + 1);
      expect((await mem.get('data/00/k')).toString()).toBe('body');
    }
    // One failure more than the attempts: it gives up.
    const faulty = new FaultyStorage(new MemStorage());
    faulty.add({ op: 'put', times: 5 });
    const s = new RetryStorage(faulty, { maxAttempts: 5, sleep: noSleep });
    expect(isTenderError(await failure(s.put('data/00/k', [Buffer.from('body')])), 'TENDER_STORAGE')).toBe(true);
    expect(faulty.calls.put).toBe(5);
  });
});

describe('retry wrapper: put', () => {
  it('a put whose reply was lost is retried and comes back as exists, with the first bytes stored', async () => {
    const mem = new MemStorage();
    // A backend that holds the parts until it settles (as S3 does): no partsReleased.
    const holdsParts: Storage = Object.assign(Object.create(mem) as MemStorage, {
      put: (key: string, parts: readonly Uint8Array[]) => mem.put(key, parts),
    });
    const faulty = new FaultyStorage(holdsParts);
    faulty.add({ op: 'put', when: 'after', times: 1 });
    const s = new RetryStorage(faulty, { sleep: noSleep });
    const body = randomBytes(1000);
    expect(await s.put('data/00/k', [body])).toBe('exists');
    expect(faulty.calls.put).toBe(2);
    expect((await mem.get('data/00/k')).equals(body)).toBe(true);
  });

  it('is not retried once the backend released the parts (the caller may be reusing them)', async () => {
    const mem = new MemStorage();
    const faulty = new FaultyStorage(mem);
    // MemStorage releases the parts as soon as it copied them; the failure comes after that.
    faulty.add({ op: 'put', when: 'after', times: 1 });
    const s = new RetryStorage(faulty, { sleep: noSleep });
    let released = 0;
    const err = await failure(s.put('data/00/k', [Buffer.from('x')], { partsReleased: () => released++ }));
    expect(isTenderError(err, 'TENDER_STORAGE')).toBe(true);
    expect(faulty.calls.put, 'one attempt only').toBe(1);
    expect(released, 'the caller is told once').toBe(1);
  });

  it('passes partsReleased through, once, when the attempts before the last failed without releasing', async () => {
    const faulty = new FaultyStorage(new MemStorage());
    faulty.add({ op: 'put', times: 2 });
    const s = new RetryStorage(faulty, { sleep: noSleep });
    let released = 0;
    expect(await s.put('data/00/k', [Buffer.from('x')], { partsReleased: () => released++ })).toBe('stored');
    expect(faulty.calls.put).toBe(3);
    expect(released).toBe(1);
  });
});

describe('retry wrapper: list', () => {
  it('is retried while nothing was yielded, and not once something was', async () => {
    const mem = new MemStorage();
    for (const k of ['a', 'b', 'c']) await mem.put(`index/${k}`, [Buffer.from(k)]);

    // Fails before the first item: retried, the listing is complete.
    const before = new FaultyStorage(mem);
    before.add({ op: 'list', times: 2 });
    const keys: string[] = [];
    for await (const { key } of new RetryStorage(before, { sleep: noSleep }).list('index/')) keys.push(key);
    expect(keys.sort()).toEqual(['index/a', 'index/b', 'index/c']);
    expect(before.calls.list).toBe(3);

    // Fails after the first item: the error reaches the caller, who saw that item once.
    let calls = 0;
    const broken: Storage = {
      location: 'broken:',
      concurrentPuts: 1,
      async *list() {
        calls++;
        yield { key: 'index/a', size: 1 };
        throw new TenderError('TENDER_STORAGE', 'connection reset mid-listing');
      },
      stat: () => mem.stat(''),
      get: () => mem.get(''),
      put: () => mem.put('', []),
      delete: () => mem.delete(''),
      close: async () => undefined,
    };
    const seen: string[] = [];
    const err = await failure(
      (async () => {
        for await (const { key } of new RetryStorage(broken, { sleep: noSleep }).list('index/')) seen.push(key);
      })(),
    );
    expect(isTenderError(err, 'TENDER_STORAGE')).toBe(true);
    expect(seen).toEqual(['index/a']);
    expect(calls, 'not listed again').toBe(1);
  });
});

describe('retry wrapper: backoff', () => {
  it('waits exponentially longer, with jitter in [cap/2, cap], capped at maxDelayMs', async () => {
    for (const jitter of [0, 0.5, 0.999]) {
      const delays: number[] = [];
      const faulty = new FaultyStorage(new MemStorage());
      faulty.add({ op: 'get' });
      const s = new RetryStorage(faulty, {
        maxAttempts: 8,
        baseDelayMs: 100,
        maxDelayMs: 1000,
        random: () => jitter,
        sleep: async (ms) => {
          delays.push(ms);
        },
      });
      await failure(s.get('data/00/k'));
      const caps = [100, 200, 400, 800, 1000, 1000, 1000];
      expect(delays).toEqual(caps.map((cap) => cap / 2 + (jitter * cap) / 2));
    }
  });

  it('reports each retry', async () => {
    const events: Array<{ op: string; attempt: number; code: ErrorCode }> = [];
    const faulty = new FaultyStorage(new MemStorage());
    faulty.add({ op: 'stat', times: 2 });
    const s = new RetryStorage(faulty, { sleep: noSleep, onRetry: (e) => events.push({ op: e.op, attempt: e.attempt, code: e.error.code }) });
    await s.stat('keys/k');
    expect(events).toEqual([
      { op: 'stat', attempt: 1, code: 'TENDER_STORAGE' },
      { op: 'stat', attempt: 2, code: 'TENDER_STORAGE' },
    ]);
  });

  it('an abort signal ends a backoff at once, with TENDER_CANCELLED', async () => {
    const faulty = new FaultyStorage(new MemStorage());
    faulty.add({ op: 'get' });
    const controller = new AbortController();
    // The real (timer) sleep: a 60 s backoff.
    const s = new RetryStorage(faulty, { baseDelayMs: 60_000, maxDelayMs: 60_000, signal: controller.signal });
    const t0 = performance.now();
    const pending = failure(s.get('data/00/k'));
    setTimeout(() => controller.abort(), 20);
    const err = await pending;
    expect(isTenderError(err, 'TENDER_CANCELLED')).toBe(true);
    expect(performance.now() - t0).toBeLessThan(10_000);
    expect(faulty.calls.get).toBe(1);
  });

  it('close() ends a backoff at once', async () => {
    const faulty = new FaultyStorage(new MemStorage());
    faulty.add({ op: 'put' });
    const s = new RetryStorage(faulty, { baseDelayMs: 60_000, maxDelayMs: 60_000 });
    const t0 = performance.now();
    const pending = failure(s.put('data/00/k', [Buffer.from('x')]));
    setTimeout(() => void s.close(), 20);
    const err = await pending;
    expect(isTenderError(err)).toBe(true);
    expect(isRetryable(err), 'closed is final').toBe(false);
    expect(performance.now() - t0).toBeLessThan(10_000);
  });
});
