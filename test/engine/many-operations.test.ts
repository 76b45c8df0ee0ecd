/**
 * The engine as a long-running agent holds it: ONE process, ONE opened repository, 50 operations
 * in a row — backups of a changing tree, prunes, checks, restores, backups cancelled at random
 * points, storage faults injected — on a local directory and on MinIO. Every snapshot must then
 * restore byte-identical, `check --read-data` must be clean, and open file descriptors and memory
 * must come back to their baseline after each operation.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { appendFile, mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/archiver.js';
import { check } from '../../src/check/checker.js';
import { prune } from '../../src/prune/prune.js';
import { Repository } from '../../src/repo/repository.js';
import type { Snapshot } from '../../src/repo/snapshot/snapshot.js';
import { restore } from '../../src/restore/restorer.js';
import { listSnapshots } from '../../src/snapshots/select.js';
import { openStorage } from '../../src/storage/open.js';
import { FaultyStorage } from '../../src/storage/wrap/faults.js';
import { createOperationContext } from '../../src/util/operation.js';
import { backends } from '../helpers/backends.js';
import { type TreeDigest, treeDigest, writeRandomFile } from '../helpers/cli.js';
import { s3TestOptions } from '../helpers/s3.js';
import { rng } from '../lifecycle/helpers.js';

setFlagsFromString('--expose-gc');
/** V8's last-resort collection compacts the heap and gives unused pages back, as a memory reducer would. */
const gc = runInNewContext('gc') as (options?: { type: 'major'; execution: 'sync'; flavor: 'last-resort' }) => void;

const KiB = 1024;
const MiB = 1024 * KiB;
const cheapKdf = { N: 1024, r: 8, p: 1 };
const password = 'many operations';

const openFds = () => readdirSync('/proc/self/fd').length;
/** Memory after a full collection: what the process holds, and what the engine's objects and buffers take of it. */
function settledMemory(): { rss: number; heapUsed: number; buffers: number } {
  gc({ type: 'major', execution: 'sync', flavor: 'last-resort' });
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, buffers: m.arrayBuffers };
}

const scratch: string[] = [];
afterAll(async () => {
  for (const dir of scratch) await rm(dir, { recursive: true, force: true });
});

describe.each(backends)('one repository, many operations ($name)', ({ name, makeRepoUrl }) => {
  it('50 operations in one process: every snapshot restores identical, check is clean, fds and memory return', async () => {
    const seed = Number(process.env.TENDER_TEST_SEED ?? 20261205);
    const random = rng(seed + (name === 's3' ? 1 : 0));
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-many-'));
    scratch.push(tmp);
    const source = path.join(tmp, 'volume');
    await mkdir(path.join(source, 'ckpt'), { recursive: true });
    for (let i = 0; i < 6; i++) await writeRandomFile(path.join(source, `small-${i}.bin`), Math.floor(random() * 200 * KiB));
    await writeRandomFile(path.join(source, 'ckpt', 'model.bin'), 6 * MiB);

    const backend = await openStorage(makeRepoUrl(tmp), name === 's3' ? s3TestOptions() : {});
    const faulty = new FaultyStorage(backend);
    const repo = await Repository.init(faulty, password, {
      kdf: cheapKdf,
      workers: 2,
      packSize: MiB,
      chunker: { minSize: 32 * KiB, avgSize: 64 * KiB, maxSize: 256 * KiB },
    });
    /** What each snapshot must restore to: the source's digest when it was taken. */
    const expected = new Map<string, TreeDigest>();
    const log: string[] = [];
    const note = (line: string) => log.push(line);

    const mutate = async () => {
      const kind = Math.floor(random() * 4);
      const victim = path.join(source, `small-${Math.floor(random() * 6)}.bin`);
      if (kind === 0) await writeRandomFile(victim, Math.floor(random() * 300 * KiB));
      else if (kind === 1) await appendFile(path.join(source, 'ckpt', 'model.bin'), randomBytes(Math.floor(random() * 512 * KiB)));
      else if (kind === 2) await writeFile(path.join(source, 'ckpt', `step-${log.length}.bin`), randomBytes(Math.floor(random() * 400 * KiB)));
      else await truncate(path.join(source, 'ckpt', 'model.bin'), Math.floor((4 + random() * 2) * MiB));
    };
    const parentOf = async (): Promise<{ id: string; snapshot: Snapshot } | undefined> => (await listSnapshots(repo, { host: 'volume-identity' })).at(-1);
    const runBackup = async (signal?: AbortSignal, onProgress?: () => void) => {
      const digest = await treeDigest(source);
      const ctx = createOperationContext({ identity: { hostname: 'agent-pod-xyz', username: 'uid:1000' }, ...(signal ? { signal } : {}) });
      if (onProgress) ctx.events.on('progress', onProgress);
      const parent = await parentOf();
      const result = await backup(repo, { paths: [source], hostname: 'volume-identity', tags: ['k8s.volume=ckpt'], ...(parent ? { parent } : {}) }, ctx);
      expect(result.snapshot.hostname).toBe('volume-identity');
      expect(result.snapshot.username).toBe('uid:1000');
      expected.set(result.snapshotId, digest);
      return result;
    };
    const restoreAndCompare = async (id: string, snapshot: Snapshot) => {
      const target = path.join(tmp, `restore-${randomBytes(4).toString('hex')}`);
      await restore(repo, snapshot, { target, subpath: 'volume' }, createOperationContext());
      const got = await treeDigest(target);
      const want = expected.get(id)!;
      const entries = (d: TreeDigest) => Object.fromEntries(Object.entries(d.entries).filter(([rel]) => rel !== ''));
      expect(entries(got), `snapshot ${id.slice(0, 8)} restores what was backed up (seed ${seed}; ${log.join(', ')})`).toEqual(entries(want));
      await rm(target, { recursive: true, force: true });
    };

    // Warm-up, one operation of each kind: the shared buffer pools, the worker threads and the
    // SDK's connections exist from here on; the baseline is what the process holds at rest.
    const first = await runBackup();
    await restoreAndCompare(first.snapshotId, first.snapshot);
    await prune(repo, {}, createOperationContext());
    await check(repo, { readData: true }, createOperationContext());
    // Open fds must stay within the baseline plus the pools' slack, and never pass the first half's peak. Memory must come back to
    // where it stood in the first half of the run once everything is done (the peak of the first
    // 25 operations, as V8 sizes its young generation once to the allocation rate and the shared
    // buffer pools fill up to the bounds their configuration sets, as operations need them): the
    // JS heap and the buffers within 10% or 8 MiB, RSS within 25% (the worker threads' native
    // memory stays with the C allocator once touched). Anything that grows with the number of
    // operations fails this.
    const baselineFds = openFds();
    const fdCounts: number[] = [];
    const poolSlack = 10;
    const samples: Array<ReturnType<typeof settledMemory>> = [];
    const outcomes = { backups: 0, cancelled: 0, faulted: 0, prunes: 0, checks: 0, restores: 0 };
    for (let op = 0; op < 50; op++) {
      const dice = random();
      if (dice < 0.3) {
        await mutate();
        await runBackup();
        outcomes.backups++;
        note('backup');
      } else if (dice < 0.45) {
        // Cancel at a random point: before anything is read, or after some progress.
        await mutate();
        const controller = new AbortController();
        const cancelAfter = Math.floor(random() * 6);
        let events = 0;
        if (cancelAfter === 0) controller.abort();
        const outcome = await runBackup(controller.signal, () => {
          if (++events === cancelAfter) controller.abort();
        }).then(
          () => 'finished before the cancel',
          (err: { code?: string }) => err.code,
        );
        expect(['TENDER_CANCELLED', 'finished before the cancel']).toContain(outcome);
        outcomes.cancelled += outcome === 'TENDER_CANCELLED' ? 1 : 0;
        note(`cancel@${cancelAfter}:${outcome}`);
      } else if (dice < 0.55) {
        // A pack upload fails for good mid-backup: that backup fails, the next operations do not.
        await mutate();
        await appendFile(path.join(source, 'ckpt', 'model.bin'), randomBytes(2 * MiB));
        const fault = faulty.add({ op: 'put', prefix: 'data/', nth: 1 + Math.floor(random() * 2), times: 1, permanent: true });
        const outcome = await runBackup().then(
          () => 'stored',
          (err: { code?: string }) => err.code,
        );
        fault.remove();
        expect(outcome, 'a failed pack upload fails the backup').toBe('TENDER_STORAGE');
        outcomes.faulted++;
        note('fault');
      } else if (dice < 0.7) {
        await prune(repo, { repackUnusedFraction: 0.3 }, createOperationContext());
        outcomes.prunes++;
        note('prune');
      } else if (dice < 0.8) {
        const report = await check(repo, { readDataSubset: { fraction: 0.5 } }, createOperationContext());
        expect(report.problems, `check after ${log.join(', ')}`).toEqual([]);
        outcomes.checks++;
        note('check');
      } else {
        const all = await listSnapshots(repo);
        const pick = all[Math.floor(random() * all.length)]!;
        await restoreAndCompare(pick.id, pick.snapshot);
        outcomes.restores++;
        note('restore');
      }
      samples.push(settledMemory());
      const fds = openFds();
      fdCounts.push(fds);
      // Keep-alive pools (the S3 client's sockets, the direct reader's idle connections) fill up
      // to the concurrency the operations reach, a few descriptors: after that, nothing may grow.
      const bound = op < 25 ? baselineFds + poolSlack : Math.max(...fdCounts.slice(0, 25));
      expect(fds, `open fds after operation ${op} (${log.at(-1)}), baseline ${baselineFds}, bound ${bound}`).toBeLessThanOrEqual(bound);
    }

    // A prune whose sweep is not blocked by any session: deletes what no snapshot uses.
    await prune(repo, {}, createOperationContext());
    const report = await check(repo, { readData: true }, createOperationContext());
    expect(report.problems).toEqual([]);
    for (const { id, snapshot } of await listSnapshots(repo)) await restoreAndCompare(id, snapshot);
    expect(openFds()).toBeLessThanOrEqual(Math.max(...fdCounts.slice(0, 25)));
    const final = settledMemory();
    const mib = (n: number) => `${(n / MiB).toFixed(0)} MiB`;
    const peak = (from: number, to: number, k: 'rss' | 'heapUsed' | 'buffers') => Math.max(...samples.slice(from, to).map((m) => m[k]));
    const summary = (['rss', 'heapUsed', 'buffers'] as const)
      .map((k) => `${k} peak ${mib(peak(0, 25, k))} then ${mib(peak(25, 50, k))}, final ${mib(final[k])}`)
      .join('; ');
    console.info(`${name}: ${JSON.stringify(outcomes)}; ${summary}`);
    const allowed = { rss: peak(0, 25, 'rss') * 1.25, heapUsed: peak(0, 25, 'heapUsed'), buffers: peak(0, 25, 'buffers') };
    allowed.heapUsed = Math.max(allowed.heapUsed * 1.1, allowed.heapUsed + 8 * MiB);
    allowed.buffers = Math.max(allowed.buffers * 1.1, allowed.buffers + 8 * MiB);
    for (const k of ['rss', 'heapUsed', 'buffers'] as const) expect(final[k], `${k}: ${summary}`).toBeLessThanOrEqual(allowed[k]);
    expect(outcomes.backups + outcomes.cancelled + outcomes.faulted).toBeGreaterThan(10);
    await repo.close();
  }, 600_000);
});
