import pLimit from 'p-limit';
import { DecryptError, aadLabel, open, seal, sealOverhead } from '../crypto/aead.js';
import { TenderError } from '../errors/errors.js';
import { type ChunkerParams, defaultChunkerParams } from './chunker-params.js';
import type { Storage } from '../storage/storage.js';
import { BlobCodec, BlobCorruptError } from '../transform/blob-codec.js';
import { BufferPool, type PooledBuffer, sharedBuffer } from '../util/buffer-pool.js';
import type { MasterKeys } from '../transform/keys.js';
import { FormatError } from './binary.js';
import { type BlobEntry, BlobType } from './blob.js';
import { type RepositoryConfig, configKey, encodeConfig, formatVersion, openConfig, readConfigEnvelope } from './config.js';
import { type BlobLocation, IdTable } from './index/id-table.js';
import { type IndexFile, type IndexedPack, decodeIndex, encodeIndex } from './index/index-file.js';
import { idLength, idToHex, randomId, storedObjectId } from './ids.js';
import { type KdfParams, addKey, newMasterKeys, unlock } from './keys.js';
import { holdsRepositoryObjects } from './storage-probe.js';
import { PackBuilder, type Reservation, decodePackHeader, headerLengthFromTail, packIdFromKey, packKey, packTailGuess } from './pack/pack.js';
import { type Snapshot, decodeSnapshot, encodeSnapshot } from './snapshot/snapshot.js';
import { type Tree, decodeTree, encodeTree } from './snapshot/tree.js';

/**
 * Memory for cached metadata packs (trees and file chunk lists). Trees are read in walk order,
 * which is the order they were stored in, so a few packs cover it: restoring 1M files kept 45 MB
 * of tree packs with 64 MiB allowed (peak RSS 264 MB) and runs as fast with 16 MiB (240 MB).
 */
const metadataCacheBytes = 16 * 1024 * 1024;

export interface InitOptions {
  chunker?: ChunkerParams;
  compressionLevel?: number;
  packSize?: number;
  kdf?: KdfParams;
}

export interface WriteOptions {
  /** Write an index file after this many packs are stored, so a crashed run keeps its work. */
  packsPerIndex?: number;
}

/**
 * The repository layer: keys, config, index, packs, snapshots on top of a Storage.
 * It knows nothing about files or backups: it stores and loads blobs and snapshots.
 *
 * Write order (docs/design.md, "Write order"): a pack is stored before any index lists it; an
 * index is stored before any snapshot relies on it. A crash therefore leaves at most
 * unreferenced packs, never a snapshot that points at nothing.
 */
/** An index file is written once this many blob entries wait (about 3 MiB of index file). */
const blobsPerIndex = 65536;
/** Size of the buffers tree and list packs fill (at most the repository's pack size). */
const metadataPackSize = 4 * 1024 * 1024;

export class Repository {
  readonly codec: BlobCodec;
  private index = new IdTable();
  private readonly packIds: Buffer[] = [];
  private readonly packSizes: number[] = [];
  private readonly packIndexByHex = new Map<string, number>();
  private readonly indexFileIds = new Set<string>();
  private excludedPacks: ReadonlySet<string> = new Set();
  /** Whole tree/list packs recently read (insertion order = LRU order). */
  private readonly metadataPacks = new Map<number, Promise<Buffer>>();
  private metadataPackBytes = 0;

  // Writing state.
  private readonly openPacks = new Map<BlobType, PackBuilder>();
  private readonly uploads = new Set<Promise<void>>();
  private pendingIndex: IndexedPack[] = [];
  private pendingIndexBlobs = 0;
  private uploadError: unknown;
  private readonly packsPerIndex: number;
  /** Buffers of data packs: the open one plus the packs uploading; bounds memory. */
  private readonly dataPackBuffers: BufferPool;
  /**
   * Trees and lists are few and small: their packs fill smaller buffers of their own, so an open
   * tree pack does not hold back a data pack's upload.
   */
  private readonly metadataPackBuffers: BufferPool;
  /** Hex IDs of committed blobs whose pack is not stored yet (they count as present for dedup). */
  private readonly unindexed = new Set<string>();

  private constructor(
    readonly storage: Storage,
    readonly keys: MasterKeys,
    readonly config: RepositoryConfig,
    readonly keyFile: string,
    options: WriteOptions = {},
  ) {
    this.codec = new BlobCodec(keys, config.compressionLevel);
    // Packs uploading, and the open one; producers wait for a free buffer beyond that (backpressure).
    this.dataPackBuffers = new BufferPool(config.packSize, storage.concurrentPuts + 1);
    // Open tree and list packs, and one uploading.
    this.metadataPackBuffers = new BufferPool(Math.min(config.packSize, metadataPackSize), 3);
    this.packsPerIndex = options.packsPerIndex ?? 32;
  }

  static async init(storage: Storage, password: string, options: InitOptions = {}): Promise<Repository> {
    if (await storage.stat(configKey)) {
      throw new TenderError('TENDER_REPO_EXISTS', `a repository already exists at ${storage.location}`, {
        hint: 'use it as it is, or choose another --repo',
      });
    }
    if (await holdsRepositoryObjects(storage)) {
      throw new TenderError('TENDER_REPO_EXISTS', `${storage.location} holds repository data but no config`, {
        hint: 'the config was lost: restore it from a copy of the repository; init would make the existing data unreadable',
      });
    }
    const keys = newMasterKeys();
    const repository = idToHex(randomId());
    const config: RepositoryConfig = {
      version: formatVersion,
      repository,
      created: new Date().toISOString(),
      chunker: options.chunker ?? defaultChunkerParams,
      compressionLevel: options.compressionLevel ?? 1,
      packSize: options.packSize ?? 16 * 1024 * 1024,
    };
    // Key first, config last: an interrupted init leaves no config, so it is not a repository yet.
    const keyFile = await addKey(storage, repository, keys, password, options.kdf);
    if ((await storage.put(configKey, [encodeConfig(keys.encryption, config)])) === 'exists') {
      throw new TenderError('TENDER_REPO_EXISTS', `a repository was created at ${storage.location} at the same time`);
    }
    return new Repository(storage, keys, config, keyFile);
  }

  static async open(storage: Storage, password: string, options: WriteOptions = {}): Promise<Repository> {
    const envelope = await readConfigEnvelope(storage);
    const { keys, keyFile } = await unlock(storage, envelope.repository, password);
    const config = openConfig(storage, keys.encryption, envelope);
    return new Repository(storage, keys, config, keyFile, options);
  }

  async addKey(password: string, kdf?: KdfParams): Promise<string> {
    return addKey(this.storage, this.config.repository, this.keys, password, kdf);
  }

  // ---- index ---------------------------------------------------------------------------

  /**
   * Loads every index file. Damaged ones are an error naming the object (see `check`, `repair`).
   * Packs in `excludedPacks` (doomed by a pending deletion plan) are left out, so nothing new
   * comes to depend on them.
   */
  async loadIndex(excludedPacks: ReadonlySet<string> = new Set()): Promise<void> {
    this.excludedPacks = excludedPacks;
    await this.loadIndexFiles(new Set());
  }

  /**
   * Adds each index file's packs as soon as it is decoded, so only one file's entries are ever
   * held as objects (a million-blob index is otherwise hundreds of MB of them). A file is
   * skipped when a file read before it supersedes it. Rarely (during a prune's sweep) a file
   * read earlier turns out superseded by one read later; its entries may name deleted packs,
   * so the table is rebuilt, skipping every file known to be superseded.
   */
  private async loadIndexFiles(knownSuperseded: ReadonlySet<string>, round = 1): Promise<void> {
    const superseded = new Set(knownSuperseded);
    const added = new Set<string>();
    // A prune's sweep may delete index files between the listing and the reads; it stores their
    // replacement first, so listing again finds it.
    for (let attempt = 1; ; attempt++) {
      const keys: string[] = [];
      for await (const { key } of this.storage.list('index/')) if (!this.indexFileIds.has(key)) keys.push(key);
      const limit = pLimit(8);
      let vanished = 0;
      await Promise.all(
        keys.map((key) =>
          limit(async () => {
            let file: IndexFile;
            try {
              file = await this.readIndexFile(key);
            } catch (err) {
              if (!(err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') || attempt >= 5) throw err;
              vanished++;
              return;
            }
            this.indexFileIds.add(key);
            for (const id of file.superseded) superseded.add(`index/${idToHex(id)}`);
            if (superseded.has(key)) return;
            this.addIndexedPacks(file.packs.filter((p) => !this.excludedPacks.has(idToHex(p.packId))));
            added.add(key);
          }),
        ),
      );
      if (vanished === 0) break;
    }
    if (![...added].some((key) => superseded.has(key))) return;
    if (round >= 5) throw corrupt('index/', 'keeps changing while it is read (index files superseding each other)', 'run the command again once prune has finished');
    this.clearIndex();
    await this.loadIndexFiles(superseded, round + 1);
  }

  private clearIndex(): void {
    this.index = new IdTable();
    this.packIds.length = 0;
    this.packSizes.length = 0;
    this.packIndexByHex.clear();
    this.indexFileIds.clear();
  }

  async readIndexFile(key: string): Promise<IndexFile> {
    const bytes = await this.storage.get(key);
    if (idToHex(storedObjectId([bytes])) !== key.slice('index/'.length)) {
      throw corrupt(key, 'does not match its name (damaged)');
    }
    try {
      return decodeIndex(this.keys.encryption, bytes);
    } catch (err) {
      throw wrapDecodeError(key, err);
    }
  }

  get indexFiles(): ReadonlySet<string> {
    return this.indexFileIds;
  }

  addIndexedPacks(packs: readonly IndexedPack[]): void {
    for (const pack of packs) {
      const packIndex = this.packIndexOf(pack.packId, pack.packSize);
      for (const b of pack.blobs) {
        this.index.add(b.id, { packIndex, offset: b.offset, storedLength: b.storedLength, rawLength: b.rawLength, type: b.type, flags: b.flags });
      }
    }
  }

  private packIndexOf(packId: Buffer, size: number): number {
    const hex = idToHex(packId);
    let i = this.packIndexByHex.get(hex);
    if (i === undefined) {
      i = this.packIds.length;
      this.packIds.push(packId);
      this.packSizes.push(size);
      this.packIndexByHex.set(hex, i);
    }
    return i;
  }

  has(id: Uint8Array): boolean {
    return this.index.has(id) || (this.unindexed.size > 0 && this.unindexed.has(idToHex(id)));
  }

  private readonly hexScratch = Buffer.alloc(idLength);

  /** has() for an ID in hex (from a tree), without allocating; false for a malformed ID. */
  hasHex(hex: string): boolean {
    if (hex.length !== 2 * idLength || this.hexScratch.write(hex, 'hex') !== idLength) return false;
    return this.index.has(this.hexScratch) || (this.unindexed.size > 0 && this.unindexed.has(hex));
  }

  lookup(id: Uint8Array): BlobLocation | undefined {
    return this.index.get(id);
  }

  get blobCount(): number {
    return this.index.size;
  }

  packIdAt(packIndex: number): Buffer {
    return this.packIds[packIndex]!;
  }

  forEachBlob(visit: (id: Uint8Array, loc: BlobLocation) => void): void {
    this.index.forEach(visit);
  }

  // ---- packs outside the index (resume, repair) ------------------------------------------

  /**
   * Packs in storage that no loaded index lists (and no deletion plan dooms): left by an
   * interrupted run, or just stored by another writer.
   */
  async listUnindexedPacks(): Promise<Array<{ packId: Buffer; size: number }>> {
    const found: Array<{ packId: Buffer; size: number }> = [];
    for await (const { key, size } of this.storage.list('data/')) {
      const hex = packIdFromKey(key);
      if (hex && !this.packIndexByHex.has(hex) && !this.excludedPacks.has(hex)) found.push({ packId: Buffer.from(hex, 'hex'), size });
    }
    return found;
  }

  /** The blobs a pack's own header lists (one ranged read of its tail, two if the header is large). */
  async readPackHeader(packId: Buffer, size: number): Promise<BlobEntry[]> {
    const key = packKey(packId);
    const tailLength = Math.min(size, packTailGuess);
    let tail = await this.storage.get(key, { offset: size - tailLength, length: tailLength });
    try {
      const headerLength = headerLengthFromTail(tail, size);
      if (headerLength + 4 > tail.length) tail = await this.storage.get(key, { offset: size - headerLength - 4, length: headerLength + 4 });
      return decodePackHeader(this.keys.encryption, packId, tail, size);
    } catch (err) {
      throw wrapDecodeError(key, err);
    }
  }

  /**
   * Indexes packs from their own headers and writes one index file for them, so their blobs are
   * used (deduplicated against) instead of uploaded again. Damaged packs are skipped and returned.
   */
  async indexPacksFromHeaders(
    packs: ReadonlyArray<{ packId: Buffer; size: number }>,
    superseded: Buffer[] = [],
  ): Promise<{ indexed: number; damaged: string[]; indexFile?: string }> {
    const limit = pLimit(8);
    const damaged: string[] = [];
    const indexed: IndexedPack[] = [];
    await Promise.all(
      packs.map((p) =>
        limit(async () => {
          try {
            indexed.push({ packId: p.packId, packSize: p.size, blobs: await this.readPackHeader(p.packId, p.size) });
          } catch (err) {
            if (!(err instanceof TenderError && err.code === 'TENDER_CORRUPT')) throw err;
            damaged.push(packKey(p.packId));
          }
        }),
      ),
    );
    if (indexed.length === 0 && superseded.length === 0) return { indexed: 0, damaged };
    const indexFile = await this.saveIndexFile({ superseded, packs: indexed });
    this.addIndexedPacks(indexed);
    return { indexed: indexed.length, damaged, indexFile };
  }

  // ---- writing blobs -------------------------------------------------------------------

  /**
   * Sets aside `capacity` bytes in the open pack for `type` for one sealed blob. Waits
   * (backpressure) while every pack buffer is in use: open packs and packs being uploaded.
   * The caller fills the region and then commits or abandons it.
   */
  async reserve(type: BlobType, capacity: number): Promise<Reservation> {
    const now = this.tryReserve(type, capacity);
    if (now) return now;
    for (;;) {
      const open = this.openPacks.get(type);
      const reservation = open?.reserve(capacity);
      if (reservation) return reservation;
      if (open) this.closePack(type, open);
      const pool = this.packBuffersFor(type);
      const buffer = capacity <= pool.bufferSize ? await pool.acquire() : sharedBuffer(capacity);
      this.throwIfUploadFailed();
      // Another caller may have opened a pack for this type while this one waited.
      const raced = this.openPacks.get(type);
      if (raced) {
        this.releasePackBuffer(buffer);
        continue;
      }
      this.openPacks.set(type, new PackBuilder(buffer));
    }
  }

  /** reserve() without waiting: undefined when it would have to wait for a pack buffer. */
  tryReserve(type: BlobType, capacity: number): Reservation | undefined {
    this.throwIfUploadFailed();
    const open = this.openPacks.get(type);
    const reservation = open?.reserve(capacity);
    const pool = this.packBuffersFor(type);
    if (reservation || capacity > pool.bufferSize) return reservation;
    const buffer = pool.tryAcquire();
    if (!buffer) return undefined;
    if (open) this.closePack(type, open);
    const pack = new PackBuilder(buffer);
    this.openPacks.set(type, pack);
    return pack.reserve(capacity);
  }

  /** Records the sealed blob written into `r`. The blob counts as stored (`has`) from now on. */
  commit(r: Reservation, type: BlobType, id: Uint8Array, rawLength: number, storedLength: number, flags: number): void {
    const idCopy = Buffer.from(id);
    r.pack.commit(r, { id: idCopy, type, flags, rawLength }, storedLength);
    this.unindexed.add(idToHex(idCopy));
    if (r.pack.complete) this.startUpload(r.pack);
  }

  abandon(r: Reservation): void {
    r.pack.abandon(r);
    if (r.pack.complete) this.startUpload(r.pack);
  }

  /** Seals and saves a blob on this thread (trees and lists: small and few). Returns its ID. */
  async saveBlob(type: BlobType, plaintext: Buffer): Promise<Buffer> {
    const id = this.codec.id(plaintext);
    if (this.has(id)) return id;
    const r = await this.reserve(type, plaintext.length + sealOverhead);
    const { storedLength, flags } = this.codec.sealInto(type, id, plaintext, new Uint8Array(r.buffer, r.offset, r.capacity));
    this.commit(r, type, id, plaintext.length, storedLength, flags);
    return id;
  }

  /** Saves an already sealed blob (repack copies sealed bytes between packs unchanged). */
  async saveSealed(type: BlobType, id: Uint8Array, rawLength: number, sealed: Uint8Array, flags: number): Promise<void> {
    const r = await this.reserve(type, sealed.length);
    new Uint8Array(r.buffer, r.offset, sealed.length).set(sealed);
    this.commit(r, type, id, rawLength, sealed.length, flags);
  }

  async saveTree(tree: Tree): Promise<string> {
    return idToHex(await this.saveBlob(BlobType.tree, encodeTree(tree)));
  }

  private closePack(type: BlobType, pack: PackBuilder): void {
    if (this.openPacks.get(type) === pack) this.openPacks.delete(type);
    pack.closed = true;
    if (pack.complete) this.startUpload(pack);
  }

  private packBuffersFor(type: BlobType): BufferPool {
    return type === BlobType.data ? this.dataPackBuffers : this.metadataPackBuffers;
  }

  private releasePackBuffer(buffer: PooledBuffer): void {
    buffer.pool?.release(buffer);
  }

  /** Stores a complete pack; its buffer returns to the pool when the upload ends. */
  private startUpload(pack: PackBuilder): void {
    if (pack.isEmpty) {
      this.releasePackBuffer(pack.buffer);
      return;
    }
    const { key, parts, size, entries } = pack.finish(this.keys.encryption);
    let released = false;
    const release = () => {
      if (!released) this.releasePackBuffer(pack.buffer);
      released = true;
    };
    const upload = (async () => {
      try {
        await this.storage.put(key, parts, { partsReleased: release });
      } finally {
        release();
      }
      const packIndex = this.packIndexOf(pack.id, size);
      for (const e of entries) {
        this.index.add(e.id, { packIndex, offset: e.offset, storedLength: e.storedLength, rawLength: e.rawLength, type: e.type, flags: e.flags });
        this.unindexed.delete(idToHex(e.id));
      }
      this.pendingIndex.push({ packId: pack.id, packSize: size, blobs: entries });
      this.pendingIndexBlobs += entries.length;
      // Packs of tiny files hold tens of thousands of blobs: bound the entries waiting in memory too.
      if (this.pendingIndex.length >= this.packsPerIndex || this.pendingIndexBlobs >= blobsPerIndex) await this.writePendingIndex();
    })().catch((err) => {
      this.uploadError ??= err;
    });
    const tracked = upload.finally(() => this.uploads.delete(tracked));
    this.uploads.add(tracked);
  }

  private throwIfUploadFailed(): void {
    if (this.uploadError !== undefined) throw this.uploadError;
  }

  private async writePendingIndex(): Promise<void> {
    if (this.pendingIndex.length === 0) return;
    const packs = this.pendingIndex;
    this.pendingIndex = [];
    this.pendingIndexBlobs = 0;
    await this.saveIndexFile({ superseded: [], packs });
  }

  async saveIndexFile(file: IndexFile): Promise<string> {
    const bytes = encodeIndex(this.keys.encryption, file);
    const key = `index/${idToHex(storedObjectId([bytes]))}`;
    await this.storage.put(key, [bytes]);
    this.indexFileIds.add(key);
    return key;
  }

  /**
   * After a failure or an interrupt: waits for the uploads under way and indexes the packs that
   * were stored, so the next run deduplicates against them instead of uploading them again.
   * Open packs are dropped. Best effort: errors here are not reported over the original one.
   */
  async indexStoredPacks(): Promise<void> {
    while (this.uploads.size > 0) await Promise.allSettled([...this.uploads]);
    await this.writePendingIndex().catch(() => undefined);
  }

  /** Stores every open pack, waits for all uploads, and writes the index for them. */
  async flush(): Promise<void> {
    for (const [type, pack] of [...this.openPacks]) this.closePack(type, pack);
    while (this.uploads.size > 0) await Promise.race(this.uploads);
    this.throwIfUploadFailed();
    if (this.unindexed.size > 0) throw new Error(`flush: ${this.unindexed.size} committed blobs are in no stored pack`);
    await this.writePendingIndex();
  }

  // ---- reading blobs -------------------------------------------------------------------

  /** The sealed bytes of a blob, straight from its pack. */
  async readSealed(id: Uint8Array, loc: BlobLocation): Promise<Buffer> {
    const key = packKey(this.packIds[loc.packIndex]!);
    // Metadata blobs (trees, lists) sit together in their own packs and are read in bursts:
    // one request for the whole pack serves all of them.
    if (loc.type !== BlobType.data) {
      const pack = await this.metadataPack(loc.packIndex);
      if (pack) {
        if (loc.offset + loc.storedLength > pack.length) throw corrupt(key, `is truncated (blob ${idToHex(id)} lies past its end)`);
        return pack.subarray(loc.offset, loc.offset + loc.storedLength);
      }
    }
    const bytes = await this.storage.get(key, { offset: loc.offset, length: loc.storedLength }).catch((err) => {
      if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') {
        throw corrupt(key, `is missing (it holds blob ${idToHex(id)})`, 'run `tender check`; the index lists a pack that is gone');
      }
      throw err;
    });
    if (bytes.length !== loc.storedLength) throw corrupt(key, `is truncated (blob ${idToHex(id)} at ${loc.offset} is cut short)`);
    return bytes;
  }

  /** A whole metadata pack from a small LRU cache, or undefined if it is too large to cache. */
  private metadataPack(packIndex: number): Promise<Buffer> | undefined {
    const size = this.packSizes[packIndex]!;
    if (size === 0 || size > metadataCacheBytes / 4) return undefined;
    let cached = this.metadataPacks.get(packIndex);
    if (cached) {
      // Refresh its place in the LRU order.
      this.metadataPacks.delete(packIndex);
    } else {
      const key = packKey(this.packIds[packIndex]!);
      const loading: Promise<Buffer> = this.storage.get(key).catch((err) => {
        if (this.metadataPacks.get(packIndex) === loading) {
          this.metadataPacks.delete(packIndex);
          this.metadataPackBytes -= size;
        }
        if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') throw corrupt(key, 'is missing', 'run `tender check`; the index lists a pack that is gone');
        throw err;
      });
      cached = loading;
      this.metadataPackBytes += size;
    }
    this.metadataPacks.set(packIndex, cached);
    for (const [oldest] of this.metadataPacks) {
      if (this.metadataPackBytes <= metadataCacheBytes) break;
      this.metadataPacks.delete(oldest);
      this.metadataPackBytes -= this.packSizes[oldest]!;
    }
    return cached;
  }

  /** Loads, decrypts and verifies one blob on this thread. */
  async loadBlob(id: Uint8Array, expectedType?: BlobType): Promise<Buffer> {
    const loc = this.index.get(id);
    if (!loc) {
      throw new TenderError('TENDER_CORRUPT', `blob ${idToHex(id)} is not in the index`, {
        hint: 'run `tender check`; if packs are intact, `tender repair` rebuilds the index',
      });
    }
    if (expectedType !== undefined && loc.type !== expectedType) throw corrupt(`blob ${idToHex(id)}`, 'has the wrong type');
    const sealed = await this.readSealed(id, loc);
    try {
      return this.codec.open(loc.type, id, loc.flags, loc.rawLength, sealed);
    } catch (err) {
      if (err instanceof BlobCorruptError) {
        throw corrupt(packKey(this.packIds[loc.packIndex]!), `is damaged: ${err.message}`);
      }
      throw err;
    }
  }

  async loadTree(hexId: string): Promise<Tree> {
    const bytes = await this.loadBlob(Buffer.from(hexId, 'hex'), BlobType.tree);
    try {
      return decodeTree(bytes);
    } catch (err) {
      throw wrapDecodeError(`tree ${hexId}`, err);
    }
  }

  // ---- small sealed JSON objects (plans, sessions) ------------------------------------------

  /** Stores `value` as sealed JSON under `<prefix>/<sha256 of the stored bytes>`; returns the key. */
  async saveSealedJson(prefix: string, value: unknown): Promise<string> {
    const bytes = seal(this.keys.encryption, Buffer.from(JSON.stringify(value)), aadLabel(prefix));
    const key = `${prefix}/${idToHex(storedObjectId([bytes]))}`;
    await this.storage.put(key, [bytes]);
    return key;
  }

  async loadSealedJson<T>(key: string): Promise<T> {
    const prefix = key.slice(0, key.indexOf('/'));
    const bytes = await this.storage.get(key);
    if (idToHex(storedObjectId([bytes])) !== key.slice(prefix.length + 1)) throw corrupt(key, 'does not match its name (damaged)');
    try {
      return JSON.parse(open(this.keys.encryption, bytes, aadLabel(prefix)).toString('utf8')) as T;
    } catch (err) {
      throw wrapDecodeError(key, err instanceof SyntaxError ? new FormatError('not valid JSON') : err);
    }
  }

  // ---- snapshots -----------------------------------------------------------------------

  async saveSnapshot(snapshot: Snapshot): Promise<string> {
    const bytes = encodeSnapshot(this.keys.encryption, snapshot);
    const id = idToHex(storedObjectId([bytes]));
    await this.storage.put(`snapshots/${id}`, [bytes]);
    return id;
  }

  async listSnapshotIds(): Promise<string[]> {
    const ids: string[] = [];
    for await (const { key } of this.storage.list('snapshots/')) ids.push(key.slice('snapshots/'.length));
    return ids;
  }

  /** The snapshot, or undefined if it was removed (by a concurrent forget) after it was listed. */
  async loadListedSnapshot(id: string): Promise<Snapshot | undefined> {
    try {
      return await this.loadSnapshot(id);
    } catch (err) {
      if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') return undefined;
      throw err;
    }
  }

  async loadSnapshot(id: string): Promise<Snapshot> {
    const key = `snapshots/${id}`;
    const bytes = await this.storage.get(key);
    if (idToHex(storedObjectId([bytes])) !== id) throw corrupt(key, 'does not match its name (damaged)');
    try {
      return decodeSnapshot(this.keys.encryption, bytes);
    } catch (err) {
      throw wrapDecodeError(key, err);
    }
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}

export function corrupt(object: string, problem: string, hint = 'run `tender check` to list all damage'): TenderError {
  return new TenderError('TENDER_CORRUPT', `${object} ${problem}`, { hint });
}

function wrapDecodeError(object: string, err: unknown): unknown {
  if (err instanceof DecryptError) return corrupt(object, 'does not decrypt (damaged, or from another repository)');
  if (err instanceof FormatError) return corrupt(object, `is malformed: ${err.message}`);
  return err;
}

export type { BlobEntry };
