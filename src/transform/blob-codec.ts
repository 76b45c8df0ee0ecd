import { Compressor, Decompressor } from 'zstd-napi';
import { DecryptError, open, sealParts } from '../crypto/aead.js';
import { blobId } from '../repo/ids.js';
import { BlobFlag, blobTypeName } from '../repo/blob.js';
import type { MasterKeys } from './keys.js';

/**
 * The blob transform, the same on the main thread and in workers:
 *   store:   plaintext → ID = BLAKE3-keyed(plaintext) → zstd (kept only if it saves space) → AES-GCM
 *   load:    AES-GCM open → zstd decompress (if flagged) → check length and ID
 * The AAD of a blob is "tender:blob" ‖ type ‖ ID, so a sealed blob cannot pass for another.
 */
export interface SealedBlob {
  parts: Buffer[];
  storedLength: number;
  flags: number;
}

const aadPrefix = Buffer.from('tender:blob', 'utf8');

export function blobAad(type: number, id: Uint8Array): Buffer {
  const aad = Buffer.allocUnsafe(aadPrefix.length + 1 + id.byteLength);
  aadPrefix.copy(aad, 0);
  aad[aadPrefix.length] = type;
  aad.set(id, aadPrefix.length + 1);
  return aad;
}

export class BlobCodec {
  private compressor: Compressor | undefined;
  private readonly decompressor = new Decompressor();

  constructor(
    private readonly keys: MasterKeys,
    /** zstd level; 0 stores everything raw. */
    compressionLevel: number,
  ) {
    if (compressionLevel > 0) {
      this.compressor = new Compressor();
      this.compressor.setParameters({ compressionLevel });
    }
  }

  id(plaintext: Uint8Array): Buffer {
    return blobId(this.keys.blobId, plaintext);
  }

  seal(type: number, id: Uint8Array, plaintext: Uint8Array): SealedBlob {
    let payload: Uint8Array = plaintext;
    let flags = 0;
    if (this.compressor && plaintext.byteLength > 0) {
      const compressed = this.compressor.compress(asBuffer(plaintext));
      // Keep compression only when it saves at least 1/64: otherwise decompression is wasted work.
      if (compressed.length < plaintext.byteLength - (plaintext.byteLength >> 6)) {
        payload = compressed;
        flags |= BlobFlag.zstd;
      }
    }
    const parts = sealParts(this.keys.encryption, payload, blobAad(type, id));
    return { parts, storedLength: parts[0]!.length + parts[1]!.length + parts[2]!.length, flags };
  }

  /** Returns the verified plaintext, or throws BlobCorruptError saying what is wrong. */
  open(type: number, id: Uint8Array, flags: number, rawLength: number, sealed: Uint8Array): Buffer {
    let payload: Buffer;
    try {
      payload = open(this.keys.encryption, sealed, blobAad(type, id));
    } catch (err) {
      if (err instanceof DecryptError) throw new BlobCorruptError(type, id, 'does not decrypt (damaged or not this blob)');
      throw err;
    }
    let plaintext = payload;
    if (flags & BlobFlag.zstd) {
      try {
        plaintext = this.decompressor.decompress(payload);
      } catch {
        throw new BlobCorruptError(type, id, 'does not decompress');
      }
    }
    if (plaintext.length !== rawLength) {
      throw new BlobCorruptError(type, id, `has ${plaintext.length} bytes, the index says ${rawLength}`);
    }
    if (!this.id(plaintext).equals(id)) throw new BlobCorruptError(type, id, 'content does not match its ID');
    return plaintext;
  }
}

export class BlobCorruptError extends Error {
  constructor(
    readonly type: number,
    id: Uint8Array,
    problem: string,
  ) {
    super(`${blobTypeName(type)} blob ${Buffer.from(id).toString('hex')} ${problem}`);
    this.name = 'BlobCorruptError';
  }
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}
