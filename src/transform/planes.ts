import zstd from 'zstd-napi/binding.js';
import { byteShuffle, byteUnshufflePlanes } from './shuffle.js';

/**
 * The byte-plane transform for float tensors (docs/design.md, "Blobs"): the chunk is split into
 * its element-size byte planes; each plane is zstd-coded when a sample says coding pays, else
 * kept raw. The sign/exponent plane of trained weights codes to about a third; mantissa planes
 * are noise and cost nothing when stored raw.
 *
 *   payload = u8 elementSize ‖ u8 codedMask ‖ popcount(codedMask) × u32le codedLength
 *             ‖ plane₀ ‖ … ‖ plane₍elementSize−1₎ ‖ tail
 *   plane p = a zstd frame of n bytes if bit p of codedMask is set, else the n bytes;
 *             n = floor(rawLength / elementSize); codedLengths in plane order
 *   tail    = the last rawLength mod elementSize bytes of the plaintext
 */
export const planeElementSizes: readonly number[] = [2, 4, 8];

/** Order-0 entropy (bits per byte) under which a plane is coded: coding then saves ≥ ~4%. */
const codeBelowBits = 7.7;
/** Bytes sampled per plane for the entropy estimate, in stripes spread over the plane. */
const sampleBytes = 4096;
const sampleStripes = 8;

export class PlaneEncoder {
  /**
   * Measured on fp32/bf16 weights (bench/README.md): level 1 with minMatch 7 and a 64-entry hash
   * table finds almost no matches, so a block is Huffman-coded literals: the exponent plane
   * codes to 0.340 (level 1 defaults: 0.369) at about twice level 1's speed.
   */
  private readonly coder = new zstd.CCtx();
  /** The payload is built here, in place: the planes are shuffled straight into it. */
  private out = Buffer.alloc(0);
  /** One coded plane, before it moves into `out` (zstd cannot code in place). */
  private coded = Buffer.alloc(0);
  private readonly histogram = new Uint32Array(256);

  constructor() {
    this.coder.setParameter(zstd.CParameter.compressionLevel, 1);
    this.coder.setParameter(zstd.CParameter.minMatch, 7);
    this.coder.setParameter(zstd.CParameter.hashLog, 6);
  }

  /**
   * The plane payload of `plaintext` (of plaintext XOR `base` where a base of the same length is
   * given: an XOR-delta) after `prefix` bytes left free for the caller (a view of a reused
   * buffer, valid until the next call), or undefined when the payload would not be at least 1/64
   * smaller than the plaintext.
   *
   * Each byte of the plaintext is copied once (by the shuffle, to where its plane is stored);
   * only coded planes move again, at their coded size: the planes that sampling says will code
   * size the header up front, and raw planes stay where the shuffle put them.
   */
  encode(plaintext: Uint8Array, elementSize: number, prefix = 0, base?: Uint8Array): Buffer | undefined {
    if (!planeElementSizes.includes(elementSize)) throw new RangeError(`no plane transform for element size ${elementSize}`);
    const rawLength = plaintext.byteLength;
    const n = Math.floor(rawLength / elementSize);
    if (n === 0) return undefined;
    let tryMask = 0;
    let tries = 0;
    for (let p = 0; p < elementSize; p++) {
      if (this.sampleEntropy(plaintext, base, p, elementSize, n) < codeBelowBits) {
        tryMask |= 1 << p;
        tries++;
      }
    }
    if (tries === 0) return undefined;
    const shuffledAt = prefix + 2 + 4 * tries;
    if (this.out.length < shuffledAt + rawLength) this.out = Buffer.allocUnsafeSlow(shuffledAt + rawLength);
    const out = this.out;
    byteShuffle(plaintext, out.subarray(shuffledAt, shuffledAt + rawLength), elementSize, base);
    const bound = zstd.compressBound(n);
    if (this.coded.length < bound) this.coded = Buffer.allocUnsafeSlow(bound);
    let mask = 0;
    const codedLengths: number[] = [];
    // Planes are packed towards the front as they go: `at` never passes the plane being read.
    let at = shuffledAt;
    for (let p = 0; p < elementSize; p++) {
      const planeAt = shuffledAt + p * n;
      if (tryMask & (1 << p)) {
        const coded = this.coder.compress2(this.coded, out.subarray(planeAt, planeAt + n));
        if (coded < n - (n >> 6)) {
          this.coded.copy(out, at, 0, coded);
          mask |= 1 << p;
          codedLengths.push(coded);
          at += coded;
          continue;
        }
      }
      if (at !== planeAt) out.copyWithin(at, planeAt, planeAt + n);
      at += n;
    }
    if (mask === 0) return undefined;
    const tail = rawLength - n * elementSize;
    if (tail > 0) out.copyWithin(at, shuffledAt + n * elementSize, shuffledAt + rawLength);
    at += tail;
    // A plane that sampled as codable but did not code leaves 4 header bytes unused: close the gap.
    const header = 2 + 4 * codedLengths.length;
    const start = prefix + header;
    if (start < shuffledAt) out.copyWithin(start, shuffledAt, at);
    const length = at - shuffledAt + header;
    if (length >= rawLength - (rawLength >> 6)) return undefined;
    out[prefix] = elementSize;
    out[prefix + 1] = mask;
    codedLengths.forEach((l, i) => out.writeUInt32LE(l, prefix + 2 + 4 * i));
    return out.subarray(0, prefix + length);
  }

  /**
   * Order-0 entropy of a sample of plane p (byte p of each element, XOR the base's), in bits per
   * byte: stripes of consecutive elements spread over the chunk, read in place.
   */
  private sampleEntropy(plaintext: Uint8Array, base: Uint8Array | undefined, p: number, elementSize: number, n: number): number {
    const h = this.histogram;
    h.fill(0);
    let total = 0;
    const count = (from: number, to: number) => {
      const end = to * elementSize;
      if (base) for (let i = from * elementSize + p; i < end; i += elementSize) h[plaintext[i]! ^ base[i]!]!++;
      else for (let i = from * elementSize + p; i < end; i += elementSize) h[plaintext[i]!]!++;
    };
    if (n <= sampleBytes) {
      count(0, n);
      total = n;
    } else {
      const stripe = sampleBytes / sampleStripes;
      const step = Math.floor((n - stripe) / (sampleStripes - 1));
      for (let s = 0; s < sampleStripes; s++) count(s * step, s * step + stripe);
      total = sampleStripes * stripe;
    }
    let bits = 0;
    for (let v = 0; v < 256; v++) {
      const c = h[v]!;
      if (c > 0) bits -= c * Math.log2(c / total);
    }
    return bits / total;
  }
}

/** Thrown for a payload that is not a valid plane payload of the expected length. */
export class PlanePayloadError extends Error {}

export class PlaneDecoder {
  private readonly decompressor = new zstd.DCtx();
  /** Decoded coded planes, at plane offsets; raw planes are read where the payload holds them. */
  private decoded = Buffer.alloc(0);

  /**
   * Writes the rawLength plaintext bytes of `payload` into `dst`, XORing `base` back in when one
   * is given (a delta blob; base may be dst itself); PlanePayloadError naming what is wrong.
   */
  decode(payload: Uint8Array, rawLength: number, dst: Uint8Array, base?: Uint8Array): void {
    if (payload.length < 2) throw new PlanePayloadError('shorter than its header');
    const elementSize = payload[0]!;
    const mask = payload[1]!;
    if (!planeElementSizes.includes(elementSize)) throw new PlanePayloadError(`unknown element size ${elementSize}`);
    if (mask >= 1 << elementSize) throw new PlanePayloadError(`coded-plane mask ${mask} for ${elementSize} planes`);
    const n = Math.floor(rawLength / elementSize);
    let coded = 0;
    for (let p = 0; p < elementSize; p++) if (mask & (1 << p)) coded++;
    let at = 2 + 4 * coded;
    if (payload.length < at) throw new PlanePayloadError('shorter than its header');
    const view = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    if (this.decoded.length < rawLength) this.decoded = Buffer.allocUnsafeSlow(rawLength);
    const planes: Uint8Array[] = [];
    let codedIndex = 0;
    for (let p = 0; p < elementSize; p++) {
      const length = mask & (1 << p) ? view.readUInt32LE(2 + 4 * codedIndex++) : n;
      if (at + length > payload.length) throw new PlanePayloadError(`plane ${p} runs past its end`);
      const stored = view.subarray(at, at + length);
      if (mask & (1 << p)) {
        const plane = this.decoded.subarray(p * n, (p + 1) * n);
        let produced = -1;
        try {
          if (zstd.getFrameContentSize(stored) === n) produced = this.decompressor.decompress(plane, stored);
        } catch {
          produced = -1;
        }
        if (produced !== n) throw new PlanePayloadError(`plane ${p} does not decompress to ${n} bytes`);
        planes.push(plane);
      } else {
        planes.push(stored);
      }
      at += length;
    }
    const tail = rawLength - n * elementSize;
    if (payload.length !== at + tail) throw new PlanePayloadError(`${payload.length} bytes where its planes and tail make ${at + tail}`);
    byteUnshufflePlanes(planes, view.subarray(at, at + tail), dst.subarray(0, rawLength), elementSize, base?.subarray(0, rawLength));
  }
}
