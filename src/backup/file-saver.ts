import { type BigIntStats, closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { ChunkerParams } from '../repo/chunker-params.js';
import type { BoundaryFinder } from './chunk/fastcdc.js';
import type { BufferPool, PooledBuffer as Slot } from '../util/buffer-pool.js';
import { BlobFlag, BlobType, transformOf } from '../repo/blob.js';
import { idToHex } from '../repo/ids.js';
import type { RepositoryWriter } from '../repo/repository.js';
import { inlineContentLimit, listBlobCapacity } from '../repo/snapshot/tree.js';
import { sealOverhead } from '../crypto/aead.js';
import { TenderError } from '../errors/errors.js';
import { throwIfCancelled } from '../util/operation.js';
import type { Reservation } from '../repo/pack/pack.js';
import type { CodecExecutor } from '../workers/pool.js';
import { cachingReads, type FileReadCache, type ReadCachePolicy } from './read-cache.js';
import { type FileHeaders, layoutOf, readFileHeaders } from '../checkpoint/layout.js';
import type { KindSummary } from '../repo/snapshot/snapshot.js';
import { TensorSegments, cutSegments } from './chunk/tensor-cuts.js';
import { TransformStats } from './transform-stats.js';
import type { DeltaBaseFinder } from './delta-bases.js';

/**
 * The file stage: read → chunk (this thread) → hash → dedup → compress+encrypt (workers) → pack.
 * A file is read into pooled slots; each slot's chunks go to the workers while the next slot is
 * read, so reading, hashing and sealing overlap. Memory is bounded by the slot pool, whatever
 * the file size. A checkpoint file (src/checkpoint/) is cut along its tensors (chunk/tensor-cuts.ts)
 * and its float chunks are sealed as byte planes where the repository allows them.
 */
export interface FileContent {
  content?: string[];
  contentLists?: string[];
}

/** What identifies one version of a file: a change to it changes at least one of these. */
export interface FileStamp {
  size: number;
  mtimeNs: string;
  ctimeNs: string;
  ino: number;
}

/** A file's completeness by its format (safetensors, torch zip, …): see src/checkpoint/. */
export type FileVerdict = { complete: true } | { complete: false; reason: string };

/**
 * Checks an open file after it was read and before its last fstat, so a clean read proves the
 * verdict is about the stored bytes. `wants`: whether a file of this name and first bytes (up to
 * 16, as read) may be of a format it knows; only then is `check` called (undefined: not one).
 * `headers`: the parse made for chunking when the file was opened; the last fstat shows whether
 * the file changed since, exactly as for the bytes read, so the verdict may rest on it.
 */
export interface FileInspector {
  wants(path: string, head: Uint8Array): boolean;
  check(fd: number, path: string, size: number, headers?: FileHeaders): Promise<FileVerdict | undefined>;
}

const headLength = 16;
/**
 * The check reads headers (the start; a zip's directory at the end): with cache-neutral reads
 * this much at each end of the file is inside the page-cache bracket. Reads elsewhere (a zip's
 * local headers of a huge archive) may stay cached.
 */
const inspectCacheSpan = 64 * 1024 * 1024;

export interface SaveOptions {
  /** A re-read: its bytes are not reported as progress. */
  reread?: boolean;
  /**
   * The file's stamp from before it was opened (the walk's lstat): stands for the fstat at open,
   * which is then not made. A change between the two shows as a change during the read.
   */
  before?: FileStamp;
  /** The file's content in the parent snapshot: where delta bases come from (delta-bases.ts). */
  parent?: FileContent;
}

/** A saved file: its content, the fd's stamps at open and after the last read, the bytes read. */
export interface SavedFile extends FileContent {
  before: FileStamp;
  after: FileStamp;
  bytes: number;
  verdict?: FileVerdict;
}

export function stampOf(stats: BigIntStats): FileStamp {
  return { size: Number(stats.size), mtimeNs: stats.mtimeNs.toString(), ctimeNs: stats.ctimeNs.toString(), ino: Number(stats.ino) };
}

export interface SaveCounters {
  bytesRead: number;
  blobsAdded: number;
  bytesAdded: number;
  bytesStored: number;
}

/** With a beforeRead hook, reads are this large at most, so a rate limit paces a large file smoothly and a pause is felt within one read. */
const pacedReadBytes = 1 << 20;

export class FileSaver {
  private readonly inflight = new Set<string>();
  /** Figures per kind of data and stage, for the snapshot summary. */
  readonly stats = new TransformStats();
  private readonly unknownKind = this.stats.kind('none', 'none');

  constructor(
    private readonly repo: RepositoryWriter,
    private readonly executor: CodecExecutor,
    private readonly chunker: BoundaryFinder,
    private readonly params: ChunkerParams,
    private readonly slots: BufferPool,
    private readonly parallelism: number,
    readonly counters: SaveCounters,
    private readonly onBytes: (n: number) => void = () => {},
    private readonly readCache: ReadCachePolicy = cachingReads,
    /** Cancel: reads stop at the next slot; what is being sealed ends first. */
    private readonly signal: AbortSignal = new AbortController().signal,
    /** Paid before each read (BackupHooks.beforeRead); reads are then at most pacedReadBytes each. */
    private readonly beforeRead?: (bytes: number, signal: AbortSignal) => Promise<void>,
    private readonly inspect?: FileInspector,
    private readonly deltaBases?: DeltaBaseFinder,
  ) {
    // Each filled slot must yield a chunk: the carried tail is < maxSize, so the slot must be larger.
    if (slots.bufferSize <= params.maxSize) throw new Error('slot size must exceed the maximum chunk size');
  }

  /**
   * Saves a file. Files no larger than the minimum chunk size (always a single chunk) are read
   * into a shared batch slot with direct calls and hashed and sealed together, so a tree of many
   * small files costs a few worker round trips per batch instead of several per file.
   */
  async save(path: string, size: number, options: SaveOptions = {}): Promise<SavedFile> {
    throwIfCancelled(this.signal);
    if (size <= this.params.minSize) {
      await this.paceRead(size);
      const small = await this.saveSmall(path, options);
      if (small) return small;
    }
    return this.saveLarge(path, size, options);
  }

  /** A re-read (the file changed while it was read) is not progress: its bytes were counted once. */
  private progressOf(options: SaveOptions): (n: number) => void {
    return options.reread ? () => {} : this.onBytes;
  }

  private batch: SmallFileBatch | undefined;

  /** Undefined when the file turned out larger than a batch allows (it grew): use saveLarge. */
  private async saveSmall(path: string, options: SaveOptions): Promise<SavedFile | undefined> {
    const limit = this.params.minSize;
    if (!this.batch || this.batch.used + limit + 1 > this.batch.slot.view.length) {
      this.flushBatch();
      const batch: SmallFileBatch = { slot: await this.slots.acquire(), used: 0, spans: [], waiters: [] };
      // Another file may have opened a batch while this one waited for a slot.
      if (this.batch && this.batch.used + limit + 1 <= this.batch.slot.view.length) this.slots.release(batch.slot);
      else {
        this.flushBatch();
        this.batch = batch;
        setImmediate(() => {
          if (this.batch === batch) this.flushBatch();
        });
      }
    }
    const batch = this.batch!;
    const at = batch.used;
    const fd = openSync(path, 'r');
    try {
      const before = options.before ?? stampOf(fstatSync(fd, { bigint: true }));
      let length = 0;
      const cache = this.readCache.open(fd);
      cache.beforeRead(0, limit + 1);
      const started = performance.now();
      // One byte more than the limit tells a file that grew since its lstat.
      for (let n = -1; n !== 0 && length <= limit; length += n) n = readSync(fd, batch.slot.view, at + length, limit + 1 - length, length);
      this.stats.stageMs.read += performance.now() - started;
      cache.afterRead(0, limit + 1);
      if (length > limit) return undefined;
      this.counters.bytesRead += length;
      this.progressOf(options)(length);
      let content: Promise<FileContent> = Promise.resolve({ content: [] });
      if (length > 0) {
        // The batch is updated before any await: other files go on filling it meanwhile.
        batch.used += length;
        const index = batch.spans.length / 2;
        batch.spans.push(at, length);
        content = new Promise((resolve, reject) => batch.waiters.push({ index, resolve, reject }));
        content.catch(() => undefined); // awaited below, after the inspection
      }
      const head = Buffer.from(batch.slot.view.subarray(at, at + Math.min(headLength, length)));
      const verdict = await this.inspectRead(fd, path, length, head, cache);
      const after = stampOf(fstatSync(fd, { bigint: true }));
      return { ...(await content), before, after, bytes: length, ...(verdict ? { verdict } : {}) };
    } finally {
      closeSync(fd);
    }
  }

  private async inspectRead(fd: number, path: string, size: number, head: Uint8Array, cache: FileReadCache, headers?: FileHeaders): Promise<FileVerdict | undefined> {
    if (!this.inspect?.wants(path, head)) return undefined;
    const headSpan = Math.min(size, inspectCacheSpan);
    const tailStart = Math.max(headSpan, size - inspectCacheSpan);
    cache.beforeRead(0, headSpan);
    if (tailStart < size) cache.beforeRead(tailStart, size - tailStart);
    try {
      return await this.inspect.check(fd, path, size, headers);
    } finally {
      cache.afterRead(0, headSpan);
      if (tailStart < size) cache.afterRead(tailStart, size - tailStart);
    }
  }

  private flushBatch(): void {
    const batch = this.batch;
    if (!batch) return;
    this.batch = undefined;
    if (batch.waiters.length === 0) {
      this.slots.release(batch.slot);
      return;
    }
    const chunks = batch.spans.length / 2;
    const kinds = new Array<KindSummary>(chunks).fill(this.unknownKind);
    this.processSlot(batch.slot, Uint32Array.from(batch.spans), new Uint8Array(chunks), kinds).then(
      (ids) => {
        for (const w of batch.waiters) w.resolve({ content: [idToHex(ids.subarray(w.index * 32, w.index * 32 + 32))] });
      },
      (err) => {
        for (const w of batch.waiters) w.reject(err);
      },
    );
  }

  private async saveLarge(path: string, size: number, options: SaveOptions): Promise<SavedFile> {
    const handle = await open(path, 'r');
    const onBytes = this.progressOf(options);
    const cache = this.readCache.open(handle.fd);
    const headers = await readFileHeaders(handle.fd, path, size).catch(async (err: unknown) => {
      await handle.close();
      throw err;
    });
    const layout = layoutOf(headers);
    // Delta blobs need a tensor's chunks at the same offsets in every version (tensor-cuts.ts).
    const segments = new TensorSegments(layout, this.params.minSize, this.deltaBases?.fixedCutSize(this.params));
    const bases = layout && this.deltaBases ? await this.deltaBases.forFile(options.parent).catch(() => undefined) : undefined;
    const layoutName = layout?.kind ?? 'none';
    const content = new ContentBuilder(this.repo);
    let chain: Promise<void> = Promise.resolve();
    let failed: unknown;
    /** Every slot handed to processSlot: all must end before this returns, even on errors. */
    const inProgress: Promise<Uint8Array>[] = [];
    /** The slot this loop owns (not yet handed to processSlot); released in `finally` on errors. */
    let held: Slot | undefined;
    try {
      const before = options.before ?? stampOf(await handle.stat({ bigint: true }));
      let slot = (held = await this.slots.acquire());
      let carry = 0;
      let position = 0;
      let head: Uint8Array | undefined;
      for (;;) {
        throwIfCancelled(this.signal);
        let end = carry;
        let eof = false;
        while (end < slot.view.length) {
          const wanted = Math.min(slot.view.length - end, this.beforeRead ? pacedReadBytes : Infinity);
          // Paid for what the file holds (its size at lstat); what a growing file adds, after.
          const paid = Math.min(wanted, Math.max(0, size - position));
          await this.paceRead(paid);
          cache.beforeRead(position, wanted);
          const started = performance.now();
          const { bytesRead } = await handle.read(slot.view, end, wanted, position);
          this.stats.stageMs.read += performance.now() - started;
          cache.afterRead(position, bytesRead);
          await this.paceRead(bytesRead - paid);
          if (bytesRead === 0) {
            eof = true;
            break;
          }
          end += bytesRead;
          position += bytesRead;
        }
        this.counters.bytesRead += end - carry;
        onBytes(end - carry);
        head ??= Buffer.from(slot.view.subarray(0, Math.min(headLength, end)));
        const spans: number[] = [];
        const cutStarted = performance.now();
        // The unfinished chunk after the last final cut is carried into the next slot.
        const base = position - end;
        const start = cutSegments(this.chunker, this.params.maxSize, segments, slot.view, base, 0, end, eof, spans);
        const chunks = spans.length / 2;
        const elementSizes = new Uint8Array(chunks);
        const kinds = new Array<KindSummary>(chunks);
        const deltaBases: Array<Uint8Array | undefined> = [];
        for (let i = 0; i < chunks; i++) {
          const chunkStart = base + spans[2 * i]!;
          const kind = segments.describe(chunkStart, chunkStart + spans[2 * i + 1]!);
          elementSizes[i] = kind.elementSize;
          kinds[i] = this.stats.kind(layoutName, kind.dtype);
          if (bases && kind.elementSize > 0) deltaBases[i] = bases.baseFor(chunkStart, spans[2 * i + 1]!);
        }
        this.stats.stageMs.chunk += performance.now() - cutStarted;
        const next = eof ? undefined : await this.slots.acquire();
        if (next) {
          // Buffer.copy is a memmove; TypedArray.set on shared memory copies element by element.
          slot.bytes.copy(next.bytes, 0, start, end);
          carry = end - start;
        }
        const processed = this.processSlot(slot, Uint32Array.from(spans), elementSizes, kinds, deltaBases);
        processed.catch(() => undefined); // observed through `chain`; do not report it as unhandled
        inProgress.push(processed);
        held = next;
        // Keep chunk order: append each slot's IDs after the previous slot's.
        chain = chain.then(async () => content.add(await processed));
        chain.catch((err) => (failed ??= err));
        if (failed !== undefined) throw failed;
        if (!next) break;
        slot = next;
      }
      await chain;
      const verdict = await this.inspectRead(handle.fd, path, position, head!, cache, headers);
      const after = stampOf(await handle.stat({ bigint: true }));
      return { ...(await content.finish()), before, after, bytes: position, ...(verdict ? { verdict } : {}) };
    } finally {
      if (held) this.slots.release(held);
      await handle.close();
      // No chunk of this file may still be on its way into a pack once save() has returned:
      // a later flush and snapshot must see every blob that was counted as present.
      await Promise.allSettled(inProgress);
      await chain.catch(() => undefined);
    }
  }

  /** Waits for BackupHooks.beforeRead; a cancel while waiting ends the backup as a cancel, not a file error. */
  private async paceRead(bytes: number): Promise<void> {
    if (!this.beforeRead || bytes <= 0) return;
    try {
      await this.beforeRead(bytes, this.signal);
    } catch (err) {
      throwIfCancelled(this.signal);
      throw err;
    }
  }

  /**
   * Hash every chunk of the slot (here: dedup needs the IDs at once), then for each new chunk
   * reserve room in a pack and have the workers seal the new chunks straight into their rooms,
   * a few messages per slot. Resolves with the slot's chunk IDs in order.
   */
  private async processSlot(
    slot: Slot,
    spans: Uint32Array,
    elementSizes: Uint8Array,
    kinds: readonly KindSummary[],
    deltaBases: ReadonlyArray<Uint8Array | undefined> = [],
  ): Promise<Uint8Array> {
    const sealing: Promise<void>[] = [];
    /** Reserved and not yet handed to the workers: abandoned if this slot fails. */
    let reserved: PendingSeal[] = [];
    try {
      const chunks = spans.length / 2;
      const ids = await this.hashSlot(slot, spans);
      for (let i = 0; i < chunks; i++) {
        const offset = spans[2 * i]!;
        const length = spans[2 * i + 1]!;
        const id = ids.subarray(i * 32, i * 32 + 32);
        const kind = kinds[i]!;
        kind.bytesIn += length;
        if (this.repo.has(id)) {
          kind.bytesDeduplicated += length;
          continue;
        }
        const hex = idToHex(id);
        if (this.inflight.has(hex)) {
          kind.bytesDeduplicated += length;
          continue;
        }
        this.inflight.add(hex);
        let r: Reservation | undefined;
        try {
          r = this.repo.tryReserve(BlobType.data, length + sealOverhead);
          if (!r) {
            // Dispatch what is reserved before waiting: the pack buffers this wait needs are
            // freed only when the regions reserved in them are sealed and committed.
            sealing.push(...this.dispatch(slot, reserved));
            reserved = [];
            r = await this.repo.reserve(BlobType.data, length + sealOverhead);
          }
        } catch (err) {
          this.inflight.delete(hex);
          throw err;
        }
        reserved.push({ id, hex, offset, length, r, elementSize: elementSizes[i]!, kind, base: deltaBases[i] });
      }
      sealing.push(...this.dispatch(slot, reserved));
      reserved = [];
      await Promise.all(sealing);
      return ids;
    } catch (err) {
      // A region left reserved would keep its pack from ever being stored, and the pack's
      // buffer from returning to the pool that every later operation draws from.
      for (const p of reserved) {
        this.repo.abandon(p.r);
        this.inflight.delete(p.hex);
      }
      reserved = [];
      // Other files may already count these chunks as stored (deduplicated against them):
      // a failure here must end the whole backup, never just skip this file.
      throw err instanceof TenderError ? err : new TenderError('TENDER_INTERNAL', `storing chunks failed: ${(err as Error).message}`, { cause: err });
    } finally {
      // Workers read from the slot until every seal has ended, failed or not.
      await Promise.allSettled(sealing);
      this.slots.release(slot);
    }
  }

  /** The slot's chunk IDs, hashed by the workers in one message each (runs of about equal bytes). */
  private async hashSlot(slot: Slot, spans: Uint32Array): Promise<Uint8Array> {
    const chunks = spans.length / 2;
    const ids = new Uint8Array(chunks * 32);
    const runs = splitByBytes(chunks, (i) => spans[2 * i + 1]!, this.parallelism);
    await Promise.all(
      runs.map(async ([from, to]) => {
        const { ids: hashed, hashMs } = await this.executor.hash(slot.buffer, spans.subarray(2 * from, 2 * to));
        ids.set(hashed, from * 32);
        this.stats.stageMs.hash += hashMs;
      }),
    );
    return ids;
  }

  /** Seals reserved chunks in one message per worker, split into runs of about equal bytes. */
  private dispatch(slot: Slot, reserved: PendingSeal[]): Promise<void>[] {
    return splitByBytes(reserved.length, (i) => reserved[i]!.length, this.parallelism).map(([from, to]) => this.sealGroup(slot, reserved.slice(from, to)));
  }

  private async sealGroup(slot: Slot, group: PendingSeal[]): Promise<void> {
    let committed = 0;
    try {
      await this.loadDeltaBases(group);
      const sealed = await this.executor.seal(
        slot.buffer,
        group.map((p) => ({
          type: BlobType.data,
          id: p.id,
          offset: p.offset,
          length: p.length,
          target: p.r.buffer,
          targetOffset: p.r.offset,
          targetCapacity: p.r.capacity,
          elementSize: p.elementSize,
          ...(p.base ? { base: p.base } : {}),
        })),
      );
      for (const [i, p] of group.entries()) {
        const { storedLength, flags, sealMs } = sealed[i]!;
        this.repo.commit(p.r, BlobType.data, p.id, p.length, storedLength, flags, flags & BlobFlag.delta ? p.base : undefined);
        committed++;
        this.counters.blobsAdded++;
        this.counters.bytesAdded += p.length;
        this.counters.bytesStored += storedLength;
        const figures = p.kind.transforms[transformOf(flags)];
        figures.blobs++;
        figures.bytes += p.length;
        figures.stored += storedLength;
        figures.sealMs += sealMs;
        this.stats.stageMs.seal += sealMs;
      }
    } catch (err) {
      for (const p of group.slice(committed)) this.repo.abandon(p.r);
      throw err;
    } finally {
      for (const p of group) this.inflight.delete(p.hex);
    }
  }

  /**
   * Loads each base into the room reserved for its chunk (SealRequest.base). A base that cannot
   * be read (a damaged pack: `tender check` reports it) costs only the delta: the chunk is
   * stored whole, so the backup is not failed by an older snapshot's damage.
   */
  private async loadDeltaBases(group: PendingSeal[]): Promise<void> {
    await Promise.all(
      group.map(async (p) => {
        if (p.base) await this.deltaBases!.loadInto(p.base, p.length, p.r.buffer, p.r.offset).catch(() => (p.base = undefined));
      }),
    );
  }
}

/** [from, to) index runs of `count` items, in order, each of about 1/parts of their total bytes. */
function splitByBytes(count: number, bytesOf: (i: number) => number, parts: number): Array<[number, number]> {
  let total = 0;
  for (let i = 0; i < count; i++) total += bytesOf(i);
  const share = total / Math.max(1, parts);
  const runs: Array<[number, number]> = [];
  let from = 0;
  let runBytes = 0;
  for (let i = 0; i < count; i++) {
    runBytes += bytesOf(i);
    if (runBytes >= share) {
      runs.push([from, i + 1]);
      from = i + 1;
      runBytes = 0;
    }
  }
  if (from < count) runs.push([from, count]);
  return runs;
}

/** A new chunk with its room in a pack, waiting to be sealed by a worker. */
interface PendingSeal {
  id: Uint8Array;
  hex: string;
  offset: number;
  length: number;
  r: Reservation;
  /** Float element size for byte planes (0: none). */
  elementSize: number;
  kind: KindSummary;
  /** The base for an XOR-delta (delta-bases.ts), if there is one. */
  base: Uint8Array | undefined;
}

interface SmallFileBatch {
  slot: Slot;
  used: number;
  spans: number[];
  waiters: Array<{ index: number; resolve: (content: FileContent) => void; reject: (err: unknown) => void }>;
}

/** Builds a file's content reference, spilling long ID lists into list blobs as they fill. */
class ContentBuilder {
  private pending: Uint8Array[] = [];
  private pendingCount = 0;
  private readonly lists: string[] = [];

  constructor(private readonly repo: RepositoryWriter) {}

  async add(ids: Uint8Array): Promise<void> {
    if (ids.length === 0) return;
    this.pending.push(ids);
    this.pendingCount += ids.length / 32;
    while (this.pendingCount >= listBlobCapacity) await this.spill(listBlobCapacity);
  }

  private async spill(count: number): Promise<void> {
    const all = concat(this.pending);
    const list = Buffer.from(all.subarray(0, count * 32));
    const rest = all.subarray(count * 32);
    this.pending = rest.length > 0 ? [rest] : [];
    this.pendingCount -= count;
    this.lists.push(idToHex(await this.repo.saveBlob(BlobType.list, list)));
  }

  async finish(): Promise<FileContent> {
    if (this.lists.length === 0 && this.pendingCount <= inlineContentLimit) {
      const all = concat(this.pending);
      const content: string[] = [];
      for (let i = 0; i < all.length; i += 32) content.push(idToHex(all.subarray(i, i + 32)));
      return { content };
    }
    if (this.pendingCount > 0) await this.spill(this.pendingCount);
    return { contentLists: this.lists };
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  return Buffer.concat(parts);
}
