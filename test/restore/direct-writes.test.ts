/**
 * Restored files: the aligned interiors of their chunks are written with O_DIRECT where the
 * target filesystem takes it (a restore does not fill the node's page cache), the edges through
 * the page cache; on tmpfs, which refuses O_DIRECT, everything goes through the page cache. The
 * bytes are the same either way, at any chunk alignment.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/archiver.js';
import type { Snapshot } from '../../src/repo/snapshot/snapshot.js';
import { Repository } from '../../src/repo/repository.js';
import { restore } from '../../src/restore/restorer.js';
import { MemStorage } from '../../src/storage/mem.js';
import { loadNative } from '../../src/util/native.js';
import { createOperationContext } from '../../src/util/operation.js';

const addon = loadNative();
const dirs: string[] = [];
let repo: Repository;
let snapshot: Snapshot;
/** Unaligned sizes: chunk boundaries fall anywhere inside 4 KiB blocks. */
const files = { 'big.bin': randomBytes(24 * 1024 * 1024 + 4321), 'mid.bin': randomBytes(3 * 1024 * 1024 + 17), 'small.bin': randomBytes(70 * 1024 + 1) };

async function tempDir(under: string): Promise<string> {
  const dir = await mkdtemp(path.join(under, 'tender-restore-direct-'));
  dirs.push(dir);
  return dir;
}

beforeAll(async () => {
  const source = path.join(await tempDir(os.tmpdir()), 'data');
  await mkdir(source);
  for (const [name, body] of Object.entries(files)) await writeFile(path.join(source, name), body);
  // Small chunks: many boundaries, most of them unaligned.
  repo = await Repository.init(new MemStorage(), 'pw', { kdf: { N: 1024, r: 8, p: 1 }, workers: 2, chunker: { minSize: 64 * 1024, avgSize: 256 * 1024, maxSize: 1024 * 1024 } });
  snapshot = (await backup(repo, { paths: [source] }, createOperationContext())).snapshot;
});

afterAll(async () => {
  await repo?.close();
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function restoreInto(under: string): Promise<string> {
  const target = path.join(await tempDir(under), 'restored');
  await restore(repo, snapshot, { target, subpath: 'data' }, createOperationContext());
  return target;
}

async function expectSameFiles(target: string): Promise<void> {
  for (const [name, body] of Object.entries(files)) expect((await readFile(path.join(target, name))).equals(body), name).toBe(true);
}

function residentPages(file: string): { pages: number; resident: number } {
  const fd = openSync(file, 'r');
  try {
    const size = files['big.bin'].length;
    const map = addon!.residentPages!(fd, 0, size);
    return { pages: map.length, resident: map.reduce((n, page) => n + (page & 1), 0) };
  } finally {
    closeSync(fd);
  }
}

describe('restore writes', () => {
  it.skipIf(!addon?.pwriteDirect || !addon.residentPages)('on a disk filesystem: exact bytes, and a large file mostly not in the page cache', async () => {
    const target = await restoreInto(os.tmpdir());
    // Before the comparison reads them in: only the edge blocks of each chunk (two per chunk at
    // most, ~100 chunks) went through the page cache.
    const { pages, resident } = residentPages(path.join(target, 'big.bin'));
    expect(resident, `${resident} of ${pages} pages resident`).toBeLessThan(pages / 10);
    await expectSameFiles(target);
  });

  it.skipIf(!existsSync('/dev/shm'))('on tmpfs (which refuses O_DIRECT): exact bytes through the page cache', async () => {
    await expectSameFiles(await restoreInto('/dev/shm'));
  });
});
