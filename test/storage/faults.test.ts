import { describe, expect, it } from 'vitest';
import { isTenderError } from '../../src/errors/errors.js';
import { MemStorage } from '../../src/storage/mem.js';
import { isPermanent } from '../../src/storage/storage.js';
import { type FaultOp, type FaultSpec, FaultyStorage } from '../../src/storage/wrap/faults.js';
import { flush } from '../helpers/fake-clock.js';

/** Runs `count` calls of `op` on keys keyOf(i), one after another; returns which ones failed. */
async function failures(faulty: FaultyStorage, op: FaultOp, count: number, keyOf: (i: number) => string): Promise<number[]> {
  const failed: number[] = [];
  for (let i = 1; i <= count; i++) {
    const key = keyOf(i);
    try {
      if (op === 'put') await faulty.put(key, [Buffer.from(key)]);
      else if (op === 'get') await faulty.get(key);
      else if (op === 'stat') await faulty.stat(key);
      else if (op === 'delete') await faulty.delete(key);
      else for await (const _ of faulty.list(key));
    } catch (err) {
      if (!isTenderError(err, 'TENDER_STORAGE')) throw err;
      failed.push(i);
    }
  }
  return failed;
}

describe('fault wrapper: which calls fail', () => {
  const cases: Array<{ name: string; spec: FaultSpec; op: FaultOp; keyOf?: (i: number) => string; failed: number[] }> = [
    { name: 'the 3rd put', spec: { op: 'put', nth: 3 }, op: 'put', failed: [3] },
    { name: 'the 2nd get', spec: { op: 'get', nth: 2 }, op: 'get', failed: [2] },
    { name: 'puts 2 to 4', spec: { op: 'put', nth: 2, times: 3 }, op: 'put', failed: [2, 3, 4] },
    { name: 'every put', spec: { op: 'put' }, op: 'put', failed: [1, 2, 3, 4, 5, 6] },
    { name: 'not gets, when puts are asked for', spec: { op: 'put' }, op: 'get', failed: [] },
    { name: 'several kinds of call', spec: { op: ['stat', 'delete'], nth: 1, times: 2 }, op: 'stat', failed: [1, 2] },
    { name: 'keys under a prefix only', spec: { prefix: 'index/' }, op: 'put', keyOf: (i) => (i % 2 ? `index/${i}` : `data/${i}`), failed: [1, 3, 5] },
    { name: 'the 2nd call under a prefix', spec: { op: 'get', prefix: 'index/', nth: 2 }, op: 'get', keyOf: (i) => (i % 2 ? `index/${i}` : `data/${i}`), failed: [3] },
    { name: 'lists of a prefix', spec: { op: 'list', prefix: 'snap' }, op: 'list', keyOf: (i) => (i > 4 ? 'snapshots/' : 'data/'), failed: [5, 6] },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const mem = new MemStorage();
      const keyOf = c.keyOf ?? ((i: number) => `data/${i}`);
      for (let i = 1; i <= 6; i++) await mem.put(keyOf(i), [Buffer.from('x')]);
      const faulty = new FaultyStorage(mem);
      const handle = faulty.add(c.spec);
      expect(await failures(faulty, c.op, 6, keyOf)).toEqual(c.failed);
      expect(handle.failed).toBe(c.failed.length);
    });
  }

  it('failNth and failPrefix are the same faults; remove() takes one out', async () => {
    const faulty = new FaultyStorage(new MemStorage());
    faulty.failNth('put', 2);
    const prefix = faulty.failPrefix('keys/', { op: 'put' });
    expect(await failures(faulty, 'put', 4, (i) => `data/${i}`)).toEqual([2]);
    expect(await failures(faulty, 'put', 2, (i) => `keys/${i}`)).toEqual([1, 2]);
    prefix.remove();
    expect(await failures(faulty, 'put', 2, (i) => `keys/${i}`)).toEqual([]);
  });

  it('fails before the backend by default, after it with when: after (a lost reply)', async () => {
    const mem = new MemStorage();
    const faulty = new FaultyStorage(mem);
    faulty.add({ op: 'put', nth: 1 });
    faulty.add({ op: 'put', nth: 2, when: 'after' });
    await expect(faulty.put('data/before', [Buffer.from('x')])).rejects.toThrow(/injected fault/);
    await expect(faulty.put('data/after', [Buffer.from('x')])).rejects.toThrow(/injected fault/);
    expect(await mem.stat('data/before'), 'never reached the backend').toBeUndefined();
    expect(await mem.stat('data/after'), 'stored, reply lost').toEqual({ key: 'data/after', size: 1 });
  });

  it('the default error is transient; permanent: true or an own error instead', async () => {
    const faulty = new FaultyStorage(new MemStorage());
    faulty.add({ op: 'get', nth: 1 });
    faulty.add({ op: 'get', nth: 2, permanent: true });
    faulty.add({ op: 'get', nth: 3, error: () => new RangeError('custom') });
    const errs = [];
    for (let i = 0; i < 3; i++) errs.push(await faulty.get('k').catch((e: unknown) => e));
    expect(isTenderError(errs[0], 'TENDER_STORAGE') && !isPermanent(errs[0])).toBe(true);
    expect(isTenderError(errs[1], 'TENDER_STORAGE') && isPermanent(errs[1])).toBe(true);
    expect(errs[2]).toBeInstanceOf(RangeError);
  });

  it('counts calls by operation', async () => {
    const faulty = new FaultyStorage(new MemStorage());
    await faulty.put('a', [Buffer.from('x')]);
    await faulty.get('a');
    await faulty.stat('a');
    expect(faulty.calls).toEqual({ list: 0, stat: 1, get: 1, put: 1, delete: 0 });
  });
});

describe('fault wrapper: hold', () => {
  it('stops puts after the first, reports when the first has finished, and lets them go on release', async () => {
    const mem = new MemStorage();
    const faulty = new FaultyStorage(mem);
    const gate = faulty.hold({ op: 'put', prefix: 'data/', after: 1 });
    let reached = false;
    void gate.reached.then(() => (reached = true));
    // What a pack writer does: several packs in flight at once, plus metadata that is not held.
    const puts = ['data/1', 'data/2', 'data/3'].map((k) => faulty.put(k, [Buffer.from(k)]));
    const other = faulty.put('sessions/s', [Buffer.from('x')]);
    await gate.reached;
    expect(reached).toBe(true);
    expect(gate.waiting).toBe(2);
    expect(await other).toBe('stored');
    expect(await puts[0]).toBe('stored');
    // However long we wait, nothing held reaches the backend.
    await flush();
    await new Promise((r) => setTimeout(r, 50));
    expect(await mem.stat('data/2')).toBeUndefined();
    expect(await mem.stat('data/3')).toBeUndefined();
    // A fault put in place now is met by the held puts: no race with the clock.
    faulty.add({ op: 'put', prefix: 'data/', nth: 1 });
    gate.release();
    const results = await Promise.allSettled(puts.slice(1));
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
    // After release, later puts are not held.
    expect(await faulty.put('data/4', [Buffer.from('x')])).toBe('stored');
  });

  it('reached waits until the puts let through have finished, not only started', async () => {
    const mem = new MemStorage();
    let finishFirst!: () => void;
    const slow = new FaultyStorage(
      Object.assign(Object.create(mem) as MemStorage, {
        put: async (key: string, parts: readonly Uint8Array[]) => {
          if (key === 'data/1') await new Promise<void>((r) => (finishFirst = r));
          return mem.put(key, parts);
        },
      }),
    );
    const gate = slow.hold({ after: 1 });
    let reached = false;
    void gate.reached.then(() => (reached = true));
    const first = slow.put('data/1', [Buffer.from('x')]);
    const second = slow.put('data/2', [Buffer.from('x')]);
    await flush();
    expect(gate.waiting).toBe(1);
    expect(reached, 'the first put is still running').toBe(false);
    finishFirst();
    await first;
    await gate.reached;
    expect(reached).toBe(true);
    gate.release();
    expect(await second).toBe('stored');
  });

  it('close() opens every gate, so nothing waits forever', async () => {
    const faulty = new FaultyStorage(new MemStorage());
    const gate = faulty.hold({ op: 'get' });
    const held = faulty.get('missing').catch((e: unknown) => e);
    await gate.reached;
    await faulty.close();
    await gate.released;
    expect(isTenderError(await held)).toBe(true);
  });
});
