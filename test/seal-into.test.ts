import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { loadNative, nativeAddonPath, nativeUnavailableReason } from '../src/util/native.js';
import { DecryptError, aadLabel, open, seal, sealOverhead } from '../src/crypto/aead.js';
import {
  openInto,
  openIntoFallback,
  sealInto,
  sealIntoFallback,
  sealIntoIsNative,
  sealIntoUnavailableReason,
} from '../src/crypto/seal-into.js';

// The native addon must be built for this suite: a missing, stale or OpenSSL-less addon FAILS
// the tests (nothing is skipped), unless TENDER_NATIVE=0 explicitly selects the node:crypto path.
const nativeDisabled = process.env.TENDER_NATIVE === '0';

type SealFn = (key: Uint8Array, aad: Uint8Array, src: Uint8Array, dst: Uint8Array) => number;
type OpenFn = (key: Uint8Array, aad: Uint8Array, sealed: Uint8Array, dst: Uint8Array) => number;

interface RawAddon {
  sealInto?: SealFn;
  openInto?: OpenFn;
  sealUnavailable?: string;
}

/** The addon's own functions (no TS wrapper): for the exact error contract of the native side. */
function rawAddon(): Required<Pick<RawAddon, 'sealInto' | 'openInto'>> {
  const a = loadNative() as RawAddon | undefined;
  if (!a) throw new Error(`native addon unavailable: ${nativeUnavailableReason()}`);
  if (!a.sealInto || !a.openInto) {
    throw new Error(`addon lacks sealInto/openInto: ${a.sealUnavailable ?? 'stale build'}`);
  }
  return { sealInto: a.sealInto, openInto: a.openInto };
}

const impls: { name: string; seal: SealFn; open: OpenFn }[] = [
  // sealInto/openInto are the native ones unless TENDER_NATIVE=0 (asserted below).
  { name: nativeDisabled ? 'sealInto (TENDER_NATIVE=0)' : 'native', seal: sealInto, open: openInto },
  { name: 'node:crypto fallback', seal: sealIntoFallback, open: openIntoFallback },
];

const KiB = 1024;
const MiB = 1024 * KiB;
const sizes = [0, 1, 15, 16, 17, 4 * KiB, MiB + 3, 8 * MiB];

const key = randomBytes(32);
const aad = aadLabel('data');

/** A region of `length` bytes at byteOffset `pad` in a SharedArrayBuffer, with guard bytes around. */
function sharedRegion(length: number, pad = 13): { region: Uint8Array; whole: Uint8Array; pad: number } {
  const sab = new SharedArrayBuffer(length + 2 * pad);
  const whole = new Uint8Array(sab);
  whole.fill(0xa5);
  return { region: new Uint8Array(sab, pad, length), whole, pad };
}

function expectGuards(whole: Uint8Array, pad: number, length: number): void {
  const before = whole.subarray(0, pad);
  const after = whole.subarray(pad + length);
  expect(before.every((b) => b === 0xa5)).toBe(true);
  expect(after.every((b) => b === 0xa5)).toBe(true);
}

function expectSame(a: Uint8Array, b: Uint8Array): void {
  expect(a.byteLength).toBe(b.byteLength);
  const view = (x: Uint8Array): Buffer => Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  expect(Buffer.compare(view(a), view(b))).toBe(0);
}

function sizeName(n: number): string {
  return n >= MiB ? `${n / MiB | 0} MiB${n % MiB ? ` + ${n % MiB}` : ''}` : n >= KiB ? `${n / KiB} KiB` : `${n} B`;
}

describe('sealInto / openInto', () => {
  it('use the native addon (run npm run build:native)', () => {
    if (nativeDisabled) {
      expect(sealIntoIsNative).toBe(false);
      return;
    }
    expect(sealIntoUnavailableReason).toBeUndefined();
    expect(sealIntoIsNative).toBe(true);
    rawAddon();
  });

  for (const impl of impls) {
    describe(impl.name, () => {
      for (const size of sizes) {
        it(`round-trips with aead.ts both ways, into SharedArrayBuffer regions (${sizeName(size)})`, () => {
          const plain = randomBytes(size);
          // impl.seal -> aead.open
          const s = sharedRegion(size + sealOverhead);
          expect(impl.seal(key, aad, plain, s.region)).toBe(size + sealOverhead);
          expectGuards(s.whole, s.pad, size + sealOverhead);
          expectSame(open(key, s.region, aad), plain);
          // aead.seal -> impl.open (sealed input also SAB-backed, with an offset)
          const sealedByAead = seal(key, plain, aad);
          const input = sharedRegion(sealedByAead.length, 5);
          input.region.set(sealedByAead);
          const d = sharedRegion(size);
          expect(impl.open(key, aad, input.region, d.region)).toBe(size);
          expectGuards(d.whole, d.pad, size);
          expectSame(d.region, plain);
          // impl.seal -> impl.open
          const back = sharedRegion(size, 3);
          expect(impl.open(key, aad, s.region, back.region)).toBe(size);
          expectSame(back.region, plain);
        });
      }

      it('writes from dst offset 0 and leaves the rest of a larger dst alone', () => {
        const plain = randomBytes(100);
        const dst = new Uint8Array(200).fill(7);
        expect(impl.seal(key, aad, plain, dst.subarray(0, 200))).toBe(128);
        expect(dst.subarray(128).every((b) => b === 7)).toBe(true);
        expectSame(open(key, dst.subarray(0, 128), aad), plain);
        const out = new Uint8Array(150).fill(9);
        expect(impl.open(key, aad, dst.subarray(0, 128), out)).toBe(100);
        expectSame(out.subarray(0, 100), plain);
        expect(out.subarray(100).every((b) => b === 9)).toBe(true);
      });

      it('uses a fresh nonce per seal and accepts plain ArrayBuffers, Buffers and any AAD length', () => {
        const plain = randomBytes(64);
        const a = Buffer.alloc(64 + sealOverhead);
        const b = new Uint8Array(new ArrayBuffer(64 + sealOverhead + 8), 8);
        impl.seal(key, aad, plain, a);
        impl.seal(key, aad, plain, b);
        expect(Buffer.compare(a.subarray(0, 12), Buffer.from(b.subarray(0, 12)))).not.toBe(0);
        expectSame(open(key, a, aad), plain);
        expectSame(open(key, b, aad), plain);
        for (const aadLength of [0, 1, 16, 17, 1000, 70_000]) {
          const bigAad = randomBytes(aadLength);
          const sealed = new Uint8Array(64 + sealOverhead);
          impl.seal(key, bigAad, plain, sealed);
          expectSame(open(key, sealed, bigAad), plain);
          const out = new Uint8Array(64);
          impl.open(key, bigAad, seal(key, plain, bigAad), out);
          expectSame(out, plain);
        }
      });

      it('rejects AAD mismatch, wrong key, flipped nonce/ciphertext/tag bits and truncation with DecryptError', () => {
        const plain = randomBytes(4 * KiB + 5);
        const sealed = seal(key, plain, aad);
        const n = plain.length;
        const out = new Uint8Array(n);
        const expectDecryptError = (k: Uint8Array, a: Uint8Array, s: Uint8Array): void => {
          expect(() => impl.open(k, a, s, out)).toThrow(DecryptError);
        };
        expectDecryptError(key, aadLabel('tree'), sealed);
        expectDecryptError(key, Buffer.concat([aad, Buffer.of(0)]), sealed);
        expectDecryptError(key, new Uint8Array(0), sealed);
        expectDecryptError(randomBytes(32), aad, sealed);
        for (const pos of [0, 11, 12, 13, 12 + (n >> 1), 12 + n - 1, 12 + n, sealed.length - 1]) {
          for (const bit of [0x01, 0x80]) {
            const bad = Buffer.from(sealed);
            bad[pos]! ^= bit;
            expectDecryptError(key, aad, bad);
          }
        }
        for (const len of [0, 1, 12, 27, sealed.length - 16, sealed.length - 1]) {
          expectDecryptError(key, aad, sealed.subarray(0, len));
        }
        expectDecryptError(key, aad, sealed.subarray(1)); // dropped first byte
        // The intact input still opens afterwards (no state left behind by the failures).
        expect(impl.open(key, aad, sealed, out)).toBe(n);
        expectSame(out, plain);
      });

      it('throws RangeError when dst is too small, the key is not 32 bytes, or inputs overlap dst', () => {
        const plain = randomBytes(1000);
        const sealed = seal(key, plain, aad);
        expect(() => impl.seal(key, aad, plain, new Uint8Array(1000 + sealOverhead - 1))).toThrow(RangeError);
        expect(() => impl.seal(key, aad, new Uint8Array(0), new Uint8Array(sealOverhead - 1))).toThrow(RangeError);
        expect(() => impl.open(key, aad, sealed, new Uint8Array(999))).toThrow(RangeError);
        expect(() => impl.seal(key.subarray(0, 16), aad, plain, new Uint8Array(2000))).toThrow(RangeError);
        expect(() => impl.seal(Buffer.concat([key, key]), aad, plain, new Uint8Array(2000))).toThrow(RangeError);
        expect(() => impl.open(key.subarray(0, 31), aad, sealed, new Uint8Array(1000))).toThrow(RangeError);
        // Overlap (in-place use is not supported).
        const buf = new Uint8Array(new SharedArrayBuffer(4000));
        buf.set(plain, 12);
        expect(() => impl.seal(key, aad, buf.subarray(12, 1012), buf)).toThrow(RangeError);
        expect(() => impl.seal(key, buf.subarray(500, 520), plain, buf)).toThrow(RangeError);
        buf.set(sealed, 0);
        expect(() => impl.open(key, aad, buf.subarray(0, sealed.length), buf.subarray(12))).toThrow(RangeError);
        // Adjacent but disjoint is fine.
        expect(impl.seal(key, aad, buf.subarray(0, 1000), buf.subarray(1000))).toBe(1028);
        expect(impl.open(key, aad, buf.subarray(1000, 2028), buf.subarray(2028))).toBe(1000);
        expectSame(buf.subarray(2028, 3028), buf.subarray(0, 1000));
      });
    });
  }

  it('native and fallback output interoperate in both directions', () => {
    for (const size of [0, 17, 64 * KiB + 1]) {
      const plain = randomBytes(size);
      const a = new Uint8Array(size + sealOverhead);
      const b = new Uint8Array(size + sealOverhead);
      sealInto(key, aad, plain, a);
      sealIntoFallback(key, aad, plain, b);
      const out = new Uint8Array(size);
      expect(openIntoFallback(key, aad, a, out)).toBe(size);
      expectSame(out, plain);
      out.fill(0);
      expect(openInto(key, aad, b, out)).toBe(size);
      expectSame(out, plain);
    }
  });

  describe.skipIf(nativeDisabled)('native addon contract', () => {
    it('fails authentication with an Error whose message is exactly "authentication failed" and wipes dst', () => {
      const { openInto: rawOpen } = rawAddon();
      const plain = randomBytes(3000);
      const sealed = seal(key, plain, aad);
      sealed[100]! ^= 4;
      const d = sharedRegion(3000);
      d.region.fill(0x11);
      let caught: unknown;
      try {
        rawOpen(key, aad, sealed, d.region);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(Error);
      expect(caught).not.toBeInstanceOf(RangeError);
      expect((caught as Error).message).toBe('authentication failed');
      // Never unauthenticated plaintext: the written range is zero-filled; nothing beyond it changes.
      expect(d.region.every((b) => b === 0)).toBe(true);
      expectGuards(d.whole, d.pad, 3000);
      expect(() => rawOpen(key, aad, sealed.subarray(0, 27), new Uint8Array(0))).toThrow(/^authentication failed$/);
    });

    it('rejects non-Uint8Array arguments with TypeError', () => {
      const { sealInto: rawSeal } = rawAddon();
      const dst = new Uint8Array(100);
      expect(() => rawSeal(new Uint32Array(8) as unknown as Uint8Array, aad, dst.subarray(0, 1), dst)).toThrow(TypeError);
      expect(() => rawSeal(key, 'x' as unknown as Uint8Array, new Uint8Array(1), dst)).toThrow(TypeError);
      expect(() => (rawSeal as unknown as (...a: unknown[]) => number)(key, aad, new Uint8Array(1))).toThrow(TypeError);
    });

    it('allocates no ArrayBuffer memory per call (1 MiB x 200 into one SharedArrayBuffer)', () => {
      const plain = randomBytes(MiB);
      const pack = new Uint8Array(new SharedArrayBuffer(MiB + sealOverhead));
      const out = new Uint8Array(new SharedArrayBuffer(MiB));
      for (let i = 0; i < 5; i++) openInto(key, aad, pack.subarray(0, sealInto(key, aad, plain, pack)), out);
      const before = process.memoryUsage().arrayBuffers;
      let peak = before;
      for (let i = 0; i < 200; i++) {
        sealInto(key, aad, plain, pack);
        openInto(key, aad, pack, out);
        if (i % 20 === 0) peak = Math.max(peak, process.memoryUsage().arrayBuffers);
      }
      peak = Math.max(peak, process.memoryUsage().arrayBuffers);
      // 200 MiB went through; allow a little noise from unrelated allocations in the process.
      expect(peak - before).toBeLessThan(4 * MiB);
      expectSame(out, plain);
    });

    it('works from two worker_threads at once on one SharedArrayBuffer', async () => {
      const slotSize = 256 * KiB + 7;
      const slotsPerWorker = 6;
      const rounds = 8;
      const workers = 2;
      const slots = slotsPerWorker * workers;
      const stride = slotSize + sealOverhead + 5; // +5: every region starts at an odd byteOffset
      const plainSab = new SharedArrayBuffer(slots * slotSize);
      const plain = new Uint8Array(plainSab);
      plain.set(randomBytes(plain.length));
      const keys = Array.from({ length: workers }, () => randomBytes(32)); // one key per worker
      const sealedSab = new SharedArrayBuffer(slots * stride); // filled by the workers
      const inputSab = new SharedArrayBuffer(slots * stride); // sealed by the main thread
      const openedSab = new SharedArrayBuffer(slots * slotSize); // opened by the workers
      const slotPlain = (s: number): Uint8Array => plain.subarray(s * slotSize, (s + 1) * slotSize);
      for (let s = 0; s < slots; s++) {
        const k = keys[Math.floor(s / slotsPerWorker)]!;
        new Uint8Array(inputSab, s * stride + 5, slotSize + sealOverhead).set(seal(k, slotPlain(s), aadLabel(`slot${s}`)));
      }
      const code = `
        const { parentPort, workerData } = require('node:worker_threads');
        const addon = require(workerData.addonPath);
        const { key, first, count, rounds, slotSize, stride, plainSab, sealedSab, inputSab, openedSab } = workerData;
        const enc = new TextEncoder();
        const scratch = new Uint8Array(slotSize);
        let checked = 0;
        for (let r = 0; r < rounds; r++) {
          for (let s = first; s < first + count; s++) {
            const aad = enc.encode('tender:slot' + s);
            const src = new Uint8Array(plainSab, s * slotSize, slotSize);
            const dst = new Uint8Array(sealedSab, s * stride + 5, slotSize + 28);
            if (addon.sealInto(key, aad, src, dst) !== slotSize + 28) throw new Error('bad seal length');
            if (addon.openInto(key, aad, dst, scratch) !== slotSize) throw new Error('bad open length');
            for (let i = 0; i < slotSize; i += 4093) if (scratch[i] !== src[i]) throw new Error('mismatch in slot ' + s);
            const input = new Uint8Array(inputSab, s * stride + 5, slotSize + 28);
            const out = new Uint8Array(openedSab, s * slotSize, slotSize);
            if (addon.openInto(key, aad, input, out) !== slotSize) throw new Error('bad open length');
            checked++;
          }
        }
        parentPort.postMessage(checked);
      `;
      const results = await Promise.all(
        keys.map(
          (k, w) =>
            new Promise<number>((resolve, reject) => {
              const worker = new Worker(code, {
                eval: true,
                workerData: {
                  addonPath: nativeAddonPath(),
                  key: k,
                  first: w * slotsPerWorker,
                  count: slotsPerWorker,
                  rounds,
                  slotSize,
                  stride,
                  plainSab,
                  sealedSab,
                  inputSab,
                  openedSab,
                },
              });
              let result: number | undefined;
              worker.once('message', (m: number) => (result = m));
              worker.once('error', reject);
              worker.once('exit', (code) =>
                code === 0 && result !== undefined ? resolve(result) : reject(new Error(`worker exited with ${code}`)),
              );
            }),
        ),
      );
      expect(results).toEqual([slotsPerWorker * rounds, slotsPerWorker * rounds]);
      for (let s = 0; s < slots; s++) {
        const k = keys[Math.floor(s / slotsPerWorker)]!;
        const sealed = new Uint8Array(sealedSab, s * stride + 5, slotSize + sealOverhead);
        expectSame(open(k, sealed, aadLabel(`slot${s}`)), slotPlain(s));
        expectSame(new Uint8Array(openedSab, s * slotSize, slotSize), slotPlain(s));
      }
      // The main thread's own context is unaffected by the workers'.
      const out = new Uint8Array(slotSize);
      const sealedByWorker1 = new Uint8Array(sealedSab, slotsPerWorker * stride + 5, slotSize + sealOverhead);
      expect(openInto(keys[1]!, aadLabel(`slot${slotsPerWorker}`), sealedByWorker1, out)).toBe(slotSize);
      expectSame(out, slotPlain(slotsPerWorker));
    });
  });
});
