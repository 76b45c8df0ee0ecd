/** Blob types and flags, as stored in pack headers and index files (docs/design.md, "Blobs"). */
export const BlobType = {
  data: 0,
  tree: 1,
  /** A list of data blob IDs: the content of a file with more chunks than fit in its tree node. */
  list: 2,
} as const;
export type BlobType = (typeof BlobType)[keyof typeof BlobType];

export const blobTypeName = (type: number): string =>
  type === BlobType.data ? 'data' : type === BlobType.tree ? 'tree' : type === BlobType.list ? 'list' : `type-${type}`;

export const isBlobType = (type: number): type is BlobType => type === 0 || type === 1 || type === 2;

/** Flag bits. */
export const BlobFlag = {
  /** The sealed payload is a zstd frame; otherwise the raw bytes. */
  zstd: 1,
  /** The sealed payload is a byte-plane payload (transform/planes.ts); format version 2. */
  planes: 2,
  /**
   * The sealed payload is the base blob's ID, then the byte-plane payload of plaintext XOR the
   * base's plaintext (transform/xor-delta.ts); always with `planes`; format version 3.
   */
  delta: 4,
} as const;

export const knownBlobFlags = BlobFlag.zstd | BlobFlag.planes | BlobFlag.delta;

/** How a blob's payload was transformed, by its flags (the names statistics use). */
export type TransformName = 'delta' | 'planes' | 'zstd' | 'raw';

export const transformOf = (flags: number): TransformName =>
  flags & BlobFlag.delta ? 'delta' : flags & BlobFlag.planes ? 'planes' : flags & BlobFlag.zstd ? 'zstd' : 'raw';
