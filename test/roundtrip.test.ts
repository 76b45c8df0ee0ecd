/**
 * End to end through the CLI: init → backup → restore gives back an identical tree, for every
 * kind of entry tender handles, on every backend (test/helpers/backends.ts).
 */
import { lchown, mkdtemp, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Repository } from '../src/repo/repository.js';
import { FsStorage } from '../src/storage/fs.js';
import { backends } from './helpers/backends.js';
import {
  type TreeSpec,
  assertSameTree,
  backupJson,
  describeRun,
  errorLine,
  jsonLines,
  makeTree,
  randomBuffer,
  runTender,
  tenderOk,
  testPassword,
  treeDigest,
} from './helpers/cli.js';

const isRoot = process.getuid?.() === 0;
const MiB = 1 << 20;

/** Distinct old times, so a restore that forgot to set times cannot match by accident. */
let tick = 1_000_000_000;
const t = () => (tick += 3607);

function everyKindSpec(): TreeSpec {
  return {
    'empty-file': { type: 'file', content: '', mtime: t() },
    'small.txt': { type: 'file', content: 'hello, tender\n', mtime: t() },
    'one-byte': { type: 'file', content: 'x', mtime: t() },
    'random-20M.bin': { type: 'file', random: 20 * MiB, mtime: t() },
    'pattern.bin': { type: 'file', pattern: 'tender repeats itself. ', size: 6 * MiB + 123, mtime: t() },
    'hl-original': { type: 'file', content: 'shared by three names\n', mtime: t() },
    'hl-second': { type: 'hardlink', to: 'hl-original' },
    'rel-link': { type: 'symlink', target: 'small.txt', mtime: t() },
    'abs-link': { type: 'symlink', target: '/etc/hostname', mtime: t() },
    'dangling-link': { type: 'symlink', target: 'does/not/exist', mtime: t() },
    'dir-link': { type: 'symlink', target: 'nested', mtime: t() },
    // NFC and NFD spellings of the same visible name are two different entries.
    'caf\u00e9': { type: 'file', content: 'NFC', mtime: t() },
    'cafe\u0301': { type: 'file', content: 'NFD', mtime: t() },
    '🎉 party time 🎉.txt': { type: 'file', content: 'emoji', mtime: t() },
    'name with  spaces ': { type: 'file', content: 'spaces', mtime: t() },
    '日本語のファイル': { type: 'file', content: 'cjk', mtime: t() },
    'mode-0600': { type: 'file', content: 'private', mode: 0o600, mtime: t() },
    'mode-0755': { type: 'file', content: '#!/bin/sh\n', mode: 0o755, mtime: t() },
    'mode-0444': { type: 'file', content: 'read only', mode: 0o444, mtime: t() },
    'mode-4755': { type: 'file', content: 'setuid', mode: 0o4755, mtime: t() },
    'private-dir': { type: 'dir', mode: 0o700, mtime: t(), children: { inside: { type: 'file', content: 'in 0700', mtime: t() } } },
    'readonly-dir': { type: 'dir', mode: 0o555, mtime: t(), children: { inside: { type: 'file', content: 'in 0555', mtime: t() } } },
    'sticky-dir': { type: 'dir', mode: 0o1777, mtime: t(), children: {} },
    'empty-dir': { type: 'dir', mtime: t(), children: {} },
    sparse: {
      type: 'sparse',
      size: 96 * MiB,
      data: [{ offset: 0, length: 64 * 1024 }, { offset: 48 * MiB + 4321, length: 64 * 1024 }, { offset: 96 * MiB - 64 * 1024, length: 64 * 1024 }],
      mtime: t(),
    },
    nested: {
      type: 'dir',
      mtime: t(),
      children: {
        a: {
          type: 'dir',
          mtime: t(),
          children: {
            b: {
              type: 'dir',
              mtime: t(),
              children: {
                c: { type: 'dir', mtime: t(), children: { 'deep.txt': { type: 'file', content: 'deep', mtime: t() } } },
                'hl-third': { type: 'hardlink', to: 'hl-original' },
                'up-link': { type: 'symlink', target: '../../../small.txt', mtime: t() },
              },
            },
          },
        },
        'small2.txt': { type: 'file', content: 'second small', mtime: t() },
        'data.bin': { type: 'file', random: 300 * 1024, mtime: t() },
      },
    },
  };
}

async function chownSome(src: string): Promise<void> {
  if (!isRoot) return;
  await lchown(path.join(src, 'small.txt'), 1234, 5678);
  await lchown(path.join(src, 'nested', 'small2.txt'), 4321, 8765);
  await lchown(path.join(src, 'rel-link'), 2222, 3333);
  await lchown(path.join(src, 'private-dir'), 1000, 1000);
}

describe.each(backends)('round trip ($name)', ({ name, makeRepoUrl }) => {
  let tmp: string;
  let repo: string;
  let src: string;
  const snapshotIds: string[] = [];

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), `tender-rt-${name}-`));
    repo = makeRepoUrl(tmp);
    src = path.join(tmp, 'src');
    await makeTree(src, everyKindSpec());
    await chownSome(src);
    await utimes(src, t(), t());
    await tenderOk(['--repo', repo, 'init']);
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('restores a tree with every kind of entry identically', async () => {
    const summary = await backupJson(repo, [src]);
    snapshotIds.push(summary.snapshot_id);
    expect(summary.errors).toBe(0);
    const digest = await treeDigest(src);
    const files = Object.values(digest.entries).filter((e) => e.type === 'file');
    expect(summary.files).toBe(files.length);
    expect(summary.totalBytes).toBe(files.reduce((n, e) => n + e.size!, 0));
    expect(summary.dirs).toBe(Object.values(digest.entries).filter((e) => e.type === 'dir').length);

    const out = path.join(tmp, 'out-all');
    const r = await tenderOk(['--repo', repo, '--json', 'restore', summary.snapshot_id, '--target', out]);
    const restored = jsonLines(r.stdout).find((l) => l.message_type === 'summary')!;
    expect(restored).toMatchObject({ snapshot_id: summary.snapshot_id, errors: [] });
    expect(await readdir(out)).toEqual(['src']);
    await assertSameTree(src, path.join(out, 'src'), { sparse: ['sparse'] });
  });

  it('restores many hardlink groups in one directory as hardlinks', async () => {
    const dir = path.join(tmp, 'links');
    const spec: TreeSpec = {};
    for (let i = 0; i < 150; i++) {
      spec[`f${i}-a`] = { type: 'file', content: `content ${i}\n`.repeat(i + 1), mtime: t() };
      spec[`f${i}-b`] = { type: 'hardlink', to: `f${i}-a` };
      spec[`f${i}-c`] = { type: 'hardlink', to: `f${i}-a` };
    }
    await makeTree(dir, spec);
    const summary = await backupJson(repo, [dir]);
    // Each group is read once.
    expect(summary.filesRead).toBe(150);
    for (let attempt = 0; attempt < 3; attempt++) {
      const out = path.join(tmp, `out-links-${attempt}`);
      const args = ['--repo', repo, 'restore', summary.snapshot_id, '--target', out, '--quiet'];
      const r = await runTender(args);
      expect(r.code, describeRun(args, r)).toBe(0);
      const { b } = await assertSameTree(dir, path.join(out, 'links'));
      expect(b.entries['f7-c']!.hardlinks).toEqual(['f7-a', 'f7-b', 'f7-c']);
    }
  });

  it('restores small files in batches: hardlinks to a batched file from a subdirectory, one-chunk files of exactly 1 MiB', async () => {
    const dir = path.join(tmp, 'batches');
    const spec: TreeSpec = {};
    // Random 1 MiB files are one chunk 7 times in 8, stored 28 bytes over their plaintext.
    for (let i = 0; i < 8; i++) spec[`m${i}.bin`] = { type: 'file', content: randomBuffer(1 << 20), mtime: t() };
    for (let i = 0; i < 300; i++) spec[`s${i}`] = { type: 'file', content: `small ${i % 50}\n`.repeat(i % 7), mtime: t() };
    // The first link in walk order is in the top directory (batched); its other links are below.
    spec['a-first'] = { type: 'file', content: 'linked\n', mtime: t() };
    spec['z'] = {
      type: 'dir',
      children: { sub: { type: 'dir', children: { second: { type: 'hardlink', to: 'a-first' } } }, third: { type: 'hardlink', to: 'a-first' } },
    };
    await makeTree(dir, spec);
    const summary = await backupJson(repo, [dir]);
    const out = path.join(tmp, 'out-batches');
    const args = ['--repo', repo, 'restore', summary.snapshot_id, '--target', out, '--quiet'];
    const r = await runTender(args, { timeoutMs: 60_000 });
    expect(r.code, describeRun(args, r)).toBe(0);
    const { b } = await assertSameTree(dir, path.join(out, 'batches'));
    expect(b.entries['z/third']!.hardlinks).toEqual(['a-first', 'z/sub/second', 'z/third']);
  });

  it('--include restores only matching paths (a matching directory brings everything below it)', async () => {
    const id = snapshotIds[0]!;
    expect(id).toBeDefined();
    const out = path.join(tmp, 'out-include');
    await tenderOk(['--repo', repo, '--quiet', 'restore', id, '--target', out, '--include', 'src/nested/a', '--include', '**/small*.txt']);
    const got = await treeDigest(out);
    const want = await treeDigest(src);
    const expected = new Set(['', 'src', 'src/small.txt', 'src/nested', 'src/nested/small2.txt']);
    for (const rel of Object.keys(want.entries)) if (rel.startsWith('nested/a')) expected.add(`src/${rel}`);
    expect(Object.keys(got.entries).sort()).toEqual([...expected].sort());
    for (const rel of expected) {
      if (rel === '' || rel === 'src') continue;
      const original = { ...want.entries[rel.slice('src/'.length)]! };
      // A hardlink restored without its other names is a plain file.
      delete original.hardlinks;
      expect(got.entries[rel], rel).toEqual(original);
    }
    // A single file by its exact path.
    const out2 = path.join(tmp, 'out-include-2');
    await tenderOk(['--repo', repo, '--quiet', 'restore', id, '--target', out2, '--include', 'src/random-20M.bin']);
    const got2 = await treeDigest(out2);
    expect(Object.keys(got2.entries).sort()).toEqual(['', 'src', 'src/random-20M.bin']);
    expect(got2.entries['src/random-20M.bin']).toEqual(want.entries['random-20M.bin']);
    // Nothing matches: nothing is restored (and it is not an error).
    const out3 = path.join(tmp, 'out-include-3');
    await tenderOk(['--repo', repo, '--quiet', 'restore', id, '--target', out3, '--include', 'src/no-such-file']);
    expect(await readdir(out3)).toEqual([]);
  });

  it('ls and snapshots --json describe the snapshots', async () => {
    const id = snapshotIds[0]!;
    const digest = await treeDigest(src);
    const ls = await tenderOk(['--repo', repo, '--json', 'ls', id]);
    const lines = jsonLines(ls.stdout);
    const byPath = new Map(lines.map((l) => [l.path as string, l]));
    expect(lines.length).toBe(byPath.size);
    const expectedPaths = Object.keys(digest.entries).map((rel) => (rel === '' ? '/src' : `/src/${rel}`));
    expect([...byPath.keys()].sort()).toEqual(expectedPaths.sort());
    for (const [rel, e] of Object.entries(digest.entries)) {
      const l = byPath.get(rel === '' ? '/src' : `/src/${rel}`)!;
      expect(l.type, rel).toBe(e.type);
      expect(l.mode, rel).toBe(e.mode);
      expect(BigInt(l.mtime as string) / 1_000_000_000n, rel).toBe(BigInt(e.mtime));
      if (e.type === 'file') expect(l.size, rel).toBe(e.size);
      if (e.type === 'symlink') expect(l.link, rel).toBe(e.target);
    }

    const text = await tenderOk(['--repo', repo, 'ls', id.slice(0, 12)]);
    const textLines = text.stdout.trimEnd().split('\n');
    expect(textLines[0]).toMatch(new RegExp(`^snapshot ${id.slice(0, 8)} of ${src.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} at `));
    expect(textLines).toContain('/src/nested/a/b/c/');
    expect(textLines).toContain('/src/rel-link -> small.txt');
    expect(textLines).toContain('/src/cafe\u0301');
    expect(textLines).toContain('/src/caf\u00e9');
    expect(textLines.length - 1).toBe(expectedPaths.length);

    const snaps = await tenderOk(['--repo', repo, '--json', 'snapshots']);
    const list = JSON.parse(snaps.stdout) as Array<Record<string, unknown>>;
    expect(list.length).toBeGreaterThanOrEqual(1);
    const entry = list.find((s) => s.id === id)!;
    expect(entry).toBeDefined();
    expect(entry.short_id).toBe(id.slice(0, 8));
    expect(entry.paths).toEqual([src]);
    expect(entry.hostname).toBe(os.hostname());
    expect(entry.tags).toEqual([]);
    const files = Object.values(digest.entries).filter((e) => e.type === 'file');
    expect((entry.summary as Record<string, number>).files).toBe(files.length);
    expect((entry.summary as Record<string, number>).totalBytes).toBe(files.reduce((n, e) => n + e.size!, 0));
    // Oldest first.
    const times = list.map((s) => s.time as string);
    expect([...times].sort()).toEqual(times);
  });

  it('restore latest with --host/--tag/--path picks the right snapshot', async () => {
    const frepo = makeRepoUrl(tmp);
    await tenderOk(['--repo', frepo, 'init']);
    const a = path.join(tmp, 'fa', 'data');
    const b = path.join(tmp, 'fb', 'data');
    const take = async (dir: string, label: string, extra: string[]) => {
      await makeTree(dir, {});
      await writeFile(path.join(dir, 'marker'), label);
      const s = await backupJson(frepo, [dir], extra);
      return s.snapshot_id;
    };
    const ids: Record<string, string> = {};
    ids.S1 = await take(a, 'S1', ['--host', 'alpha', '--tag', 'daily']);
    ids.S2 = await take(b, 'S2', ['--host', 'beta', '--tag', 'daily', '--tag', 'weekly']);
    ids.S3 = await take(a, 'S3', ['--host', 'alpha', '--tag', 'hourly']);
    ids.S4 = await take(b, 'S4', ['--host', 'alpha', '--tag', 'weekly']);
    const cases: Array<[string[], string]> = [
      [[], 'S4'],
      [['--host', 'alpha'], 'S4'],
      [['--host', 'beta'], 'S2'],
      [['--tag', 'daily'], 'S2'],
      [['--tag', 'daily', '--host', 'alpha'], 'S1'],
      [['--tag', 'weekly', '--tag', 'daily'], 'S2'],
      [['--path', a], 'S3'],
      [['--path', b, '--host', 'beta'], 'S2'],
      [['--path', a, '--tag', 'daily'], 'S1'],
    ];
    let n = 0;
    for (const [filter, want] of cases) {
      const out = path.join(tmp, `out-filter-${n++}`);
      const args = ['--repo', frepo, '--json', 'restore', 'latest', '--target', out, ...filter];
      const r = await runTender(args);
      expect(r.code, describeRun(args, r)).toBe(0);
      const summary = jsonLines(r.stdout).find((l) => l.message_type === 'summary')!;
      expect(summary.snapshot_id, `latest ${filter.join(' ')}`).toBe(ids[want]);
      expect(await readFile(path.join(out, 'data', 'marker'), 'utf8'), `latest ${filter.join(' ')}`).toBe(want);
    }
    const snaps = await tenderOk(['--repo', frepo, '--json', 'snapshots', '--host', 'alpha', '--tag', 'weekly']);
    expect((JSON.parse(snaps.stdout) as Array<{ id: string }>).map((s) => s.id)).toEqual([ids.S4]);
    // Nothing matches: a clear error naming the filter, and nothing restored.
    const out = path.join(tmp, 'out-filter-none');
    const args = ['--repo', frepo, 'restore', 'latest', '--target', out, '--host', 'gamma'];
    const r = await runTender(args);
    expect(r.code, describeRun(args, r)).toBe(1);
    const { message, hint } = errorLine(r);
    expect(message).toMatch(/no snapshot matches.*host gamma/);
    expect(hint).toMatch(/tender snapshots/);
    await expect(stat(path.join(out, 'data'))).rejects.toThrow();
  });
});

describe('multi-GB sparse file (local)', () => {
  let tmp: string;
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('a 3 GiB file with a few MiB of data round-trips and is restored sparse', { timeout: 240_000 }, async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-sparse-'));
    const repo = backends.find((b) => b.name === 'local')!.makeRepoUrl(tmp);
    const src = path.join(tmp, 'vol');
    const size = 3 * 1024 * MiB;
    await makeTree(src, {
      'disk.img': {
        type: 'sparse',
        size,
        data: [
          { offset: 0, length: MiB },
          { offset: 1024 * MiB + 12345, length: MiB },
          // Past 2^31 and near the end: offsets that overflow 32-bit arithmetic.
          { offset: 2560 * MiB + 777, length: MiB },
          { offset: size - MiB, length: MiB },
        ],
        mode: 0o640,
        mtime: t(),
      },
      'note.txt': { type: 'file', content: 'next to a big sparse file', mtime: t() },
    });
    await tenderOk(['--repo', repo, 'init']);
    const summary = await backupJson(repo, [src]);
    expect(summary.totalBytes).toBe(size + 'next to a big sparse file'.length);
    // The holes dedupe to very little stored data.
    expect(summary.bytesStored).toBeLessThan(64 * MiB);
    const out = path.join(tmp, 'out');
    await tenderOk(['--repo', repo, '--quiet', 'restore', 'latest', '--target', out]);
    const { b } = await assertSameTree(src, path.join(out, 'vol'), { sparse: ['disk.img'] });
    expect(b.allocated['disk.img'], 'restored file allocates far less than its 3 GiB').toBeLessThan(128 * MiB);
  });
});

describe('chunks larger than a restore read (local)', () => {
  let tmp: string;
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('a repository made with 24 MiB chunks restores them: the read buffers follow its largest chunk', async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-bigchunks-'));
    const repoDir = path.join(tmp, 'repo');
    // Not settable from the CLI, but valid in a repository's config: made with the library.
    const made = await Repository.init(new FsStorage(repoDir), testPassword, {
      kdf: { N: 1024, r: 8, p: 1 },
      chunker: { minSize: 512 * 1024, avgSize: 4 * MiB, maxSize: 24 * MiB },
      packSize: 64 * MiB,
    });
    await made.close();
    const src = path.join(tmp, 'vol');
    // Zeros are never cut before maxSize: 24 MiB chunks of plaintext. The random file stored
    // raw has chunks beyond 8 MiB of stored bytes too, at this average size.
    await makeTree(src, {
      'zeros.bin': { type: 'file', content: Buffer.alloc(60 * MiB, 0) },
      'random.bin': { type: 'file', content: randomBuffer(48 * MiB) },
    });
    await backupJson(repoDir, [src]);
    const opened = await Repository.open(new FsStorage(repoDir), testPassword);
    let largest = 0;
    try {
      const view = await opened.loadIndex();
      view.forEachBlob((_id, loc) => (largest = Math.max(largest, loc.rawLength)));
    } finally {
      await opened.close();
    }
    expect(largest, 'the largest chunk is beyond the 8 MiB reads').toBe(24 * MiB);
    const out = path.join(tmp, 'out');
    await tenderOk(['--repo', repoDir, '--quiet', 'restore', 'latest', '--target', out]);
    await assertSameTree(src, path.join(out, 'vol'));
    // One read in flight at a time (--read-ahead 1): the least memory, the same bytes.
    const one = path.join(tmp, 'one-read');
    await tenderOk(['--repo', repoDir, '--quiet', 'restore', 'latest', '--target', one, '--read-ahead', '1']);
    await assertSameTree(src, path.join(one, 'vol'));
  });
});
