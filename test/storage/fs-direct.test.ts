/**
 * FsStorage writes objects with O_DIRECT where the filesystem takes it (no copy into the page
 * cache, none of a training node's cache crowded out by pack data), and through the page cache
 * where it does not (tmpfs refuses O_DIRECT): both store exactly the bytes given, at any length.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FsStorage } from '../../src/storage/fs.js';
import { loadNative } from '../../src/util/native.js';

const addon = loadNative();
const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDir(under: string): Promise<string> {
  const dir = await mkdtemp(path.join(under, 'tender-direct-'));
  dirs.push(dir);
  return dir;
}

/** Object lengths around the 4096-byte block and the 1 MiB bounce buffer, in several parts. */
const lengths = [0, 1, 4095, 4096, 4097, 1024 * 1024, 1024 * 1024 + 1, 9 * 1024 * 1024 + 513];

async function putAndCompare(storage: FsStorage, root: string): Promise<void> {
  for (const [i, length] of lengths.entries()) {
    const body = randomBytes(length);
    const cut = Math.floor(length / 3);
    // A part of a SharedArrayBuffer at an odd offset, as pack buffers are.
    const shared = new Uint8Array(new SharedArrayBuffer(length - cut + 7), 7, length - cut);
    shared.set(body.subarray(cut));
    expect(await storage.put(`data/0${i}/obj`, [body.subarray(0, cut), shared])).toBe('stored');
    const stored = await readFile(path.join(root, 'data', `0${i}`, 'obj'));
    expect(stored.length, `object of ${length} bytes`).toBe(length);
    expect(stored.equals(body), `object of ${length} bytes`).toBe(true);
  }
}

describe('FsStorage direct writes', () => {
  it.skipIf(!addon?.writeDirect || !addon.residentPages)('on a disk filesystem: exact bytes, and the object is not left in the page cache', async () => {
    const root = await tempDir(os.tmpdir());
    const storage = new FsStorage(root);
    await putAndCompare(storage, root);
    // A fresh object of 8 MiB: written buffered, all its pages would now be cached.
    const length = 8 * 1024 * 1024;
    await storage.put('data/ff/big', [randomBytes(length)]);
    const fd = openSync(path.join(root, 'data', 'ff', 'big'), 'r');
    try {
      const resident = addon!.residentPages!(fd, 0, length).reduce((n, page) => n + (page & 1), 0);
      expect(resident, 'pages of the new object in the page cache').toBe(0);
    } finally {
      closeSync(fd);
    }
  });

  it.skipIf(!existsSync('/dev/shm'))('on tmpfs (which refuses O_DIRECT): written through the page cache, exact bytes', async () => {
    const root = await tempDir('/dev/shm');
    await putAndCompare(new FsStorage(root), root);
  });
});
