import type { FileChunk } from '../repo/snapshot/file-chunks.js';

/** One ranged read of a pack that yields one or more blobs of a file. */
export interface PackRead {
  packIndex: number;
  offset: number;
  length: number;
  /** Sum of the blobs' plaintext lengths. */
  rawLength: number;
  refs: FileChunk[];
}

/**
 * Groups a file's chunks into ranged reads: chunks stored back to back in one pack (the usual
 * case, since backup writes a file's new chunks in order) are fetched with one request of at
 * most `maxRead` stored bytes yielding at most `maxRaw` plaintext bytes (the buffers they go
 * into). Reads keep file order so the writer streams.
 */
export function planReads(refs: readonly FileChunk[], maxRead: number, maxRaw: number): PackRead[] {
  const reads: PackRead[] = [];
  let current: PackRead | undefined;
  for (const ref of refs) {
    const { packIndex, offset, storedLength, rawLength } = ref.loc;
    if (
      current &&
      current.packIndex === packIndex &&
      current.offset + current.length === offset &&
      current.length + storedLength <= maxRead &&
      current.rawLength + rawLength <= maxRaw
    ) {
      current.length += storedLength;
      current.rawLength += rawLength;
      current.refs.push(ref);
    } else {
      current = { packIndex, offset, length: storedLength, rawLength, refs: [ref] };
      reads.push(current);
    }
  }
  return reads;
}
