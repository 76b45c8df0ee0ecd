/**
 * Building file trees for backup tests and comparing two trees.
 *
 *   await makeTree(dir, {
 *     'empty': '',
 *     'rand.bin': { type: 'file', random: 20 << 20 },
 *     'sub': { type: 'dir', mode: 0o700, children: { 'a.txt': 'hello' } },
 *     'link': { type: 'symlink', target: 'sub/a.txt' },
 *     'hard': { type: 'hardlink', to: 'sub/a.txt' },
 *     'holes': { type: 'sparse', size: 64 << 20, data: [{ offset: 0, length: 4096 }] },
 *   });
 *   await assertSameTree(dir, restoredDir, { sparse: ['holes'] });
 *
 * treeDigest records, for every entry below a root (the root itself is ''): type, permission
 * bits, uid/gid, size, mtime to the second, symlink target, hardlink groups (paths sharing an
 * inode inside the tree), and a content digest that does not care whether zeros are stored or
 * are holes (so a sparse restore of a dense file still compares equal).
 */
import { createHash, randomFillSync } from 'node:crypto';
import { chmod, link, lstat, lutimes, mkdir, open, readdir, readFile, readlink, symlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'vitest';

export type FileSpec =
  | string
  | Buffer
  | {
      type: 'file';
      /** Literal content. */
      content?: string | Buffer;
      /** This many random bytes. */
      random?: number;
      /** `pattern` repeated to `size` bytes. */
      pattern?: string;
      size?: number;
      mode?: number;
      /** Seconds since the epoch. */
      mtime?: number;
    };

export type EntrySpec =
  | FileSpec
  | { type: 'dir'; mode?: number; mtime?: number; children?: TreeSpec }
  | { type: 'symlink'; target: string; mtime?: number }
  /** Another name for the file at `to` (a path relative to the tree root). */
  | { type: 'hardlink'; to: string }
  /** A file of `size` bytes that is all holes except `data` (random bytes unless given). */
  | { type: 'sparse'; size: number; data: Array<{ offset: number; length?: number; content?: Buffer }>; mode?: number; mtime?: number }
  | { type: 'fifo' };

export interface TreeSpec {
  [name: string]: EntrySpec;
}

export function randomBuffer(size: number): Buffer {
  const buf = Buffer.allocUnsafe(size);
  for (let at = 0; at < size; at += 1 << 16) randomFillSync(buf, at, Math.min(1 << 16, size - at));
  return buf;
}

/** Writes `size` random bytes to `file` without holding them all in memory. */
export async function writeRandomFile(file: string, size: number): Promise<void> {
  const handle = await open(file, 'w');
  try {
    const block = Buffer.allocUnsafe(Math.min(size, 8 << 20));
    for (let at = 0; at < size; at += block.length) {
      const n = Math.min(block.length, size - at);
      randomFillSync(block, 0, n);
      await handle.write(block, 0, n, at);
    }
  } finally {
    await handle.close();
  }
}

/** Creates the tree described by `spec` inside `dir` (created if needed). */
export async function makeTree(dir: string, spec: TreeSpec): Promise<void> {
  await mkdir(dir, { recursive: true });
  const hardlinks: Array<[string, string]> = [];
  const dirMeta: Array<[string, { mode?: number; mtime?: number }]> = [];
  const fileMeta: Array<[string, { mode?: number; mtime?: number; symlink?: boolean }]> = [];
  const build = async (at: string, s: TreeSpec) => {
    for (const [name, entry] of Object.entries(s)) {
      const full = path.join(at, name);
      if (typeof entry === 'string' || Buffer.isBuffer(entry)) {
        await writeFile(full, entry);
        continue;
      }
      switch (entry.type) {
        case 'file': {
          if (entry.random !== undefined) await writeRandomFile(full, entry.random);
          else if (entry.pattern !== undefined) {
            const size = entry.size ?? entry.pattern.length;
            const unit = Buffer.from(entry.pattern);
            const buf = Buffer.alloc(size);
            for (let i = 0; i < size; i += unit.length) unit.copy(buf, i, 0, Math.min(unit.length, size - i));
            await writeFile(full, buf);
          } else await writeFile(full, entry.content ?? '');
          fileMeta.push([full, entry]);
          break;
        }
        case 'dir':
          await mkdir(full);
          await build(full, entry.children ?? {});
          dirMeta.push([full, entry]);
          break;
        case 'symlink':
          await symlink(entry.target, full);
          if (entry.mtime !== undefined) fileMeta.push([full, { mtime: entry.mtime, symlink: true }]);
          break;
        case 'hardlink':
          hardlinks.push([path.join(dir, entry.to), full]);
          break;
        case 'sparse': {
          const handle = await open(full, 'w');
          try {
            await handle.truncate(entry.size);
            for (const d of entry.data) {
              const content = d.content ?? randomBuffer(d.length ?? 4096);
              await handle.write(content, 0, content.length, d.offset);
            }
          } finally {
            await handle.close();
          }
          fileMeta.push([full, entry]);
          break;
        }
        case 'fifo':
          throw new Error('fifo entries are not supported by makeTree');
      }
    }
  };
  await build(dir, spec);
  for (const [existing, name] of hardlinks) await link(existing, name);
  for (const [full, m] of fileMeta) {
    if (m.mode !== undefined) await chmod(full, m.mode);
    if (m.mtime !== undefined) await (m.symlink ? lutimes(full, m.mtime, m.mtime) : utimes(full, m.mtime, m.mtime));
  }
  // Deepest first, after everything inside them exists (creating entries changes a dir's mtime).
  for (const [full, m] of dirMeta.reverse()) {
    if (m.mode !== undefined) await chmod(full, m.mode);
    if (m.mtime !== undefined) await utimes(full, m.mtime, m.mtime);
  }
}

export interface EntryDigest {
  type: 'file' | 'dir' | 'symlink' | 'other';
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  mtime: number;
  target?: string;
  /** sha256 over the content, with all-zero blocks (stored or holes) digested as a marker. */
  content?: string;
  /** For files with more than one name inside the tree: all those names, sorted. */
  hardlinks?: string[];
}

export interface TreeDigest {
  entries: Record<string, EntryDigest>;
  /** Allocated bytes (st_blocks × 512) of each regular file. */
  allocated: Record<string, number>;
}

const zeroBlockSize = 1 << 20;
const zeroBlock = Buffer.alloc(zeroBlockSize);

/** Content digest of a file that reads it in 1 MiB blocks and marks all-zero blocks. */
export async function contentDigest(file: string): Promise<string> {
  const hash = createHash('sha256');
  const handle = await open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(8 * zeroBlockSize);
    let pos = 0;
    for (;;) {
      let filled = 0;
      while (filled < buf.length) {
        const { bytesRead } = await handle.read(buf, filled, buf.length - filled, pos + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      for (let at = 0; at < filled; at += zeroBlockSize) {
        const block = buf.subarray(at, Math.min(filled, at + zeroBlockSize));
        if (block.equals(zeroBlock.subarray(0, block.length))) hash.update(`Z${block.length};`);
        else hash.update('D').update(block);
      }
      pos += filled;
      if (filled < buf.length) break;
    }
  } finally {
    await handle.close();
  }
  return hash.digest('hex');
}

/** sha256 of a whole file (small files). */
export async function sha256File(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

export async function treeDigest(root: string): Promise<TreeDigest> {
  const entries: Record<string, EntryDigest> = {};
  const allocated: Record<string, number> = {};
  const inodes = new Map<bigint, string[]>();
  const visit = async (rel: string): Promise<void> => {
    const full = rel === '' ? root : path.join(root, rel);
    const st = await lstat(full, { bigint: true });
    const base = {
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtime: Number(st.mtimeNs / 1_000_000_000n),
    };
    if (st.isDirectory()) {
      entries[rel] = { type: 'dir', ...base };
      for (const name of (await readdir(full)).sort()) await visit(rel === '' ? name : `${rel}/${name}`);
    } else if (st.isSymbolicLink()) {
      entries[rel] = { type: 'symlink', ...base, target: await readlink(full) };
    } else if (st.isFile()) {
      entries[rel] = { type: 'file', ...base, size: Number(st.size), content: await contentDigest(full) };
      allocated[rel] = Number(st.blocks) * 512;
      if (st.nlink > 1n) {
        const group = inodes.get(st.ino) ?? [];
        group.push(rel);
        inodes.set(st.ino, group);
      }
    } else {
      entries[rel] = { type: 'other', ...base };
    }
  };
  await visit('');
  for (const group of inodes.values()) {
    if (group.length < 2) continue;
    const sorted = [...group].sort();
    for (const rel of group) entries[rel]!.hardlinks = sorted;
  }
  return { entries, allocated };
}

export interface CompareOptions {
  /** Files (relative paths) that must be sparse in `b`: fewer bytes allocated than their size. */
  sparse?: string[];
  /** Leave these paths out of the comparison. */
  ignore?: (rel: string) => boolean;
  /** Compare uid/gid too (default true). */
  owners?: boolean;
}

/**
 * Asserts that tree `b` (e.g. a restore) is identical to tree `a` (the original). Returns the
 * digests. The roots themselves are compared too (mode, times).
 */
export async function assertSameTree(a: string, b: string, options: CompareOptions = {}): Promise<{ a: TreeDigest; b: TreeDigest }> {
  const [da, db] = await Promise.all([treeDigest(a), treeDigest(b)]);
  const pick = (d: TreeDigest) => {
    const out: Record<string, EntryDigest> = {};
    for (const [rel, e] of Object.entries(d.entries)) {
      if (options.ignore?.(rel)) continue;
      const copy = { ...e };
      if (options.owners === false) {
        copy.uid = 0;
        copy.gid = 0;
      }
      out[rel] = copy;
    }
    return out;
  };
  expect(pick(db), `tree ${b} differs from ${a}`).toEqual(pick(da));
  for (const rel of options.sparse ?? []) {
    const size = db.entries[rel]?.size;
    expect(size, `${rel} exists in ${b}`).toBeTypeOf('number');
    expect(db.allocated[rel], `${rel} in ${b} is sparse (allocated bytes < size ${size})`).toBeLessThan(size!);
  }
  return { a: da, b: db };
}

/** sha256 of every file below `dir` (for "nothing in the repository changed" checks). */
export async function hashFiles(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const visit = async (rel: string) => {
    const full = rel === '' ? dir : path.join(dir, rel);
    for (const entry of await readdir(full, { withFileTypes: true })) {
      const childRel = rel === '' ? entry.name : `${rel}/${entry.name}`;
      if (entry.isDirectory()) await visit(childRel);
      else out.set(childRel, await sha256File(path.join(dir, childRel)));
    }
  };
  await visit('');
  return out;
}

/**
 * Asserts that every file of `before` is still there with the same bytes, and that new files
 * appear only under the given prefixes (e.g. data/ and index/ after a failed backup).
 */
export function expectRepoUnchanged(before: Map<string, string>, after: Map<string, string>, allowNewUnder: string[] = []): void {
  const changed = [...before].filter(([k, v]) => after.get(k) !== v).map(([k]) => k);
  expect(changed, 'existing repository objects changed or vanished').toEqual([]);
  const added = [...after.keys()].filter((k) => !before.has(k) && !allowNewUnder.some((p) => k.startsWith(p)));
  expect(added, `unexpected new repository objects (allowed only under ${allowNewUnder.join(', ') || 'nothing'})`).toEqual([]);
}
