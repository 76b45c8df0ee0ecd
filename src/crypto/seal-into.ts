import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { type NativeAddon, loadNative, nativeUnavailableReason } from '../util/native.js';
import { DecryptError, nonceLength, sealOverhead, tagLength } from './aead.js';

/**
 * Sealing into caller-provided memory: the byte format of seal()/open() in aead.ts
 * (nonce[12] ‖ AES-256-GCM ciphertext ‖ tag[16], fresh random nonce, caller-given AAD), written
 * straight into a region of a pack buffer (an ArrayBuffer or SharedArrayBuffer view) instead of
 * into new Buffers. With the native addon (native/src/seal.cc, OpenSSL from the node process, one
 * cipher context per thread) a call allocates nothing; without it (addon not built, built without
 * OpenSSL, or TENDER_NATIVE=0) node:crypto is used, which is correct but allocates like seal().
 *
 * Rules shared by both paths:
 * - key must be 32 bytes (RangeError otherwise);
 * - dst is written from its offset 0 (a subarray selects the region);
 * - key, aad and the input must not overlap the written part of dst (RangeError): no in-place use;
 * - openInto throws DecryptError on a sealed input shorter than 28 bytes or one that fails
 *   authentication (wrong key or AAD, any changed byte). The native path has then overwritten
 *   dst[0, sealed.length - 28) with zeros (GCM decrypts before the tag can be checked; the bytes
 *   are wiped so unauthenticated plaintext never escapes): treat that region as clobbered.
 *   Nothing outside it is written.
 */

/** The addon's AEAD functions (native/src/addon.cc); present only when the addon can use OpenSSL. */
interface SealAddon {
  sealInto?(key: Uint8Array, aad: Uint8Array, src: Uint8Array, dst: Uint8Array): number;
  openInto?(key: Uint8Array, aad: Uint8Array, sealed: Uint8Array, dst: Uint8Array): number;
  /** Why sealInto/openInto are missing (addon built without OpenSSL, or node lacks its symbols). */
  sealUnavailable?: string;
}

type NativeSeal = Required<Pick<SealAddon, 'sealInto' | 'openInto'>>;

function pickNative(): { native: NativeSeal | undefined; reason: string | undefined } {
  const addon = loadNative() as (NativeAddon & SealAddon) | undefined;
  if (!addon) return { native: undefined, reason: nativeUnavailableReason() ?? 'native addon unavailable' };
  if (typeof addon.sealInto !== 'function' || typeof addon.openInto !== 'function') {
    return {
      native: undefined,
      reason: addon.sealUnavailable ?? 'the native addon has no sealInto/openInto (stale build: run npm run build:native)',
    };
  }
  return { native: { sealInto: addon.sealInto, openInto: addon.openInto }, reason: undefined };
}

const picked = pickNative();
const native = picked.native;

/** True when sealInto/openInto run in the native addon (zero allocations per call). */
export const sealIntoIsNative: boolean = native !== undefined;

/** Why the node:crypto fallback is in use (undefined when sealIntoIsNative). */
export const sealIntoUnavailableReason: string | undefined = picked.reason;

const authFailed = 'authentication failed';

/**
 * Seals src (with aad) into dst[0, src.length + 28) and returns src.length + 28. RangeError when
 * dst is too small, key is not 32 bytes, or key/aad/src overlap that part of dst.
 */
export function sealInto(key: Uint8Array, aad: Uint8Array, src: Uint8Array, dst: Uint8Array): number {
  return native ? native.sealInto(key, aad, src, dst) : sealIntoFallback(key, aad, src, dst);
}

/**
 * Opens sealed (with aad) into dst[0, sealed.length - 28) and returns sealed.length - 28.
 * DecryptError on truncation or failed authentication (see the module comment for what dst then
 * holds); RangeError when dst is too small, key is not 32 bytes, or key/aad/sealed overlap that
 * part of dst.
 */
export function openInto(key: Uint8Array, aad: Uint8Array, sealed: Uint8Array, dst: Uint8Array): number {
  if (!native) return openIntoFallback(key, aad, sealed, dst);
  try {
    return native.openInto(key, aad, sealed, dst);
  } catch (err) {
    if (err instanceof Error && err.message === authFailed && !(err instanceof RangeError || err instanceof TypeError)) {
      throw new DecryptError();
    }
    throw err;
  }
}

// ---- node:crypto fallback (also the reference the native path is tested against) ---------------

function overlaps(a: Uint8Array, b: Uint8Array, bLength: number): boolean {
  return (
    a.byteLength > 0 &&
    bLength > 0 &&
    a.buffer === b.buffer &&
    a.byteOffset < b.byteOffset + bLength &&
    b.byteOffset < a.byteOffset + a.byteLength
  );
}

function checkKey(key: Uint8Array): void {
  if (key.byteLength !== 32) throw new RangeError('key must be 32 bytes');
}

/** A Buffer view of any Uint8Array (ArrayBuffer or SharedArrayBuffer backed), without copying. */
function asBuffer(view: Uint8Array): Buffer {
  return Buffer.isBuffer(view) ? view : Buffer.from(view.buffer, view.byteOffset, view.byteLength);
}

/** sealInto with node:crypto (allocates the ciphertext, then copies it into dst). */
export function sealIntoFallback(key: Uint8Array, aad: Uint8Array, src: Uint8Array, dst: Uint8Array): number {
  checkKey(key);
  const total = src.byteLength + sealOverhead;
  if (dst.byteLength < total) throw new RangeError('dst is too small (needs src.length + 28 bytes)');
  if (overlaps(key, dst, total) || overlaps(aad, dst, total) || overlaps(src, dst, total)) {
    throw new RangeError('key, aad and src must not overlap dst');
  }
  const nonce = dst.subarray(0, nonceLength);
  randomFillSync(nonce);
  const cipher = createCipheriv('aes-256-gcm', key, asBuffer(nonce));
  cipher.setAAD(asBuffer(aad));
  dst.set(cipher.update(asBuffer(src)), nonceLength);
  cipher.final();
  dst.set(cipher.getAuthTag(), nonceLength + src.byteLength);
  return total;
}

/** openInto with node:crypto (dst is written only after the tag has been verified). */
export function openIntoFallback(key: Uint8Array, aad: Uint8Array, sealed: Uint8Array, dst: Uint8Array): number {
  checkKey(key);
  if (sealed.byteLength < sealOverhead) throw new DecryptError();
  const plainLength = sealed.byteLength - sealOverhead;
  if (dst.byteLength < plainLength) throw new RangeError('dst is too small (needs sealed.length - 28 bytes)');
  if (overlaps(key, dst, plainLength) || overlaps(aad, dst, plainLength) || overlaps(sealed, dst, plainLength)) {
    throw new RangeError('key, aad and sealed must not overlap dst');
  }
  const view = asBuffer(sealed);
  const decipher = createDecipheriv('aes-256-gcm', key, view.subarray(0, nonceLength));
  decipher.setAAD(asBuffer(aad));
  decipher.setAuthTag(view.subarray(view.length - tagLength));
  let plain: Buffer;
  try {
    plain = decipher.update(view.subarray(nonceLength, view.length - tagLength));
    decipher.final();
  } catch {
    throw new DecryptError();
  }
  dst.set(plain);
  return plainLength;
}
