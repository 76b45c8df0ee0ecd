import { idLength } from '../ids.js';

/** Where a blob lives: which pack, where in it, and how it was stored. */
export interface BlobLocation {
  packIndex: number;
  offset: number;
  storedLength: number;
  rawLength: number;
  type: number;
  flags: number;
}

const empty = 0xffffffff;
const maxLoad = 0.7;

/**
 * A compact open-addressing hash table from 32-byte blob ID to BlobLocation, held in typed arrays
 * (about 50 bytes a slot) instead of a Map of hex strings (about 200 bytes an entry). IDs are
 * uniformly random (keyed hashes), so their first four bytes are a good hash.
 */
export class IdTable {
  private capacity: number;
  private count = 0;
  private ids!: Uint8Array;
  private packIndex!: Uint32Array;
  private offset!: Uint32Array;
  private storedLength!: Uint32Array;
  private rawLength!: Uint32Array;
  private typeFlags!: Uint16Array;

  constructor(initialCapacity = 1024) {
    this.capacity = 1 << Math.ceil(Math.log2(Math.max(16, initialCapacity)));
    this.allocate(this.capacity);
  }

  get size(): number {
    return this.count;
  }

  private allocate(capacity: number): void {
    this.ids = new Uint8Array(capacity * idLength);
    this.packIndex = new Uint32Array(capacity).fill(empty);
    this.offset = new Uint32Array(capacity);
    this.storedLength = new Uint32Array(capacity);
    this.rawLength = new Uint32Array(capacity);
    this.typeFlags = new Uint16Array(capacity);
  }

  private slotOf(id: Uint8Array): number {
    const mask = this.capacity - 1;
    let slot = ((id[0]! | (id[1]! << 8) | (id[2]! << 16) | (id[3]! << 24)) >>> 0) & mask;
    for (;;) {
      if (this.packIndex[slot] === empty || this.idEquals(slot, id)) return slot;
      slot = (slot + 1) & mask;
    }
  }

  private idEquals(slot: number, id: Uint8Array): boolean {
    const base = slot * idLength;
    const ids = this.ids;
    for (let i = 0; i < idLength; i++) if (ids[base + i] !== id[i]) return false;
    return true;
  }

  has(id: Uint8Array): boolean {
    return this.packIndex[this.slotOf(id)] !== empty;
  }

  get(id: Uint8Array): BlobLocation | undefined {
    const slot = this.slotOf(id);
    return this.packIndex[slot] === empty ? undefined : this.locationAt(slot);
  }

  private locationAt(slot: number): BlobLocation {
    const tf = this.typeFlags[slot]!;
    return {
      packIndex: this.packIndex[slot]!,
      offset: this.offset[slot]!,
      storedLength: this.storedLength[slot]!,
      rawLength: this.rawLength[slot]!,
      type: tf >> 8,
      flags: tf & 0xff,
    };
  }

  /** Adds the blob unless it is already present (first location wins). Returns whether it was added. */
  add(id: Uint8Array, loc: BlobLocation): boolean {
    if ((this.count + 1) / this.capacity > maxLoad) this.grow();
    const slot = this.slotOf(id);
    if (this.packIndex[slot] !== empty) return false;
    this.ids.set(id.subarray(0, idLength), slot * idLength);
    this.packIndex[slot] = loc.packIndex;
    this.offset[slot] = loc.offset;
    this.storedLength[slot] = loc.storedLength;
    this.rawLength[slot] = loc.rawLength;
    this.typeFlags[slot] = (loc.type << 8) | loc.flags;
    this.count++;
    return true;
  }

  /** Visits every entry; the id view is only valid during the callback. */
  forEach(visit: (id: Uint8Array, loc: BlobLocation) => void): void {
    for (let slot = 0; slot < this.capacity; slot++) {
      if (this.packIndex[slot] === empty) continue;
      visit(this.ids.subarray(slot * idLength, (slot + 1) * idLength), this.locationAt(slot));
    }
  }

  private grow(): void {
    const old = {
      capacity: this.capacity,
      ids: this.ids,
      packIndex: this.packIndex,
      offset: this.offset,
      storedLength: this.storedLength,
      rawLength: this.rawLength,
      typeFlags: this.typeFlags,
    };
    this.capacity *= 2;
    this.count = 0;
    this.allocate(this.capacity);
    for (let slot = 0; slot < old.capacity; slot++) {
      if (old.packIndex[slot] === empty) continue;
      const id = old.ids.subarray(slot * idLength, (slot + 1) * idLength);
      const target = this.slotOf(id);
      this.ids.set(id, target * idLength);
      this.packIndex[target] = old.packIndex[slot]!;
      this.offset[target] = old.offset[slot]!;
      this.storedLength[target] = old.storedLength[slot]!;
      this.rawLength[target] = old.rawLength[slot]!;
      this.typeFlags[target] = old.typeFlags[slot]!;
      this.count++;
    }
  }
}
