import { Blake3Hasher } from '@napi-rs/blake-hash';

/** Keyed BLAKE3 of plaintext: the ID of a data or tree blob. Reveals nothing without the key. */
export function blobId(idKey: Uint8Array, data: Uint8Array): Buffer {
  const hasher = Blake3Hasher.newKeyed(Buffer.from(idKey.buffer, idKey.byteOffset, idKey.byteLength));
  hasher.update(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  return hasher.digestBuffer();
}
