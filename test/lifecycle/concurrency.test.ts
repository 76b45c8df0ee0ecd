/**
 * Several writers on one repository at once, with forget/prune running in a loop beside them
 * (docs/design.md, "Several writers, no locks" and "Garbage collection"): afterwards the
 * repository checks clean and every remaining snapshot restores exactly what its writer had.
 * Plus two interleavings forced at exact points with the library API: a snapshot that appears
 * while prune runs, and index files that a sweep deletes while a backup loads the index.
 */
import { appendFile, mkdir, mkdtemp, rename, rm, unlink, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup as backupInProcess } from '../../src/backup/archiver.js';
import { prune as pruneInProcess } from '../../src/prune/prune.js';
import { Repository } from '../../src/repo/repository.js';
import { createOperationContext } from '../../src/util/operation.js';
import type { ByteRange, ObjectInfo, Storage } from '../../src/storage/storage.js';
import { backends } from '../helpers/backends.js';
import { type TreeDigest, backupSummary, randomBuffer, testPassword, treeDigest, writeRandomFile } from '../helpers/cli.js';
import { PassThroughStorage } from '../helpers/storage.js';
import {
  MiB,
  backup,
  expectCheckClean,
  expectRestoresTo,
  grace,
  initRepo,
  listSnapshotsJson,
  objectSizes,
  openRepoStorage,
  openRepository,
  pruneReport,
  rng,
  sleep,
  tender,
  tenderExpect,
} from './helpers.js';

const writers = 4;
const rounds = 4;

interface Failure {
  what: string;
  code: number | null;
  message: string;
}

/** Whether a failed backup was stopped by its own zombie guard (a heartbeat that lagged under load). */
const isZombieGuard = (stderr: string) => /could not refresh its session marker/.test(stderr);

describe.each(backends)('concurrent writers with forget/prune in a loop ($name)', ({ name, makeRepoUrl }) => {
  let tmp: string;
  let repo: string;
  const random = rng(name === 'local' ? 101 : 202);
  /** snapshot id → what its writer had when it was taken. */
  const expected = new Map<string, { writer: number; round: number; digest: TreeDigest }>();
  const backupFailures: Failure[] = [];
  const pruneFailures: Failure[] = [];
  let zombieRetries = 0;
  const pruneStats = { runs: 0, swept: 0, waiting: 0, packsDeleted: 0, rescued: 0, repacked: 0 };
  const timing: Record<string, number> = {};

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), `tender-conc-${name}-`));
    repo = makeRepoUrl(tmp);
    await initRepo(repo);
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
    console.log(`[concurrency ${name}] prune loop: ${JSON.stringify(pruneStats)}, zombie-guard retries: ${zombieRetries}, timing: ${JSON.stringify(timing)}`);
  });

  const writerDir = (w: number) => path.join(tmp, `w${w}`);

  /** Shared files are byte-identical (same content, mode, mtime) in every writer's tree. */
  async function mutate(round: number): Promise<void> {
    const shared = new Map<string, Buffer>();
    if (round === 0) {
      shared.set('big.bin', randomBuffer(6 * MiB));
      for (let k = 0; k < 5; k++) shared.set(`small-${k}.txt`, Buffer.from(`shared small file ${k}\n`.repeat(50 + k)));
    } else {
      // A 1 MiB region of big.bin changes (same change for everyone), and a new shared file appears.
      const big = sharedBig!;
      const at = Math.floor(random() * (big.length - MiB));
      randomBuffer(MiB).copy(big, at);
      shared.set('big.bin', big);
      shared.set(`r${round}.bin`, randomBuffer(MiB + round * 4099));
      shared.set(`small-${round % 5}.txt`, Buffer.from(`shared small file changed in round ${round}\n`));
    }
    sharedBig = shared.get('big.bin')!;
    const sharedTime = 1_700_000_000 + round * 60;
    for (let w = 0; w < writers; w++) {
      const dir = writerDir(w);
      await mkdir(path.join(dir, 'shared'), { recursive: true });
      await mkdir(path.join(dir, 'own'), { recursive: true });
      for (const [file, content] of shared) {
        const full = path.join(dir, 'shared', file);
        await writeFile(`${full}.tmp`, content);
        await rename(`${full}.tmp`, full);
        await utimes(full, sharedTime, sharedTime);
      }
      const own = path.join(dir, 'own', 'own.bin');
      if (round % 2 === 0) await writeRandomFile(own, 3 * MiB + w * 777);
      else await appendFile(own, randomBuffer(512 * 1024));
      await writeFile(path.join(dir, 'own', `note-${round}.txt`), `writer ${w}, round ${round}\n`);
      if (round >= 2) await unlink(path.join(dir, 'own', `note-${round - 2}.txt`));
    }
  }
  let sharedBig: Buffer | undefined;

  /** One writer's backup for a round; retried after a zombie-guard stop or a failure (failures are recorded). */
  async function writerBackup(w: number, round: number, digest: TreeDigest): Promise<void> {
    for (let attempt = 1; attempt <= 3; attempt++) {
      const args = ['--repo', repo, '--json', 'backup', writerDir(w), '--host', `writer-${w}`];
      const r = await tender(args);
      if (r.code === 0) {
        expected.set(backupSummary(r.stdout).snapshot_id, { writer: w, round, digest });
        return;
      }
      if (isZombieGuard(r.stderr)) zombieRetries++;
      else backupFailures.push({ what: `writer ${w} round ${round} attempt ${attempt}`, code: r.code, message: r.stderr.trim().split('\n').slice(-3).join(' | ') });
    }
  }

  it(`${writers} writers back up overlapping data for ${rounds} rounds while forget --keep-last 2 --prune runs in a loop`, async () => {
    const started = Date.now();
    let stop = false;
    const loop = (async () => {
      while (!stop) {
        const r = await tender(['--repo', repo, '--json', 'forget', '--keep-last', '2', '--prune', '--grace', grace]);
        pruneStats.runs++;
        if (r.code !== 0) {
          pruneFailures.push({ what: `forget --prune run ${pruneStats.runs}`, code: r.code, message: r.stderr.trim().split('\n').slice(-3).join(' | ') });
        } else {
          const p = pruneReport(r.stdout);
          pruneStats.swept += p.plansSwept;
          pruneStats.waiting += p.plansWaiting;
          pruneStats.packsDeleted += p.packsDeleted;
          pruneStats.rescued += p.packsRescued;
          pruneStats.repacked += p.planned.repacked;
        }
        await sleep(100);
      }
    })();
    try {
      for (let round = 0; round < rounds; round++) {
        await mutate(round);
        const digests = await Promise.all(Array.from({ length: writers }, (_, w) => treeDigest(writerDir(w))));
        // All writers start together (a small random stagger), so their sessions and uploads overlap.
        await Promise.all(
          digests.map(async (digest, w) => {
            await sleep(Math.floor(random() * 300));
            await writerBackup(w, round, digest);
          }),
        );
      }
    } finally {
      stop = true;
      await loop;
    }
    timing.roundsMs = Date.now() - started;
    expect(pruneStats.runs, 'the prune loop ran while the writers worked').toBeGreaterThanOrEqual(2);

    // Everyone is done: the final forget/prune sweeps every pending plan.
    const t = Date.now();
    const last = await tenderExpect(['--repo', repo, '--json', 'forget', '--keep-last', '2', '--prune', '--grace', grace]);
    const report = pruneReport(last.stdout);
    expect(report.plansWaiting, 'no backup runs any more: nothing waits').toBe(0);
    expect(await objectSizes(repo, 'plans/')).toEqual(new Map());
    expect(await objectSizes(repo, 'sessions/'), 'every backup removed its session marker').toEqual(new Map());
    timing.finalPruneMs = Date.now() - t;
  }, 600_000);

  it('check --read-data is clean afterwards', async () => {
    const t = Date.now();
    await expectCheckClean(repo, true, `(after ${pruneStats.runs} concurrent prune runs)`);
    timing.checkMs = Date.now() - t;
  }, 300_000);

  it('every remaining snapshot restores byte-identical to what its writer had in that round', async () => {
    const t = Date.now();
    const snapshots = await listSnapshotsJson(repo);
    for (const s of snapshots) expect(expected.has(s.id), `snapshot ${s.id} was made by one of the writers`).toBe(true);
    // keep-last 2 per writer (grouped by host and paths): each writer's two newest rounds remain.
    for (let w = 0; w < writers; w++) {
      const made = [...expected].filter(([, e]) => e.writer === w).sort(([, x], [, y]) => x.round - y.round);
      const keptIds = made.slice(-2).map(([id]) => id).sort();
      const remaining = snapshots.filter((s) => expected.get(s.id)?.writer === w).map((s) => s.id).sort();
      expect(remaining, `writer ${w} keeps its two newest snapshots`).toEqual(keptIds);
    }
    for (const s of snapshots) {
      const e = expected.get(s.id)!;
      await expectRestoresTo(repo, s.id, e.digest, path.join(tmp, `restore-${s.id.slice(0, 8)}`), `w${e.writer}`);
    }
    timing.restoresMs = Date.now() - t;
  }, 300_000);

  it('no backup and no prune failed while they ran concurrently', () => {
    expect(backupFailures, 'backups that failed (other than zombie-guard stops under load)').toEqual([]);
    expect(pruneFailures, 'forget --prune runs that failed').toEqual([]);
  });
});

/** A Storage that runs hooks around listings, to force an interleaving at an exact point. */
class HookedStorage extends PassThroughStorage {
  constructor(
    inner: Storage,
    private readonly hooks: {
      beforeList?: (prefix: string) => Promise<void>;
      afterList?: (prefix: string, items: ObjectInfo[]) => Promise<void>;
      beforeGet?: (key: string) => Promise<void>;
    },
  ) {
    super(inner);
  }

  override async *list(prefix: string): AsyncIterable<ObjectInfo> {
    await this.hooks.beforeList?.(prefix);
    const items: ObjectInfo[] = [];
    for await (const item of super.list(prefix)) items.push(item);
    await this.hooks.afterList?.(prefix, items);
    yield* items;
  }

  override async get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    await this.hooks.beforeGet?.(key);
    return super.get(key, range, into);
  }
}

describe.each(backends)('prune and backup interleaved at exact points ($name)', ({ name, makeRepoUrl }) => {
  let tmp: string;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), `tender-interleave-${name}-`));
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  /** A new repository with one snapshot of `tmp/<dir>`: one file of 2 MiB of random data. */
  async function repoWithOneBackup(dir: string): Promise<{ repo: string; snapshotId: string }> {
    const repo = makeRepoUrl(tmp);
    await initRepo(repo);
    const data = path.join(tmp, dir);
    await mkdir(data);
    await writeRandomFile(path.join(data, 'a.bin'), 2 * MiB);
    return { repo, snapshotId: (await backup(repo, [data])).snapshot_id };
  }

  it('a prune during which a backup finishes (its snapshot appears after prune loaded the index) succeeds and loses nothing', async () => {
    const { repo } = await repoWithOneBackup('first');
    const late = path.join(tmp, 'late');
    await mkdir(late);
    await writeRandomFile(path.join(late, 'b.bin'), 3 * MiB);

    let lateSnapshot: string | undefined;
    const storage = new HookedStorage(await openRepoStorage(repo), {
      // Prune lists snapshots after it has loaded the index: a backup finishes right then.
      beforeList: async (prefix) => {
        if (prefix !== 'snapshots/' || lateSnapshot) return;
        lateSnapshot = (await backup(repo, [late])).snapshot_id;
      },
    });
    const r = await Repository.open(storage, testPassword);
    try {
      // (In this process the heartbeat is the default 5 min, so the grace must exceed 10 min.)
      const report = await pruneInProcess(r, { graceMs: 11 * 60_000 }, createOperationContext());
      expect(report.packsDeleted).toBe(0);
    } finally {
      await r.close();
    }
    expect(lateSnapshot).toBeDefined();
    await expectCheckClean(repo, true);
    await expectRestoresTo(repo, lateSnapshot!, await treeDigest(late), path.join(tmp, 'restore-late'), 'late');
  });

  it('a backup whose parent snapshot was written while a prune marked (its packs are in a waiting plan) succeeds', async () => {
    const repo = makeRepoUrl(tmp);
    await initRepo(repo);
    const data = path.join(tmp, 'parent-doomed');
    await mkdir(data);
    await writeRandomFile(path.join(data, 'a.bin'), 2 * MiB);
    await writeFile(path.join(data, 'note.txt'), 'version 1\n');
    await backup(repo, [data], ['--host', 'h']);
    // Another backup is running the whole time (its marker beats "in the future"): plans wait.
    const marker = await openRepoStorage(repo);
    const now = Date.now();
    const markerKey = `sessions/${'cd'.repeat(16)}.${now}.${now + 3_600_000}`;
    await marker.put(markerKey, [Buffer.from('{}')]);

    // Prune marks: it has loaded the index and listed the snapshots when backup #2 finishes, so
    // #2's packs are in no index prune knows and its snapshot is not among those it saw: the plan
    // dooms those packs (the sweep will rescue them, since it re-checks newer snapshots).
    await writeFile(path.join(data, 'note.txt'), 'version 2\n');
    let second: string | undefined;
    const storage = new HookedStorage(await openRepoStorage(repo), {
      afterList: async (prefix) => {
        if (prefix !== 'snapshots/' || second) return;
        second = (await backup(repo, [data], ['--host', 'h'])).snapshot_id;
      },
    });
    const r = await Repository.open(storage, testPassword);
    try {
      const report = await pruneInProcess(r, { graceMs: 11 * 60_000 }, createOperationContext());
      expect(report.plansWaiting).toBe(1);
      expect(report.planned.packs).toBeGreaterThanOrEqual(1);
    } finally {
      await r.close();
    }
    expect(second).toBeDefined();

    // Backup #3 takes #2 as its parent while the plan waits. It must not depend on the doomed
    // packs (it may re-read and re-upload), but it must not fail either.
    await writeFile(path.join(data, 'note.txt'), 'version 3\n');
    const digest3 = await treeDigest(data);
    const third = await tender(['--repo', repo, '--json', 'backup', data, '--host', 'h']);
    expect(third.code, `backup with a parent whose trees are in a waiting plan: ${third.stderr}`).toBe(0);
    const s3 = backupSummary(third.stdout);

    // The running backup ends; prune sweeps (rescuing #2's packs); everything is intact.
    await marker.delete(markerKey);
    await marker.close();
    const swept = pruneReport((await tenderExpect(['--repo', repo, '--json', 'prune', '--grace', grace])).stdout);
    expect(swept.plansWaiting).toBe(0);
    await expectCheckClean(repo, true);
    await expectRestoresTo(repo, s3.snapshot_id, digest3, path.join(tmp, 'restore-parent-doomed'), 'parent-doomed');
  });

  it('a backup that loads the index while a sweep replaces the index files succeeds', async () => {
    const { repo, snapshotId: firstSnapshot } = await repoWithOneBackup('first2');
    // A pending plan old enough that no running backup blocks it (nothing doomed: a sweep of it
    // only replaces every index file by one new index file, and deletes the old ones).
    const r0 = await openRepository(repo);
    await r0.saveDeletionPlan({ version: 1, createdMs: Date.now() - 10 * 60_000, packs: [], snapshots: [firstSnapshot] });
    await r0.close();

    let swept = false;
    const storage = new HookedStorage(await openRepoStorage(repo), {
      // The backup has listed index/ and is about to read the files: a prune sweeps right then.
      afterList: async (prefix) => {
        if (prefix !== 'index/' || swept) return;
        swept = true;
        const p = pruneReport((await tenderExpect(['--repo', repo, '--json', 'prune', '--grace', grace])).stdout);
        expect(p.plansSwept).toBe(1);
      },
    });
    const r = await Repository.open(storage, testPassword, { workers: 1 });
    const data = path.join(tmp, 'during-sweep');
    await mkdir(data);
    await writeRandomFile(path.join(data, 'c.bin'), 3 * MiB);
    let snapshotId: string | undefined;
    try {
      // docs/design.md: "A restore or check that runs during a sweep may find a pack gone ...
      // Backups are never affected."
      const result = await backupInProcess(r, { paths: [data], hostname: 'during-sweep' }, createOperationContext());
      snapshotId = result.snapshotId;
    } finally {
      await r.close();
    }
    expect(swept).toBe(true);
    await expectCheckClean(repo, true);
    await expectRestoresTo(repo, snapshotId!, await treeDigest(data), path.join(tmp, 'restore-during-sweep'), 'during-sweep');
  });

  it('an index file read before the file that supersedes it is left out (the index is rebuilt without it)', async () => {
    const { repo } = await repoWithOneBackup('superseded-late');
    // A file that supersedes every index file and lists no pack: a reader must end with nothing.
    const r0 = await openRepository(repo);
    const before = await r0.loadIndex();
    expect(before.blobCount).toBeGreaterThan(0);
    const superseding = await r0.saveIndexFile({ superseded: [...before.indexFiles].map((k) => Buffer.from(k.slice('index/'.length), 'hex')), packs: [] });
    await r0.close();
    // In either read order: the superseding file delayed (so the others are added first), or not.
    for (const delayMs of [300, 0]) {
      const storage = new HookedStorage(await openRepoStorage(repo), {
        beforeGet: async (key) => {
          if (key === superseding) await new Promise((resolve) => setTimeout(resolve, delayMs));
        },
      });
      const r = await Repository.open(storage, testPassword);
      try {
        await r.refreshIndex();
        expect(r.index.blobCount, `delay ${delayMs} ms`).toBe(0);
        expect(r.index.indexFiles.has(superseding)).toBe(true);
      } finally {
        await r.close();
      }
    }
  });
});
