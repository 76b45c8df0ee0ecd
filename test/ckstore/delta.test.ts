/**
 * XOR-delta blobs (src/transform/xor-delta.ts, blob-codec.ts): lossless against their base, the
 * rule that keeps a delta only where it pays, damage reported as BlobCorruptError naming the
 * blob, and the index and pack-header entries that carry a delta's base.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { sealOverhead } from '../../src/crypto/aead.js';
import { sealInto } from '../../src/crypto/seal-into.js';
import { BlobFlag, BlobType } from '../../src/repo/blob.js';
import { IdTable } from '../../src/repo/index/id-table.js';
import { decodeIndex, encodeIndex } from '../../src/repo/index/index-file.js';
import { IndexView } from '../../src/repo/index/index-view.js';
import { PackBuilder, decodePackHeader } from '../../src/repo/pack/pack.js';
import { BlobCodec, BlobCorruptError, type DeltaBase, blobAad } from '../../src/transform/blob-codec.js';
import type { MasterKeys } from '../../src/transform/keys.js';
import { DeltaEstimator } from '../../src/transform/xor-delta.js';
import { sharedBuffer } from '../../src/util/buffer-pool.js';
import { gaussianBf16, gaussianFloats } from './floats.js';

const keys: MasterKeys = { encryption: randomBytes(32), blobId: randomBytes(32), gearSeed: randomBytes(32) };
const codec = new BlobCodec(keys, 1, { planes: true, delta: true });

/** fp32 weights and their next version: each moved by a step of `relative` times the weights' scale. */
function drifted(elements: number, relative: number, seed = 1): { base: Buffer; next: Buffer } {
  const w = gaussianFloats(elements, 0.02, seed);
  const step = gaussianFloats(elements, 0.02 * relative, seed + 1);
  const next = Float32Array.from(w, (x, i) => x + step[i]!);
  return { base: Buffer.from(w.buffer), next: Buffer.from(next.buffer) };
}

function seal(c: BlobCodec, plaintext: Uint8Array, elementSize: number, base?: DeltaBase) {
  const id = c.id(plaintext);
  const dst = new Uint8Array(plaintext.length + sealOverhead);
  const { storedLength, flags } = c.sealInto(BlobType.data, id, plaintext, dst, elementSize, base);
  return { id, flags, sealed: dst.subarray(0, storedLength) };
}

describe('XOR-delta blobs', () => {
  it('stores a drifted fp32 chunk as a delta against its previous version, far smaller, and restores it exactly', () => {
    const { base, next } = drifted(1 << 18, 1e-3);
    const baseId = codec.id(base);
    const whole = seal(codec, next, 4);
    const delta = seal(codec, next, 4, { id: baseId, plaintext: base });
    expect(whole.flags).toBe(BlobFlag.planes);
    expect(delta.flags).toBe(BlobFlag.delta | BlobFlag.planes);
    // Measured: about 0.5 of the plaintext against 0.87 for planes alone.
    expect(delta.sealed.length).toBeLessThan(0.7 * whole.sealed.length);
    // The ID is the hash of the chunk itself, not of the delta.
    expect(delta.id.equals(whole.id)).toBe(true);
    expect(codec.open(BlobType.data, delta.id, delta.flags, next.length, delta.sealed, { id: baseId, plaintext: base }).equals(next)).toBe(true);
  });

  it('works with the base in the destination: the room a chunk is sealed into, the region it is opened into', () => {
    const { base, next } = drifted(50_001, 1e-3, 7);
    const baseId = codec.id(base);
    const room = Buffer.alloc(next.length + sealOverhead);
    base.copy(room);
    const { storedLength, flags } = codec.sealInto(BlobType.data, codec.id(next), next, room, 4, { id: baseId, plaintext: room.subarray(0, next.length) });
    expect(flags).toBe(BlobFlag.delta | BlobFlag.planes);
    const sealed = Buffer.from(room.subarray(0, storedLength));
    const target = Buffer.from(base);
    codec.openInto(BlobType.data, codec.id(next), flags, next.length, sealed, target, { id: baseId, plaintext: target });
    expect(target.equals(next)).toBe(true);
  });

  it('stores the chunk whole where the delta does not pay: an unrelated base, a codec without delta, non-float chunks', () => {
    const { next } = drifted(1 << 16, 1e-3);
    const unrelated = Buffer.from(gaussianFloats(1 << 16, 0.02, 99).buffer);
    expect(seal(codec, next, 4, { id: codec.id(unrelated), plaintext: unrelated }).flags).toBe(BlobFlag.planes);
    const { base } = drifted(1 << 16, 1e-3);
    const planesOnly = new BlobCodec(keys, 1, { planes: true });
    expect(seal(planesOnly, next, 4, { id: codec.id(base), plaintext: base }).flags).toBe(BlobFlag.planes);
    expect(seal(codec, next, 0, { id: codec.id(base), plaintext: base }).flags & BlobFlag.delta).toBe(0);
    // A base of another length is no base.
    expect(seal(codec, next.subarray(4), 4, { id: codec.id(base), plaintext: base }).flags & BlobFlag.delta).toBe(0);
  });

  it('the estimate follows the drift: small steps pay, steps as large as the weights do not', () => {
    const estimator = new DeltaEstimator();
    for (const [relative, pays] of [
      [1e-4, true],
      [1e-2, true],
      [1, false],
    ] as const) {
      const { base, next } = drifted(1 << 16, relative, 3);
      expect(estimator.pays(next, base, 4), `relative step ${relative}`).toBe(pays);
    }
    const f32 = drifted(1 << 16, 1e-3, 5);
    const bf16Base = gaussianBf16(new Float32Array(f32.base.buffer, f32.base.byteOffset, 1 << 16));
    const bf16Next = gaussianBf16(new Float32Array(f32.next.buffer, f32.next.byteOffset, 1 << 16));
    expect(estimator.pays(bf16Next, bf16Base, 2)).toBe(true);
  });

  it('round-trips any chunk against any base of its length (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 4096 }), fc.constantFrom(2, 4, 8), fc.nat(), (bytes, elementSize, seed) => {
        // The next version: the base with its low byte of each element changed (a delta that pays) or anything.
        const base = Buffer.from(bytes);
        const next = Buffer.from(base);
        if (seed % 3 === 0) next.set(randomBytes(next.length));
        else for (let i = 0; i < next.length; i += elementSize) next[i] = (next[i]! + seed) & 0xff;
        const baseRef = { id: codec.id(base), plaintext: base };
        const { id, flags, sealed } = seal(codec, next, elementSize, baseRef);
        expect(codec.open(BlobType.data, id, flags, next.length, sealed, flags & BlobFlag.delta ? baseRef : undefined).equals(next)).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('seals and opens with the base in the destination itself, as backup and restore place it', () => {
    for (const elementSize of [2, 4]) {
      const { base, next } = drifted(1 << 16, 1e-3);
      const id = codec.id(next);
      // Backup: the base is loaded into the room reserved for the sealed blob.
      const room = Buffer.alloc(next.length + sealOverhead);
      base.copy(room);
      const { storedLength, flags } = codec.sealInto(BlobType.data, id, next, room, elementSize, { id: codec.id(base), plaintext: room.subarray(0, base.length) });
      expect(flags & BlobFlag.delta, `element size ${elementSize}`).toBeTruthy();
      const sealed = Buffer.from(room.subarray(0, storedLength));
      // Restore: the base is loaded where the plaintext goes, and the delta is XORed over it.
      const target = Buffer.from(base);
      codec.openInto(BlobType.data, id, flags, next.length, sealed, target, { id: codec.id(base), plaintext: target });
      expect(target.equals(next)).toBe(true);
    }
  });

  it('damage is a BlobCorruptError naming the blob: payload, base ID, base content, a missing base', () => {
    const { base, next } = drifted(1 << 16, 1e-3);
    const baseRef = { id: codec.id(base), plaintext: base };
    const { id, flags, sealed } = seal(codec, next, 4, baseRef);
    expect(flags & BlobFlag.delta).toBeTruthy();
    const open = (s: Uint8Array, b: DeltaBase | undefined, f = flags) => () => codec.open(BlobType.data, id, f, next.length, s, b);
    const hex = id.toString('hex');

    // Resealed payloads (valid encryption, damaged content), as a bug or a wrong key could write them.
    const reseal = (payload: Uint8Array) => {
      const dst = new Uint8Array(payload.length + sealOverhead);
      return dst.subarray(0, sealInto(keys.encryption, blobAad(BlobType.data, id), payload, dst));
    };
    const planes = Buffer.alloc(64, 0);
    expect(open(reseal(Buffer.concat([baseRef.id, planes])), baseRef)).toThrow(new RegExp(`data blob ${hex} has a damaged delta payload`));
    const otherBase = Buffer.concat([randomBytes(32), planes]);
    expect(open(reseal(otherBase), baseRef)).toThrow(/does not name its base/);
    expect(open(reseal(Buffer.alloc(10)), baseRef)).toThrow(/does not name its base/);

    // A flipped byte of the sealed bytes: decryption fails.
    const flipped = Buffer.from(sealed);
    flipped[40]! ^= 1;
    expect(open(flipped, baseRef)).toThrow(BlobCorruptError);
    // The wrong base content: the restored chunk is not the one hashed.
    const wrongBase = Buffer.from(base);
    wrongBase[100]! ^= 0x10;
    expect(open(sealed, { id: baseRef.id, plaintext: wrongBase })).toThrow(/content does not match its ID/);
    expect(open(sealed, { id: baseRef.id, plaintext: base.subarray(4) })).toThrow(/has a base of/);
    // A delta flag without planes, and no base at all.
    expect(open(sealed, baseRef, BlobFlag.delta)).toThrow(/flags 4 that no tender writes/);
    expect(open(sealed, undefined)).toThrow(/opened without its base/);
  });

  it('the in-memory index keeps the base of each delta entry across entry blocks', () => {
    const table = new IdTable();
    const ids = Array.from({ length: 140_000 }, (_, i) => {
      const id = Buffer.alloc(32);
      id.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, 0);
      id.writeUInt32LE(i, 4);
      return id;
    });
    const baseOf = (i: number) => (i % 3 === 0 ? ids[(i + 1) % ids.length] : undefined);
    ids.forEach((id, i) => {
      const base = baseOf(i);
      table.add(id, { packIndex: i, offset: 0, storedLength: 1, rawLength: 2, type: BlobType.data, flags: base ? BlobFlag.delta | BlobFlag.planes : 0, ...(base ? { base } : {}) });
    });
    for (const i of [0, 1, 3, 65_535, 65_536, 65_538, 139_998]) {
      const loc = table.get(ids[i]!)!;
      expect(loc.packIndex).toBe(i);
      const base = baseOf(i);
      if (base) expect(Buffer.from(loc.base!).equals(base), `entry ${i}`).toBe(true);
      else expect(loc.base, `entry ${i}`).toBeUndefined();
    }
    let withBase = 0;
    table.forEach((_id, loc) => (withBase += loc.base ? 1 : 0));
    expect(withBase).toBe(Math.ceil(140_000 / 3));
  });

  it('index files and pack headers carry the base of a delta entry, and only of one', () => {
    const base = randomBytes(32);
    const blobs = [
      { id: randomBytes(32), type: BlobType.data, flags: BlobFlag.planes, offset: 0, storedLength: 100, rawLength: 200 },
      { id: randomBytes(32), type: BlobType.data, flags: BlobFlag.delta | BlobFlag.planes, offset: 100, storedLength: 50, rawLength: 200, base },
      { id: randomBytes(32), type: BlobType.tree, flags: BlobFlag.zstd, offset: 150, storedLength: 10, rawLength: 20 },
    ];
    const packId = randomBytes(32);
    const decoded = decodeIndex(keys.encryption, encodeIndex(keys.encryption, { superseded: [], packs: [{ packId, packSize: 200, blobs }] }));
    expect(decoded.packs[0]!.blobs).toEqual(blobs);
    const view = new IndexView();
    view.addPacks(decoded.packs);
    expect(Buffer.from(view.lookup(blobs[1]!.id)!.base!).equals(base)).toBe(true);
    expect(view.lookup(blobs[0]!.id)!.base).toBeUndefined();
    expect(() => encodeIndex(keys.encryption, { superseded: [], packs: [{ packId, packSize: 200, blobs: [{ ...blobs[0]!, base }] }] })).toThrow(/with a base/);

    const pack = new PackBuilder(sharedBuffer(4096));
    for (const b of blobs) {
      const r = pack.reserve(b.storedLength)!;
      pack.commit(r, b.id, b.type, b.flags, b.rawLength, b.storedLength, b.base);
    }
    pack.closed = true;
    const { parts, size } = pack.finish(keys.encryption);
    expect(decodePackHeader(keys.encryption, pack.id, Buffer.concat(parts), size)).toEqual(blobs);
  });
});
