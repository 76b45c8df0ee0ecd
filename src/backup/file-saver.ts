import { open } from 'node:fs/promises';
import type { BoundaryFinder, ChunkerParams } from './chunk/fastcdc.js';
import type { Slot, SlotPool } from './chunk/slot-pool.js';
import { BlobType } from '../repo/blob.js';
import { idToHex } from '../repo/ids.js';
import type { Repository } from '../repo/repository.js';
import { inlineContentLimit, listBlobCapacity } from '../repo/snapshot/tree.js';
import type { SealRequest } from '../workers/ops.js';
import type { CodecExecutor } from '../workers/pool.js';

/**
 * The file stage: read → chunk (this thread) → hash → dedup → compress+encrypt (workers) → pack.
 * A file is read into pooled slots; each slot's chunks go to the workers while the next slot is
 * read, so reading, hashing and sealing overlap. Memory is bounded by the slot pool, whatever
 * the file size.
 */
export interface FileContent {
  content?: string[];
  contentLists?: string[];
}

export interface SaveCounters {
  bytesRead: number;
  blobsAdded: number;
  bytesAdded: number;
  bytesStored: number;
}

export class FileSaver {
  private readonly inflight = new Set<string>();

  constructor(
    private readonly repo: Repository,
    private readonly executor: CodecExecutor,
    private readonly chunker: BoundaryFinder,
    private readonly params: ChunkerParams,
    private readonly slots: SlotPool,
    private readonly parallelism: number,
    readonly counters: SaveCounters,
    private readonly onBytes: (n: number) => void = () => {},
  ) {
    if (slots.slotSize < 2 * params.maxSize) throw new Error('slot size must be at least twice the maximum chunk size');
  }

  async save(path: string): Promise<FileContent> {
    const handle = await open(path, 'r');
    const content = new ContentBuilder(this.repo);
    let chain: Promise<void> = Promise.resolve();
    let failed: unknown;
    /** The slot this loop owns (not yet handed to processSlot); released in `finally` on errors. */
    let held: Slot | undefined;
    try {
      let slot = (held = await this.slots.acquire());
      let carry = 0;
      for (;;) {
        let end = carry;
        let eof = false;
        while (end < slot.view.length) {
          const { bytesRead } = await handle.read(slot.view, end, slot.view.length - end, null);
          if (bytesRead === 0) {
            eof = true;
            break;
          }
          end += bytesRead;
        }
        this.counters.bytesRead += end - carry;
        this.onBytes(end - carry);
        const spans: number[] = [];
        let start = 0;
        while (end - start >= this.params.maxSize || (eof && start < end)) {
          const length = this.chunker.cut(slot.view, start, end);
          spans.push(start, length);
          start += length;
        }
        const next = eof ? undefined : await this.slots.acquire();
        if (next) {
          next.view.set(slot.view.subarray(start, end), 0);
          carry = end - start;
        }
        const processed = this.processSlot(slot, Uint32Array.from(spans));
        processed.catch(() => undefined); // observed through `chain`; do not report it as unhandled
        held = next;
        // Keep chunk order: append each slot's IDs after the previous slot's.
        chain = chain.then(async () => content.add(await processed));
        chain.catch((err) => (failed ??= err));
        if (failed !== undefined) throw failed;
        if (!next) break;
        slot = next;
      }
      await chain;
      return await content.finish();
    } finally {
      if (held) this.slots.release(held);
      await handle.close();
      await chain.catch(() => undefined);
    }
  }

  /** Hash every chunk of the slot, seal the new ones, hand them to the repository; IDs in order. */
  private async processSlot(slot: Slot, spans: Uint32Array): Promise<Uint8Array> {
    let released = false;
    try {
      if (spans.length === 0) return new Uint8Array(0);
      const idGroups = await Promise.all(splitSpans(spans, this.parallelism).map((g) => this.executor.hash(slot.buffer, g)));
      const ids = concat(idGroups);
      const requests: SealRequest[] = [];
      for (let i = 0; i < spans.length / 2; i++) {
        const id = ids.subarray(i * 32, i * 32 + 32);
        if (this.repo.has(id)) continue;
        const hex = idToHex(id);
        if (this.inflight.has(hex)) continue;
        this.inflight.add(hex);
        requests.push({ type: BlobType.data, id, offset: spans[2 * i]!, length: spans[2 * i + 1]! });
      }
      const groups = splitArray(requests, this.parallelism);
      const sealedGroups = await Promise.all(groups.map((g) => this.executor.seal(slot.buffer, g)));
      this.slots.release(slot);
      released = true;
      let r = 0;
      for (const sealedGroup of sealedGroups) {
        for (const sealed of sealedGroup) {
          const request = requests[r++]!;
          const bytes = Buffer.from(sealed.bytes.buffer, sealed.bytes.byteOffset, sealed.bytes.byteLength);
          await this.repo.saveSealed(BlobType.data, request.id, request.length, {
            parts: [bytes],
            storedLength: bytes.length,
            flags: sealed.flags,
          });
          this.inflight.delete(idToHex(request.id));
          this.counters.blobsAdded++;
          this.counters.bytesAdded += request.length;
          this.counters.bytesStored += bytes.length;
        }
      }
      return ids;
    } finally {
      if (!released) this.slots.release(slot);
    }
  }
}

/** Builds a file's content reference, spilling long ID lists into list blobs as they fill. */
class ContentBuilder {
  private pending: Uint8Array[] = [];
  private pendingCount = 0;
  private readonly lists: string[] = [];

  constructor(private readonly repo: Repository) {}

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

function splitSpans(spans: Uint32Array, parts: number): Uint32Array[] {
  const chunks = spans.length / 2;
  const per = Math.ceil(chunks / Math.max(1, Math.min(parts, chunks)));
  const out: Uint32Array[] = [];
  for (let i = 0; i < chunks; i += per) out.push(spans.subarray(2 * i, 2 * Math.min(chunks, i + per)));
  return out;
}

function splitArray<T>(items: T[], parts: number): T[][] {
  if (items.length === 0) return [];
  const per = Math.ceil(items.length / Math.max(1, Math.min(parts, items.length)));
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += per) out.push(items.slice(i, i + per));
  return out;
}
