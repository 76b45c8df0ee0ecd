import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, open, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { type EntryStat, lstatEntries, nodeType, readDirSorted } from '../src/backup/walk.js';
import { GearChunker, chunkerMasks, gearTable } from '../src/backup/chunk/fastcdc.js';
import { type ChunkerParams, defaultChunkerParams } from '../src/repo/chunker-params.js';
import { NativeGearChunker, createBoundaryFinder, cutAll } from '../src/backup/chunk/native.js';
import { byteShuffle, byteUnshufflePlanes, nativeShuffle, nativeUnshufflePlanes, shuffleBytes, unshufflePlanesBytes } from '../src/transform/shuffle.js';

/** The planes and the tail of a shuffled buffer, as views (the layout shuffle writes). */
function planesOf(shuffled: Uint8Array, elementSize: number): { planes: Uint8Array[]; tail: Uint8Array } {
  const n = Math.floor(shuffled.length / elementSize);
  return { planes: Array.from({ length: elementSize }, (_, k) => shuffled.subarray(k * n, (k + 1) * n)), tail: shuffled.subarray(n * elementSize) };
}
type Unshuffle = (planes: Uint8Array[], tail: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array) => void;
/** Unshuffles a contiguous shuffled buffer with `fn`. */
const unshuffleWith = (fn: Unshuffle) => (shuffled: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array) => {
  const { planes, tail } = planesOf(shuffled, elementSize);
  fn(planes, tail, dst, elementSize, base);
};
const nativeUnshuffle = unshuffleWith(nativeUnshufflePlanes);
const unshuffleBytes = unshuffleWith(unshufflePlanesBytes);
const byteUnshuffle = unshuffleWith(byteUnshufflePlanes);
import { type NativeAddon, type NativeCutVariant, loadNative, nativeUnavailableReason } from '../src/util/native.js';

// The native addon must be built for this suite: a missing or broken addon FAILS the tests
// (it is not skipped), unless TENDER_NATIVE=0 explicitly selects the TS-only code paths.
const nativeDisabled = process.env.TENDER_NATIVE === '0';

function addon(): NativeAddon {
  const a = loadNative();
  if (!a) throw new Error(`native addon unavailable: ${nativeUnavailableReason()}`);
  return a;
}

/** Deterministic PRNG (mulberry32) so failures reproduce. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

function randomBytes(n: number, seed: number): Uint8Array {
  const next = prng(seed);
  const out = new Uint8Array(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const v = next();
    out[i] = v;
    out[i + 1] = v >>> 8;
    out[i + 2] = v >>> 16;
    out[i + 3] = v >>> 24;
  }
  for (; i < n; i++) out[i] = next();
  return out;
}

function repeated(pattern: Uint8Array, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = pattern[i % pattern.length]!;
  return out;
}

function onShared(bytes: Uint8Array, pad = 0): Uint8Array {
  const view = new Uint8Array(new SharedArrayBuffer(bytes.length + 2 * pad), pad, bytes.length);
  view.set(bytes);
  return view;
}

const gear = gearTable(new TextEncoder().encode('tender native test seed'));
const gear2 = gearTable(Uint8Array.of(1, 2, 3, 4, 5));

const paramSets: ChunkerParams[] = [
  { minSize: 64, avgSize: 256, maxSize: 1024 },
  { minSize: 64, avgSize: 128, maxSize: 129 },
  { minSize: 100, avgSize: 1024, maxSize: 4097 },
  { minSize: 127, avgSize: 512, maxSize: 777 },
  { minSize: 1000, avgSize: 4096, maxSize: 10_001 },
  { minSize: 2048, avgSize: 8192, maxSize: 65_536 },
];

/** Walk [start, end) with repeated cut calls: the reference cut list. */
function walk(finder: { cut(d: Uint8Array, s: number, e: number): number }, data: Uint8Array, start = 0, end = data.length): number[] {
  const cuts: number[] = [];
  for (let pos = start; pos < end; ) {
    const len = finder.cut(data, pos, end);
    if (!(Number.isInteger(len) && len > 0 && pos + len <= end)) throw new Error(`bad cut ${len} at ${pos} (end ${end})`);
    cuts.push(len);
    pos += len;
  }
  return cuts;
}

/** Walk with cutAll: batches of `batch`, eof=false while it makes progress, then eof=true. */
function walkAll(chunker: NativeGearChunker, data: Uint8Array, start: number, end: number, batch: number): number[] {
  const cuts: number[] = [];
  const out = new Uint32Array(batch);
  let pos = start;
  for (;;) {
    const n = chunker.cutAll(data, pos, end, false, out);
    expect(n).toBeLessThanOrEqual(batch);
    for (let i = 0; i < n; i++) {
      cuts.push(out[i]!);
      pos += out[i]!;
    }
    if (n < batch) break;
  }
  // Without eof it must stop only when fewer than maxSize bytes remain.
  expect(end - pos).toBeLessThan(chunker.params.maxSize);
  for (;;) {
    const n = chunker.cutAll(data, pos, end, true, out);
    for (let i = 0; i < n; i++) {
      cuts.push(out[i]!);
      pos += out[i]!;
    }
    if (n < batch) break;
  }
  expect(pos).toBe(end);
  return cuts;
}

const variants: NativeCutVariant[] = ['rolling2', 'bytewise'];

/** Asserts TS cut, native cut and native cutAll (both variants) agree on data[start, end). */
function checkAgreement(params: ChunkerParams, g: Uint32Array, data: Uint8Array, start = 0, end = data.length): number[] {
  const expected = walk(new GearChunker(params, g), data, start, end);
  for (const variant of variants) {
    const native = new NativeGearChunker(params, g, { addon: addon(), variant });
    expect(native.variant).toBe(variant);
    expect(walk(native, data, start, end), `cut ${variant}`).toEqual(expected);
    for (const batch of [1, 3, 1024]) {
      expect(walkAll(native, data, start, end, batch), `cutAll ${variant} batch ${batch}`).toEqual(expected);
    }
  }
  return expected;
}

describe.skipIf(nativeDisabled)('native addon', () => {
  it('is built and loads (run npm run build:native)', () => {
    expect(nativeUnavailableReason()).toBeUndefined();
    expect(loadNative()).toBeDefined();
  });

  describe('GearChunker matches the TS reference', () => {
    for (const params of paramSets) {
      const tag = `${params.minSize}/${params.avgSize}/${params.maxSize}`;

      it(`random bytes (${tag})`, () => {
        for (const [i, n] of [200_003, 65_536, 12_345].entries()) {
          const data = randomBytes(n, 1000 + i);
          const cuts = checkAgreement(params, gear, data);
          checkAgreement(params, gear2, data);
          if (params.maxSize <= 4097) {
            // Small parameters cut often: make sure both parities of cut length occur.
            expect(cuts.some((c) => c % 2 === 1)).toBe(true);
            expect(cuts.some((c) => c % 2 === 0)).toBe(true);
          }
        }
      });

      it(`all zeros, all 0xff and short periodic patterns (${tag})`, () => {
        const n = 3 * params.maxSize + 17;
        checkAgreement(params, gear, new Uint8Array(n));
        checkAgreement(params, gear, new Uint8Array(n).fill(0xff));
        for (const period of [1, 2, 3, 5, 7, 32, 33, 64]) {
          const pattern = randomBytes(period, period);
          checkAgreement(params, gear, repeated(pattern, n));
          checkAgreement(params, gear2, repeated(pattern, n + 1));
        }
        // A random block repeated: the same content must be cut the same way each time around.
        checkAgreement(params, gear, repeated(randomBytes(params.avgSize + 3, 77), 4 * params.maxSize + 1));
      });

      it(`lengths around min/avg/max (${tag})`, () => {
        const { minSize, avgSize, maxSize } = params;
        const lengths = new Set<number>([0, 1, 2, 3]);
        for (const base of [minSize, avgSize, maxSize, 2 * maxSize, minSize + avgSize]) {
          for (let d = -3; d <= 3; d++) if (base + d >= 0) lengths.add(base + d);
        }
        for (const n of lengths) {
          checkAgreement(params, gear, randomBytes(n, n));
          checkAgreement(params, gear, new Uint8Array(n));
        }
      });

      it(`odd start offsets and ends inside the buffer (${tag})`, () => {
        const data = randomBytes(10 * params.maxSize + 11, 4242);
        for (const start of [1, 3, 7, params.minSize + 1, params.maxSize - 1]) {
          for (const end of [data.length, data.length - 1, data.length - 5, start + params.maxSize, start + params.minSize]) {
            if (end >= start) checkAgreement(params, gear, data, start, end);
          }
        }
        // Single cut calls at every start in a window (the native code must not depend on alignment).
        const ts = new GearChunker(params, gear);
        for (const variant of variants) {
          const native = new NativeGearChunker(params, gear, { addon: addon(), variant });
          for (let s = 0; s < 67; s++) {
            expect(native.cut(data, s, data.length)).toBe(ts.cut(data, s, data.length));
            expect(native.cut(data, s, s + params.maxSize)).toBe(ts.cut(data, s, s + params.maxSize));
          }
        }
      });

      it(`subarrays with a byteOffset, Buffers and SharedArrayBuffer-backed arrays (${tag})`, () => {
        const data = randomBytes(6 * params.maxSize + 5, 99);
        const expected = walk(new GearChunker(params, gear), data);
        const outer = new Uint8Array(data.length + 20);
        outer.set(data, 13);
        const views: [string, Uint8Array][] = [
          ['subarray', outer.subarray(13, 13 + data.length)],
          ['Buffer', Buffer.from(data)],
          ['Buffer view', Buffer.from(outer.buffer, 13, data.length)],
          ['SharedArrayBuffer', onShared(data)],
          ['SharedArrayBuffer with offset', onShared(data, 9)],
          ['copy', new Uint8Array(data)],
        ];
        for (const [name, view] of views) {
          expect(view.length).toBe(data.length);
          expect(checkAgreement(params, gear, view), name).toEqual(expected);
        }
      });
    }

    it('default parameters on 24 MiB', () => {
      const data = randomBytes(24 * 1024 * 1024 + 1, 5);
      const cuts = checkAgreement(defaultChunkerParams, gear, data);
      expect(cuts.length).toBeGreaterThan(5);
    });

    it('arbitrary parameters and data (property)', () => {
      fc.assert(
        fc.property(
          fc.integer({ min: 7, max: 12 }),
          fc.double({ min: 0, max: 0.99, noNaN: true }),
          fc.integer({ min: 1, max: 5000 }),
          fc.uint8Array({ minLength: 0, maxLength: 20_000 }),
          fc.integer({ min: 0, max: 64 }),
          fc.integer({ min: 0, max: 1 << 30 }),
          (avgBits, minFrac, extra, bytes, start, seed) => {
            const avgSize = 2 ** avgBits;
            const minSize = Math.max(64, Math.floor(avgSize * minFrac));
            const params = { minSize: Math.min(minSize, avgSize - 1), avgSize, maxSize: avgSize + extra };
            // Mix fast-check bytes with random ones so long inputs are not mostly zeros.
            const data = new Uint8Array(bytes.length + 3000);
            data.set(randomBytes(data.length, seed));
            data.set(bytes, seed % 3000);
            checkAgreement(params, gear, data, Math.min(start, data.length));
          },
        ),
        { numRuns: 60 },
      );
    });

    it('raw masks (including degenerate ones) behave like the byte-at-a-time definition', () => {
      // A direct transcription of the FastCDC definition that takes masks as given.
      const reference = (g: Uint32Array, min: number, avg: number, max: number, mh: number, me: number) =>
        (data: Uint8Array, start: number, end: number): number => {
          const available = end - start;
          if (available <= min) return available;
          const limit = start + Math.min(available, max);
          const normal = start + Math.min(available, avg);
          let h = 0;
          let i = start + min;
          for (; i < normal; i++) {
            h = ((h << 1) + g[data[i]!]!) | 0;
            if ((h & mh) === 0) return i + 1 - start;
          }
          for (; i < limit; i++) {
            h = ((h << 1) + g[data[i]!]!) | 0;
            if ((h & me) === 0) return i + 1 - start;
          }
          return limit - start;
        };
      const data = randomBytes(20_000, 3);
      const masks: [number, number][] = [
        [0, 0],
        [0xffffffff, 0xffffffff],
        [0xffffffff, 0],
        [0x1, 0x3],
        [0x80000000, 0xc0000000],
        [0xfff00000, 0xff000000],
        [-4194304, -16777216], // the same masks spelled as signed int32
        [0x00ff00ff, 0x0000f00f],
      ];
      for (const [mh, me] of masks) {
        for (const [min, avg, max] of [
          [0, 1, 2],
          [1, 2, 3],
          [64, 256, 1024],
          [3, 301, 999],
        ] as const) {
          const ref = { cut: reference(gear, min, avg, max, mh, me) };
          const expected = walk(ref, data);
          for (const variant of variants) {
            const native = new (addon().GearChunker)(gear, min, avg, max, mh, me, variant);
            expect(walk(native, data), `${variant} ${min}/${avg}/${max} ${mh}/${me}`).toEqual(expected);
          }
        }
      }
    });

    it('cutAll honours eof, out capacity and an empty range', () => {
      const params = { minSize: 64, avgSize: 256, maxSize: 1024 };
      const native = new NativeGearChunker(params, gear, { addon: addon() });
      const data = randomBytes(5000, 8);
      const out = new Uint32Array(4);
      expect(native.cutAll(data, 10, 10, true, out)).toBe(0);
      expect(native.cutAll(data, 10, 10, false, out)).toBe(0);
      expect(native.cutAll(data, 0, 1023, false, out)).toBe(0);
      expect(native.cutAll(data, 0, 1023, true, out)).toBeGreaterThan(0);
      expect(native.cutAll(data, 0, 5000, true, new Uint32Array(0))).toBe(0);
      // The generic helper falls back to cut() for the TS chunker with identical results.
      const a = new Uint32Array(100);
      const b = new Uint32Array(100);
      for (const eof of [false, true]) {
        const na = cutAll(native, params.maxSize, data, 7, 4999, eof, a);
        const nb = cutAll(new GearChunker(params, gear), params.maxSize, data, 7, 4999, eof, b);
        expect(na).toBe(nb);
        expect(Array.from(a.subarray(0, na))).toEqual(Array.from(b.subarray(0, nb)));
      }
    });

    it('rejects bad arguments instead of reading out of bounds', () => {
      const a = addon();
      const masks = chunkerMasks({ minSize: 64, avgSize: 256, maxSize: 1024 });
      expect(() => new a.GearChunker(new Uint32Array(255), 64, 256, 1024, masks.maskHard, masks.maskEasy)).toThrow();
      expect(() => new a.GearChunker(gear, 256, 64, 1024, masks.maskHard, masks.maskEasy)).toThrow();
      expect(() => new a.GearChunker(gear, 64, 256, 1024, masks.maskHard, masks.maskEasy, 'fast' as NativeCutVariant)).toThrow();
      const c = new a.GearChunker(gear, 64, 256, 1024, masks.maskHard, masks.maskEasy);
      const data = new Uint8Array(100);
      expect(() => c.cut(data, 0, 101)).toThrow(RangeError);
      expect(() => c.cut(data, 50, 40)).toThrow(RangeError);
      expect(() => c.cut(data, -1, 40)).toThrow(RangeError);
      expect(() => c.cut(data, 0.5, 40)).toThrow(RangeError);
      expect(() => c.cut(new Uint16Array(100) as unknown as Uint8Array, 0, 10)).toThrow(TypeError);
      expect(() => c.cut([1, 2, 3] as unknown as Uint8Array, 0, 3)).toThrow(TypeError);
      expect(() => c.cutAll(data, 0, 100, true, new Uint8Array(4) as unknown as Uint32Array)).toThrow(TypeError);
    });
  });

  describe('shuffle / unshuffle', () => {
    it('lays out byte planes followed by the unchanged remainder', () => {
      const src = Uint8Array.of(0, 1, 2, 3, 4, 5, 6, 7, 8, 9);
      const expected4 = [0, 4, 1, 5, 2, 6, 3, 7, 8, 9];
      const expected2 = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
      for (const [es, expected] of [
        [4, expected4],
        [2, expected2],
      ] as const) {
        const ts = new Uint8Array(src.length);
        const nat = new Uint8Array(src.length);
        shuffleBytes(src, ts, es);
        nativeShuffle(src, nat, es);
        expect(Array.from(ts)).toEqual(expected);
        expect(Array.from(nat)).toEqual(expected);
      }
    });

    it('matches the TS implementation and round-trips', () => {
      const lengths = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 1000, 1001, 1002, 1003, 4099, 65_537, 1_048_579];
      for (const elementSize of [1, 2, 3, 4, 8]) {
        for (const n of lengths) {
          const src = randomBytes(n, n * 31 + elementSize);
          const ts = new Uint8Array(n);
          const nat = new Uint8Array(n);
          shuffleBytes(src, ts, elementSize);
          nativeShuffle(src, nat, elementSize);
          expect(Buffer.compare(ts, nat), `shuffle es=${elementSize} n=${n}`).toBe(0);
          const back = new Uint8Array(n);
          const backTs = new Uint8Array(n);
          nativeUnshuffle(nat, back, elementSize);
          unshuffleBytes(ts, backTs, elementSize);
          expect(Buffer.compare(back, src), `unshuffle es=${elementSize} n=${n}`).toBe(0);
          expect(Buffer.compare(backTs, src), `TS unshuffle es=${elementSize} n=${n}`).toBe(0);
          // The auto-dispatching helpers give the same bytes.
          const auto = new Uint8Array(n);
          byteShuffle(src, auto, elementSize);
          expect(Buffer.compare(auto, ts)).toBe(0);
          const autoBack = new Uint8Array(n);
          byteUnshuffle(auto, autoBack, elementSize);
          expect(Buffer.compare(autoBack, src)).toBe(0);
        }
      }
    });

    it('works on float tensors, offset views and SharedArrayBuffer-backed arrays', () => {
      const floats = new Float32Array(10_001);
      for (let i = 0; i < floats.length; i++) floats[i] = Math.sin(i) * 1e-3;
      const bytes = new Uint8Array(floats.buffer);
      const halves = new Uint16Array(5001).map((_, i) => i * 7);
      for (const [es, base] of [
        [4, bytes],
        [2, new Uint8Array(halves.buffer)],
      ] as const) {
        for (const src of [base, onShared(base, 5), new Uint8Array(base.buffer, 1, base.length - 2)]) {
          const ts = new Uint8Array(src.length);
          const nat = onShared(new Uint8Array(src.length), 3);
          shuffleBytes(src, ts, es);
          nativeShuffle(src, nat, es);
          expect(Buffer.compare(ts, nat)).toBe(0);
          const back = new Uint8Array(src.length);
          nativeUnshuffle(nat, back, es);
          expect(Buffer.compare(back, src)).toBe(0);
        }
      }
    });

    it('shuffles src XOR base, and unshuffles XORing a base back, in place or not', () => {
      for (const elementSize of [1, 2, 3, 4, 8]) {
        for (const n of [0, 1, 7, 64, 1001, 65_537]) {
          const src = randomBytes(n, n + 3 * elementSize);
          const base = randomBytes(n, n + 5 * elementSize);
          const xor = Uint8Array.from(src, (v, i) => v ^ base[i]!);
          const expected = new Uint8Array(n);
          shuffleBytes(xor, expected, elementSize);
          const what = `es=${elementSize} n=${n}`;
          for (const shuffle of [nativeShuffle, shuffleBytes]) {
            const out = new Uint8Array(n);
            shuffle(src, out, elementSize, base);
            expect(Buffer.compare(out, expected), what).toBe(0);
          }
          for (const unshuffle of [nativeUnshuffle, unshuffleBytes]) {
            const out = new Uint8Array(n);
            unshuffle(expected, out, elementSize, base);
            expect(Buffer.compare(out, src), what).toBe(0);
            // The base in the destination, as restore places it.
            const inPlace = Uint8Array.from(base);
            unshuffle(expected, inPlace, elementSize, inPlace);
            expect(Buffer.compare(inPlace, src), `${what} in place`).toBe(0);
          }
        }
      }
    });

    it('rejects a base that overlaps the output other than exactly', () => {
      const buf = new Uint8Array(64);
      const shuffled = new Uint8Array(32);
      for (const unshuffle of [nativeUnshuffle, unshuffleBytes]) {
        expect(() => unshuffle(shuffled, buf.subarray(0, 32), 4, buf.subarray(4, 36))).toThrow(RangeError);
        expect(() => unshuffle(shuffled, buf.subarray(0, 32), 4, buf.subarray(0, 31))).toThrow(RangeError);
      }
      for (const shuffle of [nativeShuffle, shuffleBytes]) {
        expect(() => shuffle(new Uint8Array(32), buf.subarray(0, 32), 4, buf.subarray(0, 32))).toThrow(RangeError);
      }
    });

    it('rejects mismatched lengths, overlap and bad element sizes', () => {
      const buf = new Uint8Array(64);
      for (const fn of [nativeShuffle, nativeUnshuffle, shuffleBytes, unshuffleBytes]) {
        expect(() => fn(buf.subarray(0, 10), new Uint8Array(11), 2)).toThrow(RangeError);
        expect(() => fn(buf.subarray(0, 32), buf.subarray(16, 48), 4)).toThrow(RangeError);
        expect(() => fn(buf.subarray(0, 8), new Uint8Array(8), 0)).toThrow(RangeError);
        expect(() => fn(buf.subarray(0, 8), new Uint8Array(8), 65)).toThrow(RangeError);
      }
    });
  });
});

describe('TS fallbacks', () => {
  const saved = process.env.TENDER_NATIVE;
  afterEach(() => {
    if (saved === undefined) delete process.env.TENDER_NATIVE;
    else process.env.TENDER_NATIVE = saved;
  });

  it('createBoundaryFinder picks the native chunker unless TENDER_NATIVE=0', () => {
    const params = { minSize: 64, avgSize: 256, maxSize: 1024 };
    if (!nativeDisabled) expect(createBoundaryFinder(params, gear)).toBeInstanceOf(NativeGearChunker);
    process.env.TENDER_NATIVE = '0';
    expect(loadNative()).toBeUndefined();
    expect(nativeUnavailableReason()).toMatch(/TENDER_NATIVE=0/);
    const finder = createBoundaryFinder(params, gear);
    expect(finder).toBeInstanceOf(GearChunker);
    expect(() => nativeShuffle(new Uint8Array(4), new Uint8Array(4), 2)).toThrow(/TENDER_NATIVE=0/);
    // The auto helpers still work, in TS.
    const src = randomBytes(1001, 1);
    const mid = new Uint8Array(1001);
    const back = new Uint8Array(1001);
    byteShuffle(src, mid, 4);
    byteUnshuffle(mid, back, 4);
    expect(Buffer.compare(back, src)).toBe(0);
  });

  it('TS shuffle round-trips', () => {
    for (const es of [2, 4]) {
      for (const n of [0, 1, 5, 998, 1001]) {
        const src = randomBytes(n, n + es);
        const mid = new Uint8Array(n);
        const back = new Uint8Array(n);
        shuffleBytes(src, mid, es);
        unshuffleBytes(mid, back, es);
        expect(Buffer.compare(back, src)).toBe(0);
      }
    }
  });
});

describe('lstatEntries (the walk’s metadata)', () => {
  const saved = process.env.TENDER_NATIVE;
  afterEach(() => {
    if (saved === undefined) delete process.env.TENDER_NATIVE;
    else process.env.TENDER_NATIVE = saved;
  });

  it('the native batch (one fstatat per entry on the open directory) equals lstatSync per entry', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tender-lstat-'));
    try {
      await writeFile(path.join(dir, 'file'), 'x'.repeat(5000));
      await mkdir(path.join(dir, 'sub'));
      await symlink('file', path.join(dir, 'link'));
      execFileSync('mkfifo', [path.join(dir, 'fifo')]);
      const sparse = await open(path.join(dir, 'sparse'), 'w');
      await sparse.truncate(1 << 30);
      await sparse.close();
      // Exact nanoseconds, one before 1970, and a name with characters beyond U+FFFF.
      await writeFile(path.join(dir, 'old-😀'), '');
      await writeFile(path.join(dir, 'ns'), '');
      execFileSync('touch', ['-m', '-d', '@-1.5', path.join(dir, 'old-😀')]);
      execFileSync('touch', ['-m', '-d', '@1.000000123', path.join(dir, 'ns')]);
      const names = [...readDirSorted(dir), 'missing'];
      process.env.TENDER_NATIVE = '0';
      const viaNode = lstatEntries(dir, names);
      if (saved === undefined) delete process.env.TENDER_NATIVE;
      else process.env.TENDER_NATIVE = saved;
      if (!nativeDisabled) expect(loadNative()?.lstatAt, 'the addon has lstatAt').toBeTypeOf('function');
      const batched = lstatEntries(dir, names);
      expect(batched.slice(0, -1)).toEqual(viaNode.slice(0, -1));
      expect(batched.map((s) => (s instanceof Error ? 'error' : nodeType(s)))).toEqual(
        viaNode.map((s) => (s instanceof Error ? 'error' : nodeType(s))),
      );
      for (const s of [batched.at(-1), viaNode.at(-1)]) expect(s).toMatchObject({ code: 'ENOENT', syscall: 'lstat' });
      expect((batched[names.indexOf('ns')] as EntryStat).mtimeNs).toBe('1000000123');
      expect((batched[names.indexOf('old-😀')] as EntryStat).mtimeNs).toBe('-1500000000');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
