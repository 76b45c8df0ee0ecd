import { systemErrorCode } from '../errors/errors.js';
import type { TreeNode } from '../repo/snapshot/tree.js';
import type { FileContent, FileSaver, FileStamp, SavedFile } from './file-saver.js';

/**
 * Torn-read detection (borg's approach): the file's stamp is taken before its first read (the
 * walk's lstat, or an fstat at open for a re-read) and after its last (fstat); a file whose
 * inode, size, mtime or ctime moved in between (or that ended early: it shrank) was written while
 * it was read, and the bytes read may mix two versions. It is read
 * again, up to `rereads` times; then what the last read got is stored labelled `torn`. A re-read
 * goes through the same writer: chunks the earlier read stored are dedup hits, so nothing is
 * stored or counted twice (the torn read's own chunks stay stored, unreferenced, until a prune).
 */
export const defaultRereads = 2;

/** The tree fields a read decides: content, the metadata of the version read, the label. */
export type ReadPatch = Pick<TreeNode, 'content' | 'contentLists' | 'size' | 'mtime' | 'ctime' | 'inode' | 'consistency' | 'consistencyReason'>;

export interface ConsistentRead {
  patch: ReadPatch;
  /** Reads after the first. */
  rereads: number;
}

/** Why the read was not clean, or undefined when it was. */
export function describeChange(saved: SavedFile): string | undefined {
  const { before, after, bytes } = saved;
  if (after.ino !== before.ino) return 'it was replaced (renamed over) while it was read';
  if (after.size !== before.size) return `its size changed from ${before.size} to ${after.size} bytes while it was read`;
  if (bytes !== before.size) return `it ended after ${bytes} of ${before.size} bytes while it was read`;
  if (after.mtimeNs !== before.mtimeNs) return 'it was modified while it was read';
  if (after.ctimeNs !== before.ctimeNs) return 'its inode changed (ctime) while it was read';
  return undefined;
}

/**
 * Reads a file until one read is clean, at most 1 + `rereads` times. The first read is checked
 * against the walk's lstat (`walked`: taken before the open, so the check covers more, and one
 * fstat per file is saved); a re-read against an fstat at its open. `parent`: the file's content
 * in the parent snapshot (delta bases).
 */
export async function readConsistently(saver: FileSaver, path: string, walked: FileStamp, rereads: number, parent?: FileContent): Promise<ConsistentRead> {
  let saved = await saver.save(path, walked.size, { before: walked, ...(parent ? { parent } : {}) });
  let change = describeChange(saved);
  let attempts = 0;
  while (change !== undefined && attempts < rereads) {
    attempts++;
    try {
      saved = await saver.save(path, saved.after.size, { reread: true, ...(parent ? { parent } : {}) });
    } catch (err) {
      // Deleted (by a checkpoint rotation) after a read that saw it change: keep that read.
      if (systemErrorCode(err) !== 'ENOENT') throw err;
      change = `${change}, then it was deleted`;
      break;
    }
    change = describeChange(saved);
  }
  return { patch: patchOf(saved, change), rereads: attempts };
}

/**
 * The node describes the version that was read (its stamp at open), not the walk's earlier
 * lstat, and its size is the bytes stored, so restore's length check holds even for a torn copy.
 */
function patchOf(saved: SavedFile, torn: string | undefined): ReadPatch {
  const patch: ReadPatch = {
    ...(saved.content ? { content: saved.content } : {}),
    ...(saved.contentLists ? { contentLists: saved.contentLists } : {}),
    size: saved.bytes,
    mtime: saved.before.mtimeNs,
    ctime: saved.before.ctimeNs,
    inode: saved.before.ino,
  };
  if (torn !== undefined) return { ...patch, consistency: 'torn', consistencyReason: torn };
  if (saved.verdict && !saved.verdict.complete) return { ...patch, consistency: 'incomplete', consistencyReason: saved.verdict.reason };
  return patch;
}
