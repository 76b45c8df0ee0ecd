import { BlobCodec } from '../transform/blob-codec.js';
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
}

export interface SealedResult {
  storedLength: number;
  flags: number;
}

export interface OpenRequest {
  type: number;
  id: Uint8Array;
  flags: number;
  rawLength: number;
  sealed: Uint8Array;
}

export type OpenResult = { plain: Uint8Array } | { error: string };

export class CodecOps {
  readonly codec: BlobCodec;

  constructor(keys: MasterKeys, compressionLevel: number) {
    this.codec = new BlobCodec(keys, compressionLevel);
  }

  /** IDs of the spans [offset, length, offset, length, ...] of `data`, 32 bytes each, concatenated. */
  hash(data: Uint8Array, spans: Uint32Array): Uint8Array {
    const out = new Uint8Array((spans.length / 2) * 32);
    for (let i = 0; i < spans.length; i += 2) {
      out.set(this.codec.id(data.subarray(spans[i]!, spans[i]! + spans[i + 1]!)), (i / 2) * 32);
    }
    return out;
  }

  seal(data: Uint8Array, requests: readonly SealRequest[]): SealedResult[] {
    return requests.map((r) =>
      this.codec.sealInto(r.type, r.id, data.subarray(r.offset, r.offset + r.length), new Uint8Array(r.target, r.targetOffset, r.targetCapacity)),
    );
  }

  open(requests: readonly OpenRequest[]): OpenResult[] {
    return requests.map((r) => {
      try {
        const plain = this.codec.open(r.type, r.id, r.flags, r.rawLength, r.sealed);
        return { plain: ownsMemory(plain) ? plain : ownedCopy(plain) };
      } catch (err) {
        return { error: (err as Error).message };
      }
    });
  }
}

/** Whether the view covers its whole ArrayBuffer, so the buffer can be transferred to another thread. */
export function ownsMemory(view: Uint8Array): boolean {
  return view.byteOffset === 0 && view.byteLength === view.buffer.byteLength && !(view.buffer instanceof SharedArrayBuffer);
}

/** A copy that owns its memory (small buffers come from Node's shared pool and cannot be transferred). */
function ownedCopy(view: Uint8Array): Uint8Array {
  return new Uint8Array(view);
}
