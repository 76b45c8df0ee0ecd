import { type BigIntStats, lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { getSystemErrorName } from 'node:util';
import type { NodeType, TreeNode } from '../repo/snapshot/tree.js';
import { loadNative } from '../util/native.js';

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
function sortNames(names: string[]): string[] {
  if (!names.some((n) => surrogate.test(n))) return names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const keyed = names.map((name) => ({ name, bytes: Buffer.from(name) }));
  keyed.sort((a, b) => Buffer.compare(a.bytes, b.bytes));
  return keyed.map((k) => k.name);
}

export function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function lstatExact(path: string): BigIntStats {
  return lstatSync(path, { bigint: true });
}

/** The part of an lstat the walk uses; times in nanoseconds since the epoch, as exact decimals. */
export interface EntryStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  blocks: number;
  mtimeNs: string;
  ctimeNs: string;
  ino: number;
  dev: number;
  nlink: number;
  rdev: number;
}

function entryStat(stats: BigIntStats): EntryStat {
  return {
    mode: Number(stats.mode),
    uid: Number(stats.uid),
    gid: Number(stats.gid),
    size: Number(stats.size),
    blocks: Number(stats.blocks),
    mtimeNs: stats.mtimeNs.toString(),
    ctimeNs: stats.ctimeNs.toString(),
    ino: Number(stats.ino),
    dev: Number(stats.dev),
    nlink: Number(stats.nlink),
    rdev: Number(stats.rdev),
  };
}

/** lstat of one path, or its error. */
export function lstatPath(path: string): EntryStat | Error {
  try {
    return entryStat(lstatExact(path));
  } catch (err) {
    return err as Error;
  }
}

const statFields = 14;

/**
 * lstat of each name in `dir`, or the error for that name. With the native addon this is one
 * call per directory (fstatat on the open directory: no path lookup per entry, no BigInts);
 * otherwise one lstatSync per entry. Both give the same values.
 */
export function lstatEntries(dir: string, names: string[]): Array<EntryStat | Error> {
  const lstatAt = loadNative()?.lstatAt;
  let raw: Float64Array | undefined;
  if (lstatAt) {
    try {
      raw = lstatAt(dir, names);
    } catch {
      // The directory could not be opened again (just listed): report per entry below.
    }
  }
  return names.map((name, i) => {
    if (!raw) return lstatPath(join(dir, name));
    const f = raw.subarray(i * statFields, (i + 1) * statFields);
    if (f[0] !== 0) {
      const code = getSystemErrorName(-f[0]!);
      const path = join(dir, name);
      return Object.assign(new Error(`${code}: lstat '${path}'`), { code, errno: -f[0]!, syscall: 'lstat', path });
    }
    return {
      mode: f[1]!,
      uid: f[2]!,
      gid: f[3]!,
      size: f[4]!,
      blocks: f[5]!,
      mtimeNs: nanoseconds(f[6]!, f[7]!),
      ctimeNs: nanoseconds(f[8]!, f[9]!),
      ino: f[10]!,
      dev: f[11]!,
      nlink: f[12]!,
      rdev: f[13]!,
    };
  });
}

function nanoseconds(seconds: number, nanos: number): string {
  return seconds > 0 ? `${seconds}${String(nanos).padStart(9, '0')}` : (BigInt(seconds) * 1_000_000_000n + BigInt(nanos)).toString();
}

const fileTypes: ReadonlyMap<number, NodeType> = new Map([
  [0o100000, 'file'],
  [0o040000, 'dir'],
  [0o120000, 'symlink'],
  [0o010000, 'fifo'],
  [0o140000, 'socket'],
  [0o020000, 'chardev'],
  [0o060000, 'blockdev'],
]);

export function nodeType(stat: EntryStat): NodeType | undefined {
  return fileTypes.get(stat.mode & 0o170000);
}

/** The metadata part of a tree node; content, subtree and links are filled in by later stages. */
export function metadataNode(path: string, name: string, stat: EntryStat, type: NodeType): TreeNode {
  const node: TreeNode = {
    name,
    type,
    mode: stat.mode & 0o7777,
    uid: stat.uid,
    gid: stat.gid,
    mtime: stat.mtimeNs,
    ctime: stat.ctimeNs,
    inode: stat.ino,
    device: stat.dev,
    links: stat.nlink,
  };
  if (type === 'file') {
    node.size = stat.size;
    // Fewer allocated blocks than the size needs: the file has holes.
    if (stat.blocks * 512 < stat.size) node.sparse = true;
  } else if (type === 'symlink') {
    node.linkTarget = readlinkSync(path);
  } else if (type === 'chardev' || type === 'blockdev') {
    node.rdev = stat.rdev;
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
