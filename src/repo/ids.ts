import { createHash, randomBytes } from 'node:crypto';

/** Every ID in the repository is 32 bytes, written as 64 lowercase hex characters in keys and JSON. */
export const idLength = 32;

export function randomId(): Buffer {
  return randomBytes(idLength);
}

export function idToHex(id: Uint8Array): string {
  return Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('hex');
}

const hexIdPattern = /^[0-9a-f]{64}$/;

export function isHexId(s: string): boolean {
  return hexIdPattern.test(s);
}

export function hexToId(hex: string): Buffer {
  if (!isHexId(hex)) throw new Error(`not an ID: ${JSON.stringify(hex)}`);
  return Buffer.from(hex, 'hex');
}

/** SHA-256 of stored bytes: the name of index, snapshot and key files (verifiable without a key). */
export function storedObjectId(parts: readonly Uint8Array[]): Buffer {
  const hash = createHash('sha256');
  for (const p of parts) hash.update(p);
  return hash.digest();
}
