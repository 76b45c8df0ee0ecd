/**
 * The conformance suite every Storage backend and every wrapper runs (see the guarantees in
 * src/storage/storage.ts); test/storage/conformance.test.ts runs it.
 *
 *   describeStorageConformance('fs', async () => new FsStorage(await mkdtemp(...)));
 *
 * `makeStorage` is called once per test and must return an empty storage each time (a fresh
 * directory, a fresh S3 prefix); the suite closes it after the test.
 */
import { createHash, randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { isTenderError } from '../../src/errors/errors.js';
import type { ObjectInfo, Storage } from '../../src/storage/storage.js';

const MiB = 1024 * 1024;

async function collect(it: AsyncIterable<ObjectInfo>): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const info of it) out.push(info);
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

async function keysOf(s: Storage, prefix: string): Promise<string[]> {
  return (await collect(s.list(prefix))).map((o) => o.key);
}

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected an error with code ${code}`).toBeDefined();
  expect(isTenderError(caught) ? caught.code : caught).toBe(code);
}

function sha(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

function randomKey(dir = 'data'): string {
  const id = randomBytes(16).toString('hex');
  return dir === 'data' ? `data/${id.slice(0, 2)}/${id}` : `${dir}/${id}`;
}

export function describeStorageConformance(name: string, makeStorage: () => Promise<Storage>): void {
  describe(`storage conformance: ${name}`, () => {
    const open: Storage[] = [];
    const fresh = async (): Promise<Storage> => {
      const s = await makeStorage();
      open.push(s);
      return s;
    };
    afterEach(async () => {
      await Promise.all(open.splice(0).map((s) => s.close()));
    });

    it('has a location for messages', async () => {
      const s = await fresh();
      expect(typeof s.location).toBe('string');
      expect(s.location.length).toBeGreaterThan(0);
    });

    it('round-trips an object put as several parts', async () => {
      const s = await fresh();
      const backing = randomBytes(4096);
      const parts = [randomBytes(1000), new Uint8Array(0), randomBytes(70_000), backing.subarray(100, 3100), Buffer.from('end')];
      const whole = Buffer.concat(parts);
      const key = randomKey();
      expect(await s.put(key, parts)).toBe('stored');
      const got = await s.get(key);
      expect(Buffer.isBuffer(got)).toBe(true);
      expect(got.length).toBe(whole.length);
      expect(got.equals(whole)).toBe(true);
      expect(await s.stat(key)).toEqual({ key, size: whole.length });
    });

    it('reads byte ranges', async () => {
      const s = await fresh();
      const whole = randomBytes(100_000);
      const key = randomKey();
      await s.put(key, [whole.subarray(0, 40_000), whole.subarray(40_000)]);
      const cases = [
        { offset: 0, length: 1 },
        { offset: 10, length: 100 },
        { offset: 39_990, length: 20 }, // across the boundary of the parts it was put as
        { offset: 99_000, length: 1000 }, // the tail
        { offset: 0, length: 100_000 }, // everything
        { offset: 5, length: 0 },
      ];
      for (const range of cases) {
        const got = await s.get(key, range);
        expect(got.length, `range ${range.offset}+${range.length}`).toBe(range.length);
        expect(got.equals(whole.subarray(range.offset, range.offset + range.length))).toBe(true);
      }
    });

    it('reads into a caller\'s buffer: the result is a view of it', async () => {
      const s = await fresh();
      const whole = randomBytes(50_000);
      const key = randomKey();
      await s.put(key, [whole]);
      const cases = [
        { range: undefined, into: 50_000 },
        { range: undefined, into: 60_000 },
        { range: { offset: 1000, length: 2000 }, into: 2000 },
        { range: { offset: 49_000, length: 1000 }, into: 4096 },
      ];
      for (const { range, into } of cases) {
        const buf = new Uint8Array(new ArrayBuffer(into + 16), 16, into);
        const got = await s.get(key, range, buf);
        const want = range ? whole.subarray(range.offset, range.offset + range.length) : whole;
        expect(got.equals(want), `range ${JSON.stringify(range)} into ${into}`).toBe(true);
        expect(got.buffer, 'the result lies in the given buffer').toBe(buf.buffer);
        expect(got.byteOffset).toBe(buf.byteOffset);
      }
      await expectCode(s.get(randomKey(), undefined, new Uint8Array(10)), 'TENDER_NOT_FOUND');
    });

    it('reports a missing object as TENDER_NOT_FOUND', async () => {
      const s = await fresh();
      const key = randomKey();
      await expectCode(s.get(key), 'TENDER_NOT_FOUND');
      await expectCode(s.get(key, { offset: 0, length: 10 }), 'TENDER_NOT_FOUND');
      await expectCode(s.get(key, { offset: 0, length: 0 }), 'TENDER_NOT_FOUND');
      expect(await s.stat(key)).toBeUndefined();
    });

    it('never overwrites: a second put returns exists and keeps the first content', async () => {
      const s = await fresh();
      const key = randomKey('snapshots');
      const first = randomBytes(5000);
      expect(await s.put(key, [first])).toBe('stored');
      expect(await s.put(key, [randomBytes(5000)])).toBe('exists');
      expect(await s.put(key, [randomBytes(17)])).toBe('exists');
      expect((await s.get(key)).equals(first)).toBe(true);
      expect(await s.stat(key)).toEqual({ key, size: first.length });
    });

    it('stores exactly one of several concurrent puts of the same key', async () => {
      const s = await fresh();
      const key = randomKey('index');
      const bodies = Array.from({ length: 8 }, () => randomBytes(256 * 1024));
      const results = await Promise.all(bodies.map((b) => s.put(key, [b.subarray(0, 1000), b.subarray(1000)])));
      expect(results.filter((r) => r === 'stored')).toHaveLength(1);
      expect(results.filter((r) => r === 'exists')).toHaveLength(bodies.length - 1);
      const winner = bodies[results.indexOf('stored')]!;
      const got = await s.get(key);
      expect(sha(got)).toBe(sha(winner));
    });

    it('never shows a partially written object', async () => {
      const s = await fresh();
      const key = randomKey();
      const body = randomBytes(24 * MiB);
      const parts = [body.subarray(0, 8 * MiB), body.subarray(8 * MiB, 16 * MiB), body.subarray(16 * MiB)];
      let done = false;
      const putting = s.put(key, parts).finally(() => {
        done = true;
      });
      const seen: number[] = [];
      while (!done) {
        const info = await s.stat(key);
        if (info) seen.push(info.size);
        try {
          const got = await s.get(key, { offset: body.length - 16, length: 16 });
          expect(got.equals(body.subarray(body.length - 16))).toBe(true);
        } catch (err) {
          if (!isTenderError(err, 'TENDER_NOT_FOUND')) throw err;
        }
        for (const o of await collect(s.list('data/'))) seen.push(o.size);
      }
      expect(await putting).toBe('stored');
      for (const size of seen) expect(size).toBe(body.length);
      expect(sha(await s.get(key))).toBe(sha(body));
    });

    it('lists by prefix, including nested keys, and reflects deletes', async () => {
      const s = await fresh();
      const objects: Record<string, number> = {
        config: 10,
        'data/ab/ab01': 1,
        'data/ab/ab02': 2,
        'data/ab/abff': 3,
        'data/cd/cd01': 4,
        'index/0001': 5,
        'keys/k1': 6,
        'snapshots/s1': 7,
      };
      await Promise.all(Object.entries(objects).map(([key, size]) => s.put(key, [randomBytes(size)])));

      const all = await collect(s.list(''));
      expect(all).toEqual(
        Object.entries(objects)
          .map(([key, size]) => ({ key, size }))
          .sort((a, b) => (a.key < b.key ? -1 : 1)),
      );
      expect(await keysOf(s, 'data/')).toEqual(['data/ab/ab01', 'data/ab/ab02', 'data/ab/abff', 'data/cd/cd01']);
      expect(await keysOf(s, 'data/ab/')).toEqual(['data/ab/ab01', 'data/ab/ab02', 'data/ab/abff']);
      expect(await keysOf(s, 'data/ab/ab0')).toEqual(['data/ab/ab01', 'data/ab/ab02']);
      expect(await keysOf(s, 'data/c')).toEqual(['data/cd/cd01']);
      expect(await keysOf(s, 'index/')).toEqual(['index/0001']);
      expect(await keysOf(s, 'conf')).toEqual(['config']);
      expect(await keysOf(s, 'nothing/')).toEqual([]);
      expect(await keysOf(s, 'data/zz/')).toEqual([]);

      await s.delete('data/ab/ab01');
      await s.delete('snapshots/s1');
      expect(await keysOf(s, 'data/')).toEqual(['data/ab/ab02', 'data/ab/abff', 'data/cd/cd01']);
      expect(await keysOf(s, 'snapshots/')).toEqual([]);
      expect((await collect(s.list(''))).length).toBe(Object.keys(objects).length - 2);
    });

    it('stats objects', async () => {
      const s = await fresh();
      const key = randomKey('keys');
      expect(await s.stat(key)).toBeUndefined();
      await s.put(key, [randomBytes(1234), randomBytes(1)]);
      expect(await s.stat(key)).toEqual({ key, size: 1235 });
    });

    it('deletes, and deleting a missing object is fine', async () => {
      const s = await fresh();
      const key = randomKey();
      await s.delete(key);
      await s.put(key, [Buffer.from('first')]);
      await s.delete(key);
      await expectCode(s.get(key), 'TENDER_NOT_FOUND');
      expect(await s.stat(key)).toBeUndefined();
      await s.delete(key);
      // A deleted key can be written again.
      expect(await s.put(key, [Buffer.from('second')])).toBe('stored');
      expect((await s.get(key)).toString()).toBe('second');
    });

    it('stores empty objects', async () => {
      const s = await fresh();
      const a = randomKey();
      const b = randomKey();
      expect(await s.put(a, [])).toBe('stored');
      expect(await s.put(b, [new Uint8Array(0), new Uint8Array(0)])).toBe('stored');
      expect(await s.put(a, [Buffer.from('not empty')])).toBe('exists');
      for (const key of [a, b]) {
        expect((await s.get(key)).length).toBe(0);
        expect(await s.stat(key)).toEqual({ key, size: 0 });
      }
      expect((await collect(s.list('data/'))).map((o) => o.size)).toEqual([0, 0]);
    });

    it('declares how many puts to keep in flight', async () => {
      const s = await fresh();
      expect(Number.isInteger(s.concurrentPuts) && s.concurrentPuts >= 1, `concurrentPuts = ${s.concurrentPuts}`).toBe(true);
    });

    it('reads the parts no more once it says they are released (the caller reuses the memory)', async () => {
      const s = await fresh();
      const body = randomBytes(4 * MiB);
      const parts = [Buffer.from(body.subarray(0, MiB)), Buffer.from(body.subarray(MiB))];
      const key = randomKey();
      let releasedBeforeSettled = 0;
      let settled = false;
      const putting = s
        .put(key, parts, {
          partsReleased: () => {
            if (!settled) releasedBeforeSettled++;
            // What a pack writer does next: fill the same buffer with the next pack.
            for (const p of parts) p.fill(0x5a);
          },
        })
        .finally(() => (settled = true));
      expect(await putting).toBe('stored');
      expect(releasedBeforeSettled, 'partsReleased calls before put settled').toBeLessThanOrEqual(1);
      expect(sha(await s.get(key)), 'the stored object is the bytes as they were at the put').toBe(sha(body));
    });

    it('stores a large object (over 64 MiB, multipart on S3)', async () => {
      const s = await fresh();
      const key = randomKey();
      const size = 64 * MiB + 3 * MiB + 123;
      const body = randomBytes(size);
      // Odd part boundaries, so that upload parts straddle them.
      const parts = [body.subarray(0, 7 * MiB + 5), body.subarray(7 * MiB + 5, 40 * MiB), body.subarray(40 * MiB)];
      expect(await s.put(key, parts)).toBe('stored');
      expect(await s.stat(key)).toEqual({ key, size });
      const ranges = [
        { offset: 16 * MiB - 100, length: 200 },
        { offset: size - 1000, length: 1000 },
      ];
      for (const r of ranges) {
        expect((await s.get(key, r)).equals(body.subarray(r.offset, r.offset + r.length))).toBe(true);
      }
      expect(sha(await s.get(key))).toBe(sha(body));
      expect(await s.put(key, [body])).toBe('exists');
    });
  });
}
