/**
 * Every backend (local directory, S3 on the test MinIO, memory) and every wrapper of
 * src/storage/wrap/ (around memory, and the whole stack around a directory) keeps the guarantees
 * of src/storage/storage.ts.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import { FsStorage } from '../../src/storage/fs.js';
import { MemStorage } from '../../src/storage/mem.js';
import { openStorage } from '../../src/storage/open.js';
import { stackStorage } from '../../src/storage/stack.js';
import { FaultyStorage } from '../../src/storage/wrap/faults.js';
import { LimitStorage } from '../../src/storage/wrap/limit.js';
import { MetricsStorage, StorageMetrics } from '../../src/storage/wrap/metrics.js';
import { RetryStorage } from '../../src/storage/wrap/retry.js';
import { TokenBucket } from '../../src/util/token-bucket.js';
import { s3TestOptions, s3TestUrl } from '../helpers/s3.js';
import { describeStorageConformance } from './conformance.js';

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tender-storage-'));
  dirs.push(dir);
  return dir;
}

/** Generous budgets: the wrapper is on every path, but the suite is not slowed down. */
const fastBucket = () => new TokenBucket({ bytesPerSecond: 4 * 2 ** 30, burstBytes: 256 * 2 ** 20 });

describeStorageConformance('fs', async () => new FsStorage(await tempDir()));

describeStorageConformance('s3 (MinIO)', async () => openStorage(s3TestUrl('conformance'), s3TestOptions()));

describeStorageConformance('mem', async () => new MemStorage());

describeStorageConformance('retry(mem)', async () => new RetryStorage(new MemStorage(), { baseDelayMs: 1 }));

describeStorageConformance('metrics(mem)', async () => new MetricsStorage(new MemStorage(), new StorageMetrics()));

describeStorageConformance('limit(mem)', async () => new LimitStorage(new MemStorage(), { upload: fastBucket(), download: fastBucket() }));

describeStorageConformance('faults(mem), no fault set', async () => new FaultyStorage(new MemStorage()));

// Faults that the retry wrapper hides: the third put, get, stat and list fail once. (A lost reply,
// `when: 'after'`, is not hidden: the retried put says 'exists'; see retry.test.ts.)
describeStorageConformance('retry(faults(mem)), transient faults', async () => {
  const faulty = new FaultyStorage(new MemStorage());
  for (const op of ['put', 'get', 'stat', 'list'] as const) faulty.add({ op, nth: 3, times: 1 });
  return new RetryStorage(faulty, { baseDelayMs: 1 });
});

describeStorageConformance('stack(fs): retry, metrics, limit', async () =>
  stackStorage(new FsStorage(await tempDir()), { metrics: new StorageMetrics(), limits: { upload: fastBucket(), download: fastBucket() } }),
);
