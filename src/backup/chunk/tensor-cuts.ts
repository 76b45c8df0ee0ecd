import type { Dtype, FileLayout, TensorExtent } from '../../checkpoint/layout.js';
import type { BoundaryFinder } from './fastcdc.js';

/**
 * Tensor-aligned chunking (docs/design.md, "Tensor-aligned chunking"). A file with a known
 * layout is split into segments: each *large* tensor (at least minSize bytes) is a segment of its
 * own, and the bytes between large tensors (headers, small tensors, gaps, trailers) form the
 * segments between them. Each segment is cut by FastCDC as if it were a file of its own, so a
 * chunk never crosses a segment boundary: a large tensor whose bytes did not change gives the same
 * chunks wherever it moved to in the file (a grown header, an earlier entry that changed size).
 * Inside a float tensor, cuts are rounded down to whole elements, so every chunk of it starts on
 * an element and its byte planes line up; between large tensors, a cut is moved back to the last
 * tensor start after the first half of the minimum chunk size, so chunks there hold whole small
 * tensors. Without a layout the file is one segment: plain CDC.
 * With `fixedFloatChunk` (repositories with delta blobs), cuts follow the layout, not the
 * content, wherever the layout allows: CDC cuts follow the content, so a tensor whose every weight
 * moved a little would be cut elsewhere in each version, and no chunk would find the same range in
 * the previous version to be a delta against (backup/delta-bases.ts). A large float tensor is cut
 * every `fixedFloatChunk` bytes from its start; between large tensors a chunk ends at a small
 * tensor's start picked from the layout alone (layoutCut), by CDC only where no tensor starts near.
 * Tensor bytes never shift inside a tensor, so these cuts deduplicate an unchanged or moved tensor
 * as CDC does.
 */

/** Float element size of a dtype: what the byte-plane transform works on (0: not a float of ≥ 2 bytes). */
export function floatElementSize(dtype: Dtype): number {
  switch (dtype) {
    case 'F64':
      return 8;
    case 'F32':
      return 4;
    case 'F16':
    case 'BF16':
      return 2;
    default:
      return 0;
  }
}

/** What a chunk holds, for the blob codec and the statistics. */
export interface ChunkKind {
  /** Element size for byte planes: the chunk's float data starts on an element (0: none). */
  elementSize: number;
  /** The dtype of most of the chunk's bytes; 'none' when no tensor covers half of it. */
  dtype: Dtype | 'none';
}

const noKind: ChunkKind = { elementSize: 0, dtype: 'none' };

/**
 * A file's segments, walked forwards (one instance per file read, offsets asked in increasing
 * order; asking backwards restarts the walk).
 */
export class TensorSegments {
  private readonly large: readonly TensorExtent[];
  private readonly extents: readonly TensorExtent[];
  /** Index of the first large extent that ends after the last offset asked. */
  private next = 0;
  /** Index of the first extent that ends after the last chunk start described. */
  private nextExtent = 0;
  private lastAsked = 0;

  constructor(
    layout: FileLayout | null,
    readonly minSize: number,
    /** Cut large float tensors every this many bytes (a multiple of 8); undefined: by CDC. */
    readonly fixedFloatChunk?: number,
  ) {
    this.extents = layout?.extents ?? [];
    this.large = this.extents.filter((e) => e.length >= minSize);
  }

  /**
   * Where a chunk from `start` that CDC would end at `end` ends between large tensors: at the
   * last tensor start in (start + minSize/2, end], or at `end` when there is none.
   */
  snapToTensor(start: number, end: number): number {
    const offset = this.lastStartAtOrBefore(end);
    return offset > start + this.minSize / 2 ? offset : end;
  }

  /** The start of the last extent starting at or before `at`, or -1. */
  private lastStartAtOrBefore(at: number): number {
    let lo = 0;
    let hi = this.extents.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.extents[mid]!.offset <= at) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found >= 0 ? this.extents[found]!.offset : -1;
  }

  /**
   * With fixedFloatChunk, between large tensors: the length of the chunk from `start` (file
   * offsets) chosen from the layout alone: the rest of the segment when less than size + minSize
   * is left, else up to the last tensor start in (start + minSize/2, start + size], else up to the
   * first one in (start + size, start + size + minSize); undefined when neither exists (CDC cuts).
   */
  layoutCut(start: number, segmentEnd: number): number | undefined {
    const size = this.fixedFloatChunk!;
    if (segmentEnd - start < size + this.minSize) return segmentEnd - start;
    const before = this.lastStartAtOrBefore(start + size);
    if (before > start + this.minSize / 2) return before - start;
    const after = this.lastStartAtOrBefore(start + size + this.minSize - 1);
    return after > start + size ? this.firstStartAfter(start + size) - start : undefined;
  }

  /** The start of the first extent starting after `at` (one exists: the caller checked). */
  private firstStartAfter(at: number): number {
    let lo = 0;
    let hi = this.extents.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.extents[mid]!.offset > at) hi = mid;
      else lo = mid + 1;
    }
    return this.extents[lo]!.offset;
  }

  /**
   * The segment holding file offset `at`: where it ends (Infinity: the end of the file), whether
   * it is a large tensor, and that tensor's float element size.
   */
  segmentAt(at: number): { end: number; inTensor: boolean; elementSize: number } {
    if (at < this.lastAsked) this.next = 0;
    this.lastAsked = at;
    while (this.next < this.large.length && this.large[this.next]!.offset + this.large[this.next]!.length <= at) this.next++;
    const e = this.large[this.next];
    if (!e) return { end: Infinity, inTensor: false, elementSize: 0 };
    if (at < e.offset) return { end: e.offset, inTensor: false, elementSize: 0 };
    return { end: e.offset + e.length, inTensor: true, elementSize: floatElementSize(e.dtype) };
  }

  /**
   * What the chunk [start, end) holds: the element size of the float extents that start on an
   * element relative to the chunk and cover at least 3/4 of it (0 otherwise: byte planes would
   * mix unrelated bytes), and the dtype that covers most of it.
   */
  describe(start: number, end: number): ChunkKind {
    if (this.extents.length === 0) return noKind;
    if (this.nextExtent > 0 && this.extents[this.nextExtent - 1]!.offset + this.extents[this.nextExtent - 1]!.length > start) this.nextExtent = 0;
    while (this.nextExtent < this.extents.length && this.extents[this.nextExtent]!.offset + this.extents[this.nextExtent]!.length <= start) this.nextExtent++;
    const covered = new Map<Dtype, number>();
    const aligned = new Map<number, number>();
    for (let i = this.nextExtent; i < this.extents.length; i++) {
      const e = this.extents[i]!;
      if (e.offset >= end) break;
      const from = Math.max(start, e.offset);
      const bytes = Math.min(end, e.offset + e.length) - from;
      covered.set(e.dtype, (covered.get(e.dtype) ?? 0) + bytes);
      const k = floatElementSize(e.dtype);
      if (k > 0 && (from - e.offset) % k === 0 && (from - start) % k === 0) aligned.set(k, (aligned.get(k) ?? 0) + bytes);
    }
    const length = end - start;
    let dtype: Dtype | 'none' = 'none';
    let most = 0;
    for (const [d, bytes] of covered) if (bytes > most) [dtype, most] = [d, bytes];
    if (2 * most < length) dtype = 'none';
    let elementSize = 0;
    for (const [k, bytes] of aligned) if (4 * bytes >= 3 * length) elementSize = k;
    return { elementSize, dtype };
  }
}

/**
 * Cuts data[start, end) into chunks that never cross a segment boundary (file offset of data[0]
 * = base) and appends (offset, length) pairs to `spans`. Without `eof` it stops before a chunk
 * whose end is not known yet (it could reach past `end`). Returns where it stopped.
 */
export function cutSegments(
  finder: BoundaryFinder,
  maxSize: number,
  segments: TensorSegments,
  data: Uint8Array,
  base: number,
  start: number,
  end: number,
  eof: boolean,
  spans: number[],
): number {
  while (start < end) {
    const segment = segments.segmentAt(base + start);
    const segmentEnd = segment.end - base;
    const limit = Math.min(end, segmentEnd);
    const fixed = !segments.fixedFloatChunk
      ? undefined
      : segment.inTensor
        ? // Chunks of a tensor start at its start and follow each other: each is `size` from the last.
          segment.elementSize > 0
          ? fixedCut(segments.fixedFloatChunk, segments.minSize, start, segmentEnd)
          : undefined
        : segments.layoutCut(base + start, segment.end);
    if (fixed !== undefined) {
      // The chunk's end is not read yet: the next slot starts with it (at the end of the file,
      // shorter than its layout says, it ends where the file does).
      if (start + fixed > end && !eof) break;
      const length = Math.min(fixed, end - start);
      spans.push(start, length);
      start += length;
      continue;
    }
    let length = finder.cut(data, start, limit);
    // A cut at the end of the bytes read may only mean that the boundary lies beyond them.
    if (!eof && limit === end && segmentEnd > end && length === end - start && length < maxSize) break;
    if (length < limit - start) {
      if (segment.inTensor) {
        // Every chunk of a tensor starts on an element (the first at the tensor's start): a cut
        // inside it is moved back to a whole number of elements (a cut is at least minSize in).
        if (segment.elementSize > 1) length -= length % segment.elementSize;
      } else {
        length = segments.snapToTensor(base + start, base + start + length) - base - start;
      }
    }
    spans.push(start, length);
    start += length;
  }
  return start;
}

/**
 * The next fixed cut of a float tensor ending at `tensorEnd`: `size` bytes on from `start` (each
 * chunk of the tensor starts a multiple of `size` from its start), or to the tensor's end when
 * less than `minSize` would be left after the cut (a short tail joins the chunk before it).
 */
function fixedCut(size: number, minSize: number, start: number, tensorEnd: number): number {
  const rest = tensorEnd - start;
  return rest - size < minSize ? rest : size;
}
