import { type ChunkerParams, validateChunkerParams } from '../../repo/chunker-params.js';
import { type BoundaryFinder, GearChunker, chunkerMasks } from './fastcdc.js';
import { type NativeAddon, type NativeCutVariant, type NativeGearChunkerHandle, loadNative, requireNative } from '../../util/native.js';

/** The native boundary finder: same cut positions as GearChunker, plus a batched cutAll. */
export class NativeGearChunker implements BoundaryFinder {
  private readonly handle: NativeGearChunkerHandle;

  constructor(
    readonly params: ChunkerParams,
    gear: Uint32Array,
    options: { addon?: NativeAddon; variant?: NativeCutVariant } = {},
  ) {
    validateChunkerParams(params);
    if (gear.length !== 256) throw new Error('the Gear table must have 256 entries');
    const { maskHard, maskEasy } = chunkerMasks(params);
    const addon = options.addon ?? requireNative();
    this.handle = new addon.GearChunker(
      gear,
      params.minSize,
      params.avgSize,
      params.maxSize,
      maskHard,
      maskEasy,
      options.variant,
    );
  }

  get variant(): NativeCutVariant {
    return this.handle.variant;
  }

  cut(data: Uint8Array, start: number, end: number): number {
    return this.handle.cut(data, start, end);
  }

  /**
   * Writes successive chunk lengths starting at `start` into `out` while at least maxSize bytes
   * remain (or, when `eof`, until `end`), stopping when `out` is full; returns how many.
   */
  cutAll(data: Uint8Array, start: number, end: number, eof: boolean, out: Uint32Array): number {
    return this.handle.cutAll(data, start, end, eof, out);
  }
}

/** A boundary finder that may also batch: NativeGearChunker has cutAll, GearChunker does not. */
export type BatchBoundaryFinder = BoundaryFinder & {
  cutAll?(data: Uint8Array, start: number, end: number, eof: boolean, out: Uint32Array): number;
};

/**
 * cutAll for any boundary finder: the native batch call when there is one, otherwise a loop
 * over `cut` with the same contract.
 */
export function cutAll(
  finder: BatchBoundaryFinder,
  maxSize: number,
  data: Uint8Array,
  start: number,
  end: number,
  eof: boolean,
  out: Uint32Array,
): number {
  if (finder.cutAll) return finder.cutAll(data, start, end, eof, out);
  let n = 0;
  let pos = start;
  while (n < out.length) {
    const remaining = end - pos;
    if (remaining === 0 || (!eof && remaining < maxSize)) break;
    const len = finder.cut(data, pos, end);
    out[n++] = len;
    pos += len;
  }
  return n;
}

/** The native chunker when the addon is available (and not disabled), else the TS one. */
export function createBoundaryFinder(params: ChunkerParams, gear: Uint32Array): BoundaryFinder {
  const addon = loadNative();
  return addon ? new NativeGearChunker(params, gear, { addon }) : new GearChunker(params, gear);
}

// ---- Byte-plane shuffle -----------------------------------------------------------------------
//
// For n = length / elementSize elements, plane k (k < elementSize) is dst[k*n, (k+1)*n) and holds
// byte k of every element; the length % elementSize trailing bytes are copied through unchanged
// after the planes. unshuffle is the inverse. src and dst must have equal lengths and not overlap.

function checkShuffleArgs(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  if (!Number.isInteger(elementSize) || elementSize < 1 || elementSize > 64) {
    throw new RangeError('elementSize must be in 1..64');
  }
  if (src.length !== dst.length) throw new RangeError('src and dst must have the same length');
  if (
    src.length > 0 &&
    src.buffer === dst.buffer &&
    src.byteOffset < dst.byteOffset + dst.length &&
    dst.byteOffset < src.byteOffset + src.length
  ) {
    throw new RangeError('src and dst must not overlap');
  }
}

/** Plain-TS shuffle (the reference the native one is tested against). */
export function shuffleBytes(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  checkShuffleArgs(src, dst, elementSize);
  const n = Math.floor(src.length / elementSize);
  for (let k = 0; k < elementSize; k++) {
    const base = k * n;
    for (let j = 0, s = k; j < n; j++, s += elementSize) dst[base + j] = src[s]!;
  }
  const body = n * elementSize;
  if (body < src.length) dst.set(src.subarray(body), body);
}

/** Plain-TS inverse of shuffleBytes. */
export function unshuffleBytes(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  checkShuffleArgs(src, dst, elementSize);
  const n = Math.floor(src.length / elementSize);
  for (let k = 0; k < elementSize; k++) {
    const base = k * n;
    for (let j = 0, d = k; j < n; j++, d += elementSize) dst[d] = src[base + j]!;
  }
  const body = n * elementSize;
  if (body < src.length) dst.set(src.subarray(body), body);
}

/** The addon's shuffle; throws when the addon is unavailable. */
export function nativeShuffle(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  requireNative().shuffle(src, dst, elementSize);
}

/** The addon's unshuffle; throws when the addon is unavailable. */
export function nativeUnshuffle(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  requireNative().unshuffle(src, dst, elementSize);
}

/** Shuffle with the addon when available, else in TS (identical output). */
export function byteShuffle(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  const addon = loadNative();
  if (addon) addon.shuffle(src, dst, elementSize);
  else shuffleBytes(src, dst, elementSize);
}

/** Unshuffle with the addon when available, else in TS (identical output). */
export function byteUnshuffle(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  const addon = loadNative();
  if (addon) addon.unshuffle(src, dst, elementSize);
  else unshuffleBytes(src, dst, elementSize);
}
