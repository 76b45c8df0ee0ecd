import pLimit from 'p-limit';
import { DecryptError, aadLabel, open, seal, sealOverhead } from '../crypto/aead.js';
import { TenderError } from '../errors/errors.js';
import type { Storage } from '../storage/storage.js';
import { BlobCodec, BlobCorruptError, type CodecTransforms } from '../transform/blob-codec.js';
import type { MasterKeys } from '../transform/keys.js';
import { BufferPool, sharedBuffer } from '../util/buffer-pool.js';
import { type Identity, processIdentity } from '../util/operation.js';
import type { OpenRequest } from '../workers/ops.js';
import { type CodecExecutor, StartingWorkers, createExecutor, defaultWorkerCount } from '../workers/pool.js';
import { FormatError } from './binary.js';
import { type BlobEntry, BlobFlag, BlobType } from './blob.js';
import { type ChunkerParams, defaultChunkerParams } from './chunker-params.js';
import { type RepositoryConfig, type Transform, configKey, encodeConfig, openConfig, readConfigEnvelope, versionFor } from './config.js';
import type { BlobLocation } from './index/id-table.js';
import type { BlobEntries } from './blob-entries.js';
import { type IndexFile, type IndexedPack, decodeIndex, encodeIndex } from './index/index-file.js';
import { IndexView } from './index/index-view.js';
import { idToHex, randomId, storedObjectId } from './ids.js';
import { type KdfParams, addKey, newMasterKeys, unlock } from './keys.js';
import { decodePackHeader, headerLengthFromTail, packIdFromKey, packKey, packTailGuess } from './pack/pack.js';
import type { DeletionPlan } from './plans.js';
import { type SessionInfo, WriterSession, listSessions, sessionKey } from './sessions.js';
import { type Snapshot, decodeSnapshot, encodeSnapshot } from './snapshot/snapshot.js';
import { type Tree, decodeTree } from './snapshot/tree.js';
import { holdsRepositoryObjects } from './storage-probe.js';
import { RepositoryWriter, type WriterOptions } from './writer.js';

/**
 * Memory for cached metadata packs (trees and file chunk lists). Trees are read in walk order,
 * which is the order they were stored in, so a few packs cover it: restoring 1M files kept 45 MB
 * of tree packs with 64 MiB allowed (peak RSS 264 MB) and runs as fast with 16 MiB (240 MB).
 */
const metadataCacheBytes = 16 * 1024 * 1024;
/** Size of the buffers tree and list packs fill (at most the repository's pack size). */
const metadataPackSize = 4 * 1024 * 1024;
/**
 * Sealed delta bases read at once (backup and restore). A buffer holds a chunk of layout cuts
 * (at most avgSize + minSize, docs/design.md "Layout cuts"); a larger base (a CDC-cut chunk) is
 * read into a buffer of its own.
 */
const deltaBaseReads = 4;

export interface InitOptions {
  chunker?: ChunkerParams;
  compressionLevel?: number;
  packSize?: number;
  kdf?: KdfParams;
  /** Blob transforms writers may use (default: all; none: a version-1 repository). */
  transforms?: Transform[];
}

export interface OpenOptions {
  /** Worker threads for sealing and opening blobs, shared by every operation (0: this thread). */
  workers?: number;
  /** Recorded in key files and session markers; default: this process (see util/operation.ts). */
  identity?: Identity;
  /** The clock for session heartbeats and deletion plans (tests). */
  now?: () => number;
  /**
   * Start the worker threads while the key is derived (open), for a process that will use them
   * (backup, restore, check): their start-up then overlaps the key derivation.
   */
  startWorkersEarly?: boolean;
}

/** A share of a process-wide buffer pool (Repository.leaseBuffers); release it when the operation ends. */
export interface BufferLease {
  readonly pool: BufferPool;
  release(): void;
}

export interface LoadIndexOptions {
  /** Keep the packs pending deletion plans doom (prune and check need them; writers must not). */
  includeDoomed?: boolean;
  /** Report a damaged index file and go on (check); without it a damaged file is an error. */
  onDamaged?: (key: string, err: TenderError) => void;
}

/**
 * The repository layer, opened once per process and shared by every operation: keys, config,
 * the index, packs, snapshots, keys, sessions and deletion plans on top of a Storage. It owns
 * every protocol on the stored objects; nothing above src/repo/ touches the Storage. Writing goes
 * through a RepositoryWriter per operation (openWriter), which fails alone.
 * It knows nothing about files or backups: it stores and loads blobs and snapshots.
 */
export class Repository {
  readonly codec: BlobCodec;
  /** The transforms the config allows its writers (none in a version-1 repository). */
  readonly codecTransforms: CodecTransforms;
  /** The shared index; replaced as a whole by refreshIndex, added to by writers' uploads. */
  private shared = new IndexView();
  /** Whole tree/list packs recently read, by pack ID (insertion order = LRU order). */
  private readonly metadataPacks = new Map<string, { size: number; bytes: Promise<Buffer> }>();
  private metadataPackBytes = 0;
  /** Pack buffers shared by all writers: their count grows with the writers open (see openWriter). */
  private readonly dataPackBuffers: BufferPool;
  private readonly metadataPackBuffers: BufferPool;
  /** Sealed bases of delta blobs on their way to the workers (loadBaseInto). */
  private readonly deltaBaseBuffers: BufferPool;
  private readonly writers = new Set<RepositoryWriter>();
  /** Read slots and restore buffers, by kind and size, shared by the operations (see leaseBuffers). */
  private readonly sharedPools = new Map<string, { pool: BufferPool; leased: number; floor: number }>();
  /** Index refreshes and writers' index-file writes take turns (see withIndexLock). */
  private indexLock: Promise<void> = Promise.resolve();
  private codecExecutor: CodecExecutor | undefined;
  readonly identity: Identity;
  readonly now: () => number;
  /** Worker threads of the shared pool (OpenOptions.workers, else one per core up to 8). */
  private readonly workers: number;

  private constructor(
    /** Only src/repo/ uses it: operations go through the repository's methods. */
    readonly storage: Storage,
    readonly keys: MasterKeys,
    readonly config: RepositoryConfig,
    readonly keyFile: string,
    options: OpenOptions,
    private readonly startingWorkers?: StartingWorkers,
  ) {
    this.codecTransforms = { planes: config.transforms?.includes('planes') ?? false, delta: config.transforms?.includes('delta') ?? false };
    this.codec = new BlobCodec(keys, config.compressionLevel, this.codecTransforms);
    this.identity = options.identity ?? processIdentity();
    this.now = options.now ?? Date.now;
    this.workers = options.workers ?? defaultWorkerCount();
    // Per writer: the pack it fills; plus the packs uploading (storage.concurrentPuts).
    this.dataPackBuffers = new BufferPool(config.packSize, storage.concurrentPuts);
    // Per writer: open tree and list packs; plus one uploading.
    this.metadataPackBuffers = new BufferPool(Math.min(config.packSize, metadataPackSize), 1);
    const { minSize, avgSize, maxSize } = config.chunker;
    this.deltaBaseBuffers = new BufferPool(Math.min(maxSize, avgSize + minSize) + sealOverhead, deltaBaseReads);
  }

  static async init(storage: Storage, password: string, options: InitOptions & OpenOptions = {}): Promise<Repository> {
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
    const identity = options.identity ?? processIdentity();
    const keys = newMasterKeys();
    const repository = idToHex(randomId());
    const transforms = options.transforms ?? ['planes', 'delta'];
    if (transforms.includes('delta') && !transforms.includes('planes')) {
      throw new TenderError('TENDER_USAGE', 'the transform "delta" needs "planes" (a delta is stored as byte planes)');
    }
    const config: RepositoryConfig = {
      version: versionFor(transforms),
      repository,
      created: new Date((options.now ?? Date.now)()).toISOString(),
      chunker: options.chunker ?? defaultChunkerParams,
      compressionLevel: options.compressionLevel ?? 1,
      packSize: options.packSize ?? 16 * 1024 * 1024,
      ...(transforms.length > 0 ? { transforms } : {}),
    };
    // Key first, config last: an interrupted init leaves no config, so it is not a repository yet.
    const keyFile = await addKey(storage, repository, keys, password, identity, options.kdf);
    if ((await storage.put(configKey, [encodeConfig(keys.encryption, config)])) === 'exists') {
      throw new TenderError('TENDER_REPO_EXISTS', `a repository was created at ${storage.location} at the same time`);
    }
    return new Repository(storage, keys, config, keyFile, { ...options, identity });
  }

  /**
   * Opens the repository. The config's format version is checked before the password is asked
   * for (`password` may be a function that prompts): a newer format stops at once.
   */
  static async open(storage: Storage, password: string | (() => Promise<string>), options: OpenOptions = {}): Promise<Repository> {
    const envelope = await readConfigEnvelope(storage);
    const workers = options.workers ?? defaultWorkerCount();
    const starting = options.startWorkersEarly && workers > 0 ? new StartingWorkers(workers) : undefined;
    try {
      const { keys, keyFile } = await unlock(storage, envelope.repository, typeof password === 'string' ? password : await password());
      const config = openConfig(storage, keys.encryption, envelope);
      return new Repository(storage, keys, config, keyFile, options, starting);
    } catch (err) {
      await starting?.close();
      throw err;
    }
  }

  /** Where it is stored, for messages ("/srv/repo", "s3://bucket/prefix"). */
  get location(): string {
    return this.storage.location;
  }

  /** The worker pool every operation of this process shares (created on first use). */
  executor(): CodecExecutor {
    this.codecExecutor ??= this.startingWorkers
      ? this.startingWorkers.start(this.keys, this.config.compressionLevel, this.codecTransforms)
      : createExecutor(this.keys, this.config.compressionLevel, this.workers, this.codecTransforms);
    return this.codecExecutor;
  }

  /** Worker threads the shared pool runs (an operation splits its work into this many parts). */
  get parallelism(): number {
    return Math.max(1, this.workers);
  }

  // ---- writers -------------------------------------------------------------------------

  /**
   * A writer for one operation. Each open writer adds one data pack buffer and two metadata pack
   * buffers to the shared pools (the packs it fills), so writers never wait on each other's
   * open packs; the packs uploading stay bounded by the backend's concurrentPuts in all.
   */
  openWriter(options: WriterOptions = {}): RepositoryWriter {
    const writer = new RepositoryWriter(this, { data: this.dataPackBuffers, metadata: this.metadataPackBuffers }, options, (w) => {
      this.writers.delete(w);
      this.resizePackPools();
    });
    this.writers.add(writer);
    this.resizePackPools();
    return writer;
  }

  private resizePackPools(): void {
    this.dataPackBuffers.resize(this.storage.concurrentPuts + this.writers.size);
    this.metadataPackBuffers.resize(1 + 2 * this.writers.size);
  }

  /**
   * Buffers for one operation from a pool the whole process shares: the pool holds `count` more
   * while the lease lasts, so concurrent operations never wait on each other's buffers; when it
   * ends the pool keeps one operation's worth for the next (memory is reused, not allocated and
   * freed again per operation: freed large buffers stay in the C heap, and RSS only grows).
   */
  leaseBuffers(kind: string, bufferSize: number, count: number): BufferLease {
    const key = `${kind}:${bufferSize}`;
    let entry = this.sharedPools.get(key);
    if (!entry) this.sharedPools.set(key, (entry = { pool: new BufferPool(bufferSize, 0), leased: 0, floor: 0 }));
    const shared = entry;
    shared.leased += count;
    shared.floor = Math.max(shared.floor, count);
    shared.pool.resize(Math.max(shared.leased, shared.floor));
    let released = false;
    return {
      pool: shared.pool,
      release: () => {
        if (released) return;
        released = true;
        shared.leased -= count;
        shared.pool.resize(Math.max(shared.leased, shared.floor));
      },
    };
  }

  /** @internal A writer stores a finished pack. */
  async storePack(key: string, parts: readonly Uint8Array[], partsReleased: () => void): Promise<void> {
    await this.storage.put(key, parts, { partsReleased });
  }

  /** @internal Index refreshes and writers' index-file writes run one at a time. */
  withIndexLock<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.indexLock.then(fn);
    this.indexLock = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  // ---- index ---------------------------------------------------------------------------

  /** The shared index (what backups deduplicate against and restores read through). */
  get index(): IndexView {
    return this.shared;
  }

  /**
   * Reloads the shared index from storage, without the packs pending deletion plans doom, so
   * nothing new comes to depend on them, and with what open writers stored but have not indexed
   * yet. Call it when an operation starts: a long-running process sees what other processes
   * stored, and stops using what a prune has since doomed.
   */
  async refreshIndex(): Promise<void> {
    await this.withIndexLock(async () => {
      const next = await this.loadIndex();
      for (const writer of this.writers) next.addPacks(writer.packsAwaitingIndex);
      this.shared = next;
    });
  }

  /**
   * A new index view from every index file. Each file's packs are added as soon as it is
   * decoded, so only one file's entries are ever held as objects (a million-blob index is
   * otherwise hundreds of MB of them). A file is skipped when a file read before it supersedes
   * it. Rarely (during a prune's sweep) a file read earlier turns out superseded by one read
   * later; its entries may name deleted packs, so the view is rebuilt, skipping every file known
   * to be superseded.
   */
  async loadIndex(options: LoadIndexOptions = {}): Promise<IndexView> {
    const excluded = options.includeDoomed ? new Set<string>() : await this.doomedPacks();
    let superseded = new Set<string>();
    for (let round = 1; ; round++) {
      const view = new IndexView(excluded);
      const found = await this.loadIndexFilesInto(view, superseded, excluded, options.onDamaged);
      if (![...view.indexFiles].some((key) => found.has(key))) return view;
      if (round >= 5) throw corrupt('index/', 'keeps changing while it is read (index files superseding each other)', 'run the command again once prune has finished');
      superseded = found;
    }
  }

  /** Loads index files into `view`; returns every file some file read names as superseded. */
  private async loadIndexFilesInto(
    view: IndexView,
    knownSuperseded: ReadonlySet<string>,
    excluded: ReadonlySet<string>,
    onDamaged: LoadIndexOptions['onDamaged'],
  ): Promise<Set<string>> {
    const superseded = new Set(knownSuperseded);
    const read = new Set<string>();
    // A prune's sweep may delete index files between the listing and the reads; it stores their
    // replacement first, so listing again finds it.
    for (let attempt = 1; ; attempt++) {
      const keys = (await this.listIndexFiles()).filter((key) => !read.has(key));
      const limit = pLimit(8);
      let vanished = 0;
      await Promise.all(
        keys.map((key) =>
          limit(async () => {
            let file: IndexFile;
            try {
              file = await this.readIndexFile(key);
            } catch (err) {
              if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND' && attempt < 5) {
                vanished++;
                return;
              }
              if (onDamaged && err instanceof TenderError && err.code === 'TENDER_CORRUPT') {
                read.add(key);
                onDamaged(key, err);
                return;
              }
              throw err;
            }
            read.add(key);
            for (const id of file.superseded) superseded.add(`index/${idToHex(id)}`);
            if (superseded.has(key)) return;
            view.addPacks(file.packs.filter((p) => !excluded.has(idToHex(p.packId))));
            view.indexFiles.add(key);
          }),
        ),
      );
      if (vanished === 0) return superseded;
    }
  }

  async listIndexFiles(): Promise<string[]> {
    const keys: string[] = [];
    for await (const { key } of this.storage.list('index/')) keys.push(key);
    return keys;
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

  async saveIndexFile(file: IndexFile<BlobEntries>): Promise<string> {
    const bytes = encodeIndex(this.keys.encryption, file);
    const key = `index/${idToHex(storedObjectId([bytes]))}`;
    await this.storage.put(key, [bytes]);
    this.shared.indexFiles.add(key);
    return key;
  }

  async deleteIndexFile(key: string): Promise<void> {
    await this.storage.delete(key);
  }

  has(id: Uint8Array): boolean {
    return this.shared.has(id);
  }

  hasHex(hex: string): boolean {
    return this.shared.hasHex(hex);
  }

  lookup(id: Uint8Array): BlobLocation | undefined {
    return this.shared.lookup(id);
  }

  // ---- packs ---------------------------------------------------------------------------

  /** Every pack in storage, indexed or not. */
  async listPacks(): Promise<Array<{ packId: Buffer; size: number }>> {
    const found: Array<{ packId: Buffer; size: number }> = [];
    for await (const { key, size } of this.storage.list('data/')) {
      const hex = packIdFromKey(key);
      if (hex) found.push({ packId: Buffer.from(hex, 'hex'), size });
    }
    return found;
  }

  /**
   * Packs in storage that `view` does not list and `excluded` does not name (by default the packs
   * the view left out as doomed, read once when it was loaded): left by an interrupted run, or
   * just stored by another writer.
   */
  async listUnindexedPacks(view: IndexView = this.shared, excluded: ReadonlySet<string> = view.excludedPacks): Promise<Array<{ packId: Buffer; size: number }>> {
    return (await this.listPacks()).filter((p) => {
      const hex = idToHex(p.packId);
      return !view.hasPack(hex) && !excluded.has(hex);
    });
  }

  async packSize(packId: Uint8Array | string): Promise<number | undefined> {
    return (await this.storage.stat(packKey(packId)))?.size;
  }

  /** A whole pack file (repack, check --read-data), into `into` when given. */
  async readPack(packId: Uint8Array | string, into?: Uint8Array): Promise<Buffer> {
    return this.storage.get(packKey(packId), undefined, into);
  }

  /** Bytes of a pack (restore's ranged reads), into `into` when given. */
  async readPackRange(packId: Uint8Array | string, offset: number, length: number, into?: Uint8Array): Promise<Buffer> {
    const key = packKey(packId);
    const bytes = await this.storage.get(key, { offset, length }, into).catch((err) => {
      if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') throw corrupt(key, 'is missing', 'run `tender check`; the index lists a pack that is gone');
      throw err;
    });
    if (bytes.length !== length) throw corrupt(key, `is truncated (${length} bytes at ${offset} are cut short)`);
    return bytes;
  }

  async deletePack(packId: Uint8Array | string): Promise<void> {
    await this.storage.delete(packKey(packId));
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
    this.shared.addPacks(indexed);
    return { indexed: indexed.length, damaged, indexFile };
  }

  // ---- reading blobs -------------------------------------------------------------------

  /** The sealed bytes of a blob, straight from its pack. */
  async readSealed(id: Uint8Array, loc: BlobLocation, view: IndexView = this.shared): Promise<Buffer> {
    const packId = view.packIdAt(loc.packIndex);
    const key = packKey(packId);
    // Metadata blobs (trees, lists) sit together in their own packs and are read in bursts:
    // one request for the whole pack serves all of them.
    if (loc.type !== BlobType.data) {
      const pack = await this.metadataPack(packId, view.packSizeAt(loc.packIndex));
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
  private metadataPack(packId: Buffer, size: number): Promise<Buffer> | undefined {
    if (size === 0 || size > metadataCacheBytes / 4) return undefined;
    const hex = idToHex(packId);
    let cached = this.metadataPacks.get(hex);
    if (cached) {
      // Refresh its place in the LRU order.
      this.metadataPacks.delete(hex);
    } else {
      const key = packKey(packId);
      const entry = {
        size,
        bytes: this.storage.get(key).catch((err) => {
          if (this.metadataPacks.get(hex) === entry) {
            this.metadataPacks.delete(hex);
            this.metadataPackBytes -= size;
          }
          if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') throw corrupt(key, 'is missing', 'run `tender check`; the index lists a pack that is gone');
          throw err;
        }),
      };
      cached = entry;
      this.metadataPackBytes += size;
    }
    this.metadataPacks.set(hex, cached);
    for (const [oldest, { size: oldSize }] of this.metadataPacks) {
      if (this.metadataPackBytes <= metadataCacheBytes) break;
      this.metadataPacks.delete(oldest);
      this.metadataPackBytes -= oldSize;
    }
    return cached.bytes;
  }

  /** The base a delta blob names, checked to be what a base must be: a whole data blob of its length. */
  private deltaBaseOf(id: Uint8Array, loc: BlobLocation, view: IndexView): { base: Uint8Array; baseLoc: BlobLocation } {
    const base = loc.base!;
    const baseLoc = view.lookup(base);
    const what = `delta blob ${idToHex(id)}`;
    if (!baseLoc) {
      throw corrupt(what, `needs its base ${idToHex(base)}, which is not in the index`, 'run `tender check`; the base of this chunk is missing');
    }
    if (baseLoc.type !== BlobType.data || baseLoc.flags & BlobFlag.delta || baseLoc.rawLength !== loc.rawLength) {
      throw corrupt(what, `names a base ${idToHex(base)} that is not a whole data blob of its length`);
    }
    return { base, baseLoc };
  }

  /**
   * Loads the base of the delta blob `id` (its index entry names it) into `target` at
   * `targetOffset`: one ranged read into a pooled buffer, opened by the workers. The pool bounds
   * the sealed bases in memory; a caller holds one buffer at a time, so callers never deadlock.
   */
  async loadBaseInto(id: Uint8Array, target: SharedArrayBuffer, targetOffset: number, view: IndexView = this.shared): Promise<Uint8Array> {
    const loc = view.lookup(id);
    if (!loc?.base) throw new Error(`blob ${idToHex(id)} is not a delta blob in this index`);
    return this.loadWholeBlobInto(loc.base, loc.rawLength, target, targetOffset, view, this.deltaBaseOf(id, loc, view).baseLoc);
  }

  /**
   * Loads the data blob `base` (stored whole: no delta) of `rawLength` bytes into `target` at
   * `targetOffset` (backup: the room reserved for a new chunk's delta against it). Returns the
   * base ID.
   */
  async loadWholeBlobInto(
    base: Uint8Array,
    rawLength: number,
    target: SharedArrayBuffer,
    targetOffset: number,
    view: IndexView = this.shared,
    loc: BlobLocation | undefined = view.lookup(base),
  ): Promise<Uint8Array> {
    if (!loc || loc.type !== BlobType.data || loc.flags & BlobFlag.delta || loc.rawLength !== rawLength) {
      throw new Error(`blob ${idToHex(base)} is not a whole data blob of ${rawLength} bytes in this index`);
    }
    const packId = view.packIdAt(loc.packIndex);
    const pool = this.deltaBaseBuffers;
    const sealed = loc.storedLength <= pool.bufferSize ? await pool.acquire() : sharedBuffer(loc.storedLength);
    try {
      await this.readPackRange(packId, loc.offset, loc.storedLength, sealed.view);
      const request = { type: BlobType.data, id: base, flags: loc.flags, rawLength, offset: 0, storedLength: loc.storedLength, target, targetOffset };
      const [error] = await this.executor().open(sealed.buffer, [request]);
      if (error) throw corrupt(packKey(packId), `is damaged: ${error}`);
    } finally {
      if (sealed.pool) pool.release(sealed);
    }
    return base;
  }

  /**
   * Prepares open requests for the workers: each delta blob among them gets its base's plaintext
   * loaded into its target region and named in the request, so the worker XORs the delta back in
   * place (docs/design.md, "Delta blobs"). Requests of other blobs are left as they are.
   */
  async attachDeltaBases(requests: OpenRequest[], view: IndexView = this.shared): Promise<void> {
    await Promise.all(
      requests.map(async (r) => {
        if (!(r.flags & BlobFlag.delta)) return;
        if (!r.target) throw new Error('a delta blob is opened into a target region');
        r.base = await this.loadBaseInto(r.id, r.target, r.targetOffset ?? 0, view);
      }),
    );
  }

  /** Loads, decrypts and verifies one blob on this thread (a delta blob's base too). */
  async loadBlob(id: Uint8Array, expectedType?: BlobType, view: IndexView = this.shared): Promise<Buffer> {
    const loc = view.lookup(id);
    if (!loc) throw blobNotIndexed(id);
    if (expectedType !== undefined && loc.type !== expectedType) throw corrupt(`blob ${idToHex(id)}`, 'has the wrong type');
    const base = loc.base ? this.deltaBaseOf(id, loc, view).base : undefined;
    const basePlaintext = base ? await this.loadBlob(base, BlobType.data, view) : undefined;
    const sealed = await this.readSealed(id, loc, view);
    try {
      return this.codec.open(loc.type, id, loc.flags, loc.rawLength, sealed, base ? { id: base, plaintext: basePlaintext! } : undefined);
    } catch (err) {
      if (err instanceof BlobCorruptError) {
        throw corrupt(packKey(view.packIdAt(loc.packIndex)), `is damaged: ${err.message}`);
      }
      throw err;
    }
  }

  async loadTree(hexId: string, view: IndexView = this.shared): Promise<Tree> {
    const bytes = await this.loadBlob(Buffer.from(hexId, 'hex'), BlobType.tree, view);
    try {
      return decodeTree(bytes);
    } catch (err) {
      throw wrapDecodeError(`tree ${hexId}`, err);
    }
  }

  // ---- small sealed JSON objects (plans) ---------------------------------------------------

  /** Stores `value` as sealed JSON under `<prefix>/<sha256 of the stored bytes>`; returns the key. */
  private async saveSealedJson(prefix: string, value: unknown): Promise<string> {
    const bytes = seal(this.keys.encryption, Buffer.from(JSON.stringify(value)), aadLabel(prefix));
    const key = `${prefix}/${idToHex(storedObjectId([bytes]))}`;
    await this.storage.put(key, [bytes]);
    return key;
  }

  private async loadSealedJson<T>(key: string): Promise<T> {
    const prefix = key.slice(0, key.indexOf('/'));
    const bytes = await this.storage.get(key);
    if (idToHex(storedObjectId([bytes])) !== key.slice(prefix.length + 1)) throw corrupt(key, 'does not match its name (damaged)');
    try {
      return JSON.parse(open(this.keys.encryption, bytes, aadLabel(prefix)).toString('utf8')) as T;
    } catch (err) {
      throw wrapDecodeError(key, err instanceof SyntaxError ? new FormatError('not valid JSON') : err);
    }
  }

  // ---- deletion plans (docs/design.md, "Garbage collection") --------------------------------

  async listDeletionPlans(): Promise<Array<{ key: string; plan: DeletionPlan }>> {
    const plans: Array<{ key: string; plan: DeletionPlan }> = [];
    for await (const { key } of this.storage.list('plans/')) {
      try {
        plans.push({ key, plan: await this.loadSealedJson<DeletionPlan>(key) });
      } catch (err) {
        // A plan swept (deleted) between the listing and the read is simply done.
        if (!(err instanceof TenderError && err.code === 'TENDER_NOT_FOUND')) throw err;
      }
    }
    return plans.sort((a, b) => a.plan.createdMs - b.plan.createdMs);
  }

  /** Hex IDs of every pack some pending plan will delete: writers must not come to depend on them. */
  async doomedPacks(): Promise<Set<string>> {
    const doomed = new Set<string>();
    for (const { plan } of await this.listDeletionPlans()) for (const p of plan.packs) doomed.add(p);
    return doomed;
  }

  async saveDeletionPlan(plan: DeletionPlan): Promise<string> {
    return this.saveSealedJson('plans', plan);
  }

  async deleteDeletionPlan(key: string): Promise<void> {
    if (!key.startsWith('plans/')) throw new Error(`not a deletion plan: ${key}`);
    await this.storage.delete(key);
  }

  // ---- sessions ----------------------------------------------------------------------------

  /** Registers a writer session; start it before refreshing the index (see sessions.ts). */
  startSession(): Promise<WriterSession> {
    return WriterSession.start(this);
  }

  listSessions(): Promise<SessionInfo[]> {
    return listSessions(this);
  }

  async removeSession(session: SessionInfo): Promise<void> {
    await this.storage.delete(sessionKey(session));
  }

  // ---- keys --------------------------------------------------------------------------------

  async addKey(password: string, kdf?: KdfParams): Promise<string> {
    return addKey(this.storage, this.config.repository, this.keys, password, this.identity, kdf);
  }

  /** Removes a key file; refuses the last one (the repository could never be opened again). */
  async removeKey(keyFile: string): Promise<void> {
    const all = await this.listKeyFiles();
    if (!all.includes(keyFile)) throw new TenderError('TENDER_NOT_FOUND', `no key file ${keyFile}`);
    if (all.length <= 1) throw new TenderError('TENDER_USAGE', `${keyFile} is the last key: removing it would lock the repository for good`);
    await this.storage.delete(keyFile);
  }

  async listKeyFiles(): Promise<string[]> {
    const keys: string[] = [];
    for await (const { key } of this.storage.list('keys/')) keys.push(key);
    return keys;
  }

  /** Whether a key file's bytes still match its name. */
  async keyFileIntact(key: string): Promise<boolean> {
    const bytes = await this.storage.get(key);
    return idToHex(storedObjectId([bytes])) === key.slice('keys/'.length);
  }

  // ---- snapshots -----------------------------------------------------------------------

  /** @internal Sessions store snapshots (WriterSession.commit), so none lands outside a live session. */
  async storeSnapshot(snapshot: Snapshot): Promise<string> {
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

  /** Forget a snapshot (its data stays until a prune finds it unused). */
  async deleteSnapshot(id: string): Promise<void> {
    await this.storage.delete(`snapshots/${id}`);
  }

  /** Ends the shared worker pool and closes the storage; open writers are closed first. */
  async close(): Promise<void> {
    for (const writer of [...this.writers]) await writer.close().catch(() => undefined);
    await this.codecExecutor?.close();
    await this.startingWorkers?.close();
    await this.storage.close();
  }
}

export function corrupt(object: string, problem: string, hint = 'run `tender check` to list all damage'): TenderError {
  return new TenderError('TENDER_CORRUPT', `${object} ${problem}`, { hint });
}

/** A blob that something names is not in the index (loadBlob; restore's chunk lists). */
export function blobNotIndexed(id: Uint8Array): TenderError {
  return new TenderError('TENDER_CORRUPT', `blob ${idToHex(id)} is not in the index`, {
    hint: 'run `tender check`; if packs are intact, `tender repair index` rebuilds the index',
  });
}

function wrapDecodeError(object: string, err: unknown): unknown {
  if (err instanceof DecryptError) return corrupt(object, 'does not decrypt (damaged, or from another repository)');
  if (err instanceof FormatError) return corrupt(object, `is malformed: ${err.message}`);
  return err;
}

export type { BlobEntry };
export type { IndexView } from './index/index-view.js';
export type { RepositoryWriter } from './writer.js';
