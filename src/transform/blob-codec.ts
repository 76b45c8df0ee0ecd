import zstd from 'zstd-napi/binding.js';
import { DecryptError, sealOverhead } from '../crypto/aead.js';
import { openInto, sealInto } from '../crypto/seal-into.js';
import { blobId } from './blob-id.js';
import { BlobFlag, blobTypeName, knownBlobFlags } from './blob-kind.js';
import type { MasterKeys } from './keys.js';
import { PlaneDecoder, PlaneEncoder, PlanePayloadError, planeElementSizes } from './planes.js';
import { DeltaEstimator } from './xor-delta.js';

/**
 * The blob transform, the same on the main thread and in workers:
 *   store:   plaintext → ID = BLAKE3-keyed(plaintext) → byte planes (float tensor chunks, when the
 *            repository allows them) or zstd, each kept only if it saves space → AES-GCM;
 *            a float chunk given a base (the same range of the file's previous version) is
 *            stored as base ID ‖ planes(plaintext XOR base) where that pays (xor-delta.ts)
 *   load:    AES-GCM open → decode planes or zstd (as flagged) → XOR the base back (delta)
 *            → check length and ID
 * The AAD of a blob is "tender:blob" ‖ type ‖ ID, so a sealed blob cannot pass for another.
 */
export interface SealedBlob {
  storedLength: number;
  flags: number;
}

/** Transforms beyond zstd that a repository's format allows (src/repo/config.ts). */
export interface CodecTransforms {
  /** Byte planes for chunks of float tensors (format version 2). */
  planes?: boolean;
  /** XOR-delta of float chunks against a base blob (format version 3; needs planes). */
  delta?: boolean;
}

/**
 * The base of a delta blob: a data blob stored whole (no delta flag) with the same raw length.
 * `plaintext` may be the first bytes of the `dst` that sealInto/openInto are given (the callers
 * load the base there, so it needs no buffer of its own): it is read before `dst` is written.
 */
export interface DeltaBase {
  id: Uint8Array;
  plaintext: Uint8Array;
}

const baseIdLength = 32;

const aadPrefix = Buffer.from('tender:blob', 'utf8');

export function blobAad(type: number, id: Uint8Array): Buffer {
  const aad = Buffer.allocUnsafe(aadPrefix.length + 1 + id.byteLength);
  aadPrefix.copy(aad, 0);
  aad[aadPrefix.length] = type;
  aad.set(id, aadPrefix.length + 1);
  return aad;
}

export class BlobCodec {
  private readonly compressor: zstd.CCtx | undefined;
  private readonly decompressor = new zstd.DCtx();
  /** Reused output buffer for compression: no fresh memory per chunk (first touch is slow). */
  private scratch = Buffer.alloc(0);
  private readonly planeEncoder: PlaneEncoder | undefined;
  private planeDecoder: PlaneDecoder | undefined;
  private readonly deltaEstimator: DeltaEstimator | undefined;

  constructor(
    private readonly keys: MasterKeys,
    /** zstd level; 0 stores everything raw. */
    compressionLevel: number,
    transforms: CodecTransforms = {},
  ) {
    if (compressionLevel > 0) {
      this.compressor = new zstd.CCtx();
      this.compressor.setParameter(zstd.CParameter.compressionLevel, compressionLevel);
      if (transforms.planes) this.planeEncoder = new PlaneEncoder();
      if (transforms.planes && transforms.delta) this.deltaEstimator = new DeltaEstimator();
    }
  }

  id(plaintext: Uint8Array): Buffer {
    return blobId(this.keys.blobId, plaintext);
  }

  /**
   * Seals `plaintext` straight into `dst` (a reserved region of a pack buffer), which must hold at
   * least plaintext length + sealOverhead bytes. Returns the stored length and flags.
   * `elementSize` (2, 4 or 8) says the chunk holds float elements of that size, aligned to its
   * start: it is then stored as byte planes where the repository allows them and they pay, or as
   * a delta against `base` (same length) where the repository allows it and it pays.
   */
  sealInto(type: number, id: Uint8Array, plaintext: Uint8Array, dst: Uint8Array, elementSize = 0, base?: DeltaBase): SealedBlob {
    let payload: Uint8Array = plaintext;
    let flags = 0;
    const delta = base ? this.deltaPayload(plaintext, base, elementSize) : undefined;
    if (delta) {
      payload = delta;
      flags |= BlobFlag.delta | BlobFlag.planes;
    } else if (this.planeEncoder && planeElementSizes.includes(elementSize)) {
      // Float data that does not code as planes does not code whole either: no second attempt.
      const planes = this.planeEncoder.encode(plaintext, elementSize);
      if (planes) {
        payload = planes;
        flags |= BlobFlag.planes;
      }
    } else if (this.compressor && plaintext.byteLength > 0) {
      const bound = zstd.compressBound(plaintext.byteLength);
      if (this.scratch.length < bound) this.scratch = Buffer.allocUnsafeSlow(bound);
      const compressedLength = this.compressor.compress2(this.scratch, plaintext);
      // Keep compression only when it saves at least 1/64: otherwise decompression is wasted work.
      if (compressedLength < plaintext.byteLength - (plaintext.byteLength >> 6)) {
        payload = this.scratch.subarray(0, compressedLength);
        flags |= BlobFlag.zstd;
      }
    }
    return { storedLength: sealInto(this.keys.encryption, blobAad(type, id), payload, dst), flags };
  }

  /** base ID ‖ planes(plaintext XOR base), or undefined where the delta does not pay. */
  private deltaPayload(plaintext: Uint8Array, base: DeltaBase, elementSize: number): Buffer | undefined {
    const rawLength = plaintext.byteLength;
    if (!this.deltaEstimator || !planeElementSizes.includes(elementSize) || base.plaintext.byteLength !== rawLength) return undefined;
    if (!this.deltaEstimator.pays(plaintext, base.plaintext, elementSize)) return undefined;
    const payload = this.planeEncoder!.encode(plaintext, elementSize, baseIdLength, base.plaintext);
    if (!payload) return undefined;
    payload.set(base.id.subarray(0, baseIdLength), 0);
    return payload;
  }

  /**
   * Returns the verified plaintext in a new buffer, or throws BlobCorruptError saying what is
   * wrong. A delta blob needs its base (the one its index entry names).
   */
  open(type: number, id: Uint8Array, flags: number, rawLength: number, sealed: Uint8Array, base?: DeltaBase): Buffer {
    const plaintext = Buffer.allocUnsafeSlow(rawLength);
    this.openInto(type, id, flags, rawLength, sealed, plaintext, base);
    return plaintext;
  }

  /**
   * Decrypts, decompresses and verifies a sealed blob into `dst` (exactly `rawLength` bytes are
   * written); throws BlobCorruptError saying what is wrong. Allocates nothing per call.
   * A delta blob needs `base`, whose plaintext may be the start of `dst` (see DeltaBase).
   */
  openInto(type: number, id: Uint8Array, flags: number, rawLength: number, sealed: Uint8Array, dst: Uint8Array, base?: DeltaBase): void {
    if (
      (flags & ~knownBlobFlags) !== 0 ||
      (flags & (BlobFlag.zstd | BlobFlag.planes)) === (BlobFlag.zstd | BlobFlag.planes) ||
      ((flags & BlobFlag.delta) !== 0 && (flags & BlobFlag.planes) === 0)
    ) {
      throw new BlobCorruptError(type, id, `has flags ${flags} that no tender writes`);
    }
    const isDelta = (flags & BlobFlag.delta) !== 0;
    if (isDelta && !base) throw new Error(`delta blob ${Buffer.from(id).toString('hex')} opened without its base`);
    if (isDelta && base!.plaintext.byteLength < rawLength) {
      throw new BlobCorruptError(type, id, `has a base of ${base!.plaintext.byteLength} bytes, ${rawLength} needed`);
    }
    const compressed = (flags & (BlobFlag.zstd | BlobFlag.planes)) !== 0;
    const payloadLength = sealed.byteLength - sealOverhead;
    if (payloadLength < 0 || (!compressed && payloadLength !== rawLength)) {
      throw new BlobCorruptError(type, id, `has ${Math.max(0, payloadLength)} stored bytes, the index says ${rawLength}`);
    }
    if (compressed && this.scratch.length < payloadLength) this.scratch = Buffer.allocUnsafeSlow(payloadLength);
    const out = dst.subarray(0, rawLength);
    try {
      openInto(this.keys.encryption, blobAad(type, id), sealed, compressed ? this.scratch : out);
    } catch (err) {
      if (err instanceof DecryptError) throw new BlobCorruptError(type, id, 'does not decrypt (damaged or not this blob)');
      throw err;
    }
    if (isDelta) {
      const payload = this.scratch.subarray(0, payloadLength);
      if (payloadLength < baseIdLength || !payload.subarray(0, baseIdLength).equals(base!.id.subarray(0, baseIdLength))) {
        throw new BlobCorruptError(type, id, `does not name its base ${Buffer.from(base!.id).toString('hex')} (damaged)`);
      }
      try {
        // The base is XORed back as the planes are gathered; it may be `out` itself.
        (this.planeDecoder ??= new PlaneDecoder()).decode(payload.subarray(baseIdLength), rawLength, out, base!.plaintext);
      } catch (err) {
        if (err instanceof PlanePayloadError) throw new BlobCorruptError(type, id, `has a damaged delta payload (${err.message})`);
        throw err;
      }
    } else if (flags & BlobFlag.planes) {
      try {
        (this.planeDecoder ??= new PlaneDecoder()).decode(this.scratch.subarray(0, payloadLength), rawLength, out);
      } catch (err) {
        if (err instanceof PlanePayloadError) throw new BlobCorruptError(type, id, `has a damaged plane payload (${err.message})`);
        throw err;
      }
    } else if (compressed) {
      const payload = this.scratch.subarray(0, payloadLength);
      let produced = -1;
      try {
        // The index gives the exact size; a frame announcing another size is damaged.
        if (zstd.getFrameContentSize(payload) === rawLength) produced = this.decompressor.decompress(out, payload);
      } catch {
        produced = -1;
      }
      if (produced !== rawLength) throw new BlobCorruptError(type, id, 'does not decompress to its indexed size');
    }
    if (!this.id(out).equals(id)) throw new BlobCorruptError(type, id, 'content does not match its ID');
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

