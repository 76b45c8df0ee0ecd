import { BlobFlag, type BlobType } from '../transform/blob-kind.js';

export { BlobFlag, BlobType, type TransformName, blobTypeName, isBlobType, transformOf } from '../transform/blob-kind.js';

/** A blob as listed in a pack header and an index: where it is and how to read it. */
export interface BlobEntry {
  id: Buffer;
  type: BlobType;
  flags: number;
  offset: number;
  storedLength: number;
  rawLength: number;
  /** A delta blob's base (flag BlobFlag.delta): the blob it must be opened with. */
  base?: Buffer;
}

/** An entry's base as its encoding needs it: present exactly when the delta flag is set. */
export function entryBase(entry: { flags: number; base?: Uint8Array }, what: string): Uint8Array | undefined {
  const isDelta = (entry.flags & BlobFlag.delta) !== 0;
  if (isDelta !== (entry.base !== undefined)) throw new Error(`${what}: a delta flag ${isDelta ? 'without' : 'with'} a base`);
  return entry.base;
}
