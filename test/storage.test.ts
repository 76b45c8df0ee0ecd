import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import { describeStorageConformance } from '../src/storage/conformance.js';
import { FsStorage } from '../src/storage/fs.js';
import { openStorage } from '../src/storage/open.js';
import { s3TestOptions, s3TestUrl } from './helpers/s3.js';

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describeStorageConformance('fs', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tender-storage-'));
  dirs.push(dir);
  return new FsStorage(dir);
});

describeStorageConformance('s3 (MinIO)', async () => openStorage(s3TestUrl('conformance'), s3TestOptions()));
