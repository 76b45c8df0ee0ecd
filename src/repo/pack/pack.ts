import { DecryptError, aadLabel, open, sealParts } from '../../crypto/aead.js';
import { BinaryReader, BinaryWriter, FormatError } from '../binary.js';
import { type BlobEntry, isBlobType } from '../blob.js';
import { idLength, idToHex, randomId } from '../ids.js';

/**
 * Pack file: blob₁ ‖ … ‖ blobₙ ‖ seal(header) ‖ u32le(len(seal(header)))
 * header = u8 version ‖ u32le n ‖ n × (u8 type ‖ u8 flags ‖ u32le storedLength ‖ u32le rawLength ‖ id[32])
 * Blob offsets follow from the order and stored lengths. The header is sealed with
 * AAD "tender:pack-header" ‖ packId, so a pack can be indexed from its own bytes alone.
 */
export const packHeaderVersion = 1;
const headerEntrySize = 1 + 1 + 4 + 4 + idLength;
const trailerSize = 4;
/** Read this much from the end of a pack to get the header in one request, usually. */
export const packTailGuess = 64 * 1024;

export function packKey(packId: Uint8Array | string): string {
  const hex = typeof packId === 'string' ? packId : idToHex(packId);
  return `data/${hex.slice(0, 2)}/${hex}`;
}

export function packIdFromKey(key: string): string | undefined {
  const m = /^data\/[0-9a-f]{2}\/([0-9a-f]{64})$/.exec(key);
  return m?.[1];
}

function headerAad(packId: Uint8Array): Buffer {
  return Buffer.concat([aadLabel('pack-header'), packId]);
}

/** Collects sealed blobs for one pack; `finish` appends the header. Blob buffers are not copied. */
export class PackBuilder {
  readonly id = randomId();
  readonly parts: Buffer[] = [];
  readonly entries: BlobEntry[] = [];
  size = 0;

  add(entry: Omit<BlobEntry, 'offset' | 'storedLength'>, sealedParts: readonly Buffer[]): BlobEntry {
    let storedLength = 0;
    for (const p of sealedParts) {
      this.parts.push(p);
      storedLength += p.length;
    }
    const full: BlobEntry = { ...entry, offset: this.size, storedLength };
    this.entries.push(full);
    this.size += storedLength;
    return full;
  }

  finish(encryptionKey: Uint8Array): { key: string; parts: Buffer[]; size: number } {
    const w = new BinaryWriter(1 + 4 + this.entries.length * headerEntrySize).u8(packHeaderVersion).u32(this.entries.length);
    for (const e of this.entries) w.u8(e.type).u8(e.flags).u32(e.storedLength).u32(e.rawLength).id(e.id);
    const sealed = sealParts(encryptionKey, w.finish(), headerAad(this.id));
    const headerLength = sealed.reduce((n, p) => n + p.length, 0);
    const trailer = Buffer.alloc(trailerSize);
    trailer.writeUInt32LE(headerLength);
    this.parts.push(...sealed, trailer);
    this.size += headerLength + trailerSize;
    return { key: packKey(this.id), parts: this.parts, size: this.size };
  }
}

/** Length of the sealed header, from the last bytes of a pack. */
export function headerLengthFromTail(tail: Buffer, packSize: number): number {
  if (tail.length < trailerSize) throw new FormatError('pack is shorter than its trailer');
  const length = tail.readUInt32LE(tail.length - trailerSize);
  if (length + trailerSize > packSize) throw new FormatError(`pack header length ${length} exceeds the pack size ${packSize}`);
  return length;
}

/**
 * Decode the header from `tail` (the last bytes of the pack, at least header + trailer) and
 * check that the blobs it lists fill the pack exactly.
 */
export function decodePackHeader(encryptionKey: Uint8Array, packId: Uint8Array, tail: Buffer, packSize: number): BlobEntry[] {
  const headerLength = headerLengthFromTail(tail, packSize);
  if (tail.length < headerLength + trailerSize) throw new FormatError('pack tail too short for its header');
  const sealed = tail.subarray(tail.length - trailerSize - headerLength, tail.length - trailerSize);
  let plain: Buffer;
  try {
    plain = open(encryptionKey, sealed, headerAad(packId));
  } catch (err) {
    if (err instanceof DecryptError) throw new FormatError('pack header does not decrypt (damaged, or not this pack)');
    throw err;
  }
  const r = new BinaryReader(plain);
  const version = r.u8('header version');
  if (version !== packHeaderVersion) throw new FormatError(`unknown pack header version ${version}`);
  const n = r.count(headerEntrySize, 'blob count');
  const entries: BlobEntry[] = [];
  let offset = 0;
  for (let i = 0; i < n; i++) {
    const type = r.u8('blob type');
    const flags = r.u8('blob flags');
    const storedLength = r.u32('stored length');
    const rawLength = r.u32('raw length');
    const id = Buffer.from(r.id('blob id'));
    if (!isBlobType(type)) throw new FormatError(`unknown blob type ${type}`);
    entries.push({ id, type, flags, offset, storedLength, rawLength });
    offset += storedLength;
  }
  r.end('pack header');
  if (offset + headerLength + trailerSize !== packSize) {
    throw new FormatError(`blobs and header cover ${offset + headerLength + trailerSize} bytes, the pack has ${packSize}`);
  }
  return entries;
}
