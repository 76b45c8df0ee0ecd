import { BlobType } from '../blob.js';
import { hexToId, idLength } from '../ids.js';
import type { BlobLocation } from '../index/id-table.js';
import { corrupt } from '../repository.js';
import type { TreeNode } from './tree.js';

/** One data blob of a file: what it is, where it is stored, and where it goes in the file. */
export interface FileChunk {
  id: Uint8Array;
  loc: BlobLocation;
  fileOffset: number;
}

/** A file's content as its tree node names it. */
export type FileContent = Pick<TreeNode, 'content' | 'contentLists'>;

/** The index a file's chunks are resolved through (a snapshot-pinned view, or the shared one). */
export interface ChunkIndex {
  lookup(id: Uint8Array): BlobLocation | undefined;
  /** A list blob's plaintext; called only for a list blob `lookup` finds. */
  loadList(id: Uint8Array): Promise<Uint8Array>;
}

/**
 * A file's data blobs in file order, its chunk lists resolved, with their locations and file
 * offsets. A list blob or data blob the index lacks ends the resolution with `absent(id, type)`:
 * it throws (restore) or returns what stands for "not available" (delta bases: undefined).
 */
export async function fileChunks<Absent>(
  content: FileContent,
  index: ChunkIndex,
  absent: (id: Uint8Array, type: typeof BlobType.list | typeof BlobType.data) => Absent,
): Promise<FileChunk[] | Absent> {
  const ids: Uint8Array[] = (content.content ?? []).map(hexToId);
  for (const hex of content.contentLists ?? []) {
    const listId = hexToId(hex);
    if (!index.lookup(listId)) return absent(listId, BlobType.list);
    const list = await index.loadList(listId);
    if (list.length % idLength !== 0) throw corrupt(`list blob ${hex}`, `has a length that is not a multiple of ${idLength}`);
    for (let i = 0; i < list.length; i += idLength) ids.push(list.subarray(i, i + idLength));
  }
  const chunks: FileChunk[] = [];
  let fileOffset = 0;
  for (const id of ids) {
    const loc = index.lookup(id);
    if (!loc) return absent(id, BlobType.data);
    chunks.push({ id, loc, fileOffset });
    fileOffset += loc.rawLength;
  }
  return chunks;
}
