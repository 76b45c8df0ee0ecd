import { BlobCodec } from '../transform/blob-codec.js';
import type { MasterKeys } from '../transform/keys.js';

/**
 * The CPU-heavy steps of the pipeline, as plain functions over byte spans. They run inside
 * worker threads (src/workers/worker.ts) or inline; both call exactly this code.
 */
export interface SealRequest {
  type: number;
  id: Uint8Array;
  offset: number;
  length: number;
}

export interface SealedResult {
  /** nonce ‖ ciphertext ‖ tag in one buffer that owns its memory (transferable). */
  bytes: Uint8Array;
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
    return requests.map((r) => {
      const sealed = this.codec.seal(r.type, r.id, data.subarray(r.offset, r.offset + r.length));
      const bytes = new Uint8Array(new ArrayBuffer(sealed.storedLength));
      let at = 0;
      for (const part of sealed.parts) {
        bytes.set(part, at);
        at += part.length;
      }
      return { bytes, flags: sealed.flags };
    });
  }

  open(requests: readonly OpenRequest[]): OpenResult[] {
    return requests.map((r) => {
      try {
        const plain = this.codec.open(r.type, r.id, r.flags, r.rawLength, r.sealed);
        // Copy out of Node's buffer pool only when the result shares an ArrayBuffer, so it can be transferred.
        return { plain: plain.byteLength === plain.buffer.byteLength ? plain : new Uint8Array(plain) };
      } catch (err) {
        return { error: (err as Error).message };
      }
    });
  }
}
