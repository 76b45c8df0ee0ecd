import { createHash } from 'node:crypto';
import { type ChunkerParams, validateChunkerParams } from '../../repo/chunker-params.js';

/**
 * Content-defined chunking: FastCDC with a 32-bit Gear hash and normalized chunking.
 *
 * For a chunk starting at `s` with `n` bytes available (n ≥ maxSize, or the rest of the file):
 *   - if n ≤ minSize the chunk is the whole rest;
 *   - else h = 0 and for i = s+minSize … : h = (h << 1) + gear[data[i]]  (mod 2^32);
 *     after the update at byte i the chunk may end after byte i when
 *       (h & maskHard) == 0  while i+1-s ≤ avgSize   (harder: fewer small chunks)
 *       (h & maskEasy) == 0  while i+1-s > avgSize   (easier: fewer large chunks)
 *   - else the chunk ends at maxSize (or the end of the data).
 * The masks take the top bits of h, which depend on the most recent 32 bytes.
 * The Gear table is derived from the repository's secret seed, so boundaries (and thus
 * chunk sizes) do not reveal content to someone without the key. See docs/design.md.
 */
/** Normalization level: the hard mask has log2(avg)+2 bits, the easy one log2(avg)-2. */
const normalizationLevel = 2;

export function gearTable(seed: Uint8Array): Uint32Array {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const digest = createHash('sha256').update(seed).update(Uint8Array.of(i)).digest();
    table[i] = digest.readUInt32LE(0);
  }
  return table;
}

export function topBitsMask(bits: number): number {
  return bits >= 32 ? 0xffffffff : (0xffffffff << (32 - bits)) >>> 0;
}

export function chunkerMasks(params: ChunkerParams): { maskHard: number; maskEasy: number } {
  const avgBits = Math.round(Math.log2(params.avgSize));
  return {
    maskHard: topBitsMask(avgBits + normalizationLevel),
    maskEasy: topBitsMask(avgBits - normalizationLevel),
  };
}

export interface BoundaryFinder {
  /**
   * Length of the chunk that starts at `start` in `data[start, end)`, treating `end` as the end
   * of the file. A result shorter than end - start, or equal to maxSize, is the same boundary
   * whatever follows `end` (a boundary depends only on the bytes before it), so a caller that
   * has not reached the end of the file can cut with what it has and carry only the rest.
   */
  cut(data: Uint8Array, start: number, end: number): number;
}

export class GearChunker implements BoundaryFinder {
  private readonly maskHard: number;
  private readonly maskEasy: number;

  constructor(
    readonly params: ChunkerParams,
    private readonly gear: Uint32Array,
  ) {
    validateChunkerParams(params);
    ({ maskHard: this.maskHard, maskEasy: this.maskEasy } = chunkerMasks(params));
  }

  cut(data: Uint8Array, start: number, end: number): number {
    const { minSize, avgSize, maxSize } = this.params;
    const available = end - start;
    if (available <= minSize) return available;
    const limit = start + Math.min(available, maxSize);
    const normal = start + Math.min(available, avgSize);
    const gear = this.gear;
    const maskHard = this.maskHard;
    const maskEasy = this.maskEasy;
    let h = 0;
    let i = start + minSize;
    for (; i < normal; i++) {
      h = ((h << 1) + gear[data[i]!]!) | 0;
      if ((h & maskHard) === 0) return i + 1 - start;
    }
    for (; i < limit; i++) {
      h = ((h << 1) + gear[data[i]!]!) | 0;
      if ((h & maskEasy) === 0) return i + 1 - start;
    }
    return limit - start;
  }
}
