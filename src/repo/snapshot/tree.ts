import { FormatError } from '../binary.js';
import { isHexId } from '../ids.js';

/**
 * A tree blob is the JSON of one directory: {"nodes":[...]} sorted by name (byte order of UTF-8).
 * Trees are content-addressed blobs, so an unchanged directory is stored once for all snapshots.
 */
export type NodeType = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'chardev' | 'blockdev';

export interface TreeNode {
  name: string;
  type: NodeType;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Nanoseconds since the epoch, as a decimal string (exact). */
  mtime: string;
  ctime: string;
  inode: number;
  device: number;
  links: number;
  /** Files: byte length. */
  size?: number;
  /** Files: data blob IDs in order (at most `inlineContentLimit`). */
  content?: string[];
  /** Files with more chunks: list blob IDs, each holding up to `listBlobCapacity` data IDs. */
  contentLists?: string[];
  /** Files with holes at backup time (restored sparse). */
  sparse?: boolean;
  /** Directories. */
  subtree?: string;
  /** Symlinks. */
  linkTarget?: string;
  /** Device nodes. */
  rdev?: number;
  /**
   * Files only; absent when the stored content is a consistent copy. `torn`: the file changed
   * while it was read (and again on every re-read); `incomplete`: read cleanly, but its format's
   * completeness check failed (a half-written checkpoint file).
   */
  consistency?: Consistency;
  /** With `consistency`: why, in one short sentence. */
  consistencyReason?: string;
}

export type Consistency = 'torn' | 'incomplete';

export interface Tree {
  nodes: TreeNode[];
}

export const inlineContentLimit = 1024;
export const listBlobCapacity = 8192;

const nodeTypes = new Set<NodeType>(['file', 'dir', 'symlink', 'fifo', 'socket', 'chardev', 'blockdev']);

/** Nodes that encode the same (same fields, same values): a directory made only of these is unchanged. */
export function sameNode(a: TreeNode, b: TreeNode): boolean {
  const keys = Object.keys(a) as Array<keyof TreeNode>;
  if (keys.length !== Object.keys(b).length) return false;
  for (const k of keys) {
    const x = a[k];
    const y = b[k];
    if (x === y) continue;
    if (!Array.isArray(x) || !Array.isArray(y) || x.length !== y.length || x.some((v, i) => v !== y[i])) return false;
  }
  return true;
}

export function encodeTree(tree: Tree): Buffer {
  return Buffer.from(JSON.stringify(tree));
}

/** Parses and validates a tree; hostile names are rejected here and again by the restorer. */
export function decodeTree(bytes: Buffer): Tree {
  let tree: Tree;
  try {
    tree = JSON.parse(bytes.toString('utf8')) as Tree;
  } catch {
    throw new FormatError('tree is not valid JSON');
  }
  if (!tree || !Array.isArray(tree.nodes)) throw new FormatError('tree has no node list');
  for (const node of tree.nodes) validateNode(node);
  return tree;
}

function validateNode(node: TreeNode): void {
  if (!node || typeof node !== 'object') throw new FormatError('tree node is not an object');
  if (typeof node.name !== 'string' || !nodeTypes.has(node.type)) throw new FormatError('tree node lacks a name or type');
  for (const field of ['mode', 'uid', 'gid', 'inode', 'device', 'links'] as const) {
    if (!Number.isSafeInteger(node[field])) throw new FormatError(`tree node ${JSON.stringify(node.name)} has a bad ${field}`);
  }
  if (typeof node.mtime !== 'string' || typeof node.ctime !== 'string' || !/^\d+$/.test(node.mtime) || !/^\d+$/.test(node.ctime)) {
    throw new FormatError(`tree node ${JSON.stringify(node.name)} has bad times`);
  }
  for (const field of ['content', 'contentLists'] as const) {
    if (node[field] !== undefined && !Array.isArray(node[field])) throw new FormatError(`tree node ${JSON.stringify(node.name)} has a bad ${field}`);
  }
  if (node.subtree !== undefined && typeof node.subtree !== 'string') throw new FormatError(`tree node ${JSON.stringify(node.name)} has a bad subtree`);
  const ids = [...(node.content ?? []), ...(node.contentLists ?? []), ...(node.subtree !== undefined ? [node.subtree] : [])];
  for (const id of ids) if (typeof id !== 'string' || !isHexId(id)) throw new FormatError(`tree node ${JSON.stringify(node.name)} has a bad blob ID`);
  if (node.type === 'file' && !(Number.isSafeInteger(node.size) && node.size! >= 0)) {
    throw new FormatError(`file ${JSON.stringify(node.name)} has a bad size`);
  }
  if (node.type === 'dir' && !node.subtree) throw new FormatError(`directory ${JSON.stringify(node.name)} has no subtree`);
  if (node.type === 'symlink' && typeof node.linkTarget !== 'string') throw new FormatError(`symlink ${JSON.stringify(node.name)} has no target`);
  if (
    (node.consistency !== undefined && node.consistency !== 'torn' && node.consistency !== 'incomplete') ||
    (node.consistencyReason !== undefined && typeof node.consistencyReason !== 'string')
  ) {
    throw new FormatError(`tree node ${JSON.stringify(node.name)} has a bad consistency label`);
  }
}

/** A name that is safe to create inside a directory: no separators, not "." or "..", no NUL. */
export function isSafeName(name: string): boolean {
  return name.length > 0 && name !== '.' && name !== '..' && !name.includes('/') && !name.includes('\0');
}
