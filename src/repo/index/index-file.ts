import { aadLabel, open, seal } from '../../crypto/aead.js';
import { BinaryReader, BinaryWriter, FormatError } from '../binary.js';
import type { BlobEntries } from '../blob-entries.js';
import { type BlobEntry, BlobFlag, entryBase, isBlobType } from '../blob.js';
import { idLength } from '../ids.js';

/**
 * Index file (stored as index/<sha256 of the stored bytes>), sealed with AAD "tender:index":
 *   u8 version ‖ u32le s ‖ s × supersededIndexId[32]
 *   ‖ u32le p ‖ p × ( packId[32] ‖ u32le packSize ‖ u32le n ‖ n × entry )
 *   entry = u8 type ‖ u8 flags ‖ u32le offset ‖ u32le storedLength ‖ u32le rawLength ‖ id[32]
 *           ‖ baseId[32] (only when flags has the delta bit: the blob the delta is against)
 * "superseded" lists index files whose content this one includes (written by repair/prune), so
 * readers may skip them and they may be deleted afterwards.
 */
export const indexVersion = 1;
const entrySize = 1 + 1 + 4 + 4 + 4 + idLength;
const packRecordMin = idLength + 4 + 4;

/** A pack's record in an index file: decoded files give arrays; writers pass packed lists (BlobEntryList). */
export interface IndexedPack<Blobs extends BlobEntries = BlobEntry[]> {
  packId: Buffer;
  packSize: number;
  blobs: Blobs;
}

export interface IndexFile<Blobs extends BlobEntries = BlobEntry[]> {
  superseded: Buffer[];
  packs: IndexedPack<Blobs>[];
}

export function encodeIndex(encryptionKey: Uint8Array, index: IndexFile<BlobEntries>): Buffer {
  let size = 1 + 4 + index.superseded.length * idLength + 4;
  for (const p of index.packs) for (const b of p.blobs) size += b.base ? entrySize + idLength : entrySize;
  size += index.packs.length * packRecordMin;
  const w = new BinaryWriter(size).u8(indexVersion).u32(index.superseded.length);
  for (const id of index.superseded) w.id(id);
  w.u32(index.packs.length);
  for (const p of index.packs) {
    w.id(p.packId).u32(p.packSize).u32(p.blobs.length);
    for (const b of p.blobs) {
      w.u8(b.type).u8(b.flags).u32(b.offset).u32(b.storedLength).u32(b.rawLength).id(b.id);
      const base = entryBase(b, 'index entry');
      if (base) w.id(base);
    }
  }
  return seal(encryptionKey, w.finish(), aadLabel('index'));
}

/** Throws DecryptError (wrong key / damaged) or FormatError (malformed plaintext). */
export function decodeIndex(encryptionKey: Uint8Array, stored: Buffer): IndexFile {
  const r = new BinaryReader(open(encryptionKey, stored, aadLabel('index')));
  const version = r.u8('index version');
  if (version !== indexVersion) throw new FormatError(`unknown index version ${version}`);
  const superseded: Buffer[] = [];
  const s = r.count(idLength, 'superseded count');
  for (let i = 0; i < s; i++) superseded.push(Buffer.from(r.id('superseded id')));
  const packs: IndexedPack[] = [];
  const p = r.count(packRecordMin, 'pack count');
  for (let i = 0; i < p; i++) {
    const packId = Buffer.from(r.id('pack id'));
    const packSize = r.u32('pack size');
    const n = r.count(entrySize, 'blob count');
    const blobs: BlobEntry[] = [];
    for (let j = 0; j < n; j++) {
      const type = r.u8('blob type');
      const flags = r.u8('blob flags');
      const offset = r.u32('blob offset');
      const storedLength = r.u32('stored length');
      const rawLength = r.u32('raw length');
      const id = Buffer.from(r.id('blob id'));
      if (!isBlobType(type)) throw new FormatError(`unknown blob type ${type}`);
      if (offset + storedLength > packSize) throw new FormatError('blob extends past the end of its pack');
      const entry: BlobEntry = { id, type, flags, offset, storedLength, rawLength };
      if (flags & BlobFlag.delta) entry.base = Buffer.from(r.id('base id'));
      blobs.push(entry);
    }
    packs.push({ packId, packSize, blobs });
  }
  r.end('index');
  return { superseded, packs };
}
