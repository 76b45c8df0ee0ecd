/**
 * Unit tests of the repository format, against src/ directly: the in-memory index table, pack
 * headers, index files, keyed BLAKE3 blob IDs and the content-defined chunker.
 */
import { createHash, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { createBLAKE3 } from 'hash-wasm';
import { describe, expect, it } from 'vitest';
import { type BoundaryFinder, GearChunker, gearTable } from '../src/backup/chunk/fastcdc.js';
import { type ChunkerParams, defaultChunkerParams } from '../src/repo/chunker-params.js';
import { createBoundaryFinder } from '../src/backup/chunk/native.js';
import { loadNative } from '../src/util/native.js';
import { DecryptError, aadLabel, seal } from '../src/crypto/aead.js';
import { BinaryWriter, FormatError } from '../src/repo/binary.js';
import { type BlobEntry, BlobType } from '../src/repo/blob.js';
import { idLength } from '../src/repo/ids.js';
import { blobId } from '../src/transform/blob-id.js';
import { type BlobLocation, IdTable } from '../src/repo/index/id-table.js';
import { IdSet } from '../src/repo/index/id-set.js';
import { type IndexFile, decodeIndex, encodeIndex } from '../src/repo/index/index-file.js';
import { PackBuilder, decodePackHeader, headerLengthFromTail } from '../src/repo/pack/pack.js';
import { sharedBuffer } from '../src/util/buffer-pool.js';
import { BlobCodec } from '../src/transform/blob-codec.js';

/** Deterministic PRNG (mulberry32), so failures reproduce. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function prngBytes(seed: number, n: number): Buffer {
  const next = prng(seed);
  const buf = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i += 4) {
    const v = (next() * 4294967296) >>> 0;
    for (let j = 0; j < 4 && i + j < n; j++) buf[i + j] = (v >>> (8 * j)) & 0xff;
  }
  return buf;
}

const key = () => randomBytes(32);

// ---- IdTable ----------------------------------------------------------------------------------

describe('IdTable', () => {
  const locOf = (i: number): BlobLocation => ({
    packIndex: i % 5000,
    offset: (i * 7919) >>> 0,
    storedLength: 100 + (i % 65536),
    rawLength: 50 + ((i * 31) % 1_000_000),
    type: i % 3,
    flags: i % 2,
  });

  it('adds, finds and grows through 100k random IDs', () => {
    const table = new IdTable(16);
    const pool = randomBytes(100_000 * idLength);
    const ids: Buffer[] = [];
    for (let i = 0; i < 100_000; i++) ids.push(pool.subarray(i * idLength, (i + 1) * idLength));
    let refused = 0;
    ids.forEach((id, i) => {
      if (!table.add(id, locOf(i))) refused++;
    });
    expect(refused).toBe(0);
    expect(table.size).toBe(100_000);
    for (let i = 0; i < ids.length; i++) {
      if (!table.has(ids[i]!)) throw new Error(`id ${i} missing`);
      const got = table.get(ids[i]!)!;
      const want = locOf(i);
      if (got.packIndex !== want.packIndex || got.offset !== want.offset || got.storedLength !== want.storedLength || got.rawLength !== want.rawLength || got.type !== want.type || got.flags !== want.flags) {
        expect(got, `id ${i}`).toEqual(want);
      }
    }
    let found = 0;
    for (let i = 0; i < 10_000; i++) {
      const absent = randomBytes(idLength);
      if (table.has(absent) || table.get(absent) !== undefined) found++;
    }
    expect(found).toBe(0);
    const seen = new Map<string, BlobLocation>();
    table.forEach((id, loc) => seen.set(Buffer.from(id).toString('hex'), loc));
    expect(seen.size).toBe(100_000);
    ids.forEach((id, i) => {
      const loc = seen.get(id.toString('hex'));
      if (JSON.stringify(loc) !== JSON.stringify(locOf(i))) expect(loc).toEqual(locOf(i));
    });
  });

  it('keeps the first location of an ID (before and after growing)', () => {
    const table = new IdTable(16);
    const ids = Array.from({ length: 5000 }, () => randomBytes(idLength));
    ids.forEach((id, i) => table.add(id, locOf(i)));
    ids.forEach((id, i) => {
      // A copy (not the same Buffer), with another location.
      expect(table.add(Buffer.from(id), locOf(i + 1))).toBe(false);
    });
    expect(table.size).toBe(5000);
    // Grow a lot more, then look again.
    for (let i = 0; i < 20_000; i++) table.add(randomBytes(idLength), locOf(i));
    ids.forEach((id, i) => expect(table.get(id)).toEqual(locOf(i)));
  });

  it('copes with IDs that collide in the bytes used as hash (long probe runs, wrap-around)', () => {
    const table = new IdTable(16);
    const ids: Buffer[] = [];
    for (let i = 0; i < 1500; i++) {
      const id = randomBytes(idLength);
      // Same first four bytes for all: every ID lands on the same home slot (the last one).
      id.writeUInt32LE(0xffffffff, 0);
      ids.push(id);
      table.add(id, locOf(i));
    }
    expect(table.size).toBe(1500);
    ids.forEach((id, i) => expect(table.get(id)).toEqual(locOf(i)));
    const other = Buffer.from(ids[0]!);
    other[31]! ^= 1;
    expect(table.has(other)).toBe(false);
  });

  it('stores the extreme field values', () => {
    const table = new IdTable();
    const loc: BlobLocation = { packIndex: 0xfffffffe, offset: 0xffffffff, storedLength: 0xffffffff, rawLength: 0xffffffff, type: 255, flags: 255 };
    const id = randomBytes(idLength);
    table.add(id, loc);
    expect(table.get(id)).toEqual(loc);
    // Only the first 32 bytes of an over-long view count.
    const longer = Buffer.concat([id, Buffer.from([1, 2, 3])]);
    expect(table.get(longer)).toEqual(loc);
  });

  it('holds 44 bytes an entry while pack numbers and lengths fit 16 bits, 50 once they do not, plus 4 a slot', () => {
    // 4 blocks of 65,536 entries exactly; 262,144 entries / 0.7 load → 2^19 slots.
    const entries = 4 * 65536;
    const slotBytes = 4 * 2 ** 19;
    const small = (i: number): BlobLocation => ({ packIndex: i >>> 11, offset: (i * 7919) >>> 0, storedLength: 28 + (i % 1024), rawLength: i % 1024, type: 0, flags: i % 2 });
    const large = (i: number): BlobLocation => ({ packIndex: 70_000 + i, offset: i, storedLength: 1 << 20, rawLength: (1 << 20) + i, type: 0, flags: 1 });
    const ids = randomBytes(entries * idLength);
    const idAt = (i: number) => ids.subarray(i * idLength, (i + 1) * idLength);

    const smallTable = new IdTable();
    for (let i = 0; i < entries; i++) smallTable.add(idAt(i), small(i));
    expect(smallTable.byteLength).toBe(entries * 44 + slotBytes);

    // Small entries first, then large ones in the same blocks: the fields widen, values stay.
    const mixed = new IdTable();
    const locAt = (i: number) => (i % 65536 < 30000 ? small(i) : large(i));
    for (let i = 0; i < entries; i++) mixed.add(idAt(i), locAt(i));
    expect(mixed.byteLength).toBe(entries * 50 + slotBytes);
    for (let i = 0; i < entries; i++) {
      const got = mixed.get(idAt(i))!;
      const want = locAt(i);
      if (got.packIndex !== want.packIndex || got.storedLength !== want.storedLength || got.rawLength !== want.rawLength || got.offset !== want.offset) {
        expect(got, `entry ${i}`).toEqual(want);
      }
    }
  });
});

describe('IdSet', () => {
  it('agrees with a Set of hex strings through random adds and deletes (growing, colliding, wrapping around)', () => {
    const random = prng(7);
    // Half the IDs hash to the last 40 slots of any table: long runs that wrap around the end,
    // which deletions must shift back across.
    const ids = Array.from({ length: 4000 }, (_, i) => {
      const id = randomBytes(idLength);
      if (i % 2 === 0) id.writeUInt32LE(0xffffffff - (i % 40), 0);
      return id;
    });
    const set = new IdSet(16);
    const reference = new Set<string>();
    for (let step = 0; step < 60_000; step++) {
      const id = ids[Math.floor(random() * ids.length)]!;
      const hex = id.toString('hex');
      if (random() < 0.55) {
        expect(set.add(Buffer.from(id))).toBe(!reference.has(hex));
        reference.add(hex);
      } else {
        expect(set.delete(id)).toBe(reference.has(hex));
        reference.delete(hex);
      }
    }
    expect(set.size).toBe(reference.size);
    for (const id of ids) if (set.has(id) !== reference.has(id.toString('hex'))) expect(set.has(id), id.toString('hex')).toBe(reference.has(id.toString('hex')));
  });
});

// ---- pack headers ------------------------------------------------------------------------------

interface BuiltPack {
  encryptionKey: Buffer;
  builder: PackBuilder;
  bytes: Buffer;
  entries: BlobEntry[];
  headerStart: number;
}

/**
 * A pack made by PackBuilder: blobs are reserved in the pack buffer (sometimes more room than
 * they end up using, as compression does), filled, committed; one reservation is abandoned.
 * `large`: every fifth blob is larger than what finish() moves (stays a part of its own).
 */
function buildPack(blobs: number, seed = 1, large = false): BuiltPack {
  const encryptionKey = key();
  const builder = new PackBuilder(sharedBuffer(large ? 8 << 20 : 1 << 20));
  const next = prng(seed);
  const committed: Array<Omit<BlobEntry, 'offset'> & { bytes: Buffer }> = [];
  for (let i = 0; i < blobs; i++) {
    const stored = large && i % 5 === 4 ? 65 * 1024 + Math.floor(next() * 100_000) : 1 + Math.floor(next() * 200);
    const r = builder.reserve(stored + Math.floor(next() * 20))!;
    expect(r).toBeDefined();
    if (i === 1) {
      builder.abandon(r);
      continue;
    }
    const bytes = randomBytes(stored);
    new Uint8Array(r.buffer, r.offset, stored).set(bytes);
    const entry = { id: randomBytes(idLength), type: [BlobType.data, BlobType.tree, BlobType.list][i % 3]!, flags: i % 2, rawLength: stored * 3 };
    builder.commit(r, entry.id, entry.type, entry.flags, entry.rawLength, stored);
    committed.push({ ...entry, storedLength: stored, bytes });
  }
  builder.closed = true;
  expect(builder.complete).toBe(true);
  const finished = builder.finish(encryptionKey);
  const { parts, size } = finished;
  const entries = [...finished.entries];
  const bytes = Buffer.concat(parts);
  expect(bytes.length).toBe(size);
  let offset = 0;
  const expected = committed.map(({ bytes: blobBytes, ...e }) => {
    const full = { ...e, offset };
    // Each blob's bytes are where its entry says, whether finish() moved them or not.
    expect(bytes.subarray(offset, offset + e.storedLength).equals(blobBytes)).toBe(true);
    offset += e.storedLength;
    return full;
  });
  expect(entries).toEqual(expected);
  // Small blobs are joined into runs: a part per large blob at most, plus header and trailer.
  const largeBlobs = committed.filter((e) => e.storedLength > 64 * 1024).length;
  expect(parts.length).toBeLessThanOrEqual(2 * largeBlobs + 1 + 2);
  return { encryptionKey, builder, bytes, entries, headerStart: offset };
}

function sealHeader(encryptionKey: Buffer, packId: Buffer, plain: Buffer): Buffer {
  return seal(encryptionKey, plain, Buffer.concat([aadLabel('pack-header'), packId]));
}

function packWithHeader(encryptionKey: Buffer, packId: Buffer, blobBytes: number, plain: Buffer): Buffer {
  const sealed = sealHeader(encryptionKey, packId, plain);
  const trailer = Buffer.alloc(4);
  trailer.writeUInt32LE(sealed.length);
  return Buffer.concat([Buffer.alloc(blobBytes, 7), sealed, trailer]);
}

describe('pack header', () => {
  it('round-trips: decoding gives every entry with its offset, from the whole pack or just its tail', () => {
    for (const [n, large] of [[0, false], [1, false], [2, false], [17, false], [300, false], [40, true]] as const) {
      const p = buildPack(n, n + 1, large);
      const decoded = decodePackHeader(p.encryptionKey, p.builder.id, p.bytes, p.bytes.length);
      expect(decoded).toEqual(p.entries);
      let offset = 0;
      for (const e of decoded) {
        expect(e.offset).toBe(offset);
        offset += e.storedLength;
      }
      const headerLength = headerLengthFromTail(p.bytes.subarray(p.bytes.length - 4), p.bytes.length);
      expect(headerLength + 4 + p.headerStart).toBe(p.bytes.length);
      const tail = p.bytes.subarray(p.bytes.length - headerLength - 4);
      expect(decodePackHeader(p.encryptionKey, p.builder.id, tail, p.bytes.length)).toEqual(p.entries);
    }
  });

  it('rejects every truncation of a pack with FormatError', () => {
    const p = buildPack(5);
    for (let k = 0; k < p.bytes.length; k++) {
      const cut = p.bytes.subarray(0, k);
      expect(() => decodePackHeader(p.encryptionKey, p.builder.id, cut, cut.length), `truncated to ${k} of ${p.bytes.length}`).toThrow(FormatError);
    }
  });

  it('rejects every bit flip in the header and trailer with FormatError', () => {
    const p = buildPack(4);
    for (let at = p.headerStart; at < p.bytes.length; at++) {
      for (let bit = 0; bit < 8; bit++) {
        const damaged = Buffer.from(p.bytes);
        damaged[at]! ^= 1 << bit;
        expect(() => decodePackHeader(p.encryptionKey, p.builder.id, damaged, damaged.length), `flip byte ${at} bit ${bit}`).toThrow(FormatError);
      }
    }
  });

  it('rejects a header of another pack, or under another key', () => {
    const p = buildPack(3);
    expect(() => decodePackHeader(p.encryptionKey, randomBytes(32), p.bytes, p.bytes.length)).toThrow(FormatError);
    expect(() => decodePackHeader(key(), p.builder.id, p.bytes, p.bytes.length)).toThrow(FormatError);
    // A tail shorter than the header it announces.
    expect(() => decodePackHeader(p.encryptionKey, p.builder.id, p.bytes.subarray(p.bytes.length - 10), p.bytes.length)).toThrow(FormatError);
  });

  it('rejects well-sealed but malformed headers with FormatError', () => {
    const k = key();
    const id = randomBytes(32);
    const entry = (w: BinaryWriter, type: number, stored: number) => w.u8(type).u8(0).u32(stored).u32(stored).id(randomBytes(32));
    const one = (version: number, type: number, stored: number) => {
      const w = new BinaryWriter(1 + 4 + 42).u8(version).u32(1);
      entry(w, type, stored);
      return w.finish();
    };
    // Sanity: the hand-made layout is right.
    const good = packWithHeader(k, id, 10, one(1, 0, 10));
    expect(decodePackHeader(k, id, good, good.length)).toHaveLength(1);
    const cases: Array<[string, Buffer]> = [
      ['unknown version', packWithHeader(k, id, 10, one(2, 0, 10))],
      ['unknown blob type', packWithHeader(k, id, 10, one(1, 9, 10))],
      ['blobs shorter than the pack', packWithHeader(k, id, 11, one(1, 0, 10))],
      ['blobs longer than the pack', packWithHeader(k, id, 9, one(1, 0, 10))],
      ['a byte after the entries', packWithHeader(k, id, 10, Buffer.concat([one(1, 0, 10), Buffer.from([0])]))],
      ['a huge entry count', packWithHeader(k, id, 0, new BinaryWriter(5).u8(1).u32(0xffffffff).finish())],
      ['an empty header', packWithHeader(k, id, 0, Buffer.alloc(0))],
    ];
    for (const [what, bytes] of cases) expect(() => decodePackHeader(k, id, bytes, bytes.length), what).toThrow(FormatError);
    // A trailer that announces more than the pack holds.
    const huge = Buffer.from(good);
    huge.writeUInt32LE(0xffffffff, huge.length - 4);
    expect(() => decodePackHeader(k, id, huge, huge.length)).toThrow(FormatError);
  });
});

// ---- index files -------------------------------------------------------------------------------

function randomIndex(seed: number, packs: number, maxBlobs: number, superseded = 0): IndexFile {
  const next = prng(seed);
  return {
    superseded: Array.from({ length: superseded }, () => randomBytes(32)),
    packs: Array.from({ length: packs }, () => {
      let offset = 0;
      const blobs: BlobEntry[] = Array.from({ length: Math.floor(next() * maxBlobs) }, (_, i) => {
        const storedLength = 28 + Math.floor(next() * 9_000_000);
        const b: BlobEntry = { id: randomBytes(32), type: (i % 3) as BlobType, flags: i % 2, offset, storedLength, rawLength: Math.floor(next() * 0xffffffff) };
        offset += storedLength;
        return b;
      });
      return { packId: randomBytes(32), packSize: Math.min(0xffffffff, offset + 100), blobs };
    }),
  };
}

/** The plaintext layout of an index file, written by hand (docs in src/repo/index/index-file.ts). */
function indexPlain(file: IndexFile, version = 1): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    parts.push(b);
  };
  parts.push(Buffer.from([version]));
  u32(file.superseded.length);
  parts.push(...file.superseded);
  u32(file.packs.length);
  for (const p of file.packs) {
    parts.push(p.packId);
    u32(p.packSize);
    u32(p.blobs.length);
    for (const b of p.blobs) {
      parts.push(Buffer.from([b.type, b.flags]));
      u32(b.offset);
      u32(b.storedLength);
      u32(b.rawLength);
      parts.push(b.id);
    }
  }
  return Buffer.concat(parts);
}

const sealIndex = (k: Buffer, plain: Buffer) => seal(k, plain, aadLabel('index'));

describe('index file', () => {
  it('round-trips (empty, small, large, with superseded IDs)', () => {
    const k = key();
    for (const file of [randomIndex(1, 0, 0), randomIndex(2, 1, 1), randomIndex(3, 20, 200, 3), randomIndex(4, 3, 0, 1)]) {
      expect(decodeIndex(k, encodeIndex(k, file))).toEqual(file);
    }
  });

  it('round-trips random contents (property)', () => {
    const k = key();
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 0, max: 6 }), fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 3 }), (seed, packs, blobs, sup) => {
        const file = randomIndex(seed, packs, blobs, sup);
        expect(decodeIndex(k, encodeIndex(k, file))).toEqual(file);
      }),
      { numRuns: 200 },
    );
  });

  it('matches the documented byte layout', () => {
    const k = key();
    const file = randomIndex(5, 4, 30, 2);
    expect(decodeIndex(k, sealIndex(k, indexPlain(file)))).toEqual(file);
  });

  it('rejects damaged ciphertext and a wrong key with DecryptError', () => {
    const k = key();
    const stored = encodeIndex(k, randomIndex(6, 2, 5, 1));
    for (let at = 0; at < stored.length; at += 7) {
      const damaged = Buffer.from(stored);
      damaged[at]! ^= 0x80;
      expect(() => decodeIndex(k, damaged), `flip at ${at}`).toThrow(DecryptError);
    }
    expect(() => decodeIndex(k, stored.subarray(0, stored.length - 1))).toThrow(DecryptError);
    expect(() => decodeIndex(key(), stored)).toThrow(DecryptError);
    // A sealed object of another kind (same key) is not an index.
    expect(() => decodeIndex(k, seal(k, indexPlain(randomIndex(6, 1, 1)), aadLabel('snapshot')))).toThrow(DecryptError);
  });

  it('rejects every truncation of the plaintext with FormatError', () => {
    const k = key();
    const plain = indexPlain(randomIndex(7, 3, 4, 2));
    for (let n = 0; n < plain.length; n++) {
      expect(() => decodeIndex(k, sealIndex(k, plain.subarray(0, n))), `plaintext cut to ${n} of ${plain.length}`).toThrow(FormatError);
    }
  });

  it('rejects malformed plaintext with FormatError', () => {
    const k = key();
    const file = randomIndex(8, 2, 3, 1);
    while (file.packs[0]!.blobs.length === 0) file.packs[0]!.blobs.push({ id: randomBytes(32), type: 0, flags: 0, offset: 0, storedLength: 40, rawLength: 10 });
    const mutate = (f: (copy: IndexFile) => void): Buffer => {
      const copy: IndexFile = { superseded: [...file.superseded], packs: file.packs.map((p) => ({ ...p, blobs: p.blobs.map((b) => ({ ...b })) })) };
      f(copy);
      return indexPlain(copy);
    };
    const countAt = (plain: Buffer, at: number, v: number) => {
      const b = Buffer.from(plain);
      b.writeUInt32LE(v, at);
      return b;
    };
    const plain = indexPlain(file);
    const packCountAt = 1 + 4 + 32 * file.superseded.length;
    const cases: Array<[string, Buffer]> = [
      ['version 2', indexPlain(file, 2)],
      ['version 0', indexPlain(file, 0)],
      ['unknown blob type', mutate((c) => (c.packs[0]!.blobs[0]!.type = 3 as BlobType))],
      ['blob past the end of its pack', mutate((c) => (c.packs[0]!.blobs[0]!.offset = c.packs[0]!.packSize))],
      ['blob overlapping the end of its pack', mutate((c) => (c.packs[0]!.blobs[0]!.storedLength = c.packs[0]!.packSize + 1))],
      ['trailing byte', Buffer.concat([plain, Buffer.from([0])])],
      ['huge superseded count', countAt(plain, 1, 0xffffffff)],
      ['huge pack count', countAt(plain, packCountAt, 0xffffffff)],
      ['pack count one too many', countAt(plain, packCountAt, file.packs.length + 1)],
      ['huge blob count', countAt(plain, packCountAt + 4 + 32 + 4, 0x7fffffff)],
      ['empty', Buffer.alloc(0)],
    ];
    for (const [what, bytes] of cases) expect(() => decodeIndex(k, sealIndex(k, bytes)), what).toThrow(FormatError);
  });
});

// ---- keyed BLAKE3 IDs --------------------------------------------------------------------------

describe('blob IDs: keyed BLAKE3', () => {
  const sizes = [0, 1, 31, 32, 63, 64, 65, 1023, 1024, 1025, 2047, 2048, 2049, 4096, 8191, 65_537, (1 << 20) + 3];

  async function reference(k: Uint8Array, data: Uint8Array): Promise<string> {
    const h = await createBLAKE3(256, k);
    h.init();
    h.update(data);
    return h.digest('hex');
  }

  it('equals hash-wasm createBLAKE3(256, key) for many sizes', async () => {
    const k = key();
    for (const n of sizes) {
      const data = randomBytes(n);
      expect(blobId(k, data).toString('hex'), `${n} bytes`).toBe(await reference(k, data));
    }
  });

  it('is keyed: another key gives another ID, and the plain hash is not the ID', async () => {
    const data = randomBytes(5000);
    const k1 = key();
    const k2 = key();
    expect(blobId(k1, data).equals(blobId(k2, data))).toBe(false);
    const h = await createBLAKE3(256);
    h.init();
    h.update(data);
    expect(blobId(k1, data).toString('hex')).not.toBe(h.digest('hex'));
  });

  it('hashes views into a larger (shared) buffer correctly: BlobCodec.id and blobId', async () => {
    const k = key();
    const keys = { encryption: key(), blobId: k, gearSeed: key() };
    const shared = new SharedArrayBuffer(3 << 20);
    const view = new Uint8Array(shared);
    view.set(randomBytes(view.length));
    const codec = new BlobCodec(keys, 1);
    const spans: number[] = [];
    let at = 5;
    for (const n of sizes) {
      if (at + n > view.length) break;
      spans.push(at, n);
      at += n + 3;
    }
    for (let i = 0; i < spans.length; i += 2) {
      const part = view.subarray(spans[i]!, spans[i]! + spans[i + 1]!);
      const want = await reference(k, Uint8Array.from(part));
      expect(codec.id(part).toString('hex'), `codec, span ${i / 2}`).toBe(want);
      expect(blobId(k, part).toString('hex')).toBe(want);
    }
    // A key given as a view into a larger buffer.
    const keyHolder = Buffer.concat([Buffer.from([9, 9, 9]), k, Buffer.from([8])]);
    const keyView = keyHolder.subarray(3, 35);
    const data = randomBytes(777);
    expect(blobId(keyView, data).toString('hex')).toBe(await reference(k, data));
  });
});

// ---- chunker -----------------------------------------------------------------------------------

function chunkAll(finder: BoundaryFinder, data: Uint8Array): number[] {
  const lengths: number[] = [];
  for (let start = 0; start < data.length; ) {
    const n = finder.cut(data, start, data.length);
    lengths.push(n);
    start += n;
  }
  return lengths;
}

/** Chunking the way FileSaver feeds the chunker: windows of `window` bytes, cutting while ≥ maxSize remain or at EOF. */
function chunkWindowed(finder: BoundaryFinder, params: ChunkerParams, data: Uint8Array, window: number): number[] {
  const lengths: number[] = [];
  let base = 0;
  for (;;) {
    const end = Math.min(data.length, base + window);
    const eof = end === data.length;
    const view = data.subarray(base, end);
    let start = 0;
    while (view.length - start >= params.maxSize || (eof && start < view.length)) {
      const n = finder.cut(view, start, view.length);
      lengths.push(n);
      start += n;
    }
    if (eof) return lengths;
    base += start;
  }
}

function chunkHashes(data: Uint8Array, lengths: number[]): string[] {
  const out: string[] = [];
  let at = 0;
  for (const n of lengths) {
    out.push(createHash('sha256').update(data.subarray(at, at + n)).digest('hex'));
    at += n;
  }
  return out;
}

describe('chunker (FastCDC)', () => {
  const small: ChunkerParams = { minSize: 2048, avgSize: 8192, maxSize: 65536 };
  const seed = Buffer.from('a fixed gear seed for the tests, 32b');
  const gear = gearTable(seed);
  const data = prngBytes(42, 8 << 20);

  it('is deterministic, and the native finder (if built) cuts the same', () => {
    const a = chunkAll(new GearChunker(small, gear), data);
    const b = chunkAll(new GearChunker(small, gearTable(Buffer.from(seed))), data);
    expect(b).toEqual(a);
    if (loadNative()) expect(chunkAll(createBoundaryFinder(small, gear), data)).toEqual(a);
  });

  it('depends on the gear seed', () => {
    const a = chunkAll(new GearChunker(small, gear), data);
    const b = chunkAll(new GearChunker(small, gearTable(randomBytes(32))), data);
    expect(b).not.toEqual(a);
  });

  it('keeps chunk sizes within [min, max] (only the last may be shorter) and covers the input', () => {
    for (const params of [small, { minSize: 64, avgSize: 256, maxSize: 1024 }, { minSize: 4096, avgSize: 16384, maxSize: 20000 }]) {
      const lengths = chunkAll(new GearChunker(params, gear), data);
      expect(lengths.reduce((a, b) => a + b, 0)).toBe(data.length);
      const last = lengths.pop()!;
      expect(last).toBeGreaterThan(0);
      expect(last).toBeLessThanOrEqual(params.maxSize);
      expect(Math.min(...lengths), JSON.stringify(params)).toBeGreaterThan(params.minSize);
      expect(Math.max(...lengths), JSON.stringify(params)).toBeLessThanOrEqual(params.maxSize);
    }
    // Inputs no longer than minSize are one chunk.
    const finder = new GearChunker(small, gear);
    expect(chunkAll(finder, data.subarray(0, small.minSize))).toEqual([small.minSize]);
    expect(chunkAll(finder, data.subarray(0, 1))).toEqual([1]);
  });

  it('averages a sensible size on random data', () => {
    const lengths = chunkAll(new GearChunker(small, gear), data);
    const mean = data.length / lengths.length;
    // Normalized chunking (level 2) centres chunks a little above avgSize.
    expect(mean).toBeGreaterThan(0.8 * small.avgSize);
    expect(mean).toBeLessThan(1.6 * small.avgSize);
    // Not degenerate: sizes spread out, few at the hard maximum.
    expect(new Set(lengths).size).toBeGreaterThan(lengths.length / 2);
    expect(lengths.filter((n) => n === small.maxSize).length).toBeLessThan(lengths.length / 50);
  });

  it('averages a sensible size with the default parameters', () => {
    const big = prngBytes(7, 48 << 20);
    const lengths = chunkAll(createBoundaryFinder(defaultChunkerParams, gear), big);
    const mean = big.length / lengths.length;
    expect(mean).toBeGreaterThan(0.8 * defaultChunkerParams.avgSize);
    expect(mean).toBeLessThan(1.6 * defaultChunkerParams.avgSize);
  });

  it('cuts the same when fed in windows the way the backup reads files', () => {
    const finder = new GearChunker(small, gear);
    const whole = chunkAll(finder, data);
    for (const window of [2 * small.maxSize, 2 * small.maxSize + 12345, 1 << 20]) {
      expect(chunkWindowed(finder, small, data, window), `window ${window}`).toEqual(whole);
    }
  });

  it('a one-byte insertion changes only the chunks near it', () => {
    const finder = new GearChunker(small, gear);
    const before = chunkAll(finder, data);
    const beforeHashes = chunkHashes(data, before);
    const beforeSet = new Set(beforeHashes);
    for (const at of [0, 1, 100_000, data.length >> 1, data.length - 5000, data.length]) {
      const changed = Buffer.concat([data.subarray(0, at), Buffer.from([0xa5]), data.subarray(at)]);
      const after = chunkAll(finder, changed);
      const afterHashes = chunkHashes(changed, after);
      const afterSet = new Set(afterHashes);
      const added = afterHashes.filter((h) => !beforeSet.has(h));
      const lost = beforeHashes.filter((h) => !afterSet.has(h));
      expect(added.length, `insert at ${at}: new chunks`).toBeGreaterThanOrEqual(1);
      expect(added.length, `insert at ${at}: new chunks`).toBeLessThanOrEqual(2);
      expect(lost.length, `insert at ${at}: lost chunks`).toBeLessThanOrEqual(2);
      // Everything before the chunk holding the insertion is untouched.
      let offset = 0;
      let i = 0;
      while (i < before.length && offset + before[i]! < at) offset += before[i++]!;
      expect(after.slice(0, i)).toEqual(before.slice(0, i));
    }
  });

  it('cuts long runs of one byte value at a fixed length (holes dedupe)', () => {
    const zeros = new Uint8Array(10 * small.maxSize);
    const lengths = chunkAll(new GearChunker(small, gear), zeros);
    const body = lengths.slice(0, -1);
    expect(new Set(body).size).toBe(1);
  });
});
