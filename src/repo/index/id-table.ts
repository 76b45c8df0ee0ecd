import { idLength } from '../ids.js';

/** Where a blob lives: which pack, where in it, and how it was stored. */
export interface BlobLocation {
  packIndex: number;
  offset: number;
  storedLength: number;
  rawLength: number;
  type: number;
  flags: number;
  /** A delta blob's base (BlobFlag.delta): the blob it must be opened with. */
  base?: Uint8Array;
}

const maxLoad = 0.7;
/** Entries are kept in blocks of this many (about 3 MiB each), so growing never copies them. */
const blockBits = 16;
const blockSize = 1 << blockBits;
const blockMask = blockSize - 1;

/** 16 bits while every value of the block fits, then 32 (`widened`). */
type Narrow = Uint16Array | Uint32Array;

/** A block of entries, in insertion order. */
interface EntryBlock {
  ids: Uint8Array;
  packIndex: Narrow;
  offset: Uint32Array;
  storedLength: Narrow;
  rawLength: Narrow;
  typeFlags: Uint16Array;
  /** Base number + 1 of each delta entry (0: none); allocated with the block's first delta. */
  baseNumbers?: Uint32Array;
}

/**
 * A compact hash table from 32-byte blob ID to BlobLocation. Entries live in typed-array blocks
 * (appended in insertion order); the open-addressing table holds only entry numbers (4 bytes a
 * slot, 0 for empty). An entry takes 44 bytes while its block's pack numbers and lengths fit 16
 * bits (small files: blobs < 64 KiB, < 65,536 packs), up to 50 bytes: about 50–62 bytes per blob
 * with the table, instead of about 200 for a Map of hex strings, and growing reallocates only the
 * table: a million small-file blobs take about 52 MB at the peak. IDs are uniformly random (keyed
 * hashes), so their first four bytes are a good hash.
 */
export class IdTable {
  private capacity: number;
  private count = 0;
  /** Slot → entry number + 1; 0 is empty. */
  private slots: Uint32Array;
  private readonly blocks: EntryBlock[] = [];
  /** Base IDs of delta entries, 32 bytes each, in blocks of blockSize (never moved: views stay valid). */
  private readonly baseBlocks: Uint8Array[] = [];
  private baseCount = 0;

  constructor(initialCapacity = 1024) {
    this.capacity = 1 << Math.ceil(Math.log2(Math.max(16, initialCapacity)));
    this.slots = new Uint32Array(this.capacity);
  }

  get size(): number {
    return this.count;
  }

  /** The slot holding `id`, or the empty slot where it would go. */
  private slotOf(id: Uint8Array): number {
    const mask = this.capacity - 1;
    let slot = ((id[0]! | (id[1]! << 8) | (id[2]! << 16) | (id[3]! << 24)) >>> 0) & mask;
    for (;;) {
      const entry = this.slots[slot]!;
      if (entry === 0 || this.idEquals(entry - 1, id)) return slot;
      slot = (slot + 1) & mask;
    }
  }

  private idEquals(entry: number, id: Uint8Array): boolean {
    const ids = this.blocks[entry >>> blockBits]!.ids;
    const base = (entry & blockMask) * idLength;
    for (let i = 0; i < idLength; i++) if (ids[base + i] !== id[i]) return false;
    return true;
  }

  has(id: Uint8Array): boolean {
    return this.slots[this.slotOf(id)] !== 0;
  }

  get(id: Uint8Array): BlobLocation | undefined {
    const entry = this.slots[this.slotOf(id)]!;
    return entry === 0 ? undefined : this.locationOf(entry - 1);
  }

  private locationOf(entry: number): BlobLocation {
    const b = this.blocks[entry >>> blockBits]!;
    const i = entry & blockMask;
    const tf = b.typeFlags[i]!;
    const number = b.baseNumbers?.[i] ?? 0;
    const base = number === 0 ? undefined : this.baseAt(number - 1);
    return {
      packIndex: b.packIndex[i]!,
      offset: b.offset[i]!,
      storedLength: b.storedLength[i]!,
      rawLength: b.rawLength[i]!,
      type: tf >> 8,
      flags: tf & 0xff,
      ...(base ? { base } : {}),
    };
  }

  /** Adds the blob unless it is already present (first location wins). Returns whether it was added. */
  add(id: Uint8Array, loc: BlobLocation): boolean {
    if ((this.count + 1) / this.capacity > maxLoad) this.grow();
    const slot = this.slotOf(id);
    if (this.slots[slot] !== 0) return false;
    const entry = this.count;
    if ((entry & blockMask) === 0) this.blocks.push(newBlock());
    const b = this.blocks[entry >>> blockBits]!;
    const i = entry & blockMask;
    b.ids.set(id.subarray(0, idLength), i * idLength);
    (b.packIndex = fitting(b.packIndex, loc.packIndex))[i] = loc.packIndex;
    b.offset[i] = loc.offset;
    (b.storedLength = fitting(b.storedLength, loc.storedLength))[i] = loc.storedLength;
    (b.rawLength = fitting(b.rawLength, loc.rawLength))[i] = loc.rawLength;
    b.typeFlags[i] = (loc.type << 8) | loc.flags;
    if (loc.base) {
      const number = this.baseCount++;
      if ((number & blockMask) === 0) this.baseBlocks.push(new Uint8Array(blockSize * idLength));
      this.baseBlocks[number >>> blockBits]!.set(loc.base.subarray(0, idLength), (number & blockMask) * idLength);
      (b.baseNumbers ??= new Uint32Array(blockSize))[i] = number + 1;
    }
    this.slots[slot] = entry + 1;
    this.count++;
    return true;
  }

  private baseAt(number: number): Uint8Array {
    const at = (number & blockMask) * idLength;
    return this.baseBlocks[number >>> blockBits]!.subarray(at, at + idLength);
  }

  /** Bytes of memory the table holds (its typed arrays), for tests and sizing. */
  get byteLength(): number {
    let bytes = this.slots.byteLength;
    for (const b of this.blocks) {
      bytes += b.ids.byteLength + b.packIndex.byteLength + b.offset.byteLength + b.storedLength.byteLength + b.rawLength.byteLength + b.typeFlags.byteLength;
      bytes += b.baseNumbers?.byteLength ?? 0;
    }
    for (const b of this.baseBlocks) bytes += b.byteLength;
    return bytes;
  }

  /** Visits every entry in insertion order; the id view is only valid during the callback. */
  forEach(visit: (id: Uint8Array, loc: BlobLocation) => void): void {
    for (let entry = 0; entry < this.count; entry++) {
      const ids = this.blocks[entry >>> blockBits]!.ids;
      const base = (entry & blockMask) * idLength;
      visit(ids.subarray(base, base + idLength), this.locationOf(entry));
    }
  }

  /** Doubles the table and places every entry again; the entries themselves stay where they are. */
  private grow(): void {
    this.capacity *= 2;
    this.slots = new Uint32Array(this.capacity);
    for (let entry = 0; entry < this.count; entry++) {
      const ids = this.blocks[entry >>> blockBits]!.ids;
      const base = (entry & blockMask) * idLength;
      this.slots[this.slotOf(ids.subarray(base, base + idLength))] = entry + 1;
    }
  }
}

function newBlock(): EntryBlock {
  return {
    ids: new Uint8Array(blockSize * idLength),
    packIndex: new Uint16Array(blockSize),
    offset: new Uint32Array(blockSize),
    storedLength: new Uint16Array(blockSize),
    rawLength: new Uint16Array(blockSize),
    typeFlags: new Uint16Array(blockSize),
  };
}

/** `values`, or a 32-bit copy of it when `value` does not fit 16 bits (once per block and field). */
function fitting(values: Narrow, value: number): Narrow {
  return value > 0xffff && values instanceof Uint16Array ? Uint32Array.from(values) : values;
}
