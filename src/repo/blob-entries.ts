import type { BlobEntry, BlobType } from './blob.js';
import { idLength } from './ids.js';

/** What encoding an index and filling an index view need of a pack's entries: objects or packed. */
export type BlobEntries = Iterable<BlobEntry> & { readonly length: number };

/**
 * Blob entries packed in typed arrays: 50 bytes each, where a BlobEntry object with its ID Buffer
 * takes about 250 of JS heap. A 16 MiB pack of tiny files lists 50,000 and more, and a backup holds
 * the entries of the pack it fills, the packs being stored and those awaiting their index file.
 * Iterating yields BlobEntry objects whose `id` is a view into the list (short-lived objects).
 */
export class BlobEntryList implements BlobEntries {
  private count = 0;
  private ids: Uint8Array;
  private types: Uint8Array;
  private flags: Uint8Array;
  private offsets: Uint32Array;
  private storedLengths: Uint32Array;
  private rawLengths: Uint32Array;
  /** Delta blobs' bases by entry number: few per pack (large float chunks), so a sparse map. */
  private readonly bases = new Map<number, Buffer>();

  constructor(capacity = 64) {
    this.ids = new Uint8Array(capacity * idLength);
    this.types = new Uint8Array(capacity);
    this.flags = new Uint8Array(capacity);
    this.offsets = new Uint32Array(capacity);
    this.storedLengths = new Uint32Array(capacity);
    this.rawLengths = new Uint32Array(capacity);
  }

  get length(): number {
    return this.count;
  }

  /** `base`: a delta blob's base (exactly when flags has BlobFlag.delta); copied. */
  push(id: Uint8Array, type: BlobType, flags: number, offset: number, storedLength: number, rawLength: number, base?: Uint8Array): void {
    if (this.count === this.types.length) this.grow(Math.max(64, 2 * this.count));
    this.set(this.count++, id, type, flags, offset, storedLength, rawLength, base);
  }

  /** Overwrites entry i (i < length). */
  set(i: number, id: Uint8Array, type: BlobType, flags: number, offset: number, storedLength: number, rawLength: number, base?: Uint8Array): void {
    if (base) this.bases.set(i, Buffer.from(base));
    else this.bases.delete(i);
    this.ids.set(id.subarray(0, idLength), i * idLength);
    this.types[i] = type;
    this.flags[i] = flags;
    this.offsets[i] = offset;
    this.storedLengths[i] = storedLength;
    this.rawLengths[i] = rawLength;
  }

  typeAt(i: number): BlobType {
    return this.types[i]! as BlobType;
  }

  flagsAt(i: number): number {
    return this.flags[i]!;
  }

  rawLengthAt(i: number): number {
    return this.rawLengths[i]!;
  }

  offsetAt(i: number): number {
    return this.offsets[i]!;
  }

  storedLengthAt(i: number): number {
    return this.storedLengths[i]!;
  }

  /** The i-th ID, a view into the list. */
  idAt(i: number): Buffer {
    return Buffer.from(this.ids.buffer, this.ids.byteOffset + i * idLength, idLength);
  }

  /** The i-th delta base, if entry i is a delta blob. */
  baseAt(i: number): Buffer | undefined {
    return this.bases.get(i);
  }

  /** Appends entry i of `from` at `offset` (no objects made). */
  pushFrom(from: BlobEntryList, i: number, offset: number): void {
    if (this.count === this.types.length) this.grow(Math.max(64, 2 * this.count));
    const j = this.count++;
    this.ids.set(from.ids.subarray(i * idLength, (i + 1) * idLength), j * idLength);
    this.types[j] = from.types[i]!;
    this.flags[j] = from.flags[i]!;
    this.offsets[j] = offset;
    this.storedLengths[j] = from.storedLengths[i]!;
    this.rawLengths[j] = from.rawLengths[i]!;
    const base = from.bases.get(i);
    if (base) this.bases.set(j, base);
  }

  /** The i-th ID as a view of `idLength` bytes (for writing it out). */
  idView(i: number): Uint8Array {
    return this.ids.subarray(i * idLength, (i + 1) * idLength);
  }

  at(i: number): BlobEntry {
    const base = this.bases.get(i);
    return {
      id: this.idAt(i),
      type: this.types[i]! as BlobType,
      flags: this.flags[i]!,
      offset: this.offsets[i]!,
      storedLength: this.storedLengths[i]!,
      rawLength: this.rawLengths[i]!,
      ...(base ? { base } : {}),
    };
  }

  *[Symbol.iterator](): Iterator<BlobEntry> {
    for (let i = 0; i < this.count; i++) yield this.at(i);
  }

  /** Drops the unused capacity (a list kept after it is complete). */
  trim(): this {
    if (this.count < this.types.length) this.grow(this.count);
    return this;
  }

  private grow(capacity: number): void {
    const resized = <T extends Uint8Array | Uint32Array>(from: T, make: (n: number) => T, per = 1): T => {
      const to = make(capacity * per);
      to.set(from.subarray(0, this.count * per));
      return to;
    };
    this.ids = resized(this.ids, (n) => new Uint8Array(n), idLength);
    this.types = resized(this.types, (n) => new Uint8Array(n));
    this.flags = resized(this.flags, (n) => new Uint8Array(n));
    this.offsets = resized(this.offsets, (n) => new Uint32Array(n));
    this.storedLengths = resized(this.storedLengths, (n) => new Uint32Array(n));
    this.rawLengths = resized(this.rawLengths, (n) => new Uint32Array(n));
  }
}
