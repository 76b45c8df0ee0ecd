import { DecryptError, aadLabel, open, seal } from '../../crypto/aead.js';
import type { PooledBuffer } from '../../util/buffer-pool.js';
import { BinaryReader, BinaryWriter, FormatError } from '../binary.js';
import { BlobEntryList } from '../blob-entries.js';
import { type BlobEntry, BlobFlag, type BlobType, entryBase, isBlobType } from '../blob.js';
import { idLength, idToHex, randomId } from '../ids.js';

/**
 * Pack file: blob₁ ‖ … ‖ blobₙ ‖ seal(header) ‖ u32le(len(seal(header)))
 * header = u8 version ‖ u32le n ‖ n × (u8 type ‖ u8 flags ‖ u32le storedLength ‖ u32le rawLength ‖ id[32]
 *          ‖ baseId[32] only when flags has the delta bit)
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

/** A region of a pack's buffer set aside for one sealed blob, filled by a worker or this thread. */
export interface Reservation {
  readonly pack: PackBuilder;
  /** Position of the blob among the pack's blobs. */
  readonly slot: number;
  readonly buffer: SharedArrayBuffer;
  readonly offset: number;
  readonly capacity: number;
}

const reserved = 0;
const committed = 1;
const abandoned = 2;
const noId = new Uint8Array(idLength);
/**
 * A committed blob at most this large is moved down over the unused room before it (compression
 * leaves some in every reservation), so a pack of small blobs is stored as one part instead of
 * one part per blob; larger blobs stay where they were sealed (a part each).
 */
const moveLimit = 64 * 1024;

/**
 * One pack being filled. Sealed blobs are written straight into reserved regions of the pack's
 * buffer (by worker threads); a reserved region may end up partly unused (compression), and
 * `finish` lists only the bytes used. Blob offsets in the pack file are the sums of the stored
 * lengths before them, so they are known when the pack is finished. The blobs' records are kept
 * packed (BlobEntryList), not as objects: a pack of tiny files holds tens of thousands.
 */
export class PackBuilder {
  readonly id = randomId();
  /** Per reservation, in order: its region's offset in the buffer, then the committed entry. */
  private slots = new BlobEntryList();
  private states = new Uint8Array(64);
  private reserved = 0;
  private pending = 0;
  private committedCount = 0;
  /** No more reservations: the pack is stored once every reserved blob is committed. */
  closed = false;

  constructor(readonly buffer: PooledBuffer) {}

  /** A region of `capacity` bytes, or undefined if the buffer has no room left. */
  reserve(capacity: number): Reservation | undefined {
    if (this.closed || this.reserved + capacity > this.buffer.view.length) return undefined;
    const offset = this.reserved;
    this.reserved += capacity;
    this.pending++;
    const slot = this.slots.length;
    if (slot === this.states.length) {
      const states = new Uint8Array(2 * slot);
      states.set(this.states);
      this.states = states;
    }
    this.states[slot] = reserved;
    this.slots.push(noId, 0 as BlobType, 0, offset, 0, 0);
    return { pack: this, slot, buffer: this.buffer.buffer, offset, capacity };
  }

  /** `base`: a delta blob's base, given exactly when flags has BlobFlag.delta. */
  commit(r: Reservation, id: Uint8Array, type: BlobType, flags: number, rawLength: number, storedLength: number, base?: Uint8Array): void {
    if (storedLength > r.capacity) throw new Error(`sealed blob of ${storedLength} bytes overflows its ${r.capacity}-byte reservation`);
    entryBase({ flags, ...(base ? { base } : {}) }, 'pack entry');
    this.slots.set(r.slot, id, type, flags, r.offset, storedLength, rawLength, base);
    this.states[r.slot] = committed;
    this.committedCount++;
    this.pending--;
  }

  abandon(r: Reservation): void {
    this.states[r.slot] = abandoned;
    this.pending--;
  }

  /** Closed, with every reservation committed or abandoned. */
  get complete(): boolean {
    return this.closed && this.pending === 0;
  }

  get isEmpty(): boolean {
    return this.committedCount === 0;
  }

  /**
   * The pack file's parts (runs of the buffer, then the sealed header and trailer) and its blob
   * entries. Call once the pack is complete: small blobs are moved within the buffer.
   */
  finish(encryptionKey: Uint8Array): { key: string; parts: Uint8Array[]; size: number; entries: BlobEntryList } {
    const parts: Uint8Array[] = [];
    const entries = new BlobEntryList(this.committedCount);
    const { view } = this.buffer;
    const slots = this.slots;
    let runStart = 0;
    let runEnd = 0;
    let size = 0;
    for (let i = 0; i < slots.length; i++) {
      if (this.states[i] !== committed) continue;
      let at = slots.offsetAt(i);
      const length = slots.storedLengthAt(i);
      if (at !== runEnd && length <= moveLimit) {
        // Buffer.copy is a memmove (copyWithin on shared memory is several times slower).
        view.copyWithin(runEnd, at, at + length); // a memmove: the regions may overlap
        at = runEnd;
      }
      if (at !== runEnd) {
        if (runEnd > runStart) parts.push(view.subarray(runStart, runEnd));
        runStart = at;
      }
      runEnd = at + length;
      entries.pushFrom(slots, i, size);
      size += length;
    }
    if (runEnd > runStart) parts.push(view.subarray(runStart, runEnd));
    this.slots = new BlobEntryList(0);
    let headerSize = 1 + 4 + entries.length * headerEntrySize;
    for (let i = 0; i < entries.length; i++) if (entries.baseAt(i)) headerSize += idLength;
    const w = new BinaryWriter(headerSize).u8(packHeaderVersion).u32(entries.length);
    for (let i = 0; i < entries.length; i++) {
      w.u8(entries.typeAt(i)).u8(entries.flagsAt(i)).u32(entries.storedLengthAt(i)).u32(entries.rawLengthAt(i)).id(entries.idView(i));
      const base = entryBase({ flags: entries.flagsAt(i), base: entries.baseAt(i) }, 'pack header entry');
      if (base) w.id(base);
    }
    const sealed = seal(encryptionKey, w.finish(), headerAad(this.id));
    const trailer = Buffer.alloc(trailerSize);
    trailer.writeUInt32LE(sealed.length);
    parts.push(sealed, trailer);
    size += sealed.length + trailerSize;
    return { key: packKey(this.id), parts, size, entries };
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
    const entry: BlobEntry = { id, type, flags, offset, storedLength, rawLength };
    if (flags & BlobFlag.delta) entry.base = Buffer.from(r.id('base id'));
    entries.push(entry);
    offset += storedLength;
  }
  r.end('pack header');
  if (offset + headerLength + trailerSize !== packSize) {
    throw new FormatError(`blobs and header cover ${offset + headerLength + trailerSize} bytes, the pack has ${packSize}`);
  }
  return entries;
}
