import { existsSync } from 'node:fs';
import net from 'node:net';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FsStorage } from '../../src/storage/fs.js';
import { MemStorage } from '../../src/storage/mem.js';
import { openStorage } from '../../src/storage/open.js';
import { S3Storage } from '../../src/storage/s3.js';
import { stackStorage } from '../../src/storage/stack.js';
import { isPermanent, type Storage } from '../../src/storage/storage.js';
import { StorageMetrics } from '../../src/storage/wrap/metrics.js';
import type { ByteBudget } from '../../src/util/token-bucket.js';

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tender-stack-'));
  dirs.push(dir);
  return dir;
}

/** The wrapper classes from the outside in. */
function layers(s: Storage): string[] {
  const out: string[] = [];
  for (let cur: Storage | undefined = s; cur; cur = (cur as { inner?: Storage }).inner) out.push(cur.constructor.name);
  return out;
}

const budget: ByteBudget = { take: async () => undefined };
const fastRetry = { baseDelayMs: 1, maxDelayMs: 2 };

describe('stackStorage', () => {
  const cases: Array<{ name: string; options: Parameters<typeof stackStorage>[1]; layers: string[] }> = [
    { name: 'default: retry only', options: {}, layers: ['RetryStorage', 'MemStorage'] },
    { name: 'retry off: the backend itself', options: { retry: false }, layers: ['MemStorage'] },
    { name: 'metrics', options: { metrics: new StorageMetrics() }, layers: ['RetryStorage', 'MetricsStorage', 'MemStorage'] },
    { name: 'an upload limit', options: { limits: { upload: budget } }, layers: ['RetryStorage', 'LimitStorage', 'MemStorage'] },
    {
      name: 'everything',
      options: { metrics: new StorageMetrics(), limits: { download: budget }, faults: () => undefined },
      layers: ['RetryStorage', 'MetricsStorage', 'LimitStorage', 'FaultyStorage', 'MemStorage'],
    },
  ];
  for (const c of cases) {
    it(`${c.name}: ${c.layers.join(' → ')}`, () => {
      expect(layers(stackStorage(new MemStorage(), { env: {}, ...c.options }))).toEqual(c.layers);
    });
  }

  it('keeps location and concurrentPuts of the backend', () => {
    const s = stackStorage(new MemStorage({ location: 'mem:x', concurrentPuts: 3 }), { metrics: new StorageMetrics(), limits: { upload: budget }, env: {} });
    expect([s.location, s.concurrentPuts]).toEqual(['mem:x', 3]);
  });

  it('retries faults of the backend, and metrics count each attempt', async () => {
    const metrics = new StorageMetrics();
    const s = stackStorage(new MemStorage(), {
      retry: fastRetry,
      metrics,
      faults: (f) => void f.add({ op: 'put', times: 2 }),
      env: {},
    });
    expect(await s.put('data/00/k', [Buffer.alloc(10)])).toBe('stored');
    expect(metrics.snapshot()).toMatchObject({ puts: 3, errors: 2, bytesWritten: 10 });
    // And without retry, the first fault reaches the caller.
    const bare = stackStorage(new MemStorage(), { retry: false, faults: (f) => void f.add({ op: 'put', nth: 1 }), env: {} });
    await expect(bare.put('data/00/k', [Buffer.alloc(10)])).rejects.toThrow(/injected fault/);
  });

  it('does not multiply the retries of a backend that retries inside (S3): its final errors are permanent', async () => {
    // A server that resets every connection: a transient failure on every attempt.
    const server = net.createServer((socket) => socket.resetAndDestroy());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    const s3 = new S3Storage(`s3://bucket/stack`, { s3Endpoint: `http://127.0.0.1:${port}` }, {
      credentials: { accessKeyId: 'k', secretAccessKey: 's' },
      region: 'us-east-1',
      maxAttempts: 3,
      retryBudgetMs: 0,
      baseDelayMs: 1,
      maxDelayMs: 2,
    });
    const s = stackStorage(s3, { retry: { maxAttempts: 5, ...fastRetry }, env: {} });
    try {
      const err = await s.get('data/00/k').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isPermanent(err)).toBe(true);
      expect((err as Error).message).toMatch(/gave up after 3 attempts/);
      expect(s3.stats.gets, 'S3 attempts: its own 3, not 3 x 5').toBe(3);
    } finally {
      await s.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('openStorage applies it: a local directory comes back with retry around it', async () => {
    const s = await openStorage(await tempDir());
    expect(layers(s)).toEqual(['RetryStorage', 'FsStorage']);
    const metered = await openStorage(await tempDir(), { metrics: new StorageMetrics(), retry: false });
    expect(layers(metered)).toEqual(['MetricsStorage', 'FsStorage']);
  });
});

describe('TENDER_TEST_HOLD_* (end-to-end tests stop the CLI after its first pack)', () => {
  it('holds pack puts after N until the gate file exists, and says so in GATE.held', async () => {
    const dir = await tempDir();
    const gate = path.join(dir, 'gate');
    const backend = new FsStorage(path.join(dir, 'repo'));
    const s = stackStorage(backend, { env: { TENDER_TEST_HOLD_AFTER_PUTS: '1', TENDER_TEST_HOLD_GATE: gate } });
    expect(layers(s)).toEqual(['RetryStorage', 'FaultyStorage', 'FsStorage']);
    const packs = ['data/aa/1', 'data/bb/2', 'data/cc/3'].map((k) => s.put(k, [Buffer.from(k)]));
    // Not packs: never held.
    expect(await s.put('index/i', [Buffer.from('x')])).toBe('stored');
    expect(await packs[0]).toBe('stored');
    const deadline = Date.now() + 10_000;
    while (!existsSync(`${gate}.held`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(JSON.parse(await readFile(`${gate}.held`, 'utf8'))).toMatchObject({ pid: process.pid, after: 1 });
    await new Promise((r) => setTimeout(r, 100));
    expect(await backend.stat('data/bb/2'), 'held').toBeUndefined();
    await writeFile(gate, '');
    expect(await Promise.all(packs.slice(1))).toEqual(['stored', 'stored']);
    await s.close();
  });

  it('is not there without both variables', () => {
    for (const env of [{}, { TENDER_TEST_HOLD_AFTER_PUTS: '1' }, { TENDER_TEST_HOLD_GATE: '/tmp/x' }, { TENDER_TEST_HOLD_AFTER_PUTS: 'x', TENDER_TEST_HOLD_GATE: '/tmp/x' }]) {
      expect(layers(stackStorage(new MemStorage(), { env }))).toEqual(['RetryStorage', 'MemStorage']);
    }
  });
});
