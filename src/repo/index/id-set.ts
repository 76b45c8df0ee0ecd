import { idLength } from '../ids.js';

const maxLoad = 0.7;

/**
 * A set of 32-byte IDs with deletion, kept in typed arrays (open addressing, linear probing,
 * IDs stored in their slots): 33 bytes a slot, 47–94 bytes an ID, outside the JS heap, where a
 * Set of hex strings takes about 120 bytes of heap an ID. IDs are uniformly random (keyed
 * hashes), so their first four bytes are a good hash. Deletion shifts the entries after the
 * freed slot back (no tombstones), so lookups stay short however often IDs come and go.
 */
export class IdSet {
  private capacity: number;
  private count = 0;
  private ids: Uint8Array;
  private used: Uint8Array;

  constructor(initialCapacity = 1024) {
    this.capacity = 1 << Math.ceil(Math.log2(Math.max(16, initialCapacity)));
    this.ids = new Uint8Array(this.capacity * idLength);
    this.used = new Uint8Array(this.capacity);
  }

  get size(): number {
    return this.count;
  }

  private home(id: Uint8Array, at = 0): number {
    return ((id[at]! | (id[at + 1]! << 8) | (id[at + 2]! << 16) | (id[at + 3]! << 24)) >>> 0) & (this.capacity - 1);
  }

  /** The slot holding `id`, or the free slot where it would go. */
  private slotOf(id: Uint8Array): number {
    const mask = this.capacity - 1;
    for (let slot = this.home(id); ; slot = (slot + 1) & mask) {
      if (this.used[slot] === 0 || this.idAt(slot, id)) return slot;
    }
  }

  private idAt(slot: number, id: Uint8Array): boolean {
    const base = slot * idLength;
    for (let i = 0; i < idLength; i++) if (this.ids[base + i] !== id[i]) return false;
    return true;
  }

  has(id: Uint8Array): boolean {
    return this.count > 0 && this.used[this.slotOf(id)] === 1;
  }

  /** Returns whether it was added (false: already present). */
  add(id: Uint8Array): boolean {
    if ((this.count + 1) / this.capacity > maxLoad) this.grow();
    const slot = this.slotOf(id);
    if (this.used[slot] === 1) return false;
    this.ids.set(id.subarray(0, idLength), slot * idLength);
    this.used[slot] = 1;
    this.count++;
    return true;
  }

  /** Returns whether it was present. */
  delete(id: Uint8Array): boolean {
    if (this.count === 0) return false;
    let free = this.slotOf(id);
    if (this.used[free] === 0) return false;
    this.used[free] = 0;
    this.count--;
    const mask = this.capacity - 1;
    // Move back every later entry of the run whose home is not between the freed slot and it.
    for (let slot = (free + 1) & mask; this.used[slot] === 1; slot = (slot + 1) & mask) {
      const home = this.home(this.ids, slot * idLength);
      const stays = free <= slot ? free < home && home <= slot : free < home || home <= slot;
      if (stays) continue;
      this.ids.copyWithin(free * idLength, slot * idLength, (slot + 1) * idLength);
      this.used[free] = 1;
      this.used[slot] = 0;
      free = slot;
    }
    return true;
  }

  private grow(): void {
    const ids = this.ids;
    const used = this.used;
    this.capacity *= 2;
    this.ids = new Uint8Array(this.capacity * idLength);
    this.used = new Uint8Array(this.capacity);
    for (let slot = 0; slot < used.length; slot++) {
      if (used[slot] === 0) continue;
      const id = ids.subarray(slot * idLength, (slot + 1) * idLength);
      const to = this.slotOf(id);
      this.ids.set(id, to * idLength);
      this.used[to] = 1;
    }
  }
}
