/**
 * Deduplication and incremental backups, measured from the `backup --json` summary line,
 * on every backend.
 */
import { randomFillSync } from 'node:crypto';
import { appendFile, copyFile, mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GearChunker, gearTable } from '../src/backup/chunk/fastcdc.js';
import { backends } from './helpers/backends.js';
import { assertSameTree, backupJson, randomBuffer, tenderOk, writeRandomFile } from './helpers/cli.js';
import { openRepository } from './lifecycle/helpers.js';

const MiB = 1 << 20;

describe.each(backends)('dedup ($name)', ({ name, makeRepoUrl }) => {
  let tmp: string;
  let repo: string;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), `tender-dedup-${name}-`));
    repo = makeRepoUrl(tmp);
    await tenderOk(['--repo', repo, 'init']);
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('a copy shifted by one byte adds only the chunks around the change', async () => {
    const size = 64 * MiB;
    const first = path.join(tmp, 'one', 'big.bin');
    const second = path.join(tmp, 'two', 'big-shifted.bin');
    await mkdir(path.dirname(first), { recursive: true });
    await mkdir(path.dirname(second), { recursive: true });
    await writeRandomFile(first, size);
    const s1 = await backupJson(repo, [path.dirname(first)]);
    expect(s1.bytesRead).toBe(size);
    expect(s1.bytesAdded).toBe(size);
    // Random data: every chunk is new, and there are about size / 1 MiB of them.
    expect(s1.blobsAdded).toBeGreaterThan(size / (8 * MiB));

    await writeFile(second, Buffer.from([0x5a]));
    await appendFile(second, await readFile(first));
    const s2 = await backupJson(repo, [path.dirname(second)]);
    expect(s2.bytesRead, 'the new path has no parent: it is read in full').toBe(size + 1);
    expect(s2.blobsAdded).toBeGreaterThanOrEqual(1);
    expect(s2.blobsAdded).toBeLessThanOrEqual(3);
    expect(s2.bytesAdded).toBeLessThan(16 * MiB);
    expect(s2.bytesAdded).toBeLessThan(s1.bytesAdded / 4);

    const out = path.join(tmp, 'out-shift');
    await tenderOk(['--repo', repo, '--quiet', 'restore', s2.snapshot_id, '--target', out]);
    await assertSameTree(path.dirname(second), path.join(out, 'two'));
  });

  it('a large file is cut exactly where chunking it in one piece cuts (read slots leave no trace)', async () => {
    const dir = path.join(tmp, 'cuts');
    await mkdir(dir, { recursive: true });
    // Random data with long zero runs: both natural boundaries and forced maxSize cuts, spread
    // over many read slots, some landing right at a slot's end.
    const data = randomBuffer(70 * MiB);
    for (let at = 5 * MiB; at < data.length; at += 21 * MiB) data.fill(0, at, Math.min(data.length, at + 9 * MiB));
    await writeFile(path.join(dir, 'big.bin'), data);
    const s = await backupJson(repo, [dir]);
    const r = await openRepository(repo);
    try {
      await r.refreshIndex();
      const snapshot = await r.loadSnapshot(s.snapshot_id);
      const top = await r.loadTree(snapshot.tree);
      const file = (await r.loadTree(top.nodes[0]!.subtree!)).nodes.find((n) => n.name === 'big.bin')!;
      const chunker = new GearChunker(r.config.chunker, gearTable(r.keys.gearSeed));
      const want: string[] = [];
      for (let start = 0; start < data.length; ) {
        const length = chunker.cut(data, start, data.length);
        want.push(r.codec.id(data.subarray(start, start + length)).toString('hex'));
        start += length;
      }
      expect(file.content).toEqual(want);
    } finally {
      await r.close();
    }
  });

  it('identical files in one backup are stored once', async () => {
    const dir = path.join(tmp, 'copies');
    await mkdir(dir, { recursive: true });
    const content = randomBuffer(9 * MiB + 4321);
    for (const n of ['a.bin', 'b.bin', 'c.bin']) await writeFile(path.join(dir, n), content);
    await mkdir(path.join(dir, 'sub'));
    await copyFile(path.join(dir, 'a.bin'), path.join(dir, 'sub', 'd.bin'));
    const s = await backupJson(repo, [dir]);
    expect(s.files).toBe(4);
    expect(s.filesRead).toBe(4);
    expect(s.bytesRead).toBe(4 * content.length);
    // Each distinct chunk once: exactly the bytes of one copy.
    expect(s.bytesAdded).toBe(content.length);
    expect(s.bytesStored).toBeLessThan(content.length * 1.05);

    const out = path.join(tmp, 'out-copies');
    await tenderOk(['--repo', repo, '--quiet', 'restore', s.snapshot_id, '--target', out]);
    await assertSameTree(dir, path.join(out, 'copies'));
  });

  it('an unchanged tree is not read again; a changed file is the only one read', async () => {
    const dir = path.join(tmp, 'incremental');
    await mkdir(path.join(dir, 'deep', 'er'), { recursive: true });
    const sizes: Record<string, number> = { 'a.bin': 3 * MiB, 'b.bin': 2 * MiB + 17, 'deep/c.bin': MiB, 'deep/er/d.bin': 5 * MiB + 1 };
    for (const [rel, size] of Object.entries(sizes)) await writeRandomFile(path.join(dir, rel), size);
    await writeFile(path.join(dir, 'small.txt'), 'small');
    const total = Object.values(sizes).reduce((a, b) => a + b, 0) + 5;

    const s1 = await backupJson(repo, [dir]);
    expect(s1.files).toBe(5);
    expect(s1.bytesRead).toBe(total);

    const s2 = await backupJson(repo, [dir]);
    expect(s2.files).toBe(5);
    expect(s2.filesUnchanged).toBe(s2.files);
    expect(s2.filesRead).toBe(0);
    expect(s2.bytesRead).toBe(0);
    expect(s2.blobsAdded).toBe(0);
    expect(s2.totalBytes).toBe(total);

    // Change the content of one file (same size, new bytes in the middle).
    const changed = path.join(dir, 'deep', 'er', 'd.bin');
    const handle = await open(changed, 'r+');
    try {
      const patch = Buffer.alloc(4096);
      randomFillSync(patch);
      await handle.write(patch, 0, patch.length, 2 * MiB);
    } finally {
      await handle.close();
    }
    const s3 = await backupJson(repo, [dir]);
    expect(s3.files).toBe(5);
    expect(s3.filesRead).toBe(1);
    expect(s3.filesUnchanged).toBe(4);
    expect(s3.bytesRead).toBe(sizes['deep/er/d.bin']);
    expect(s3.blobsAdded).toBeGreaterThanOrEqual(1);
    expect(s3.bytesAdded).toBeLessThan(sizes['deep/er/d.bin']!);

    // --force reads everything again but stores nothing new.
    const s4 = await backupJson(repo, [dir], ['--force']);
    expect(s4.bytesRead).toBe(total);
    expect(s4.blobsAdded).toBe(0);

    const out = path.join(tmp, 'out-incremental');
    await tenderOk(['--repo', repo, '--quiet', 'restore', s3.snapshot_id, '--target', out]);
    await assertSameTree(dir, path.join(out, 'incremental'));
  });
});
