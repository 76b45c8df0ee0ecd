import type { BlobType } from '../transform/blob-kind.js';

export { BlobFlag, BlobType, type TransformName, blobTypeName, isBlobType, transformOf } from '../transform/blob-kind.js';

/** A blob as listed in a pack header and an index: where it is and how to read it. */
export interface BlobEntry {
  id: Buffer;
  type: BlobType;
  flags: number;
  offset: number;
  storedLength: number;
  rawLength: number;
}
