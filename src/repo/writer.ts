import { sealOverhead } from '../crypto/aead.js';
import type { BlobCodec } from '../transform/blob-codec.js';
import type { MasterKeys } from '../transform/keys.js';
import { type BufferPool, type PooledBuffer, sharedBuffer } from '../util/buffer-pool.js';
import { BlobType } from './blob.js';
import { idLength, idToHex } from './ids.js';
import { IdSet } from './index/id-set.js';
import type { BlobEntryList, BlobEntries } from './blob-entries.js';
import type { IndexFile, IndexedPack } from './index/index-file.js';
import type { IndexView } from './index/index-view.js';
import { PackBuilder, type Reservation } from './pack/pack.js';
import type { Tree } from './snapshot/tree.js';
import { encodeTree } from './snapshot/tree.js';

/** What a writer needs of the repository it writes into (the Repository, narrowed). */
export interface WriterRepository {
  readonly codec: BlobCodec;
  readonly keys: MasterKeys;
  readonly index: IndexView;
  has(id: Uint8Array): boolean;
  hasHex(hex: string): boolean;
  storePack(key: string, parts: readonly Uint8Array[], partsReleased: () => void): Promise<void>;
  saveIndexFile(file: IndexFile<BlobEntries>): Promise<string>;
  withIndexLock<T>(fn: () => Promise<T>): Promise<T>;
}

export interface WriterOptions {
  /** Write an index file after this many packs are stored, so a crashed run keeps its work. */
  packsPerIndex?: number;
}

/** An index file is written once this many blob entries wait (about 3 MiB of index file). */
const blobsPerIndex = 65536;

/**
 * One operation's writes into a shared Repository (kopia's RepositoryWriter): its open packs,
 * its uploads, its index entries waiting to be written, and its first failure. Each backup, prune
 * or repair opens its own, so one writer's failed upload never fails another's; the pack buffers
 * come from the repository's shared pools, so all writers together stay inside one memory budget.
 *
 * Write order (docs/design.md, "Write order"): a pack is stored before any index lists it; an
 * index is stored before any snapshot relies on it.
 */
export class RepositoryWriter {
  private readonly openPacks = new Map<BlobType, PackBuilder>();
  private readonly uploads = new Set<Promise<void>>();
  /** Packs stored and added to the shared index whose index file is not written yet. */
  private pendingIndex: IndexedPack<BlobEntryList>[] = [];
  private pendingIndexBlobs = 0;
  private uploadError: unknown;
  private readonly packsPerIndex: number;
  /** Committed blobs whose pack is not stored yet (they count as present for dedup): up to a few packs' worth. */
  private readonly unindexed = new IdSet();
  private readonly hexScratch = Buffer.alloc(idLength);
  private closed = false;
  private storeMsTotal = 0;

  /** Use Repository.openWriter. */
  constructor(
    private readonly repo: WriterRepository,
    private readonly pools: { data: BufferPool; metadata: BufferPool },
    options: WriterOptions,
    private readonly onClose: (writer: RepositoryWriter) => void,
  ) {
    this.packsPerIndex = options.packsPerIndex ?? 32;
  }

  get codec(): BlobCodec {
    return this.repo.codec;
  }

  /** Stored, or committed by this writer: either way a later reference to it is safe. */
  has(id: Uint8Array): boolean {
    return this.repo.has(id) || this.unindexed.has(id);
  }

  hasHex(hex: string): boolean {
    if (this.repo.hasHex(hex)) return true;
    return this.unindexed.size > 0 && hex.length === 2 * idLength && this.hexScratch.write(hex, 'hex') === idLength && this.unindexed.has(this.hexScratch);
  }

  /** Milliseconds spent storing packs, summed over the concurrent uploads (statistics). */
  get storeMs(): number {
    return this.storeMsTotal;
  }

  /** Packs this writer stored whose index file is not written yet (an index refresh keeps them). */
  get packsAwaitingIndex(): readonly IndexedPack<BlobEntries>[] {
    return this.pendingIndex;
  }

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
      const pool = this.poolFor(type);
      const buffer = capacity <= pool.bufferSize ? await pool.acquire() : sharedBuffer(capacity);
      // Failed or closed while this one waited, or another caller opened a pack for this type
      // meanwhile: the buffer goes back (the pools are shared by every writer of the process).
      if (this.uploadError !== undefined || this.closed || this.openPacks.get(type)) {
        release(buffer);
        this.throwIfFailed();
        continue;
      }
      this.openPacks.set(type, new PackBuilder(buffer));
    }
  }

  /** reserve() without waiting: undefined when it would have to wait for a pack buffer. */
  tryReserve(type: BlobType, capacity: number): Reservation | undefined {
    this.throwIfFailed();
    const open = this.openPacks.get(type);
    const reservation = open?.reserve(capacity);
    const pool = this.poolFor(type);
    if (reservation || capacity > pool.bufferSize) return reservation;
    const buffer = pool.tryAcquire();
    if (!buffer) return undefined;
    if (open) this.closePack(type, open);
    const pack = new PackBuilder(buffer);
    this.openPacks.set(type, pack);
    return pack.reserve(capacity);
  }

  /**
   * Records the sealed blob written into `r`. The blob counts as stored (`has`) from now on.
   * `base`: a delta blob's base (given exactly when flags has BlobFlag.delta).
   */
  commit(r: Reservation, type: BlobType, id: Uint8Array, rawLength: number, storedLength: number, flags: number, base?: Uint8Array): void {
    r.pack.commit(r, id, type, flags, rawLength, storedLength, base);
    this.unindexed.add(id);
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
  async saveSealed(type: BlobType, id: Uint8Array, rawLength: number, sealed: Uint8Array, flags: number, base?: Uint8Array): Promise<void> {
    const r = await this.reserve(type, sealed.length);
    new Uint8Array(r.buffer, r.offset, sealed.length).set(sealed);
    this.commit(r, type, id, rawLength, sealed.length, flags, base);
  }

  async saveTree(tree: Tree): Promise<string> {
    return idToHex(await this.saveBlob(BlobType.tree, encodeTree(tree)));
  }

  private closePack(type: BlobType, pack: PackBuilder): void {
    if (this.openPacks.get(type) === pack) this.openPacks.delete(type);
    pack.closed = true;
    if (pack.complete) this.startUpload(pack);
  }

  private poolFor(type: BlobType): BufferPool {
    return type === BlobType.data ? this.pools.data : this.pools.metadata;
  }

  /** Stores a complete pack; its buffer returns to the pool when the upload ends. */
  private startUpload(pack: PackBuilder): void {
    if (pack.isEmpty) {
      release(pack.buffer);
      return;
    }
    const { key, parts, size, entries } = pack.finish(this.repo.keys.encryption);
    let released = false;
    const releaseOnce = () => {
      if (!released) release(pack.buffer);
      released = true;
    };
    const upload = (async () => {
      const started = performance.now();
      try {
        await this.repo.storePack(key, parts, releaseOnce);
      } finally {
        releaseOnce();
        this.storeMsTotal += performance.now() - started;
      }
      // Synchronous from here to the push: an index refresh sees these entries either in the
      // view it replaces (and then in packsAwaitingIndex) or in the one it installs.
      this.repo.index.addPack(pack.id, size, entries);
      for (let i = 0; i < entries.length; i++) this.unindexed.delete(entries.idAt(i));
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

  private throwIfFailed(): void {
    if (this.uploadError !== undefined) throw this.uploadError;
    if (this.closed) throw new Error('write after the writer was closed');
  }

  private async writePendingIndex(): Promise<void> {
    await this.repo.withIndexLock(async () => {
      if (this.pendingIndex.length === 0) return;
      // A copy: uploads that end while the file is saved push onto pendingIndex, and stay there.
      const packs = this.pendingIndex.slice();
      await this.repo.saveIndexFile({ superseded: [], packs });
      // Only now: until the file is stored, a refresh must find these packs here.
      this.pendingIndex = this.pendingIndex.slice(packs.length);
      this.pendingIndexBlobs = 0;
      for (const p of this.pendingIndex) this.pendingIndexBlobs += p.blobs.length;
    });
  }

  /**
   * After a failure or a cancel: stores the open packs, waits for the uploads under way and
   * indexes the packs that were stored, so the next run deduplicates against them instead of
   * uploading them again. A pack still waiting for a seal under way is stored (and its buffer
   * returned) when that seal ends. Best effort: errors here are not reported over the original one.
   */
  async indexStoredPacks(): Promise<void> {
    for (const [type, pack] of [...this.openPacks]) this.closePack(type, pack);
    while (this.uploads.size > 0) await Promise.allSettled([...this.uploads]);
    await this.writePendingIndex().catch(() => undefined);
  }

  /** Stores every open pack, waits for all uploads, and writes the index for them. */
  async flush(): Promise<void> {
    for (const [type, pack] of [...this.openPacks]) this.closePack(type, pack);
    while (this.uploads.size > 0) await Promise.race(this.uploads);
    this.throwIfFailed();
    if (this.unindexed.size > 0) throw new Error(`flush: ${this.unindexed.size} committed blobs are in no stored pack`);
    await this.writePendingIndex();
  }

  /** Ends this writer: open packs are dropped (flush first to keep them); its buffers return. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.indexStoredPacks();
    this.closed = true;
    this.onClose(this);
  }
}

function release(buffer: PooledBuffer): void {
  buffer.pool?.release(buffer);
}
