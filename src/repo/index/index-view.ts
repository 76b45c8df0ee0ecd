import type { BlobEntries } from '../blob-entries.js';
import { idLength, idToHex } from '../ids.js';
import { type BlobLocation, IdTable } from './id-table.js';
import type { IndexedPack } from './index-file.js';

/**
 * One loaded index: blob ID → where it is stored, and the packs and index files it came from.
 * The repository holds a shared one (refreshed, never patched in place by a reload) for backups
 * and restores; prune and check load private ones (doomed packs included, damage tolerated) so
 * what they see never leaks into what a backup in the same process deduplicates against.
 */
export class IndexView {
  private readonly table = new IdTable();
  private readonly packIds: Buffer[] = [];
  private readonly packSizes: number[] = [];
  private readonly packIndexByHex = new Map<string, number>();
  /** Index files whose packs are in this view. */
  readonly indexFiles = new Set<string>();
  private readonly hexScratch = Buffer.alloc(idLength);

  /** `excludedPacks`: the packs left out of this view (doomed by pending deletion plans). */
  constructor(readonly excludedPacks: ReadonlySet<string> = new Set()) {}

  addPacks(packs: readonly IndexedPack<BlobEntries>[]): void {
    for (const pack of packs) this.addPack(pack.packId, pack.packSize, pack.blobs);
  }

  addPack(packId: Buffer, packSize: number, blobs: BlobEntries): void {
    const packIndex = this.packIndexOf(packId, packSize);
    for (const b of blobs) {
      this.table.add(b.id, {
        packIndex,
        offset: b.offset,
        storedLength: b.storedLength,
        rawLength: b.rawLength,
        type: b.type,
        flags: b.flags,
        ...(b.base ? { base: b.base } : {}),
      });
    }
  }

  private packIndexOf(packId: Buffer, size: number): number {
    const hex = idToHex(packId);
    let i = this.packIndexByHex.get(hex);
    if (i === undefined) {
      i = this.packIds.length;
      this.packIds.push(packId);
      this.packSizes.push(size);
      this.packIndexByHex.set(hex, i);
    }
    return i;
  }

  has(id: Uint8Array): boolean {
    return this.table.has(id);
  }

  /** has() for an ID in hex (from a tree), without allocating; false for a malformed ID. */
  hasHex(hex: string): boolean {
    if (hex.length !== 2 * idLength || this.hexScratch.write(hex, 'hex') !== idLength) return false;
    return this.table.has(this.hexScratch);
  }

  lookup(id: Uint8Array): BlobLocation | undefined {
    return this.table.get(id);
  }

  hasPack(hex: string): boolean {
    return this.packIndexByHex.has(hex);
  }

  packIdAt(packIndex: number): Buffer {
    return this.packIds[packIndex]!;
  }

  packSizeAt(packIndex: number): number {
    return this.packSizes[packIndex]!;
  }

  get blobCount(): number {
    return this.table.size;
  }

  forEachBlob(visit: (id: Uint8Array, loc: BlobLocation) => void): void {
    this.table.forEach(visit);
  }
}
