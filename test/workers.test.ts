import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNative, nativeUnavailableReason } from '../src/util/native.js';
import { BlobType } from '../src/repo/blob.js';
import { BlobCodec } from '../src/transform/blob-codec.js';
import type { MasterKeys } from '../src/transform/keys.js';
import fc from 'fast-check';
import type { OpenRequest, SealRequest } from '../src/workers/ops.js';
import { createExecutor } from '../src/workers/pool.js';
import { decodeOpens, decodeSealed, decodeSeals, encodeOpens, encodeSealed, encodeSeals } from '../src/workers/wire.js';

const keys: MasterKeys = { encryption: randomBytes(32), blobId: randomBytes(32), gearSeed: randomBytes(32) };

describe('worker pool', () => {
  it('close() answers every request already sent before the threads end', async () => {
    const chunk = 4 << 20;
    const count = 8;
    const source = new SharedArrayBuffer(chunk * count);
    const plain = new Uint8Array(source);
    for (let i = 0; i < plain.length; i += 4096) plain.set(randomBytes(64), i);
    const target = new SharedArrayBuffer((chunk + 4096) * count);
    const codec = new BlobCodec(keys, 1);
    const requests = Array.from({ length: count }, (_, i) => ({
      type: BlobType.data,
      id: codec.id(plain.subarray(i * chunk, (i + 1) * chunk)),
      offset: i * chunk,
      length: chunk,
      target,
      targetOffset: i * (chunk + 4096),
      targetCapacity: chunk + 4096,
    }));
    const pool = createExecutor(keys, 1, 2);
    // Sent, then closed at once: the work is still queued or under way when close() is called.
    const sealing = Promise.all([pool.seal(source, requests.slice(0, count / 2)), pool.seal(source, requests.slice(count / 2))]);
    await pool.close();
    const sealed = (await sealing).flat();
    expect(sealed).toHaveLength(count);
    sealed.forEach((s, i) => {
      const r = requests[i]!;
      const stored = new Uint8Array(target, r.targetOffset, s.storedLength);
      expect(Buffer.compare(codec.open(r.type, r.id, s.flags, chunk, stored), plain.subarray(r.offset, r.offset + chunk))).toBe(0);
    });
  });

  it('refuses a request after close() with a clear error instead of waiting forever', async () => {
    const pool = createExecutor(keys, 1, 1);
    await pool.close();
    await expect(pool.open(new SharedArrayBuffer(8), [])).rejects.toThrow(/worker pool is closed/);
  });
});

describe.skipIf(process.env.TENDER_NATIVE === '0')('native addon in a worker thread', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'tender-workers-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a thread stopped while inside the addon ends alone, without aborting the process', async () => {
    const addonPath = loadNative() ? path.resolve('native/build/Release/tender_native.node') : undefined;
    if (!addonPath) throw new Error(`native addon unavailable: ${nativeUnavailableReason()}`);
    // The addon calls back into JS (the variant's toString); the thread is terminated while it
    // waits there, so the addon's call fails when the JS returns and raises an exception that a
    // stopping thread cannot take. Built without NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS,
    // node-addon-api aborts the whole process at that point.
    const script = path.join(dir, 'stop-inside-addon.mjs');
    await writeFile(
      script,
      `import { Worker } from 'node:worker_threads';
const body = \`
const { parentPort, workerData } = require('node:worker_threads');
const addon = require(workerData.addonPath);
const gate = new Int32Array(workerData.gate);
new addon.GearChunker(new Uint32Array(256), 1, 2, 3, 0, 0, {
  toString() { parentPort.postMessage('inside'); Atomics.wait(gate, 0, 0); return 'bytewise'; },
});
parentPort.postMessage('returned');
\`;
const worker = new Worker(body, { eval: true, workerData: { addonPath: ${JSON.stringify(addonPath)}, gate: new SharedArrayBuffer(4) } });
worker.on('message', (m) => { console.log(m); if (m === 'inside') worker.terminate(); });
worker.on('exit', (code) => console.log('exit', code));
`,
    );
    const run = await promisify(execFile)(process.execPath, [script]).then(
      ({ stdout }) => ({ code: 0, signal: null, stdout, stderr: '' }),
      (err: { code: number; signal: string | null; stdout: string; stderr: string }) => err,
    );
    expect(run, `stderr: ${run.stderr}`).toMatchObject({ code: 0, signal: null });
    expect(run.stdout.trim().split('\n')).toEqual(['inside', 'exit 1']);
  });
});

describe('worker wire format (src/workers/wire.ts)', () => {
  const id = () => new Uint8Array(randomBytes(32));
  const targets = [new SharedArrayBuffer(64), new SharedArrayBuffer(64)];
  /** Whether `b` is the memory of `a` (a clone of a shared buffer is another object over the same memory). */
  const sameMemory = (a: SharedArrayBuffer, b: SharedArrayBuffer | undefined) => {
    const marker = (new Uint8Array(a)[0]! + 1) & 0xff;
    new Uint8Array(a)[0] = marker;
    return b !== undefined && new Uint8Array(b)[0] === marker;
  };

  it('carries seal requests and their results across in columns, field for field', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            type: fc.constantFrom(BlobType.data, BlobType.tree, BlobType.list),
            offset: fc.nat(2 ** 40),
            length: fc.nat(2 ** 31),
            target: fc.constantFrom(...targets),
            targetOffset: fc.nat(2 ** 40),
            targetCapacity: fc.nat(2 ** 31),
            elementSize: fc.constantFrom(0, 2, 4, 8),
            withBase: fc.boolean(),
          }),
          { maxLength: 40 },
        ),
        (rows) => {
          const requests: SealRequest[] = rows.map(({ withBase, ...r }) => ({ ...r, id: id(), ...(withBase ? { base: id() } : {}) }));
          const decoded = decodeSeals(structuredClone(encodeSeals(requests)));
          expect(decoded).toHaveLength(requests.length);
          decoded.forEach((d, i) => {
            const { target, ...rest } = d;
            const { target: sent, ...expected } = requests[i]!;
            expect({ ...rest, id: [...rest.id], base: rest.base && [...rest.base] }).toEqual({ ...expected, id: [...expected.id], base: expected.base && [...expected.base] });
            // The same shared memory, not a copy.
            expect(sameMemory(sent, target)).toBe(true);
          });
          const results = requests.map((_, i) => ({ storedLength: i * 1000 + 28, flags: i % 16, sealMs: i / 3 }));
          expect(decodeSealed(structuredClone(encodeSealed(results)))).toEqual(results);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('carries open requests across, with and without a target and a base', () => {
    const requests: OpenRequest[] = [
      { type: BlobType.data, id: id(), flags: 1, rawLength: 10, offset: 0, storedLength: 38 },
      { type: BlobType.data, id: id(), flags: 18, rawLength: 2 ** 33, offset: 2 ** 35, storedLength: 99, target: targets[1]!, targetOffset: 2 ** 36, base: id() },
      { type: BlobType.tree, id: id(), flags: 0, rawLength: 5, offset: 7, storedLength: 33, target: targets[0]!, targetOffset: 0 },
    ];
    const decoded = decodeOpens(structuredClone(encodeOpens(requests)));
    const plain = ({ target, ...r }: OpenRequest) => ({ ...r, hasTarget: target !== undefined, id: [...r.id], base: r.base && [...r.base] });
    expect(decoded.map(plain)).toEqual(requests.map(plain));
    expect(sameMemory(targets[1]!, decoded[1]!.target)).toBe(true);
    expect(sameMemory(targets[0]!, decoded[2]!.target)).toBe(true);
  });

  it('refuses an ID that is not 32 bytes instead of sending a wrong one', () => {
    const bad: SealRequest = { type: BlobType.data, id: new Uint8Array(31), offset: 0, length: 1, target: targets[0]!, targetOffset: 0, targetCapacity: 64 };
    expect(() => encodeSeals([bad])).toThrow(/32 bytes/);
  });
});
