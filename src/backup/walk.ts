import type { BigIntStats } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import type { NodeType, TreeNode } from '../repo/snapshot/tree.js';

/** The walk stage: directory listings in a stable order and metadata for tree nodes. */

/** Entry names of a directory, sorted by their UTF-8 bytes (the order of tree nodes). */
export async function readDirSorted(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  return names.sort(compareNames);
}

export function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

export async function lstatExact(path: string): Promise<BigIntStats> {
  return lstat(path, { bigint: true });
}

export function nodeType(stats: BigIntStats): NodeType | undefined {
  if (stats.isFile()) return 'file';
  if (stats.isDirectory()) return 'dir';
  if (stats.isSymbolicLink()) return 'symlink';
  if (stats.isFIFO()) return 'fifo';
  if (stats.isSocket()) return 'socket';
  if (stats.isCharacterDevice()) return 'chardev';
  if (stats.isBlockDevice()) return 'blockdev';
  return undefined;
}

/** The metadata part of a tree node; content, subtree and links are filled in by later stages. */
export async function metadataNode(path: string, name: string, stats: BigIntStats, type: NodeType): Promise<TreeNode> {
  const node: TreeNode = {
    name,
    type,
    mode: Number(stats.mode & 0o7777n),
    uid: Number(stats.uid),
    gid: Number(stats.gid),
    mtime: stats.mtimeNs.toString(),
    ctime: stats.ctimeNs.toString(),
    inode: Number(stats.ino),
    device: Number(stats.dev),
    links: Number(stats.nlink),
  };
  if (type === 'file') {
    node.size = Number(stats.size);
    // Fewer allocated blocks than the size needs: the file has holes.
    if (stats.blocks * 512n < stats.size) node.sparse = true;
  } else if (type === 'symlink') {
    node.linkTarget = await readlink(path);
  } else if (type === 'chardev' || type === 'blockdev') {
    node.rdev = Number(stats.rdev);
  }
  return node;
}

/** A file whose metadata matches its node in the parent snapshot is taken as unchanged, unread. */
export function unchangedSince(previous: TreeNode | undefined, current: TreeNode): boolean {
  return (
    previous !== undefined &&
    previous.type === 'file' &&
    current.type === 'file' &&
    previous.size === current.size &&
    previous.mtime === current.mtime &&
    previous.ctime === current.ctime &&
    previous.inode === current.inode
  );
}
