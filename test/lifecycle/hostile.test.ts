/**
 * Hostile snapshots: trees written with the repository key (library API) whose names and symlinks
 * try to make `tender restore` write outside its target. Nothing outside the target may change,
 * unsafe entries are reported as errors (non-zero exit), and the safe entries are restored.
 * Also: --overwrite onto a target that holds symlinks to the outside, and a non-empty target.
 */
import { lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobType } from '../../src/repo/blob.js';
import { idToHex } from '../../src/repo/ids.js';
import type { RepositoryWriter } from '../../src/repo/repository.js';
import type { WriterSession } from '../../src/repo/sessions.js';
import type { TreeNode } from '../../src/repo/snapshot/tree.js';
import { backends } from '../helpers/backends.js';
import { errorLine, jsonLines, makeTree, sha256File, treeDigest } from '../helpers/cli.js';
import { backup, initRepo, openRepository, tender, tenderExpect } from './helpers.js';

let inode = 1000;
const mtime = '1700000000123456789';

function node(name: string, type: TreeNode['type'], extra: Partial<TreeNode> = {}): TreeNode {
  return { name, type, mode: type === 'dir' ? 0o755 : 0o644, uid: 0, gid: 0, mtime, ctime: mtime, inode: ++inode, device: 42, links: 1, ...extra };
}

/**
 * Builds a snapshot from a tree description with the library API: blobs → trees → flush → snapshot,
 * through a writer, the snapshot stored inside a writer session.
 */
class Crafter {
  constructor(
    private readonly writer: RepositoryWriter,
    private readonly session: WriterSession,
  ) {}

  async file(name: string, content: string, extra: Partial<TreeNode> = {}): Promise<TreeNode> {
    const buf = Buffer.from(content);
    const id = await this.writer.saveBlob(BlobType.data, buf);
    return node(name, 'file', { size: buf.length, content: buf.length ? [idToHex(id)] : [], ...extra });
  }

  async dir(name: string, children: TreeNode[]): Promise<TreeNode> {
    return node(name, 'dir', { subtree: await this.writer.saveTree({ nodes: children }) });
  }

  link(name: string, target: string): TreeNode {
    return node(name, 'symlink', { linkTarget: target, mode: 0o777 });
  }

  async snapshot(nodes: TreeNode[]): Promise<string> {
    const tree = await this.writer.saveTree({ nodes });
    await this.writer.flush();
    return this.session.commit({
      version: 1,
      time: new Date().toISOString(),
      hostname: 'mallory',
      username: 'root',
      paths: ['/evil'],
      tags: ['hostile'],
      tree,
      program: 'hostile-test',
    });
  }
}

async function craft(repoUrl: string, build: (c: Crafter) => Promise<TreeNode[]>): Promise<string> {
  const repo = await openRepository(repoUrl);
  try {
    // As a backup does: the session first, then the index, then the writes.
    const session = await repo.startSession();
    try {
      await repo.refreshIndex();
      const writer = repo.openWriter();
      try {
        const c = new Crafter(writer, session);
        return await c.snapshot(await build(c));
      } finally {
        await writer.close();
      }
    } finally {
      await session.end();
    }
  } finally {
    await repo.close();
  }
}

/** Every path (relative, with type) below `dir`, without following symlinks. */
async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  const visit = async (rel: string) => {
    const full = rel ? path.join(dir, rel) : dir;
    for (const name of (await readdir(full)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(path.join(dir, r));
      out.push(`${r}${st.isDirectory() ? '/' : st.isSymbolicLink() ? '@' : ''}`);
      if (st.isDirectory()) await visit(r);
    }
  };
  await visit('');
  return out;
}

describe.each(backends)('restore of hostile snapshots ($name)', ({ name, makeRepoUrl }) => {
  let tmp: string;
  let repo: string;
  let arenaCount = 0;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), `tender-hostile-${name}-`));
    repo = makeRepoUrl(tmp);
    await initRepo(repo);
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  /** arena/{sentinel,target}: the sentinel directory sits next to the target and must not change. */
  async function arena() {
    const root = path.join(tmp, `arena-${++arenaCount}`);
    const sentinel = path.join(root, 'sentinel');
    await makeTree(sentinel, {
      'keep.txt': { type: 'file', content: 'sentinel\n', mtime: 1_600_000_000 },
      'victim.txt': { type: 'file', content: 'do not overwrite\n', mtime: 1_600_000_000 },
      inner: { type: 'dir', mtime: 1_600_000_000, children: { 'deep.txt': { type: 'file', content: 'deep\n', mtime: 1_600_000_000 } } },
    });
    const target = path.join(root, 'target');
    const before = { sentinel: await treeDigest(sentinel), listing: await listing(sentinel) };
    const expectUntouched = async () => {
      expect(await listing(sentinel), 'nothing was created in or removed from the sentinel directory').toEqual(before.listing);
      expect((await treeDigest(sentinel)).entries, 'the sentinel directory is unchanged').toEqual(before.sentinel.entries);
      const beside = (await readdir(root)).sort();
      expect(beside.filter((n) => n !== 'sentinel' && n !== 'target'), 'nothing was created next to the target').toEqual([]);
      // Nor one level further out.
      const outer = (await readdir(tmp)).filter((n) => /escape|pwned/.test(n));
      expect(outer).toEqual([]);
    };
    return { root, sentinel, target, expectUntouched };
  }

  it('refuses unsafe names, duplicate names and writes through symlinks; restores the rest; writes nothing outside', async () => {
    const a = await arena();
    const passwdBefore = await sha256File('/etc/passwd');
    const id = await craft(repo, async (c) => [
      await c.file('ok.txt', 'safe and sound\n'),
      await c.file('../escape', 'escaped via ..\n'),
      await c.file('a/b', 'slash in a name\n'),
      await c.dir('.', [await c.file('pwned-dot', 'dot\n')]),
      await c.dir('..', [await c.file('pwned-dotdot', 'dotdot\n')]),
      await c.file('', 'empty name\n'),
      await c.file('nul\0name', 'nul\n'),
      await c.file(`../../${path.basename(tmp)}-escape`, 'far\n'),
      // Duplicate names: a symlink to the outside first, then a directory (with a file) under the same name.
      c.link('dup', a.sentinel),
      await c.dir('dup', [await c.file('pwned-through-dup', 'through the link\n')]),
      // A symlink to an outside file, then a file under the same name.
      c.link('victim', path.join(a.sentinel, 'victim.txt')),
      await c.file('victim', 'overwritten!\n'),
      // Absolute symlinks are allowed as symlinks; nothing is written through them.
      c.link('abs-passwd', '/etc/passwd'),
      c.link('abs-sentinel', a.sentinel),
      await c.dir('sub', [
        await c.file('inner.txt', 'inner\n'),
        await c.file('../../escape2', 'escaped two levels\n'),
        c.link('up', '../../sentinel'),
        await c.dir('up', [await c.file('pwned-through-up', 'relative link\n')]),
        c.link('rel-victim', '../../sentinel/victim.txt'),
        await c.file('rel-victim', 'overwritten through a relative link\n'),
        await c.dir('deeper', [c.link('x', '/'), await c.dir('x', [await c.dir('tmp', [await c.file('pwned-root', 'root\n')])])]),
      ]),
    ]);

    const args = ['--repo', repo, '--json', 'restore', id, '--target', a.target];
    const r = await tender(args);
    expect(r.code, r.stderr).not.toBe(0);
    expect(r.code).toBe(1);
    const summary = jsonLines(r.stdout).find((l) => l.message_type === 'summary') as { errors: Array<{ path: string; message: string }> } | undefined;
    expect(summary, r.stdout).toBeDefined();
    const refused = summary!.errors.map((e) => e.path).sort();
    expect(refused).toEqual(
      [
        '../escape',
        'a/b',
        '.',
        '..',
        '',
        'nul\0name',
        `../../${path.basename(tmp)}-escape`,
        'dup',
        'victim',
        'sub/../../escape2',
        'sub/up',
        'sub/rel-victim',
        'sub/deeper/x',
      ].sort(),
    );
    for (const e of summary!.errors) expect(e.message).toMatch(/unsafe or duplicate name/);
    // With --json, the last stderr line is the exit_error object (each refused entry is named above it).
    const lastLine = r.stderr.trim().split('\n').at(-1)!;
    expect(JSON.parse(lastLine)).toMatchObject({ message_type: 'exit_error', code: 'TENDER_IO' });
    expect(r.stderr.split('\n').filter((l) => l.startsWith('error: '))).toHaveLength(refused.length);

    // The safe entries are there.
    expect(await readFile(path.join(a.target, 'ok.txt'), 'utf8')).toBe('safe and sound\n');
    expect(await readFile(path.join(a.target, 'sub', 'inner.txt'), 'utf8')).toBe('inner\n');
    expect(await readlink(path.join(a.target, 'dup'))).toBe(a.sentinel);
    expect(await readlink(path.join(a.target, 'victim'))).toBe(path.join(a.sentinel, 'victim.txt'));
    expect(await readlink(path.join(a.target, 'abs-passwd'))).toBe('/etc/passwd');
    expect(await readlink(path.join(a.target, 'abs-sentinel'))).toBe(a.sentinel);
    expect(await readlink(path.join(a.target, 'sub', 'up'))).toBe('../../sentinel');
    expect(await readlink(path.join(a.target, 'sub', 'deeper', 'x'))).toBe('/');
    expect(await listing(a.target)).toEqual(
      ['abs-passwd@', 'abs-sentinel@', 'dup@', 'ok.txt', 'sub/', 'sub/deeper/', 'sub/deeper/x@', 'sub/inner.txt', 'sub/rel-victim@', 'sub/up@', 'victim@'].sort(),
    );

    await a.expectUntouched();
    expect(await sha256File('/etc/passwd')).toBe(passwdBefore);
    await expect(lstat('/tmp/pwned-root')).rejects.toThrow();
  });

  it('--overwrite replaces symlinks to the outside that sit where the snapshot has directories and files', async () => {
    const a = await arena();
    const src = path.join(tmp, `src-${arenaCount}`, 'src');
    await makeTree(src, {
      d: { type: 'dir', children: { 'f.txt': 'file in d\n' } },
      d2: { type: 'dir', children: { e: { type: 'dir', children: { 'g.txt': 'file in d2/e\n' } } } },
      'file.txt': 'a plain file\n',
      'victim.txt': 'restored content\n',
      link: { type: 'symlink', target: 'file.txt' },
    });
    const s = await backup(repo, [src]);

    // Target 1: the snapshot's top directory itself is a symlink to the outside.
    await mkdir(a.target);
    await symlink(a.sentinel, path.join(a.target, 'src'));
    await tenderExpect(['--repo', repo, '--quiet', 'restore', s.snapshot_id, '--target', a.target, '--overwrite']);
    expect((await lstat(path.join(a.target, 'src'))).isDirectory()).toBe(true);
    expect((await treeDigest(path.join(a.target, 'src'))).entries).toEqual((await treeDigest(src)).entries);
    await a.expectUntouched();

    // Target 2: symlinks to the outside deeper down, where the snapshot has a directory, a
    // directory inside a directory, a file (whose name matches a sentinel file), and a symlink.
    await rm(a.target, { recursive: true, force: true });
    await mkdir(path.join(a.target, 'src', 'd2'), { recursive: true });
    await symlink(a.sentinel, path.join(a.target, 'src', 'd'));
    await symlink(path.join(a.sentinel, 'inner'), path.join(a.target, 'src', 'd2', 'e'));
    await symlink(path.join(a.sentinel, 'victim.txt'), path.join(a.target, 'src', 'victim.txt'));
    await symlink(path.join(a.sentinel, 'keep.txt'), path.join(a.target, 'src', 'file.txt'));
    await symlink(a.sentinel, path.join(a.target, 'src', 'link'));
    await tenderExpect(['--repo', repo, '--quiet', 'restore', s.snapshot_id, '--target', a.target, '--overwrite']);
    for (const p of ['d', 'd2/e']) expect((await lstat(path.join(a.target, 'src', p))).isDirectory(), `${p} is a real directory`).toBe(true);
    expect((await lstat(path.join(a.target, 'src', 'victim.txt'))).isFile()).toBe(true);
    expect((await treeDigest(path.join(a.target, 'src'))).entries).toEqual((await treeDigest(src)).entries);
    await a.expectUntouched();
  });

  it('a hostile snapshot restored with --overwrite over outside-pointing symlinks still writes nothing outside', async () => {
    const a = await arena();
    const id = await craft(repo, async (c) => [
      await c.dir('d', [await c.file('pwned-d', 'x\n')]),
      c.link('dup', a.sentinel),
      await c.dir('dup', [await c.file('pwned-dup', 'x\n')]),
      await c.file('victim.txt', 'new content\n'),
    ]);
    await mkdir(a.target);
    await symlink(a.sentinel, path.join(a.target, 'd'));
    await symlink(path.join(a.sentinel, 'victim.txt'), path.join(a.target, 'victim.txt'));
    const r = await tender(['--repo', repo, '--quiet', 'restore', id, '--target', a.target, '--overwrite']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error: dup: refusing unsafe or duplicate name/);
    expect(await listing(a.target)).toEqual(['d/', 'd/pwned-d', 'dup@', 'victim.txt']);
    expect(await readFile(path.join(a.target, 'victim.txt'), 'utf8')).toBe('new content\n');
    await a.expectUntouched();
  });

  it('restoring into a non-empty target without --overwrite is refused and writes nothing', async () => {
    const a = await arena();
    const id = await craft(repo, async (c) => [await c.file('new.txt', 'new\n'), await c.dir('dir', [await c.file('x', 'x\n')])]);
    await makeTree(a.target, { 'existing.txt': { type: 'file', content: 'already here\n', mtime: 1_500_000_000 } });
    const before = await treeDigest(a.target);
    const r = await tender(['--repo', repo, 'restore', id, '--target', a.target]);
    expect(r.code).toBe(1);
    expect(errorLine(r).message).toMatch(/is not empty/);
    expect((await treeDigest(a.target)).entries).toEqual(before.entries);
    expect(await listing(a.target)).toEqual(['existing.txt']);
    await a.expectUntouched();

    // A target that is a file is refused too, and stays a file.
    const asFile = path.join(a.root, 'target-file');
    await writeFile(asFile, 'i am a file\n');
    const r2 = await tender(['--repo', repo, 'restore', id, '--target', asFile]);
    expect(r2.code).not.toBe(0);
    expect(await readFile(asFile, 'utf8')).toBe('i am a file\n');
    await rm(asFile);
  });
});
