/**
 * Crash safety: `tender backup` killed with SIGKILL at several points leaves a repository that
 * checks clean, whose earlier snapshots restore identically, and where the same backup run
 * again completes (reusing the packs the killed run stored) and restores identically.
 */
import { type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStorage } from '../src/storage/open.js';
import { backends } from './helpers/backends.js';
import { assertSameTree, backupJson, describeRun, makeTree, runTender, startTender, tenderOk, writeRandomFile } from './helpers/cli.js';
import { s3TestOptions } from './helpers/s3.js';

const MiB = 1 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface KillOutcome {
  /** True when the process was killed; false when it finished before the kill point came. */
  killed: boolean;
  code: number | null;
  stderr: string;
  /** What `packsNow` said just before the kill: new packs, and the bytes in them. */
  packsAtKill: { count: number; bytes: number };
}

/**
 * Runs `tender backup` and SIGKILLs it once `killWhen()` says so (polled every 5 ms).
 */
async function backupAndKill(
  args: string[],
  killWhen: (elapsedMs: number) => Promise<boolean>,
  packsNow: () => Promise<{ count: number; bytes: number }>,
): Promise<KillOutcome> {
  const child: ChildProcess = startTender(args);
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdout!.resume();
  child.stdin!.end();
  let exited: { code: number | null } | undefined;
  const done = new Promise<void>((resolve) =>
    child.once('close', (code) => {
      exited = { code };
      resolve();
    }),
  );
  const started = Date.now();
  let packsAtKill = { count: 0, bytes: 0 };
  while (!exited) {
    if (await killWhen(Date.now() - started)) {
      packsAtKill = await packsNow();
      child.kill('SIGKILL');
      break;
    }
    await sleep(5);
  }
  await done;
  return { killed: exited!.code === null, code: exited!.code, stderr, packsAtKill };
}

/** Every pack below <repo>/data, with its size. */
async function localPacks(repo: string): Promise<Map<string, number>> {
  const packs = new Map<string, number>();
  const subs = await readdir(path.join(repo, 'data')).catch(() => [] as string[]);
  for (const sub of subs) {
    for (const name of await readdir(path.join(repo, 'data', sub)).catch(() => [] as string[])) {
      const size = await stat(path.join(repo, 'data', sub, name)).then((st) => st.size, () => undefined);
      if (size !== undefined) packs.set(`${sub}/${name}`, size);
    }
  }
  return packs;
}

/** A cheap fingerprint of every repository file: content hash for small ones, size+inode+mtime for packs. */
async function fingerprint(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const visit = async (rel: string) => {
    for (const e of await readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await visit(r);
      else {
        const st = await stat(path.join(dir, r));
        out.set(r, st.size > MiB ? `${st.size}:${st.ino}:${st.mtimeMs}` : createHash('sha256').update(await readFile(path.join(dir, r))).digest('hex'));
      }
    }
  };
  await visit('');
  return out;
}

function expectKeptObjects(before: Map<string, string>, after: Map<string, string>): void {
  const changed = [...before].filter(([k, v]) => after.get(k) !== v && !k.startsWith('sessions/') && !k.startsWith('tmp/')).map(([k]) => k);
  expect(changed, 'objects stored before the crash changed or vanished').toEqual([]);
}

describe('SIGKILL during backup (local)', () => {
  let tmp: string;
  let repo: string;
  let baseline: string;
  let baselineId: string;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-crash-'));
    repo = backends.find((b) => b.name === 'local')!.makeRepoUrl(tmp);
    baseline = path.join(tmp, 'baseline');
    await makeTree(baseline, {
      'a.bin': { type: 'file', random: 6 * MiB },
      'b.txt': 'baseline\n',
      sub: { type: 'dir', children: { 'c.bin': { type: 'file', random: 2 * MiB } } },
    });
    await tenderOk(['--repo', repo, 'init']);
    baselineId = (await backupJson(repo, [baseline])).snapshot_id;
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('check passes, earlier snapshots restore, and a re-run completes, for 5 kill points', { timeout: 180_000 }, async () => {
    const fileSize = 40 * MiB;
    const files = 4;
    const total = fileSize * files;
    // Packs close at 16 MiB: a run of `total` bytes stores about total / 16 MiB data packs.
    const expectedPacks = Math.floor(total / (16 * MiB));
    const randomDelay = 200 + Math.floor(Math.random() * 2300);
    const points: Array<{ name: string; when: (ms: number, newPacks: number) => boolean }> = [
      { name: 'soon after start', when: (ms) => ms >= 120 },
      { name: 'after the first pack is stored', when: (_ms, p) => p >= 1 },
      { name: 'half way', when: (_ms, p) => p >= Math.floor(expectedPacks / 2) },
      { name: 'near the end', when: (_ms, p) => p >= expectedPacks - 2 },
      { name: `after a random ${randomDelay} ms`, when: (ms) => ms >= randomDelay },
    ];
    const done: Array<{ dir: string; id: string; name: string }> = [];
    const outcomes: string[] = [];
    let interrupted = 0;
    for (const [i, point] of points.entries()) {
      const dir = path.join(tmp, `data-${i}`);
      await makeTree(dir, {});
      for (let f = 0; f < files; f++) await writeRandomFile(path.join(dir, `part-${f}.bin`), fileSize);
      const before = await fingerprint(repo);
      const packsBefore = await localPacks(repo);
      const snapshotsBefore = (await readdir(path.join(repo, 'snapshots'))).length;
      const newPacks = async () => {
        let count = 0;
        let bytes = 0;
        for (const [key, size] of await localPacks(repo)) {
          if (packsBefore.has(key)) continue;
          count++;
          bytes += size;
        }
        return { count, bytes };
      };
      const outcome = await backupAndKill(
        ['--repo', repo, '--quiet', 'backup', dir],
        async (ms) => point.when(ms, (await newPacks()).count),
        newPacks,
      );
      if (!outcome.killed) expect(outcome.code, `${point.name}: ${outcome.stderr}`).toBe(0);
      // Killed only after its snapshot was stored (the kill came during clean-up)?
      const snapshotWritten = (await readdir(path.join(repo, 'snapshots'))).length > snapshotsBefore;
      if (outcome.killed && !snapshotWritten) interrupted++;
      outcomes.push(
        `${point.name}: ${outcome.killed ? `killed with ${outcome.packsAtKill.count} new packs (${outcome.packsAtKill.bytes} bytes)${snapshotWritten ? ', after its snapshot was stored' : ''}` : `finished first (code ${outcome.code})`}`,
      );

      expectKeptObjects(before, await fingerprint(repo));
      const check = await runTender(['--repo', repo, '--quiet', 'check']);
      expect(check.code, `${point.name}: ${describeRun(['check'], check)}`).toBe(0);

      const out = path.join(tmp, `out-baseline-${i}`);
      await tenderOk(['--repo', repo, '--quiet', 'restore', baselineId, '--target', out]);
      await assertSameTree(baseline, path.join(out, 'baseline'));
      await rm(out, { recursive: true });

      const again = await backupJson(repo, [dir]);
      // With no snapshot of `dir` yet, everything is read again; otherwise it is the parent.
      expect(again.bytesRead, point.name).toBe(snapshotWritten ? 0 : total);
      if (!snapshotWritten && outcome.packsAtKill.count > 0) {
        // The killed run's packs are reused (indexed on resume), not uploaded again. (Random
        // data does not compress: a pack holds about as many data bytes as it has.)
        expect(again.bytesAdded, `${point.name}: the re-run stores only what the killed run had not`).toBeLessThanOrEqual(
          total - 0.95 * outcome.packsAtKill.bytes,
        );
      }
      done.push({ dir, id: again.snapshot_id, name: point.name });
    }
    console.info(`kill points:\n  ${outcomes.join('\n  ')}`);
    // Most points must really have interrupted the backup, or this test proves nothing.
    expect(interrupted, outcomes.join('\n')).toBeGreaterThanOrEqual(3);

    const check = await runTender(['--repo', repo, '--quiet', 'check']);
    expect(check.code, describeRun(['check'], check)).toBe(0);
    for (const { dir, id, name } of done) {
      const out = path.join(tmp, `out-${path.basename(dir)}`);
      await tenderOk(['--repo', repo, '--quiet', 'restore', id, '--target', out]);
      await assertSameTree(dir, path.join(out, path.basename(dir)));
      await rm(out, { recursive: true });
      await rm(dir, { recursive: true });
      expect(name).toBeTypeOf('string');
    }
  });
});

describe('SIGKILL during backup (s3)', () => {
  let tmp: string;
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('killed after the first pack is uploaded: check passes, the baseline restores, a re-run completes', { timeout: 120_000 }, async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-crash-s3-'));
    const repo = backends.find((b) => b.name === 's3')!.makeRepoUrl(tmp);
    const storage = await openStorage(repo, s3TestOptions());
    try {
      const countPacks = async () => {
        let count = 0;
        let bytes = 0;
        for await (const { size } of storage.list('data/')) {
          count++;
          bytes += size;
        }
        return { count, bytes };
      };
      const baseline = path.join(tmp, 'baseline');
      await makeTree(baseline, { 'a.bin': { type: 'file', random: 3 * MiB }, 'b.txt': 'baseline\n' });
      await tenderOk(['--repo', repo, 'init']);
      const baselineId = (await backupJson(repo, [baseline])).snapshot_id;

      const dir = path.join(tmp, 'data');
      await makeTree(dir, {});
      for (let f = 0; f < 3; f++) await writeRandomFile(path.join(dir, `part-${f}.bin`), 32 * MiB);
      const packsBefore = await countPacks();
      let lastPoll = 0;
      let seen = { count: 0, bytes: 0 };
      const outcome = await backupAndKill(
        ['--repo', repo, '--quiet', 'backup', dir],
        async (ms) => {
          if (ms - lastPoll < 50) return false;
          lastPoll = ms;
          const now = await countPacks();
          seen = { count: now.count - packsBefore.count, bytes: now.bytes - packsBefore.bytes };
          return seen.count >= 1;
        },
        async () => seen,
      );
      expect(outcome.killed, `the backup finished before a pack was seen: ${outcome.stderr}`).toBe(true);

      const check = await runTender(['--repo', repo, '--quiet', 'check']);
      expect(check.code, describeRun(['check'], check)).toBe(0);
      const out1 = path.join(tmp, 'out-baseline');
      await tenderOk(['--repo', repo, '--quiet', 'restore', baselineId, '--target', out1]);
      await assertSameTree(baseline, path.join(out1, 'baseline'));

      const again = await backupJson(repo, [dir]);
      expect(again.bytesRead).toBe(96 * MiB);
      expect(again.bytesAdded, 'the killed run\'s packs are reused').toBeLessThanOrEqual(96 * MiB - 0.95 * outcome.packsAtKill.bytes);
      const out2 = path.join(tmp, 'out-data');
      await tenderOk(['--repo', repo, '--quiet', 'restore', again.snapshot_id, '--target', out2]);
      await assertSameTree(dir, path.join(out2, 'data'));
    } finally {
      await storage.close();
    }
  });
});
