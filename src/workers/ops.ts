import { BlobCodec, type CodecTransforms } from '../transform/blob-codec.js';
import type { MasterKeys } from '../transform/keys.js';

/**
 * The CPU-heavy steps of the pipeline, as plain functions over byte spans. They run inside
 * worker threads (src/workers/worker.ts) or inline; both call exactly this code.
 */
/** Seal the plaintext at [offset, offset+length) of the source buffer into a reserved pack region. */
export interface SealRequest {
  type: number;
  id: Uint8Array;
  offset: number;
  length: number;
  target: SharedArrayBuffer;
  targetOffset: number;
  targetCapacity: number;
  /** Float element size of the chunk's tensor data (BlobCodec.sealInto), 0 or absent: none. */
  elementSize?: number;
  /**
   * A base for an XOR-delta (BlobCodec.sealInto): its ID; its plaintext (`length` bytes) is at
   * targetOffset, where the caller loaded it (the sealed blob then overwrites it).
   */
  base?: Uint8Array;
}

export interface SealedResult {
  storedLength: number;
  flags: number;
  /** Time this thread spent sealing it (statistics). */
  sealMs: number;
}

/**
 * Open the sealed blob at [offset, offset+storedLength) of the source buffer and write its
 * plaintext at targetOffset of `target` (or only verify it, without a target).
 */
export interface OpenRequest {
  type: number;
  id: Uint8Array;
  flags: number;
  rawLength: number;
  offset: number;
  storedLength: number;
  target?: SharedArrayBuffer;
  targetOffset?: number;
  /** A delta blob's base: its ID; its plaintext is in the target region (Repository.attachDeltaBases). */
  base?: Uint8Array;
}

/** The IDs of the chunks at (offset, length) pairs of the source buffer, 32 bytes each, in order. */
export interface HashedSpans {
  ids: Uint8Array;
  /** Time this thread spent hashing (statistics). */
  hashMs: number;
}

/** null when the blob is intact, else what is wrong with it. */
export type OpenResult = string | null;

export class CodecOps {
  readonly codec: BlobCodec;

  constructor(keys: MasterKeys, compressionLevel: number, transforms: CodecTransforms = {}) {
    this.codec = new BlobCodec(keys, compressionLevel, transforms);
  }

  seal(data: Uint8Array, requests: readonly SealRequest[]): SealedResult[] {
    return requests.map((r) => {
      const started = performance.now();
      const dst = new Uint8Array(r.target, r.targetOffset, r.targetCapacity);
      const base = r.base ? { id: r.base, plaintext: dst.subarray(0, r.length) } : undefined;
      const sealed = this.codec.sealInto(r.type, r.id, data.subarray(r.offset, r.offset + r.length), dst, r.elementSize, base);
      return { ...sealed, sealMs: performance.now() - started };
    });
  }

  hash(data: Uint8Array, spans: Uint32Array): HashedSpans {
    const started = performance.now();
    const ids = new Uint8Array(spans.length * 16);
    for (let i = 0; i < spans.length; i += 2) {
      const offset = spans[i]!;
      ids.set(this.codec.id(data.subarray(offset, offset + spans[i + 1]!)), i * 16);
    }
    return { ids, hashMs: performance.now() - started };
  }

  open(source: Uint8Array, requests: readonly OpenRequest[]): OpenResult[] {
    return requests.map((r) => {
      try {
        const sealed = source.subarray(r.offset, r.offset + r.storedLength);
        const dst = r.target ? new Uint8Array(r.target, r.targetOffset ?? 0, r.rawLength) : this.verifyScratch(r.rawLength);
        this.codec.openInto(r.type, r.id, r.flags, r.rawLength, sealed, dst, r.base ? { id: r.base, plaintext: dst } : undefined);
        return null;
      } catch (err) {
        return (err as Error).message;
      }
    });
  }

  private verifyBuffer = new Uint8Array(0);

  private verifyScratch(length: number): Uint8Array {
    if (this.verifyBuffer.length < length) this.verifyBuffer = new Uint8Array(length);
    return this.verifyBuffer.subarray(0, length);
  }
}
