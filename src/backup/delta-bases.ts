import { BlobFlag, BlobType } from '../repo/blob.js';
import type { ChunkerParams } from '../repo/chunker-params.js';
import type { Repository } from '../repo/repository.js';
import { type ChunkIndex, type FileChunk, type FileContent, fileChunks } from '../repo/snapshot/file-chunks.js';

/**
 * Bases for delta blobs (docs/design.md, "Delta blobs"): a new float chunk of a file is stored
 * as an XOR-delta against the chunk at the same offset, of the same length, in the parent
 * snapshot's version of the file (tensor-aligned chunking keeps offsets when the headers do not
 * move). The chain is one deep: when that chunk is itself a delta, its base is used instead, so a
 * base is always a data blob stored whole, and restore reads at most one more blob per chunk.
 * Only blobs in the repository's shared index qualify: it leaves out packs a prune has doomed.
 */
export class DeltaBaseFinder {
  private readonly index: ChunkIndex;

  constructor(private readonly repo: Repository) {
    this.index = { lookup: (id) => repo.lookup(id), loadList: (id) => repo.loadBlob(id, BlobType.list) };
  }

  /** Whether the repository stores delta blobs. */
  get enabled(): boolean {
    return this.repo.codecTransforms.delta === true;
  }

  /**
   * Where deltas are stored, checkpoint files are cut along their layout (TensorSegments'
   * fixedFloatChunk): every avgSize bytes, where a chunk of avgSize + minSize stays under maxSize.
   */
  fixedCutSize(params: ChunkerParams): number | undefined {
    return this.enabled && params.avgSize + params.minSize <= params.maxSize ? params.avgSize : undefined;
  }

  /** The parent version's chunks by offset, or undefined where no base can be had. */
  async forFile(parent: FileContent | undefined): Promise<FileBases | undefined> {
    if (!this.enabled || !parent) return undefined;
    const chunks = await fileChunks(parent, this.index, () => undefined);
    return chunks && new FileBases(this.repo, chunks);
  }

  /** Loads the base's plaintext into the region reserved for the new chunk (see SealRequest.base). */
  async loadInto(base: Uint8Array, length: number, target: SharedArrayBuffer, targetOffset: number): Promise<void> {
    await this.repo.loadWholeBlobInto(base, length, target, targetOffset);
  }
}

/** One file's parent chunks, in file order. */
export class FileBases {
  constructor(
    private readonly repo: Repository,
    private readonly chunks: readonly FileChunk[],
  ) {}

  /** The base for a new chunk at [offset, offset + length), or undefined when there is none. */
  baseFor(offset: number, length: number): Uint8Array | undefined {
    let lo = 0;
    let hi = this.chunks.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const chunk = this.chunks[mid]!;
      if (chunk.fileOffset === offset) return this.usable(chunk.id, length);
      if (chunk.fileOffset < offset) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  /** Looked up again: the shared index may have been refreshed since (leaving out newly doomed packs). */
  private usable(chunk: Uint8Array, length: number): Uint8Array | undefined {
    const loc = this.repo.lookup(chunk);
    if (!loc || loc.type !== BlobType.data || loc.rawLength !== length) return undefined;
    if (!(loc.flags & BlobFlag.delta)) return chunk;
    const base = this.repo.lookup(loc.base!);
    return base && base.type === BlobType.data && !(base.flags & BlobFlag.delta) && base.rawLength === length ? loc.base : undefined;
  }
}
