import { loadNative, requireNative } from '../util/native.js';

/**
 * Byte-plane shuffle, for float tensors (see planes.ts): for n = length / elementSize elements,
 * plane k (k < elementSize) is dst[k*n, (k+1)*n) and holds byte k of every element; the
 * length % elementSize trailing bytes are copied through unchanged after the planes. unshuffle is
 * the inverse. src and dst must have equal lengths and not overlap.
 */
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
