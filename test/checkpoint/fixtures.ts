/**
 * The committed checkpoint fixtures (test/fixtures/checkpoint, written by its generate.py) and
 * small helpers to run the checkpoint functions on real files.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { cp, mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../helpers/cli.js';

export const fixtureDir = path.join(repoRoot, 'test/fixtures/checkpoint');

export interface ExpectedExtent {
  name: string;
  dtype: string;
  length: number;
  offset?: number;
  sha256?: string;
}

/** expected.json: per fixture file (relative path), the tensors the generator wrote. */
export const expected = JSON.parse(readFileSync(path.join(fixtureDir, 'expected.json'), 'utf8')) as Record<
  string,
  { kind: string; extents: ExpectedExtent[] }
>;

export function fixture(rel: string): string {
  return path.join(fixtureDir, rel);
}

/** Runs fn on an open read-only fd of the file with its size. */
export async function withFile<T>(file: string, fn: (fd: number, size: number) => Promise<T>): Promise<T> {
  const handle = await open(file, 'r');
  try {
    return await fn(handle.fd, (await handle.stat()).size);
  } finally {
    await handle.close();
  }
}

export async function sha256At(file: string, offset: number, length: number): Promise<string> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, offset);
    return createHash('sha256').update(buffer.subarray(0, bytesRead)).digest('hex');
  } finally {
    await handle.close();
  }
}

/** A fresh temporary directory; removed by the returned cleanup. */
export async function tempDir(prefix = 'tender-ckpt-'): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Copies a fixture file or tree to `to`. */
export async function copyFixture(rel: string, to: string): Promise<string> {
  await cp(fixture(rel), to, { recursive: true });
  return to;
}

/** A copy of a fixture file cut to `length` bytes. */
export async function truncatedCopy(rel: string, dir: string, length: number, name = path.basename(rel)): Promise<string> {
  const to = path.join(dir, name);
  await cp(fixture(rel), to);
  await truncate(to, length);
  return to;
}

/** Rebuilds files/zip64.pt (4 GiB + a few KiB, sparse) from files/zip64.sparse.json. */
export async function buildZip64(dir: string): Promise<string> {
  const spec = JSON.parse(readFileSync(fixture('files/zip64.sparse.json'), 'utf8')) as { size: number; pieces: { offset: number; base64: string }[] };
  const to = path.join(dir, 'zip64.pt');
  await writeFile(to, '');
  await truncate(to, spec.size);
  const handle = await open(to, 'r+');
  try {
    for (const piece of spec.pieces) {
      const bytes = Buffer.from(piece.base64, 'base64');
      await handle.write(bytes, 0, bytes.length, piece.offset);
    }
  } finally {
    await handle.close();
  }
  return to;
}
