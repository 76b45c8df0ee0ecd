import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

/**
 * Authenticated encryption for everything tender stores: AES-256-GCM with a random 96-bit nonce.
 * Sealed form: nonce (12) ‖ ciphertext ‖ tag (16). The associated data binds a ciphertext to
 * its role (and for blobs to its ID), so a valid ciphertext cannot be moved to another place.
 */
export const nonceLength = 12;
export const tagLength = 16;
export const sealOverhead = nonceLength + tagLength;

export class DecryptError extends Error {
  constructor() {
    super('authentication failed');
    this.name = 'DecryptError';
  }
}

export function sealParts(key: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Buffer[] {
  const nonce = randomBytes(nonceLength);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  const body = cipher.update(plaintext);
  cipher.final();
  return [nonce, body, cipher.getAuthTag()];
}

export function seal(key: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Buffer {
  return Buffer.concat(sealParts(key, plaintext, aad));
}

/** Decrypt and authenticate; throws DecryptError on any tampering, truncation or wrong key. */
export function open(key: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Buffer {
  if (sealed.byteLength < sealOverhead) throw new DecryptError();
  const view = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  const decipher = createDecipheriv('aes-256-gcm', key, view.subarray(0, nonceLength));
  decipher.setAAD(aad);
  decipher.setAuthTag(view.subarray(view.length - tagLength));
  try {
    const plain = decipher.update(view.subarray(nonceLength, view.length - tagLength));
    decipher.final();
    return plain;
  } catch {
    throw new DecryptError();
  }
}

export const aadLabel = (label: string): Buffer => Buffer.from(`tender:${label}`, 'utf8');
