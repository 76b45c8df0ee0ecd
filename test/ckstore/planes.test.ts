/**
 * The byte-plane blob transform (src/transform/planes.ts, blob-codec.ts): lossless for every
 * element size and length, the per-plane skip decisions, and damage reported as BlobCorruptError
 * naming the blob.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { sealOverhead } from '../../src/crypto/aead.js';
import { sealInto } from '../../src/crypto/seal-into.js';
import { BlobFlag, BlobType } from '../../src/repo/blob.js';
import { BlobCodec, BlobCorruptError, blobAad } from '../../src/transform/blob-codec.js';
import type { MasterKeys } from '../../src/transform/keys.js';
import { PlaneEncoder } from '../../src/transform/planes.js';
import { gaussianBf16, gaussianFloats, toFloat16 } from './floats.js';

const keys: MasterKeys = { encryption: randomBytes(32), blobId: randomBytes(32), gearSeed: randomBytes(32) };

function seal(codec: BlobCodec, plaintext: Uint8Array, elementSize: number) {
  const id = codec.id(plaintext);
  const dst = new Uint8Array(plaintext.length + sealOverhead);
  const { storedLength, flags } = codec.sealInto(BlobType.data, id, plaintext, dst, elementSize);
  return { id, flags, sealed: dst.subarray(0, storedLength) };
}

/** fp32 weights, bf16 and fp16 exports of them, and fp64: the dtypes the transform serves. */
function floatData(elementSize: number, elements: number): Buffer {
  const f32 = gaussianFloats(elements, 0.02);
  if (elementSize === 4) return Buffer.from(f32.buffer);
  if (elementSize === 8) return Buffer.from(Float64Array.from(f32).buffer);
  return elementSize === 2 ? gaussianBf16(f32) : toFloat16(f32);
}

describe('byte-plane blobs', () => {
  const codec = new BlobCodec(keys, 1, { planes: true });

  it('round-trips float chunks of every element size and length byte-identically (odd lengths included)', () => {
    for (const elementSize of [2, 4, 8]) {
      for (const extra of [0, 1, elementSize - 1]) {
        const data = Buffer.concat([floatData(elementSize, 50_000), randomBytes(extra)]);
        const { id, flags, sealed } = seal(codec, data, elementSize);
        expect(flags, `element size ${elementSize}, ${extra} trailing bytes`).toBe(BlobFlag.planes);
        expect(sealed.length).toBeLessThan(data.length);
        expect(codec.open(BlobType.data, id, flags, data.length, sealed).equals(data)).toBe(true);
      }
    }
  });

  it('round-trips any bytes under any element size (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 4096 }), fc.constantFrom(2, 4, 8), fc.nat(255), fc.nat(7), (bytes, elementSize, fill, plane) => {
        // Half the cases get one constant byte plane (any of them: coded planes before, between
        // and after raw ones) so that planes are kept; in the others sampling may expect a plane
        // of noise to code, which it then does not.
        const data = Buffer.from(bytes);
        if (fill % 2 === 0) for (let i = plane % elementSize; i < data.length; i += elementSize) data[i] = fill;
        const { id, flags, sealed } = seal(codec, data, elementSize);
        expect(codec.open(BlobType.data, id, flags, data.length, sealed).equals(data)).toBe(true);
      }),
      { numRuns: 600 },
    );
  });

  it('codes the sign/exponent plane of fp32 and bf16 and stores the mantissa planes raw', () => {
    const encoder = new PlaneEncoder();
    const fp32 = floatData(4, 1 << 18);
    const fp32Payload = encoder.encode(fp32, 4)!;
    expect(fp32Payload[0]).toBe(4);
    expect(fp32Payload[1]).toBe(0b1000);
    // The exponent plane codes to well under half; the three raw planes are stored as they are.
    expect(fp32Payload.length).toBeLessThan(0.9 * fp32.length);
    expect(fp32Payload.length).toBeGreaterThan(0.75 * fp32.length);
    const bf16 = floatData(2, 1 << 18);
    const bf16Payload = encoder.encode(bf16, 2)!;
    expect(bf16Payload[1]).toBe(0b10);
    expect(bf16Payload.length).toBeLessThan(0.75 * bf16.length);
    // All zeros: every plane codes (to almost nothing).
    const zeros = encoder.encode(Buffer.alloc(1 << 16), 4)!;
    expect(zeros[1]).toBe(0b1111);
    expect(zeros.length).toBeLessThan(200);
    // Noise: no plane pays, so there is no plane payload.
    expect(encoder.encode(randomBytes(1 << 16), 4)).toBeUndefined();
  });

  it('stores noise raw and non-float chunks as before (zstd or raw)', () => {
    const noise = randomBytes(1 << 16);
    expect(seal(codec, noise, 4).flags).toBe(0);
    const text = Buffer.from('tender '.repeat(10_000));
    expect(seal(codec, text, 0).flags).toBe(BlobFlag.zstd);
    // A codec of a repository without the transform ignores the element size.
    const plain = new BlobCodec(keys, 1);
    const fp32 = floatData(4, 1 << 16);
    const sealedPlain = seal(plain, fp32, 4);
    expect(sealedPlain.flags & BlobFlag.planes).toBe(0);
    expect(plain.open(BlobType.data, sealedPlain.id, sealedPlain.flags, fp32.length, sealedPlain.sealed).equals(fp32)).toBe(true);
    // ...and so does one with compression off.
    expect(seal(new BlobCodec(keys, 0, { planes: true }), fp32, 4).flags).toBe(0);
  });

  it('reports a damaged plane payload as BlobCorruptError naming the blob', () => {
    const data = floatData(4, 10_000);
    const id = codec.id(data);
    const good = new PlaneEncoder().encode(data, 4)!;
    /** Seals a payload as a plane blob of `data` would be sealed (authentic, so only the decoder can object). */
    const open = (payload: Uint8Array, flags: number = BlobFlag.planes) => {
      const dst = new Uint8Array(payload.length + sealOverhead);
      const stored = sealInto(keys.encryption, blobAad(BlobType.data, id), payload, dst);
      return () => codec.open(BlobType.data, id, flags, data.length, dst.subarray(0, stored));
    };
    expect(open(good)().equals(data)).toBe(true);
    const damaged = (mutate: (p: Buffer) => Buffer) => mutate(Buffer.from(good));
    const cases: Array<[string, () => unknown, RegExp]> = [
      ['element size 3', open(damaged((p) => ((p[0] = 3), p))), /unknown element size 3/],
      ['mask beyond the planes', open(damaged((p) => ((p[1] = 0x1f), p))), /coded-plane mask 31/],
      ['truncated', open(good.subarray(0, good.length - 1)), /plane 3 runs past its end/],
      ['a byte too many', open(Buffer.concat([good, Buffer.from([0])])), /bytes where its planes and tail make/],
      ['coded length past the end', open(damaged((p) => (p.writeUInt32LE(0x7fffffff, 2), p))), /runs past its end/],
      // Planes 0-2 are raw (10,000 bytes each) after the 6-byte header; the coded plane 3 follows.
      ['broken zstd frame', open(damaged((p) => (p.fill(0xee, 30_006, 30_020), p))), /plane 3 does not decompress to 10000 bytes/],
      ['a raw plane byte changed', open(damaged((p) => ((p[p.length - 5] ^= 1), p))), /content does not match its ID/],
      ['both zstd and planes flagged', open(good, BlobFlag.planes | BlobFlag.zstd), /has flags 3/],
      ['an unknown flag', open(good, 4), /has flags 4/],
      ['header only', open(good.subarray(0, 1)), /shorter than its header/],
    ];
    for (const [what, run, message] of cases) {
      let caught: unknown;
      try {
        run();
      } catch (err) {
        caught = err;
      }
      expect(caught, what).toBeInstanceOf(BlobCorruptError);
      expect((caught as Error).message, what).toContain(`data blob ${id.toString('hex')}`);
      expect((caught as Error).message, what).toMatch(message);
    }
  });
});
