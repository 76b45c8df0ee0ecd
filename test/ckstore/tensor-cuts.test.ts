/**
 * Tensor-aligned chunking (src/backup/chunk/tensor-cuts.ts): cut positions against the extents
 * of a layout, checked as properties over random layouts and data.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Dtype, FileLayout, TensorExtent } from '../../src/checkpoint/layout.js';
import { GearChunker, gearTable } from '../../src/backup/chunk/fastcdc.js';
import { TensorSegments, cutSegments, floatElementSize } from '../../src/backup/chunk/tensor-cuts.js';
import { prng } from './floats.js';

const params = { minSize: 256, avgSize: 1024, maxSize: 4096 };
const chunker = new GearChunker(params, gearTable(randomBytes(32)));
const dtypes: Dtype[] = ['F32', 'BF16', 'F16', 'F64', 'I64', 'U8'];

/** Cuts a whole buffer the way FileSaver does, in slots of `slotSize` with the unfinished chunk carried. */
function cutFile(data: Uint8Array, layout: FileLayout | null, slotSize = data.length + 1, fixedFloatChunk?: number): Array<[number, number]> {
  const segments = new TensorSegments(layout, params.minSize, fixedFloatChunk);
  const cuts: Array<[number, number]> = [];
  let base = 0;
  while (base < data.length || cuts.length === 0) {
    const end = Math.min(data.length, base + slotSize);
    const eof = end === data.length;
    const spans: number[] = [];
    const view = data.subarray(base, end);
    const stop = cutSegments(chunker, params.maxSize, segments, view, base, 0, view.length, eof, spans);
    for (let i = 0; i < spans.length; i += 2) cuts.push([base + spans[i]!, spans[i + 1]!]);
    if (eof) break;
    base += stop;
  }
  return cuts;
}

/** A layout of random extents (some large, some small, gaps between) inside a file of `size`. */
const layoutArb = fc
  .array(fc.record({ gap: fc.nat(300), length: fc.oneof(fc.integer({ min: 1, max: 200 }), fc.integer({ min: 256, max: 12_000 })), dtype: fc.constantFrom(...dtypes) }), {
    maxLength: 12,
  })
  .chain((specs) => {
    const extents: TensorExtent[] = [];
    let at = 0;
    for (const [i, s] of specs.entries()) {
      at += s.gap;
      const k = Math.max(1, floatElementSize(s.dtype));
      const length = Math.max(k, s.length - (s.length % k));
      extents.push({ name: `t${i}`, dtype: s.dtype, offset: at, length });
      at += length;
    }
    return fc.record({ extents: fc.constant(extents), trailer: fc.nat(500), seed: fc.nat() });
  });

type LayoutSample = { extents: TensorExtent[]; trailer: number; seed: number };

function fileFor(extents: readonly TensorExtent[], trailer: number, seed: number): Uint8Array {
  const size = (extents.length ? extents[extents.length - 1]!.offset + extents[extents.length - 1]!.length : 0) + trailer;
  const random = prng(seed);
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = (random() * 256) | 0;
  return data;
}

/**
 * A layout sample's random file, its safetensors layout and the file's cuts, checked to cover the
 * file back to back in chunks of 1 to maxSize bytes.
 */
function cutSample({ extents, trailer, seed }: LayoutSample, fixedFloatChunk?: number) {
  const data = fileFor(extents, trailer, seed);
  const layout: FileLayout = { kind: 'safetensors', extents };
  const cuts = cutFile(data, layout, undefined, fixedFloatChunk);
  let at = 0;
  for (const [start, length] of cuts) {
    expect(start).toBe(at);
    expect(length).toBeGreaterThan(0);
    expect(length).toBeLessThanOrEqual(params.maxSize);
    at += length;
  }
  expect(at).toBe(data.length);
  return { data, layout, cuts };
}

/** Slot sizes for cutting a file slot by slot (as FileSaver reads): over maxSize, so a slot holds a whole chunk. */
const slotSizeArb = fc.integer({ min: params.maxSize + 1, max: 3 * params.maxSize });

describe('tensor-aligned cuts', () => {
  it('cut at the start and end of every large tensor, never across one, on elements inside floats, the same in any slot size', () => {
    fc.assert(
      fc.property(layoutArb, slotSizeArb, (sample, slotSize) => {
        const { extents } = sample;
        const { data, layout, cuts } = cutSample(sample);
        const starts = new Set(cuts.map(([s]) => s));
        for (const e of extents.filter((x) => x.length >= params.minSize)) {
          expect(starts.has(e.offset), `${e.name} start`).toBe(true);
          expect(starts.has(e.offset + e.length) || e.offset + e.length === data.length, `${e.name} end`).toBe(true);
          const k = floatElementSize(e.dtype);
          for (const [s, l] of cuts) {
            const inside = s >= e.offset && s < e.offset + e.length;
            if (inside) {
              expect(s + l, `${e.name}: chunk at ${s} crosses its end`).toBeLessThanOrEqual(e.offset + e.length);
              if (k > 0) expect((s - e.offset) % k, `${e.name}: chunk at ${s} is not on an element`).toBe(0);
            }
          }
        }
        // Slot by slot with carried tails (as FileSaver reads): the same cuts.
        expect(cutFile(data, layout, slotSize)).toEqual(cuts);
      }),
      { numRuns: 150 },
    );
  });

  it('with layout cuts (delta repositories): a float tensor is cut every avgSize from its start, small tensors grouped at their starts, whatever the bytes', () => {
    fc.assert(
      fc.property(layoutArb, slotSizeArb, (sample, slotSize) => {
        const { extents } = sample;
        const { data, layout, cuts } = cutSample(sample, params.avgSize);
        // Every tensor's bytes changed (a training step): the float tensors' cuts stay.
        const { cuts: nextCuts } = cutSample({ ...sample, seed: sample.seed + 1 }, params.avgSize);
        for (const e of extents.filter((x) => x.length >= params.minSize && floatElementSize(x.dtype) > 0)) {
          const inside = (c: Array<[number, number]>) => c.filter(([s]) => s >= e.offset && s < e.offset + e.length);
          const expected: Array<[number, number]> = [];
          for (let s = e.offset; s < e.offset + e.length; ) {
            const rest = e.offset + e.length - s;
            const l = rest - params.avgSize < params.minSize ? rest : params.avgSize;
            expected.push([s, l]);
            s += l;
          }
          expect(inside(cuts), e.name).toEqual(expected);
          expect(inside(nextCuts), e.name).toEqual(expected);
        }
        // Up to the last tensor start, every cut comes from the layout (small tensors are close
        // enough together in these layouts), so every chunk there keeps its range; large tensors
        // of other dtypes are still cut by CDC.
        const lastStart = extents.length ? extents[extents.length - 1]!.offset : 0;
        const byCdc = (s: number) => extents.some((e) => e.length >= params.minSize && floatElementSize(e.dtype) === 0 && s > e.offset && s < e.offset + e.length);
        const early = (c: Array<[number, number]>) => c.filter(([s]) => s < lastStart && !byCdc(s)).map(([s]) => s);
        expect(early(nextCuts)).toEqual(early(cuts));
        for (const s of early(cuts)) expect(s === 0 || extents.some((e) => e.offset === s || (e.length >= params.minSize && s > e.offset && s <= e.offset + e.length)), `cut at ${s}`).toBe(true);
        expect(cutFile(data, layout, slotSize, params.avgSize)).toEqual(cuts);
      }),
      { numRuns: 100 },
    );
  });

  it('without a layout, cuts exactly as plain FastCDC', () => {
    const data = fileFor([], 50_000, 7);
    const plain: Array<[number, number]> = [];
    for (let s = 0; s < data.length; ) {
      const l = chunker.cut(data, s, data.length);
      plain.push([s, l]);
      s += l;
    }
    expect(cutFile(data, null)).toEqual(plain);
    expect(cutFile(data, null, params.maxSize + 5)).toEqual(plain);
  });

  it('a large tensor gives the same chunks wherever it moved to (header growth, earlier tensors resized)', () => {
    fc.assert(
      fc.property(layoutArb, fc.integer({ min: 1, max: 999 }), ({ extents, trailer, seed }, shift) => {
        const data = fileFor(extents, trailer, seed);
        // The same tensors after `shift` more header bytes.
        const shifted = new Uint8Array(data.length + shift);
        shifted.set(randomBytes(shift), 0);
        shifted.set(data, shift);
        const moved = extents.map((e) => ({ ...e, offset: e.offset + shift }));
        const chunksOf = (bytes: Uint8Array, es: readonly TensorExtent[], e: TensorExtent) =>
          cutFile(bytes, { kind: 'safetensors', extents: es })
            .filter(([s]) => s >= e.offset && s < e.offset + e.length)
            .map(([s, l]) => Buffer.from(bytes.subarray(s, s + l)).toString('hex'));
        for (const [i, e] of extents.entries()) {
          if (e.length < params.minSize) continue;
          expect(chunksOf(shifted, moved, moved[i]!)).toEqual(chunksOf(data, extents, e));
        }
      }),
      { numRuns: 60 },
    );
  });

  it('between large tensors, chunks start at small tensors: whole tensors, element-aligned for the byte planes', () => {
    // 400 small F32 tensors of 40–100 bytes after an 8-byte header, 4-byte gaps (zip-entry-like).
    const random = prng(5);
    const extents: TensorExtent[] = [];
    let at = 8;
    for (let i = 0; i < 400; i++) {
      const length = 4 * (10 + Math.floor(random() * 16));
      extents.push({ name: `s${i}`, dtype: 'F32', offset: at, length });
      at += length + 4;
    }
    const data = fileFor(extents, 0, 9);
    const layout: FileLayout = { kind: 'torch-zip', extents };
    const cuts = cutFile(data, layout);
    expect(cuts.length).toBeGreaterThan(4);
    const starts = new Set(extents.map((e) => e.offset));
    const segments = new TensorSegments(layout, params.minSize);
    for (const [s, l] of cuts.slice(1)) {
      expect(starts.has(s), `chunk at ${s}`).toBe(true);
      expect(segments.describe(s, s + l).elementSize).toBe(4);
    }
    expect(cutFile(data, layout, params.maxSize + 3)).toEqual(cuts);
  });

  it('describes a chunk by the dtype covering most of it, and by an element size only where its floats line up', () => {
    const extents: TensorExtent[] = [
      { name: 'a', dtype: 'F32', offset: 8, length: 4000 },
      { name: 'b', dtype: 'BF16', offset: 4008, length: 100 },
      { name: 'c', dtype: 'I64', offset: 4200, length: 800 },
    ];
    const segments = new TensorSegments({ kind: 'safetensors', extents }, params.minSize);
    expect(segments.describe(8, 4008)).toEqual({ elementSize: 4, dtype: 'F32' });
    // Mostly F32 but starting off its elements: no planes.
    expect(segments.describe(10, 4008)).toEqual({ elementSize: 0, dtype: 'F32' });
    // The 8-byte header plus the whole tensor: over 3/4 aligned F32 with the chunk start? No: the
    // tensor starts 8 bytes in, which is on a 4-byte element of the chunk.
    expect(segments.describe(0, 4008)).toEqual({ elementSize: 4, dtype: 'F32' });
    expect(segments.describe(4008, 4108)).toEqual({ elementSize: 2, dtype: 'BF16' });
    expect(segments.describe(4108, 5000)).toEqual({ elementSize: 0, dtype: 'I64' });
    expect(segments.describe(5000, 9000)).toEqual({ elementSize: 0, dtype: 'none' });
  });
});
