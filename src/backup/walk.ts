import { type BigIntStats, lstatSync, readdirSync, readlinkSync } from 'node:fs';
import type { NodeType, TreeNode } from '../repo/snapshot/tree.js';

/**
 * The walk stage: directory listings in a stable order and metadata for tree nodes.
 * Metadata calls are synchronous on purpose: for cached inodes a direct lstat costs a few
 * microseconds, a thread-pool round trip several times that, and an unchanged tree is nothing
 * but metadata (docs/design.md, "Backups and deduplication").
 */

/** Entry names of a directory, sorted by their UTF-8 bytes (the order of tree nodes). */
export function readDirSorted(dir: string): string[] {
  return sortNames(readdirSync(dir));
}

const surrogate = /[\uD800-\uDFFF]/;

/**
 * Sorts names by their UTF-8 bytes. Without surrogate pairs (characters beyond U+FFFF), the
 * order of UTF-16 code units is the order of UTF-8 bytes, and plain string comparison (no
 * allocation) gives it; otherwise the names are compared as encoded bytes.
 */
export function sortNames(names: string[]): string[] {
  if (!names.some((n) => surrogate.test(n))) return names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const keyed = names.map((name) => ({ name, bytes: Buffer.from(name) }));
  keyed.sort((a, b) => Buffer.compare(a.bytes, b.bytes));
  return keyed.map((k) => k.name);
}

export function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

export function lstatExact(path: string): BigIntStats {
  return lstatSync(path, { bigint: true });
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
export function metadataNode(path: string, name: string, stats: BigIntStats, type: NodeType): TreeNode {
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
    node.linkTarget = readlinkSync(path);
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
