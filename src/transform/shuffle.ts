import { loadNative, requireNative } from '../util/native.js';

/**
 * Byte-plane shuffle, for float tensors (see planes.ts): for n = length / elementSize elements,
 * plane k (k < elementSize) is dst[k*n, (k+1)*n) and holds byte k of every element; the
 * length % elementSize trailing bytes are copied through unchanged after the planes. With a
 * `base` of the same length, what is shuffled is src XOR base (an XOR-delta, xor-delta.ts), in
 * the same pass. The inverse gathers the planes from wherever they are (raw planes stay in the
 * stored payload, coded ones are decoded elsewhere: no copy to make them contiguous) and XORs
 * the base back in the same pass; that base may be the destination itself.
 */
function checkElementSize(elementSize: number): void {
  if (!Number.isInteger(elementSize) || elementSize < 1 || elementSize > 64) {
    throw new RangeError('elementSize must be in 1..64');
  }
}

function overlap(a: Uint8Array, b: Uint8Array): boolean {
  return a.length > 0 && b.length > 0 && a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.length && b.byteOffset < a.byteOffset + a.length;
}

function checkShuffleArgs(src: Uint8Array, dst: Uint8Array, elementSize: number, base: Uint8Array | undefined): void {
  checkElementSize(elementSize);
  if (src.length !== dst.length) throw new RangeError('src and dst must have the same length');
  if (overlap(src, dst)) throw new RangeError('src and dst must not overlap');
  if (base && base.length !== src.length) throw new RangeError('base and src must have the same length');
  if (base && overlap(base, dst)) throw new RangeError('base and dst must not overlap');
}

function checkUnshuffleArgs(planes: readonly Uint8Array[], tail: Uint8Array, dst: Uint8Array, elementSize: number, base: Uint8Array | undefined): void {
  checkElementSize(elementSize);
  const n = Math.floor(dst.length / elementSize);
  if (planes.length !== elementSize) throw new RangeError('one plane per byte of an element is needed');
  if (tail.length !== dst.length - n * elementSize) throw new RangeError("tail must be dst's length mod elementSize");
  if (overlap(tail, dst)) throw new RangeError('tail and dst must not overlap');
  for (const plane of planes) {
    if (plane.length !== n) throw new RangeError('each plane must hold one byte per element');
    if (overlap(plane, dst)) throw new RangeError('planes and dst must not overlap');
  }
  if (base && base.length !== dst.length) throw new RangeError('base and dst must have the same length');
  if (base && overlap(base, dst) && !(base.buffer === dst.buffer && base.byteOffset === dst.byteOffset)) {
    throw new RangeError('base must be dst or not overlap it');
  }
}

/** Plain-TS shuffle (the reference the native one is tested against). */
export function shuffleBytes(src: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array): void {
  checkShuffleArgs(src, dst, elementSize, base);
  const n = Math.floor(src.length / elementSize);
  for (let k = 0; k < elementSize; k++) {
    const at = k * n;
    if (base) for (let j = 0, s = k; j < n; j++, s += elementSize) dst[at + j] = src[s]! ^ base[s]!;
    else for (let j = 0, s = k; j < n; j++, s += elementSize) dst[at + j] = src[s]!;
  }
  for (let i = n * elementSize; i < src.length; i++) dst[i] = base ? src[i]! ^ base[i]! : src[i]!;
}

/** Plain-TS inverse of shuffleBytes, from planes anywhere. */
export function unshufflePlanesBytes(planes: readonly Uint8Array[], tail: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array): void {
  checkUnshuffleArgs(planes, tail, dst, elementSize, base);
  const n = Math.floor(dst.length / elementSize);
  for (let k = 0; k < elementSize; k++) {
    const plane = planes[k]!;
    // Each byte of base is read just before the same index of dst is written: base may be dst.
    if (base) for (let j = 0, d = k; j < n; j++, d += elementSize) dst[d] = plane[j]! ^ base[d]!;
    else for (let j = 0, d = k; j < n; j++, d += elementSize) dst[d] = plane[j]!;
  }
  const body = n * elementSize;
  for (let i = 0; i < tail.length; i++) dst[body + i] = base ? tail[i]! ^ base[body + i]! : tail[i]!;
}

/** The addon's shuffle; throws when the addon is unavailable. */
export function nativeShuffle(src: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array): void {
  requireNative().shuffle(src, dst, elementSize, base);
}

/** The addon's unshuffle from planes; throws when the addon is unavailable. */
export function nativeUnshufflePlanes(planes: Uint8Array[], tail: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array): void {
  requireNative().unshufflePlanes(planes, tail, dst, elementSize, base);
}

/** Shuffle with the addon when available, else in TS (identical output). */
export function byteShuffle(src: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array): void {
  const addon = loadNative();
  if (addon) addon.shuffle(src, dst, elementSize, base);
  else shuffleBytes(src, dst, elementSize, base);
}

/** Unshuffle from planes with the addon when available, else in TS (identical output). */
export function byteUnshufflePlanes(planes: Uint8Array[], tail: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array): void {
  const addon = loadNative();
  if (addon) addon.unshufflePlanes(planes, tail, dst, elementSize, base);
  else unshufflePlanesBytes(planes, tail, dst, elementSize, base);
}
