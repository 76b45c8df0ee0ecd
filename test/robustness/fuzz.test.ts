/**
 * Property-based fuzzing (fast-check) of every parser of the repository format:
 * pack trailers and headers, index files, trees, snapshots, the config envelope (and its sealed
 * body) and key files (through unlock()).
 *
 * Sealed formats are fuzzed on their PLAINTEXT: the plaintext is built here from
 * docs/design.md (not with the encoders under test), mutated, and sealed with the real key and
 * the right AAD label, so mutations get past AES-GCM and reach the decoder.
 *
 * Properties, for every input:
 *   - the decoder returns a well-formed result, or throws FormatError / DecryptError /
 *     TenderError: never a TypeError / RangeError / SyntaxError (those become "internal error"
 *     with a stack trace in the CLI), and never hangs;
 *   - counts in the input never make it allocate or loop more than the input's size allows
 *     (a count of 0xFFFFFFFF with a short body throws at once);
 *   - unmutated random inputs round-trip (encode → decode is the identity), and the encoders
 *     agree byte for byte with the format as docs/design.md describes it.
 *
 * Each property stops after a time limit (interruptAfterTimeLimit), so the file stays well under
 * a minute. Set TENDER_FUZZ_SEED to replay a run (the seed is printed on failure by fast-check).
 */
import { createHash, randomBytes, scryptSync } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DecryptError, aadLabel, seal } from '../../src/crypto/aead.js';
import { TenderError } from '../../src/errors/errors.js';
import { FormatError } from '../../src/repo/binary.js';
import { type BlobEntry, BlobType } from '../../src/repo/blob.js';
import { encodeConfig, openConfig, readConfigEnvelope, type RepositoryConfig } from '../../src/repo/config.js';
import { type IndexFile, decodeIndex, encodeIndex } from '../../src/repo/index/index-file.js';
import { addKey, unlock } from '../../src/repo/keys.js';
import { decodePackHeader, headerLengthFromTail } from '../../src/repo/pack/pack.js';
import { type Snapshot, decodeSnapshot, encodeSnapshot } from '../../src/repo/snapshot/snapshot.js';
import { type Tree, type TreeNode, decodeTree, encodeTree } from '../../src/repo/snapshot/tree.js';
import { Repository } from '../../src/repo/repository.js';
import { type ByteRange, type ObjectInfo, type PutResult, type Storage, viewOf } from '../../src/storage/storage.js';
import { FsStorage } from '../../src/storage/fs.js';
import { describeRun, runTender, testPassword } from '../helpers/cli.js';

// ---- settings -------------------------------------------------------------------------------

const seedEnv = process.env.TENDER_FUZZ_SEED;
/** Per property: at most this long (ms); fast-check stops early and the property passes. */
const timeLimit = Number(process.env.TENDER_FUZZ_MS ?? 2000);
const params = (numRuns: number): fc.Parameters<unknown> => ({
  numRuns,
  interruptAfterTimeLimit: timeLimit,
  ...(seedEnv !== undefined ? { seed: Number(seedEnv) } : {}),
});
/** A single decode taking longer than this is a hang for our purposes (inputs are tiny; generous for loaded CI machines). */
const maxDecodeMs = 2000;

const encryptionKey = randomBytes(32);
const otherKey = randomBytes(32);

/** A cheap but real KDF, so that thousands of unlock() calls fit in the time limit. */
const fuzzKdf = { N: 16, r: 1, p: 1 };
const masterKeys = { encryption: randomBytes(32), blobId: randomBytes(32), gearSeed: randomBytes(32) };
const password = 'fuzz password';

// ---- what a decoder may throw -----------------------------------------------------------------

function isExpectedError(err: unknown): boolean {
  return err instanceof FormatError || err instanceof DecryptError || err instanceof TenderError;
}

function describeError(err: unknown): string {
  const e = err as Error;
  return `${e?.name ?? typeof err}: ${e?.message ?? String(err)}`;
}

/** Runs a decoder: its result, or undefined when it threw an expected error; anything else fails the property. */
function decodeOrExpectedError<T>(decode: () => T): T | undefined {
  const started = performance.now();
  try {
    return decode();
  } catch (err) {
    if (!isExpectedError(err)) throw new Error(`decoder threw an unexpected ${describeError(err)}`);
    return undefined;
  } finally {
    const ms = performance.now() - started;
    if (ms > maxDecodeMs) throw new Error(`decoder took ${ms.toFixed(0)} ms`);
  }
}

async function decodeOrExpectedErrorAsync<T>(decode: () => Promise<T>): Promise<T | undefined> {
  try {
    return await decode();
  } catch (err) {
    if (!isExpectedError(err)) throw new Error(`decoder threw an unexpected ${describeError(err)}`);
    return undefined;
  }
}

/** Asserts that `decode` throws an expected error within `ms` milliseconds. */
function expectQuickRejection(decode: () => unknown, ms = 250): void {
  const started = performance.now();
  let thrown: unknown;
  try {
    decode();
  } catch (err) {
    thrown = err;
  }
  const took = performance.now() - started;
  expect(thrown, 'the decoder must reject the input').toBeDefined();
  expect(isExpectedError(thrown), `expected FormatError/DecryptError/TenderError, got ${describeError(thrown)}`).toBe(true);
  expect(took, 'rejected quickly (no work proportional to a count field)').toBeLessThan(ms);
}

// ---- byte-level mutations ------------------------------------------------------------------

type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'set'; at: number; value: number }
  | { op: 'u32'; at: number; value: number }
  | { op: 'insert'; at: number; bytes: Uint8Array }
  | { op: 'delete'; at: number; length: number }
  | { op: 'truncate'; at: number };

const interestingU32 = fc.oneof(
  fc.constantFrom(0, 1, 2, 31, 32, 33, 0xff, 0x100, 0xffff, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff),
  fc.nat({ max: 0xffffffff }),
);

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant('u32' as const), at: fc.nat(), value: interestingU32 }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 40 }) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
);
const mutationsArb = fc.array(mutationArb, { minLength: 1, maxLength: 4 });

function mutate(input: Buffer, mutations: readonly Mutation[]): Buffer {
  let buf = Buffer.from(input);
  for (const m of mutations) {
    const at = buf.length === 0 ? 0 : m.at % buf.length;
    switch (m.op) {
      case 'flip':
        if (buf.length > 0) buf[at] = buf[at]! ^ (1 << m.bit);
        break;
      case 'set':
        if (buf.length > 0) buf[at] = m.value;
        break;
      case 'u32':
        if (buf.length >= 4) buf.writeUInt32LE(m.value, Math.min(at, buf.length - 4));
        break;
      case 'insert':
        buf = Buffer.concat([buf.subarray(0, at), m.bytes, buf.subarray(at)]);
        break;
      case 'delete':
        buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at + m.length)]);
        break;
      case 'truncate':
        buf = buf.subarray(0, at);
        break;
    }
  }
  return buf;
}

// ---- the formats, written from docs/design.md ------------------------------------------------

function u8(v: number): Buffer {
  return Buffer.from([v & 0xff]);
}
function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

interface HeaderEntry {
  type: number;
  flags: number;
  storedLength: number;
  rawLength: number;
  id: Buffer;
}

/** header = u8(1) ‖ u32le(n) ‖ n × ( u8 type ‖ u8 flags ‖ u32le storedLength ‖ u32le rawLength ‖ id[32] ) */
function packHeaderPlain(entries: readonly HeaderEntry[], version = 1): Buffer {
  return Buffer.concat([
    u8(version),
    u32(entries.length),
    ...entries.flatMap((e) => [u8(e.type), u8(e.flags), u32(e.storedLength), u32(e.rawLength), e.id]),
  ]);
}

/** seal(encryption, header, "tender:pack-header" ‖ packId) ‖ u32le(len(sealed header)) */
function packTail(plain: Buffer, packId: Buffer, key = encryptionKey): Buffer {
  const sealed = seal(key, plain, Buffer.concat([aadLabel('pack-header'), packId]));
  return Buffer.concat([sealed, u32(sealed.length)]);
}

interface PlainIndexPack {
  packId: Buffer;
  packSize: number;
  blobs: Array<HeaderEntry & { offset: number }>;
}

/**
 * plain = u8(1) ‖ u32le s ‖ s × supersededIndexId[32]
 *         ‖ u32le p ‖ p × ( packId[32] ‖ u32le packSize ‖ u32le n ‖ n × entry )
 * entry = u8 type ‖ u8 flags ‖ u32le offset ‖ u32le storedLength ‖ u32le rawLength ‖ id[32]
 */
function indexPlain(superseded: readonly Buffer[], packs: readonly PlainIndexPack[], version = 1): Buffer {
  return Buffer.concat([
    u8(version),
    u32(superseded.length),
    ...superseded,
    u32(packs.length),
    ...packs.flatMap((p) => [
      p.packId,
      u32(p.packSize),
      u32(p.blobs.length),
      ...p.blobs.flatMap((b) => [u8(b.type), u8(b.flags), u32(b.offset), u32(b.storedLength), u32(b.rawLength), b.id]),
    ]),
  ]);
}

// ---- arbitraries ---------------------------------------------------------------------------

const idArb = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a));
const hexIdArb = idArb.map((b) => b.toString('hex'));
const blobTypeArb = fc.constantFrom<BlobType>(BlobType.data, BlobType.tree, BlobType.list);
const u32Arb = fc.nat({ max: 0xffffffff });

const headerEntryArb: fc.Arbitrary<HeaderEntry> = fc.record({
  type: blobTypeArb,
  flags: fc.integer({ min: 0, max: 1 }),
  storedLength: fc.oneof(fc.integer({ min: 28, max: 1 << 20 }), u32Arb),
  rawLength: u32Arb,
  id: idArb,
});

/** A consistent index file: every blob lies inside its pack. */
const indexedPackArb: fc.Arbitrary<PlainIndexPack> = fc
  .record({
    packId: idArb,
    blobs: fc.array(
      fc.record({ type: blobTypeArb, flags: fc.integer({ min: 0, max: 1 }), storedLength: fc.integer({ min: 28, max: 1 << 22 }), rawLength: u32Arb, id: idArb }),
      { maxLength: 8 },
    ),
    slack: fc.nat({ max: 70_000 }),
  })
  .map(({ packId, blobs, slack }) => {
    let offset = 0;
    const placed = blobs.map((b) => {
      const e = { ...b, offset };
      offset += b.storedLength;
      return e;
    });
    return { packId, packSize: Math.min(0xffffffff, offset + slack), blobs: placed };
  });
const indexFileArb = fc.record({
  superseded: fc.array(idArb, { maxLength: 4 }),
  packs: fc.array(indexedPackArb, { maxLength: 5 }),
});

const safeNameArb = fc.string({ minLength: 1, maxLength: 20 }).filter((s) => s !== '.' && s !== '..' && !s.includes('/') && !s.includes('\0'));
const nsArb = fc.bigInt({ min: 0n, max: 2n ** 63n }).map(String);
const treeNodeArb: fc.Arbitrary<TreeNode> = fc
  .record({
    name: safeNameArb,
    type: fc.constantFrom('file', 'dir', 'symlink', 'fifo', 'socket', 'chardev', 'blockdev' as const),
    mode: fc.integer({ min: 0, max: 0o7777 }),
    uid: fc.nat({ max: 65535 }),
    gid: fc.nat({ max: 65535 }),
    mtime: nsArb,
    ctime: nsArb,
    inode: fc.nat(),
    device: fc.nat(),
    links: fc.integer({ min: 1, max: 4 }),
    size: fc.nat(),
    content: fc.array(hexIdArb, { maxLength: 3 }),
    subtree: hexIdArb,
    linkTarget: fc.string({ maxLength: 30 }),
    rdev: fc.nat(),
  })
  .map((n) => {
    const node: TreeNode = { name: n.name, type: n.type, mode: n.mode, uid: n.uid, gid: n.gid, mtime: n.mtime, ctime: n.ctime, inode: n.inode, device: n.device, links: n.links };
    if (n.type === 'file') Object.assign(node, { size: n.size, content: n.content });
    if (n.type === 'dir') node.subtree = n.subtree;
    if (n.type === 'symlink') node.linkTarget = n.linkTarget;
    if (n.type === 'chardev' || n.type === 'blockdev') node.rdev = n.rdev;
    return node;
  });
const treeArb: fc.Arbitrary<Tree> = fc.array(treeNodeArb, { maxLength: 5 }).map((nodes) => ({ nodes }));

/** Values that JSON can hold and that decoders see when a field is damaged or hostile. */
const weirdValueArb: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(null, true, false, 0, -1, 1.5, 1e300, '', 'x', '1', '-1', ' 1', '99999999999999999999999', [], {}, [1], ['x'], { length: 3 }),
  hexIdArb,
  fc.jsonValue({ maxDepth: 2 }),
);

/** A path into a JSON value and a replacement (undefined = delete the field). */
interface FieldEdit {
  path: ReadonlyArray<string | number>;
  value: unknown;
}

function applyEdit(root: unknown, edit: FieldEdit): unknown {
  if (edit.path.length === 0) return edit.value;
  const copy = structuredClone(root) as Record<string | number, unknown>;
  let at: Record<string | number, unknown> = copy;
  for (const key of edit.path.slice(0, -1)) {
    const next = at[key];
    if (next === null || typeof next !== 'object') return copy;
    at = next as Record<string | number, unknown>;
  }
  const last = edit.path.at(-1)!;
  if (edit.value === undefined) delete at[last];
  else at[last] = edit.value;
  return copy;
}

const nodeFields = ['name', 'type', 'mode', 'uid', 'gid', 'mtime', 'ctime', 'inode', 'device', 'links', 'size', 'content', 'contentLists', 'subtree', 'linkTarget', 'sparse', 'rdev'];

/** Edits a tree: the whole value, its node list, one node, one field of a node, or one content entry. */
const treeEditArb = (tree: Tree): fc.Arbitrary<FieldEdit> =>
  fc.oneof(
    fc.record({ path: fc.constant([]), value: weirdValueArb }),
    fc.record({ path: fc.constant(['nodes']), value: weirdValueArb }),
    fc.record({ path: fc.nat({ max: Math.max(0, tree.nodes.length - 1) }).map((i) => ['nodes', i]), value: weirdValueArb }),
    fc.record({
      path: fc.tuple(fc.nat({ max: Math.max(0, tree.nodes.length - 1) }), fc.constantFrom(...nodeFields)).map(([i, f]) => ['nodes', i, f]),
      value: fc.option(weirdValueArb, { nil: undefined }),
    }),
    fc.record({
      path: fc.tuple(fc.nat({ max: Math.max(0, tree.nodes.length - 1) }), fc.constantFrom('content', 'contentLists'), fc.nat({ max: 2 })).map(([i, f, j]) => ['nodes', i, f, j]),
      value: weirdValueArb,
    }),
  );

const snapshotArb: fc.Arbitrary<Snapshot> = fc.record({
  version: fc.constant(1 as const),
  time: fc.date({ min: new Date(0), max: new Date(4e12), noInvalidDate: true }).map((d) => d.toISOString()),
  hostname: fc.string({ maxLength: 20 }),
  username: fc.string({ maxLength: 20 }),
  paths: fc.array(fc.string({ maxLength: 30 }), { minLength: 1, maxLength: 3 }),
  tags: fc.array(fc.string({ maxLength: 10 }), { maxLength: 3 }),
  tree: hexIdArb,
  program: fc.constant('tender 0.1.0'),
});
const snapshotFields = ['version', 'time', 'hostname', 'username', 'paths', 'tags', 'tree', 'parent', 'program', 'summary'];
const snapshotEditArb: fc.Arbitrary<FieldEdit> = fc.oneof(
  fc.record({ path: fc.constant([]), value: weirdValueArb }),
  fc.record({ path: fc.constantFrom(...snapshotFields).map((f) => [f]), value: fc.option(weirdValueArb, { nil: undefined }) }),
  fc.record({ path: fc.tuple(fc.constantFrom('paths', 'tags'), fc.nat({ max: 2 })).map(([f, i]) => [f, i]), value: weirdValueArb }),
);

// ---- in-memory storage ---------------------------------------------------------------------

class MemoryStorage implements Storage {
  readonly location = 'memory://fuzz';
  readonly concurrentPuts = 1;
  readonly objects = new Map<string, Buffer>();

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    for (const [key, value] of [...this.objects]) if (key.startsWith(prefix)) yield { key, size: value.length };
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const v = this.objects.get(key);
    return v ? { key, size: v.length } : undefined;
  }

  async get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    const v = this.objects.get(key);
    if (!v) throw new TenderError('TENDER_NOT_FOUND', `object ${key} does not exist in ${this.location}`);
    const bytes = range ? v.subarray(range.offset, range.offset + range.length) : v;
    if (!into) return Buffer.from(bytes);
    const out = viewOf(into, bytes.length);
    out.set(bytes);
    return out;
  }

  async put(key: string, parts: readonly Uint8Array[]): Promise<PutResult> {
    if (this.objects.has(key)) return 'exists';
    this.objects.set(key, Buffer.concat(parts));
    return 'stored';
  }

  async delete(key: string): Promise<void> {
    this.objects.delete(key);
  }

  async close(): Promise<void> {}
}

// ---- pack trailer and header ---------------------------------------------------------------

function checkWellFormedHeader(entries: BlobEntry[], headerLength: number, packSize: number): void {
  let offset = 0;
  for (const e of entries) {
    expect([BlobType.data, BlobType.tree, BlobType.list]).toContain(e.type);
    expect(e.id.length).toBe(32);
    expect(e.offset).toBe(offset);
    for (const v of [e.flags, e.storedLength, e.rawLength]) expect(Number.isInteger(v) && v >= 0).toBe(true);
    offset += e.storedLength;
  }
  expect(offset + headerLength + 4).toBe(packSize);
}

describe('pack trailer: headerLengthFromTail', () => {
  it('random tails and pack sizes: a length that fits the pack, or FormatError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 16 }), fc.oneof(fc.nat({ max: 100 }), u32Arb, fc.nat()), (tail, packSize) => {
        const n = decodeOrExpectedError(() => headerLengthFromTail(Buffer.from(tail), packSize));
        if (n !== undefined) {
          expect(Number.isInteger(n) && n >= 0).toBe(true);
          expect(n + 4).toBeLessThanOrEqual(packSize);
        }
      }),
      params(5000),
    );
  });

  it('a trailer of 0xFFFFFFFF or one longer than the pack is refused at once', () => {
    expectQuickRejection(() => headerLengthFromTail(u32(0xffffffff), 100));
    expectQuickRejection(() => headerLengthFromTail(u32(97), 100));
    expectQuickRejection(() => headerLengthFromTail(Buffer.alloc(3), 100));
    expect(headerLengthFromTail(u32(96), 100)).toBe(96);
  });
});

describe('pack header: decodePackHeader', () => {
  it('round trip: the design\'s header, sealed, decodes to exactly its entries', () => {
    fc.assert(
      fc.property(fc.array(headerEntryArb, { maxLength: 12 }), idArb, fc.uint8Array({ maxLength: 64 }), (entries, packId, prefix) => {
        const tail = Buffer.concat([Buffer.from(prefix), packTail(packHeaderPlain(entries), packId)]);
        const size = entries.reduce((n, e) => n + e.storedLength, 0) + tail.length - prefix.length;
        const decoded = decodePackHeader(encryptionKey, packId, tail, size);
        let offset = 0;
        expect(decoded).toEqual(
          entries.map((e) => {
            const out = { id: e.id, type: e.type, flags: e.flags, offset, storedLength: e.storedLength, rawLength: e.rawLength };
            offset += e.storedLength;
            return out;
          }),
        );
      }),
      params(2000),
    );
  });

  it('round trip: packs the repository writes decode to the entries its index lists, and every blob reads back', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ type: blobTypeArb, body: fc.oneof(fc.uint8Array({ maxLength: 3000 }), fc.string({ maxLength: 2000 }).map((s) => new TextEncoder().encode(s))) }), {
          minLength: 1,
          maxLength: 12,
        }),
        async (blobs) => {
          const storage = new MemoryStorage();
          const repo = await Repository.init(storage, password, { kdf: fuzzKdf, packSize: 8 * 1024 });
          const saved = new Map<string, Buffer>();
          const writer = repo.openWriter();
          for (const b of blobs) {
            const plain = Buffer.from(b.body);
            saved.set((await writer.saveBlob(b.type, plain)).toString('hex'), plain);
          }
          await writer.flush();
          await writer.close();
          const indexed = new Map<string, BlobEntry[]>();
          for (const key of await repo.listIndexFiles()) {
            for (const p of (await repo.readIndexFile(key)).packs) indexed.set(p.packId.toString('hex'), p.blobs);
          }
          let blobCount = 0;
          for (const { packId, size } of await repo.listPacks()) {
            const id = packId.toString('hex');
            const bytes = await repo.readPack(packId);
            expect(bytes.length).toBe(size);
            const header = decodePackHeader(repo.keys.encryption, packId, bytes, size);
            expect(header, `header of pack ${id} = its index entry`).toEqual(indexed.get(id));
            blobCount += header.length;
          }
          expect(blobCount).toBe(saved.size);
          for (const [hex, plain] of saved) expect((await repo.loadBlob(Buffer.from(hex, 'hex'))).equals(plain)).toBe(true);
          await repo.close();
        },
      ),
      params(150),
    );
  });

  it('mutated header plaintexts (sealed with the real key): well-formed entries or FormatError', () => {
    fc.assert(
      fc.property(
        fc.array(headerEntryArb, { maxLength: 10 }),
        fc.option(mutationsArb, { nil: undefined }),
        idArb,
        fc.uint8Array({ maxLength: 64 }),
        fc.oneof(fc.constant(0), fc.integer({ min: -64, max: 64 }), u32Arb),
        (entries, mutations, packId, prefix, sizeNoise) => {
          const plain = mutations ? mutate(packHeaderPlain(entries), mutations) : packHeaderPlain(entries);
          const tail = Buffer.concat([Buffer.from(prefix), packTail(plain, packId)]);
          const stored = entries.reduce((n, e) => n + e.storedLength, 0);
          const packSize = Math.max(0, (sizeNoise > 64 ? sizeNoise : stored + tail.length - prefix.length + sizeNoise));
          const decoded = decodeOrExpectedError(() => decodePackHeader(encryptionKey, packId, tail, packSize));
          if (decoded) checkWellFormedHeader(decoded, tail.length - prefix.length - 4, packSize);
          if (!mutations && sizeNoise === 0) {
            expect(decoded, 'an unmutated header with the right size decodes').toBeDefined();
            expect(decoded!.map((e) => ({ type: e.type, flags: e.flags, storedLength: e.storedLength, rawLength: e.rawLength, id: e.id }))).toEqual(entries);
          }
        },
      ),
      params(3000),
    );
  });

  it('random tails, wrong pack IDs and wrong keys: FormatError only', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat({ max: 1 << 20 }), idArb, (tail, extra, packId) => {
        const buf = Buffer.from(tail);
        decodeOrExpectedError(() => decodePackHeader(encryptionKey, packId, buf, buf.length + extra));
      }),
      params(3000),
    );
    fc.assert(
      fc.property(fc.array(headerEntryArb, { maxLength: 4 }), idArb, idArb, (entries, packId, otherId) => {
        const tail = packTail(packHeaderPlain(entries), packId);
        const size = entries.reduce((n, e) => n + e.storedLength, 0) + tail.length;
        if (!packId.equals(otherId)) expect(() => decodePackHeader(encryptionKey, otherId, tail, size)).toThrow(FormatError);
        expect(() => decodePackHeader(otherKey, packId, tail, size)).toThrow(FormatError);
      }),
      params(500),
    );
  });

  it('a blob count of 0xFFFFFFFF with a short body is refused at once', () => {
    const packId = randomBytes(32);
    for (const body of [Buffer.alloc(0), Buffer.alloc(10), Buffer.alloc(42 * 3)]) {
      const tail = packTail(Buffer.concat([u8(1), u32(0xffffffff), body]), packId);
      expectQuickRejection(() => decodePackHeader(encryptionKey, packId, tail, 1 << 30));
    }
    // And 2^28 entries' worth claimed by a header of 100 bytes.
    const tail = packTail(Buffer.concat([u8(1), u32(1 << 28), Buffer.alloc(100)]), packId);
    expectQuickRejection(() => decodePackHeader(encryptionKey, packId, tail, 1 << 30));
  });
});

// ---- index files ---------------------------------------------------------------------------

function checkWellFormedIndex(file: IndexFile): void {
  for (const id of file.superseded) expect(id.length).toBe(32);
  for (const p of file.packs) {
    expect(p.packId.length).toBe(32);
    for (const b of p.blobs) {
      expect([BlobType.data, BlobType.tree, BlobType.list]).toContain(b.type);
      expect(b.id.length).toBe(32);
      expect(b.offset + b.storedLength).toBeLessThanOrEqual(p.packSize);
    }
  }
}

function toIndexFile(superseded: Buffer[], packs: PlainIndexPack[]): IndexFile {
  return { superseded, packs: packs.map((p) => ({ packId: p.packId, packSize: p.packSize, blobs: p.blobs.map((b) => ({ ...b, type: b.type as BlobType })) })) };
}

describe('index files: decodeIndex', () => {
  it('round trip: encodeIndex → decodeIndex is the identity, and the design plaintext decodes the same', () => {
    fc.assert(
      fc.property(indexFileArb, ({ superseded, packs }) => {
        const file = toIndexFile(superseded, packs);
        expect(decodeIndex(encryptionKey, encodeIndex(encryptionKey, file))).toEqual(file);
        expect(decodeIndex(encryptionKey, seal(encryptionKey, indexPlain(superseded, packs), aadLabel('index')))).toEqual(file);
      }),
      params(1000),
    );
  });

  it('mutated plaintexts (sealed with the real key): a well-formed index or FormatError', () => {
    fc.assert(
      fc.property(indexFileArb, mutationsArb, ({ superseded, packs }, mutations) => {
        const sealed = seal(encryptionKey, mutate(indexPlain(superseded, packs), mutations), aadLabel('index'));
        const decoded = decodeOrExpectedError(() => decodeIndex(encryptionKey, sealed));
        if (decoded) checkWellFormedIndex(decoded);
      }),
      params(5000),
    );
  });

  it('unsealed bytes, another key, another AAD label: DecryptError only', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        decodeOrExpectedError(() => decodeIndex(encryptionKey, Buffer.from(bytes)));
      }),
      params(2000),
    );
    const plain = indexPlain([], []);
    expect(() => decodeIndex(otherKey, seal(encryptionKey, plain, aadLabel('index')))).toThrow(DecryptError);
    expect(() => decodeIndex(encryptionKey, seal(encryptionKey, plain, aadLabel('snapshot')))).toThrow(DecryptError);
  });

  it('counts of 0xFFFFFFFF (superseded, packs, blobs) with a short body are refused at once', () => {
    const sealedIndex = (plain: Buffer) => seal(encryptionKey, plain, aadLabel('index'));
    expectQuickRejection(() => decodeIndex(encryptionKey, sealedIndex(Buffer.concat([u8(1), u32(0xffffffff), Buffer.alloc(64)]))));
    expectQuickRejection(() => decodeIndex(encryptionKey, sealedIndex(Buffer.concat([u8(1), u32(0), u32(0xffffffff), Buffer.alloc(64)]))));
    expectQuickRejection(() =>
      decodeIndex(encryptionKey, sealedIndex(Buffer.concat([u8(1), u32(0), u32(1), randomBytes(32), u32(1000), u32(0xffffffff), Buffer.alloc(46)]))),
    );
    // Many small pack records claimed, few present.
    expectQuickRejection(() => decodeIndex(encryptionKey, sealedIndex(Buffer.concat([u8(1), u32(0), u32(1 << 27), Buffer.alloc(40 * 2)]))));
  });
});

// ---- trees ---------------------------------------------------------------------------------

/** What decodeTree promises for an accepted tree (docs/design.md, "Trees"). */
function checkWellFormedTree(tree: Tree): void {
  expect(Array.isArray(tree.nodes)).toBe(true);
  const types = ['file', 'dir', 'symlink', 'fifo', 'socket', 'chardev', 'blockdev'];
  for (const n of tree.nodes) {
    expect(n !== null && typeof n === 'object').toBe(true);
    expect(typeof n.name).toBe('string');
    expect(types).toContain(n.type);
    for (const f of ['mode', 'uid', 'gid', 'inode', 'device', 'links'] as const) expect(Number.isSafeInteger(n[f]), `node.${f}`).toBe(true);
    expect(typeof n.mtime === 'string' && /^\d+$/.test(n.mtime), `node.mtime ${JSON.stringify(n.mtime)} is a decimal string`).toBe(true);
    expect(typeof n.ctime === 'string' && /^\d+$/.test(n.ctime), `node.ctime ${JSON.stringify(n.ctime)} is a decimal string`).toBe(true);
    for (const f of ['content', 'contentLists'] as const) {
      if (n[f] !== undefined) {
        expect(Array.isArray(n[f]), `node.${f} is an array`).toBe(true);
        for (const id of n[f]!) expect(/^[0-9a-f]{64}$/.test(id)).toBe(true);
      }
    }
    if (n.type === 'file') expect(Number.isSafeInteger(n.size) && n.size! >= 0).toBe(true);
    if (n.type === 'dir') expect(typeof n.subtree === 'string' && /^[0-9a-f]{64}$/.test(n.subtree), 'dir.subtree is an ID').toBe(true);
    if (n.type === 'symlink') expect(typeof n.linkTarget).toBe('string');
  }
}

describe('trees: decodeTree', () => {
  it('round trip: encodeTree → decodeTree is the identity', () => {
    fc.assert(
      fc.property(treeArb, (tree) => {
        expect(decodeTree(encodeTree(tree))).toEqual(tree);
      }),
      params(1000),
    );
  });

  it('random JSON and random bytes: a tree or FormatError (never TypeError)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.json(), fc.string().map((s) => s), fc.uint8Array({ maxLength: 100 }).map((a) => Buffer.from(a).toString('latin1'))), (text) => {
        const tree = decodeOrExpectedError(() => decodeTree(Buffer.from(text, 'utf8')));
        if (tree) expect(Array.isArray(tree.nodes)).toBe(true);
      }),
      params(5000),
    );
  });

  it('valid trees with one field damaged or hostile: a tree or FormatError (never TypeError)', () => {
    fc.assert(
      fc.property(
        treeArb.filter((t) => t.nodes.length > 0).chain((tree) => fc.tuple(fc.constant(tree), treeEditArb(tree))),
        ([tree, edit]) => {
          decodeOrExpectedError(() => decodeTree(Buffer.from(JSON.stringify(applyEdit(tree, edit)))));
        },
      ),
      params(5000),
    );
  });

  it('valid trees with one field damaged or hostile: what is accepted is well-formed', () => {
    fc.assert(
      fc.property(
        treeArb.filter((t) => t.nodes.length > 0).chain((tree) => fc.tuple(fc.constant(tree), treeEditArb(tree))),
        ([tree, edit]) => {
          let decoded: Tree;
          try {
            decoded = decodeTree(Buffer.from(JSON.stringify(applyEdit(tree, edit))));
          } catch {
            return; // the previous property is about what it throws
          }
          checkWellFormedTree(decoded);
        },
      ),
      params(5000),
    );
  });

  it('byte-mutated tree JSON: a tree or FormatError', () => {
    fc.assert(
      fc.property(treeArb, mutationsArb, (tree, mutations) => {
        decodeOrExpectedError(() => decodeTree(mutate(encodeTree(tree), mutations)));
      }),
      params(3000),
    );
  });
});

// ---- snapshots -----------------------------------------------------------------------------

const sealSnapshotJson = (value: unknown): Buffer => seal(encryptionKey, Buffer.from(JSON.stringify(value) ?? ''), aadLabel('snapshot'));

function checkWellFormedSnapshot(s: Snapshot): void {
  expect(s.version).toBe(1);
  expect(typeof s.time).toBe('string');
  expect(/^[0-9a-f]{64}$/.test(s.tree)).toBe(true);
  expect(typeof s.hostname, 'hostname is a string (`tender snapshots` calls padEnd on it)').toBe('string');
  expect(typeof s.username, 'username is a string').toBe('string');
  expect(Array.isArray(s.paths) && s.paths.every((p) => typeof p === 'string'), 'paths are strings').toBe(true);
  expect(Array.isArray(s.tags) && s.tags.every((t) => typeof t === 'string'), 'tags are strings').toBe(true);
}

describe('snapshots: decodeSnapshot', () => {
  it('round trip: encodeSnapshot → decodeSnapshot is the identity', () => {
    fc.assert(
      fc.property(snapshotArb, (s) => {
        expect(decodeSnapshot(encryptionKey, encodeSnapshot(encryptionKey, s))).toEqual(s);
      }),
      params(1000),
    );
  });

  it('sealed snapshots with one field damaged or hostile: a snapshot or FormatError (never TypeError)', () => {
    fc.assert(
      fc.property(snapshotArb, snapshotEditArb, (s, edit) => {
        decodeOrExpectedError(() => decodeSnapshot(encryptionKey, sealSnapshotJson(applyEdit(s, edit))));
      }),
      params(5000),
    );
  });

  it('sealed snapshots with one field damaged or hostile: what is accepted is well-formed', () => {
    fc.assert(
      fc.property(snapshotArb, snapshotEditArb, (s, edit) => {
        let decoded: Snapshot;
        try {
          decoded = decodeSnapshot(encryptionKey, sealSnapshotJson(applyEdit(s, edit)));
        } catch {
          return;
        }
        checkWellFormedSnapshot(decoded);
      }),
      params(5000),
    );
  });

  it('sealed byte-mutated snapshot JSON and unsealed bytes: a snapshot, FormatError or DecryptError', () => {
    fc.assert(
      fc.property(snapshotArb, mutationsArb, (s, mutations) => {
        const plain = mutate(Buffer.from(JSON.stringify(s)), mutations);
        decodeOrExpectedError(() => decodeSnapshot(encryptionKey, seal(encryptionKey, plain, aadLabel('snapshot'))));
      }),
      params(3000),
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        decodeOrExpectedError(() => decodeSnapshot(encryptionKey, Buffer.from(bytes)));
      }),
      params(1000),
    );
  });
});

// ---- config --------------------------------------------------------------------------------

const repositoryId = randomBytes(32).toString('hex');
const baseConfig: RepositoryConfig = {
  version: 1,
  repository: repositoryId,
  created: '2026-11-25T01:00:00.000Z',
  chunker: { minSize: 524288, avgSize: 1048576, maxSize: 8388608 },
  compressionLevel: 1,
  packSize: 16 * 1024 * 1024,
};
const configFields = ['version', 'repository', 'created', 'chunker', 'compressionLevel', 'packSize'];
const envelopeFields = ['version', 'repository', 'sealed'];

function storageWith(objects: Record<string, Buffer>): MemoryStorage {
  const s = new MemoryStorage();
  for (const [k, v] of Object.entries(objects)) s.objects.set(k, v);
  return s;
}

function checkWellFormedConfig(c: RepositoryConfig): void {
  expect(c.version).toBe(1);
  expect(c.repository).toBe(repositoryId);
  expect(Number.isSafeInteger(c.compressionLevel) && c.compressionLevel >= 0 && c.compressionLevel <= 22, `compressionLevel ${JSON.stringify(c.compressionLevel)}`).toBe(
    true,
  );
  expect(Number.isSafeInteger(c.packSize) && c.packSize > 0, `packSize ${JSON.stringify(c.packSize)}`).toBe(true);
}

describe('config: readConfigEnvelope and openConfig', () => {
  const valid = encodeConfig(encryptionKey, baseConfig);

  it('the envelope of a valid config reads back, and its body opens to the config', async () => {
    const envelope = await readConfigEnvelope(storageWith({ config: valid }));
    expect(envelope).toMatchObject({ version: 1, repository: repositoryId });
    expect(openConfig(storageWith({}), encryptionKey, envelope)).toEqual(baseConfig);
  });

  it('random bytes, random JSON and byte-mutated envelopes: an envelope or TenderError (never TypeError)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
          fc.json().map((j) => Buffer.from(j)),
          mutationsArb.map((m) => mutate(valid, m)),
        ),
        async (bytes) => {
          const envelope = await decodeOrExpectedErrorAsync(() => readConfigEnvelope(storageWith({ config: bytes })));
          if (envelope) {
            expect(typeof envelope.version).toBe('number');
            expect(envelope.version).toBeLessThanOrEqual(1);
            expect(typeof envelope.repository).toBe('string');
            expect(typeof envelope.sealed).toBe('string');
          }
        },
      ),
      params(3000),
    );
  });

  it('envelopes with one field damaged or hostile: an envelope or TenderError (never TypeError)', async () => {
    const json = JSON.parse(valid.toString('utf8')) as unknown;
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({ path: fc.constant([] as string[]), value: weirdValueArb }),
          fc.record({ path: fc.constantFrom(...envelopeFields).map((f) => [f]), value: fc.option(weirdValueArb, { nil: undefined }) }),
        ),
        async (edit) => {
          const bytes = Buffer.from(JSON.stringify(applyEdit(json, edit)) ?? '');
          await decodeOrExpectedErrorAsync(() => readConfigEnvelope(storageWith({ config: bytes })));
        },
      ),
      params(2000),
    );
  });

  it('sealed config bodies with one field damaged or hostile: a config or TenderError (never TypeError)', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.record({ path: fc.constant([] as string[]), value: weirdValueArb }),
          fc.record({ path: fc.constantFrom(...configFields).map((f) => [f]), value: fc.option(weirdValueArb, { nil: undefined }) }),
          fc.record({ path: fc.constantFrom('minSize', 'avgSize', 'maxSize').map((f) => ['chunker', f]), value: weirdValueArb }),
        ),
        (edit) => {
          const body = Buffer.from(JSON.stringify(applyEdit(baseConfig, edit)) ?? '');
          const envelope = { version: 1, repository: repositoryId, sealed: seal(encryptionKey, body, aadLabel('config')).toString('base64') };
          decodeOrExpectedError(() => openConfig(storageWith({}), encryptionKey, envelope));
        },
      ),
      params(2000),
    );
  });

  it('sealed config bodies with one field damaged or hostile: what is accepted is well-formed', () => {
    fc.assert(
      fc.property(fc.constantFrom('compressionLevel', 'packSize'), weirdValueArb, (field, value) => {
        const body = Buffer.from(JSON.stringify({ ...baseConfig, [field]: value }));
        const envelope = { version: 1, repository: repositoryId, sealed: seal(encryptionKey, body, aadLabel('config')).toString('base64') };
        let config: RepositoryConfig;
        try {
          config = openConfig(storageWith({}), encryptionKey, envelope);
        } catch {
          return;
        }
        checkWellFormedConfig(config);
      }),
      params(2000),
    );
  });
});

// ---- key files -----------------------------------------------------------------------------


/**
 * KDF values for damaged fields: small, so a damaged file never asks for gigabytes (that a
 * hostile one can is tested separately, with a time limit, in a child process).
 */
const kdfValueArb: fc.Arbitrary<unknown> = fc.constantFrom(null, true, 0, 1, 2, 3, 15, 16, 17, 32, -16, 1.5, 3e9 + 1, '16', '', [], {}, [16]);
const keyFields = ['version', 'created', 'hostname', 'username', 'repository', 'kdf', 'sealed'];

interface KeyFileJson {
  repository: string;
  kdf: { name: string; N: number; r: number; p: number; salt: string };
  sealed: string;
}

async function validKeyFile(): Promise<{ key: string; bytes: Buffer; json: KeyFileJson }> {
  const storage = new MemoryStorage();
  const key = await addKey(storage, repositoryId, masterKeys, password, { hostname: 'fuzz-host', username: 'fuzz' }, fuzzKdf);
  const bytes = storage.objects.get(key)!;
  return { key, bytes, json: JSON.parse(bytes.toString('utf8')) as KeyFileJson };
}

function checkUnlocked(keys: { encryption: Buffer; blobId: Buffer; gearSeed: Buffer }): void {
  // A key file that opens must give THE master keys: never garbage.
  expect(keys.encryption.equals(masterKeys.encryption)).toBe(true);
  expect(keys.blobId.equals(masterKeys.blobId)).toBe(true);
  expect(keys.gearSeed.equals(masterKeys.gearSeed)).toBe(true);
}

describe('key files: unlock', () => {
  let valid: Awaited<ReturnType<typeof validKeyFile>>;
  beforeAll(async () => {
    valid = await validKeyFile();
  });

  it('a valid key file opens with its password and only with it', async () => {
    checkUnlocked((await unlock(storageWith({ [valid.key]: valid.bytes }), repositoryId, password)).keys);
    await expect(unlock(storageWith({ [valid.key]: valid.bytes }), repositoryId, 'another')).rejects.toMatchObject({ code: 'TENDER_WRONG_PASSWORD' });
    await expect(unlock(storageWith({ [valid.key]: valid.bytes }), randomBytes(32).toString('hex'), password)).rejects.toBeInstanceOf(TenderError);
  });

  it('byte-mutated key files: the master keys or TenderError (never TypeError/RangeError/SyntaxError)', async () => {
    await fc.assert(
      fc.asyncProperty(mutationsArb, async (mutations) => {
        const bytes = mutate(valid.bytes, mutations);
        const unlocked = await decodeOrExpectedErrorAsync(() => unlock(storageWith({ [valid.key]: bytes }), repositoryId, password));
        if (unlocked) checkUnlocked(unlocked.keys);
      }),
      params(1500),
    );
  });

  it('key files with one field damaged or hostile: the master keys or TenderError (never TypeError/RangeError)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({ path: fc.constant([] as string[]), value: weirdValueArb }),
          fc.record({ path: fc.constantFrom(...keyFields).map((f) => [f]), value: fc.option(weirdValueArb, { nil: undefined }) }),
          fc.record({ path: fc.constantFrom('N', 'r', 'p').map((f) => ['kdf', f]), value: fc.option(kdfValueArb, { nil: undefined }) }),
          fc.record({ path: fc.constantFrom('name', 'salt').map((f) => ['kdf', f]), value: fc.option(weirdValueArb, { nil: undefined }) }),
        ),
        async (edit) => {
          const bytes = Buffer.from(JSON.stringify(applyEdit(valid.json, edit)) ?? '');
          const unlocked = await decodeOrExpectedErrorAsync(() => unlock(storageWith({ [valid.key]: bytes }), repositoryId, password));
          if (unlocked) checkUnlocked(unlocked.keys);
        },
      ),
      params(1500),
    );
  });

  it('key files whose sealed secret (written with the password) is damaged: the master keys or TenderError', async () => {
    // The wrapping key, derived the design's way, so the secret can be re-sealed after mutation.
    const wrapping = scryptSync(password, Buffer.from(valid.json.kdf.salt, 'base64'), 32, { N: fuzzKdf.N, r: fuzzKdf.r, p: fuzzKdf.p });
    const secret = {
      repository: repositoryId,
      encryption: masterKeys.encryption.toString('base64'),
      blobId: masterKeys.blobId.toString('base64'),
      gearSeed: masterKeys.gearSeed.toString('base64'),
    };
    const withSecret = (plain: Buffer) => {
      const file = { ...valid.json, sealed: seal(wrapping, plain, aadLabel('key')).toString('base64') };
      return Buffer.from(JSON.stringify(file));
    };
    // Sanity: the re-sealed original opens.
    checkUnlocked((await unlock(storageWith({ [valid.key]: withSecret(Buffer.from(JSON.stringify(secret))) }), repositoryId, password)).keys);
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          mutationsArb.map((m) => mutate(Buffer.from(JSON.stringify(secret)), m)),
          fc
            .oneof(
              fc.record({ path: fc.constant([] as string[]), value: weirdValueArb }),
              fc.record({ path: fc.constantFrom('repository', 'encryption', 'blobId', 'gearSeed').map((f) => [f]), value: fc.option(weirdValueArb, { nil: undefined }) }),
            )
            .map((edit) => Buffer.from(JSON.stringify(applyEdit(secret, edit)) ?? '')),
        ),
        async (plain) => {
          const result = await decodeOrExpectedErrorAsync(() => unlock(storageWith({ [valid.key]: withSecret(plain) }), repositoryId, password));
          if (result) {
            // Accepted secrets must at least be usable keys: 32 bytes each.
            for (const k of [result.keys.encryption, result.keys.blobId, result.keys.gearSeed]) expect(k.length, 'master keys are 32 bytes').toBe(32);
          }
        },
      ),
      params(1000),
    );
  });
});

// ---- hostile KDF parameters (a child process, under a time limit) --------------------------

describe('key files with hostile KDF parameters', () => {
  let tmp: string;
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('a key file asking for an enormous scrypt cost does not make opening hang', async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-fuzz-kdf-'));
    const repoDir = path.join(tmp, 'repo');
    const repo = await Repository.init(new FsStorage(repoDir), testPassword, { kdf: { N: 1024, r: 8, p: 1 } });
    const repositoryIdOfRepo = repo.config.repository;
    await repo.close();
    // p = 16384 at N = 2^15, r = 8 stays inside the maxmem tender computes (48 MiB) but costs
    // 16384 scrypt runs: hours. A damaged or planted key file must not cost more than a bounded
    // KDF (or be refused as damaged).
    const [own] = await readdir(path.join(repoDir, 'keys'));
    const json = JSON.parse(await readFile(path.join(repoDir, 'keys', own!), 'utf8')) as KeyFileJson;
    json.repository = repositoryIdOfRepo;
    json.kdf = { ...json.kdf, N: 1 << 15, r: 8, p: 16384 };
    const bytes = Buffer.from(JSON.stringify(json, null, 2) + '\n');
    await writeFile(path.join(repoDir, 'keys', createHash('sha256').update(bytes).digest('hex')), bytes);
    // A mistyped password tries every key file.
    const args = ['--repo', repoDir, 'snapshots'];
    const started = Date.now();
    const r = await runTender(args, { env: { TENDER_PASSWORD: 'mistyped' }, timeoutMs: 10_000 });
    const took = Date.now() - started;
    expect(r.signal, `tender was killed after ${took} ms (hung on the hostile key file):\n${describeRun(args, r)}`).toBeNull();
    expect([1, 12], describeRun(args, r)).toContain(r.code);
    expect(r.stderr).not.toMatch(/internal error/);
  }, 60_000);
});
