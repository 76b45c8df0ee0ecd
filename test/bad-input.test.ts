/**
 * Wrong passwords, missing and damaged repositories, damaged objects, unreadable sources and
 * full disks: each gives the documented exit code and a one-line message that names the object,
 * with a hint, and none of them changes what the repository already holds.
 * (Local repositories: the damage is done to files.)
 */
import { execFileSync } from 'node:child_process';
import { chmod, cp, mkdir, mkdtemp, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { mkdtempSync, rmdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  assertSameTree,
  backupJson,
  describeRun,
  errorLine,
  expectRepoUnchanged,
  hashFiles,
  jsonLines,
  makeTree,
  runTender,
  tenderOk,
  writeRandomFile,
} from './helpers/cli.js';

const MiB = 1 << 20;
const isRoot = process.getuid?.() === 0;

/** Whether this process may mount a tmpfs (root in a container that allows it). */
const canMountTmpfs = (() => {
  if (!isRoot) return false;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tender-mount-probe-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir], { stdio: 'ignore' });
    execFileSync('umount', [dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  } finally {
    rmdirSync(dir);
  }
})();

/**
 * How to run tender so that a mode-000 file cannot be read: as a normal user nothing is needed;
 * as root, drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH with setpriv (root then obeys the
 * owner bits like anyone else, and still owns the repository it writes).
 */
const unprivileged: { wrap: string[] } | undefined = (() => {
  if (!isRoot) return { wrap: [] };
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tender-setpriv-probe-'));
  const file = path.join(dir, 'secret');
  try {
    execFileSync('sh', ['-c', `echo x > '${file}' && chmod 000 '${file}'`]);
    const wrap = ['setpriv', '--bounding-set=-dac_override,-dac_read_search', '--'];
    try {
      execFileSync(wrap[0]!, [...wrap.slice(1), 'cat', file], { stdio: 'ignore' });
      return undefined; // could still read it: dropping the capabilities did not work
    } catch (err) {
      return (err as { status?: number }).status === 1 ? { wrap } : undefined;
    }
  } catch {
    return undefined;
  } finally {
    execFileSync('rm', ['-rf', dir]);
  }
})();

let tmp: string;
/** A healthy repository with one snapshot of `src`; tests damage copies of it. */
let golden: string;
let src: string;
let snapshotId: string;
const mounts: string[] = [];
let copies = 0;

async function copyRepo(): Promise<string> {
  const dir = path.join(tmp, `copy-${++copies}`);
  await cp(golden, dir, { recursive: true, preserveTimestamps: true });
  return dir;
}

async function packs(repo: string): Promise<Array<{ key: string; size: number }>> {
  const out: Array<{ key: string; size: number }> = [];
  for (const sub of await readdir(path.join(repo, 'data'))) {
    for (const name of await readdir(path.join(repo, 'data', sub))) {
      out.push({ key: `data/${sub}/${name}`, size: (await stat(path.join(repo, 'data', sub, name))).size });
    }
  }
  return out.sort((a, b) => b.size - a.size);
}

async function only(repo: string, dir: string): Promise<string> {
  const names = await readdir(path.join(repo, dir));
  expect(names.length, `one object in ${dir}/`).toBe(1);
  return `${dir}/${names[0]}`;
}

async function flipByte(file: string, at: number): Promise<void> {
  const bytes = await readFile(file);
  bytes[at] = bytes[at]! ^ 0x10;
  await writeFile(file, bytes);
}

async function mountTmpfs(dir: string, size: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
  mounts.push(dir);
}

/** Runs tender, expects `code`, and returns the checked error line. */
async function fails(args: string[], code: number, options: Parameters<typeof runTender>[1] = {}) {
  const r = await runTender(args, options);
  expect(r.code, describeRun(args, r)).toBe(code);
  const e = errorLine(r);
  expect(e.hint, `a hint line in:\n${r.stderr}`).toBeDefined();
  return { ...e, run: r };
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-bad-'));
  golden = path.join(tmp, 'golden');
  src = path.join(tmp, 'src');
  await makeTree(src, {
    'big.bin': { type: 'file', random: 30 * MiB },
    'small.txt': 'a small file\n',
    sub: { type: 'dir', children: { 'note.txt': 'note\n' } },
  });
  await tenderOk(['--repo', golden, 'init']);
  snapshotId = (await backupJson(golden, [src])).snapshot_id;
});

afterAll(async () => {
  for (const m of mounts.reverse()) {
    try {
      execFileSync('umount', [m]);
    } catch {
      execFileSync('umount', ['-l', m]);
    }
  }
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('opening a repository', () => {
  it('wrong password: exit 12, names the repository', async () => {
    const before = await hashFiles(golden);
    const { message, hint } = await fails(['--repo', golden, 'snapshots'], 12, { env: { TENDER_PASSWORD: 'not the password' } });
    expect(message).toContain('wrong password');
    expect(message).toContain(golden);
    expect(hint).toMatch(/TENDER_PASSWORD/);
    await fails(['--repo', golden, 'backup', src], 12, { env: { TENDER_PASSWORD: 'not the password' } });
    const json = await runTender(['--repo', golden, '--json', 'snapshots'], { env: { TENDER_PASSWORD: 'not the password' } });
    expect(json.code).toBe(12);
    expect(JSON.parse(json.stderr.trim())).toMatchObject({ message_type: 'exit_error', code: 'TENDER_WRONG_PASSWORD' });
    expectRepoUnchanged(before, await hashFiles(golden));
  });

  it('no repository at the path: exit 10', async () => {
    const nowhere = path.join(tmp, 'no-such-repo');
    const { message, hint } = await fails(['--repo', nowhere, 'snapshots'], 10);
    expect(message).toContain(`no repository at ${nowhere}`);
    expect(hint).toMatch(/--repo|TENDER_REPOSITORY/);
    await fails(['--repo', nowhere, 'backup', src], 10);
    await expect(stat(nowhere), 'backup must not create a repository').rejects.toThrow();
  });

  it('missing config (keys, data and snapshots still there): exit 10, the message names the config', async () => {
    const repo = await copyRepo();
    await rm(path.join(repo, 'config'));
    const before = await hashFiles(repo);
    const { message, hint } = await fails(['--repo', repo, 'snapshots'], 10);
    expect(message).toContain(repo);
    // The directory is clearly a damaged repository, not an empty place: say that the config is
    // what is missing (and do not send the user to `tender init`, which would start a second one).
    expect(`${message}\n${hint}`).toMatch(/config/);
    expect(hint).not.toMatch(/tender init/);
    expectRepoUnchanged(before, await hashFiles(repo));
  });

  it('init refuses a directory that holds a repository whose config is missing (exit 1, nothing written)', async () => {
    const repo = await copyRepo();
    await rm(path.join(repo, 'config'));
    const before = await hashFiles(repo);
    // Otherwise a second repository (new keys) is mixed into the old one's objects, and the old
    // snapshots then read as "damaged".
    const { message } = await fails(['--repo', repo, 'init'], 1);
    expect(message).toContain(repo);
    expectRepoUnchanged(before, await hashFiles(repo));
  });

  it('config that is not JSON: exit 1, names the config', async () => {
    const repo = await copyRepo();
    await writeFile(path.join(repo, 'config'), '{"version": 1, "repository": garbage');
    const before = await hashFiles(repo);
    const { message, hint } = await fails(['--repo', repo, 'snapshots'], 1);
    expect(message).toContain(`config of the repository at ${repo}`);
    expect(message).toMatch(/not valid JSON/);
    expect(hint).toMatch(/config/);
    await fails(['--repo', repo, 'backup', src], 1);
    expectRepoUnchanged(before, await hashFiles(repo));
  });

  it('config with a flipped byte in its sealed part: exit 1, names the config', async () => {
    const repo = await copyRepo();
    const file = path.join(repo, 'config');
    const envelope = JSON.parse(await readFile(file, 'utf8')) as { sealed: string };
    const sealed = Buffer.from(envelope.sealed, 'base64');
    sealed[Math.floor(sealed.length / 2)]! ^= 0x01;
    envelope.sealed = sealed.toString('base64');
    await writeFile(file, JSON.stringify(envelope, null, 2) + '\n');
    const before = await hashFiles(repo);
    const { message, hint } = await fails(['--repo', repo, 'snapshots'], 1);
    expect(message).toContain(`config of the repository at ${repo}`);
    expect(message).toMatch(/does not decrypt/);
    expect(hint).toMatch(/config/);
    await fails(['--repo', repo, 'backup', src], 1);
    expectRepoUnchanged(before, await hashFiles(repo));
  });

  it('a repository of a newer format (version 4): exit 1, says which versions', async () => {
    const repo = await copyRepo();
    const file = path.join(repo, 'config');
    const envelope = JSON.parse(await readFile(file, 'utf8')) as { version: number };
    envelope.version = 4;
    await writeFile(file, JSON.stringify(envelope, null, 2) + '\n');
    const before = await hashFiles(repo);
    // A wrong password must not be what is reported: the version is checked first.
    const { message, hint } = await fails(['--repo', repo, 'snapshots'], 1, { env: { TENDER_PASSWORD: 'whatever' } });
    expect(message).toContain(repo);
    expect(message).toMatch(/format version 4/);
    expect(message).toMatch(/up to version 3/);
    expect(hint).toMatch(/upgrade/);
    await fails(['--repo', repo, 'backup', src], 1);
    expectRepoUnchanged(before, await hashFiles(repo));
  });
});

describe('damaged objects', () => {
  // The restores below take only big.bin (--include): the directory walk is then over before the
  // damage is found. The test after these covers damage found while the walk is still going.
  it('a truncated pack: restore fails naming it', async () => {
    const repo = await copyRepo();
    const [pack] = await packs(repo);
    await truncate(path.join(repo, pack!.key), Math.floor(pack!.size / 2));
    const before = await hashFiles(repo);
    const out = path.join(tmp, 'out-truncated');
    const { message } = await fails(['--repo', repo, '--quiet', 'restore', snapshotId, '--target', out, '--include', 'src/big.bin'], 1);
    expect(message).toContain(pack!.key);
    expect(message).toMatch(/truncated/);
    expectRepoUnchanged(before, await hashFiles(repo));
  });

  it('a truncated pack: check finds it without --read-data, naming the pack and the file', async () => {
    const repo = await copyRepo();
    const [pack] = await packs(repo);
    await truncate(path.join(repo, pack!.key), Math.floor(pack!.size / 2));
    const before = await hashFiles(repo);
    const check = await fails(['--repo', repo, '--quiet', 'check'], 1);
    expect(check.message).toMatch(/check found \d+ problems/);
    const stdout = check.run.stdout;
    expect(stdout).toContain(`damaged: ${pack!.key}: has ${Math.floor(pack!.size / 2)} bytes, the index says ${pack!.size}`);
    expect(stdout).toContain(`used by snapshot ${snapshotId.slice(0, 8)}:/src/big.bin`);
    await fails(['--repo', repo, '--quiet', 'check', '--read-data'], 1);
    expectRepoUnchanged(before, await hashFiles(repo));
  });

  it('a bit-flipped pack: restore fails naming it', async () => {
    const repo = await copyRepo();
    const [pack] = await packs(repo);
    await flipByte(path.join(repo, pack!.key), Math.floor(pack!.size / 3));
    const before = await hashFiles(repo);
    const out = path.join(tmp, 'out-flipped');
    const { message } = await fails(['--repo', repo, '--quiet', 'restore', snapshotId, '--target', out, '--include', 'src/big.bin'], 1);
    expect(message).toContain(pack!.key);
    expect(message).toMatch(/damaged/);
    expectRepoUnchanged(before, await hashFiles(repo));
  });

  it('a bit-flipped pack: check --read-data names the pack and the affected snapshot and file', async () => {
    const repo = await copyRepo();
    const [pack] = await packs(repo);
    await flipByte(path.join(repo, pack!.key), Math.floor(pack!.size / 3));
    const before = await hashFiles(repo);

    // Sizes and structure are intact: only reading the data shows the damage.
    const quick = await runTender(['--repo', repo, '--quiet', 'check']);
    expect(quick.code, describeRun(['check'], quick)).toBe(0);

    const check = await fails(['--repo', repo, '--quiet', 'check', '--read-data'], 1);
    const stdout = check.run.stdout;
    expect(stdout).toMatch(new RegExp(`damaged: ${pack!.key}: is damaged: data blob [0-9a-f]{64} does not decrypt`));
    expect(stdout).toContain(`used by snapshot ${snapshotId.slice(0, 8)}:/src/big.bin`);
    // Only the damaged blob's users: the small files are fine.
    expect(stdout).not.toContain(':/src/small.txt');

    const json = await runTender(['--repo', repo, '--json', 'check', '--read-data']);
    expect(json.code).toBe(1);
    const report = jsonLines(json.stdout).find((l) => l.message_type === 'check') as { problems: Array<{ object: string; affects?: string[] }> };
    expect(report.problems.some((p) => p.object === pack!.key)).toBe(true);
    expect(report.problems.some((p) => p.affects?.some((a) => a === `snapshot ${snapshotId.slice(0, 8)}:/src/big.bin`))).toBe(true);
    expect(JSON.parse(json.stderr.trim().split('\n').pop()!)).toMatchObject({ message_type: 'exit_error', code: 'TENDER_CORRUPT' });
    expectRepoUnchanged(before, await hashFiles(repo));
  });

  it('damage found while restore is still walking directories: a clean error, not a crash', async () => {
    const repo = path.join(tmp, 'walk-repo');
    const dir = path.join(tmp, 'walk');
    const spec: Record<string, unknown> = {};
    let nested: Record<string, unknown> = spec;
    for (let i = 0; i < 120; i++) {
      const child: Record<string, unknown> = { [`f${i}.txt`]: `file ${i}\n` };
      nested[`d${i}`] = { type: 'dir', children: child };
      nested = child;
    }
    await makeTree(dir, { 'a-first.bin': { type: 'file', random: 40 * MiB }, 'z-dirs': { type: 'dir', children: spec as never } });
    await tenderOk(['--repo', repo, 'init']);
    const s = await backupJson(repo, [dir]);
    const [pack] = await packs(repo);
    await truncate(path.join(repo, pack!.key), 1000);
    const before = await hashFiles(repo);
    const { message } = await fails(['--repo', repo, 'restore', s.snapshot_id, '--target', path.join(tmp, 'out-walk')], 1);
    expect(message).toContain(pack!.key);
    expectRepoUnchanged(before, await hashFiles(repo));
  });

  for (const damage of ['truncated', 'bit-flipped'] as const) {
    it(`a ${damage} index file: check names it, restore fails naming it`, async () => {
      const repo = await copyRepo();
      const key = await only(repo, 'index');
      const file = path.join(repo, key);
      if (damage === 'truncated') await truncate(file, (await stat(file)).size - 7);
      else await flipByte(file, 40);
      const before = await hashFiles(repo);
      const check = await fails(['--repo', repo, '--quiet', 'check'], 1);
      expect(check.run.stdout).toContain(`damaged: ${key}: does not match its name (damaged)`);
      const { message } = await fails(['--repo', repo, '--quiet', 'restore', snapshotId, '--target', path.join(tmp, `out-index-${damage}`)], 1);
      expect(message).toContain(key);
      expectRepoUnchanged(before, await hashFiles(repo));
    });

    it(`a ${damage} snapshot file: check names it`, async () => {
      const repo = await copyRepo();
      const key = await only(repo, 'snapshots');
      const file = path.join(repo, key);
      if (damage === 'truncated') await truncate(file, (await stat(file)).size - 7);
      else await flipByte(file, 40);
      const before = await hashFiles(repo);
      const check = await fails(['--repo', repo, '--quiet', 'check'], 1);
      expect(check.run.stdout).toContain(`damaged: ${key}: does not match its name (damaged)`);
      const { message } = await fails(['--repo', repo, '--quiet', 'restore', snapshotId, '--target', path.join(tmp, `out-snap-${damage}`)], 1);
      expect(message).toContain(key);
      expectRepoUnchanged(before, await hashFiles(repo));
    });
  }

  it('restore into a non-empty target is refused and writes nothing', async () => {
    const before = await hashFiles(golden);
    const target = path.join(tmp, 'not-empty');
    await makeTree(target, { 'precious.txt': 'keep me' });
    const { message, hint } = await fails(['--repo', golden, 'restore', snapshotId, '--target', target], 1);
    expect(message).toContain(target);
    expect(message).toMatch(/not empty/);
    expect(hint).toMatch(/empty directory/);
    expect(await readdir(target)).toEqual(['precious.txt']);
    expect(await readFile(path.join(target, 'precious.txt'), 'utf8')).toBe('keep me');
    expectRepoUnchanged(before, await hashFiles(golden));
  });
});

describe('unreadable sources', () => {
  it.runIf(unprivileged)(
    `an unreadable file: exit 3, a warning names it, the snapshot lacks it${isRoot ? ' (root: run with CAP_DAC_OVERRIDE dropped by setpriv)' : ''}`,
    async () => {
      const repo = await copyRepo();
      const dir = path.join(tmp, 'partly-unreadable');
      await makeTree(dir, { 'ok.txt': 'readable', 'secret.bin': { type: 'file', random: 100_000 }, sub: { type: 'dir', children: { 'fine.txt': 'fine' } } });
      await chmod(path.join(dir, 'secret.bin'), 0o000);
      const before = await hashFiles(repo);
      const args = ['--repo', repo, 'backup', dir];
      const r = await runTender(args, unprivileged!);
      expect(r.code, describeRun(args, r)).toBe(3);
      expect(r.stderr).toContain(`warning: skipped ${path.join(dir, 'secret.bin')}: permission denied`);
      const after = await hashFiles(repo);
      expectRepoUnchanged(before, after, ['data/', 'index/', 'snapshots/']);
      const ls = jsonLines((await tenderOk(['--repo', repo, '--json', 'ls', 'latest'])).stdout);
      const paths = ls.map((l) => l.path);
      expect(paths).toContain('/partly-unreadable/ok.txt');
      expect(paths).toContain('/partly-unreadable/sub/fine.txt');
      expect(paths).not.toContain('/partly-unreadable/secret.bin');

      const json = await runTender(['--repo', repo, '--json', 'backup', dir], unprivileged!);
      expect(json.code).toBe(3);
      const lines = jsonLines(json.stdout);
      expect(lines).toContainEqual(expect.objectContaining({ message_type: 'error', path: path.join(dir, 'secret.bin') }));
      expect(lines.find((l) => l.message_type === 'summary')).toMatchObject({ errors: 1 });
    },
  );

  it.runIf(unprivileged)(
    `an unreadable directory: exit 3, a warning names it, the snapshot does not pretend it is empty${isRoot ? ' (root: CAP_DAC_OVERRIDE dropped by setpriv)' : ''}`,
    async () => {
      const repo = await copyRepo();
      const dir = path.join(tmp, 'dir-unreadable');
      await makeTree(dir, { 'ok.txt': 'readable', locked: { type: 'dir', mode: 0o000, children: { 'inside.txt': 'hidden' } } });
      const args = ['--repo', repo, 'backup', dir];
      const r = await runTender(args, unprivileged!);
      expect(r.code, describeRun(args, r)).toBe(3);
      expect(r.stderr).toContain(`warning: skipped ${path.join(dir, 'locked')}: permission denied`);
      expect(r.stderr).toMatch(/could not be read and are not in the snapshot/);
      const paths = jsonLines((await tenderOk(['--repo', repo, '--json', 'ls', 'latest'])).stdout).map((l) => l.path);
      expect(paths).toContain('/dir-unreadable/ok.txt');
      // "not in the snapshot": an empty directory in its place would restore as if it were empty.
      expect(paths).not.toContain('/dir-unreadable/locked');
    },
  );
});

describe('full disks', () => {
  it.runIf(canMountTmpfs)('restore onto a full disk (8 MiB tmpfs, 30 MiB snapshot): "disk ... is full", exit 1', async () => {
    const mnt = path.join(tmp, 'small-disk');
    await mountTmpfs(mnt, '8m');
    const before = await hashFiles(golden);
    const target = path.join(mnt, 'restore');
    const { message, hint } = await fails(['--repo', golden, '--quiet', 'restore', snapshotId, '--target', target], 1);
    expect(message).toMatch(/disk .* is full/);
    expect(message).toContain(target);
    expect(hint).toMatch(/free space|another --target/);
    expectRepoUnchanged(before, await hashFiles(golden));
  });

  it.runIf(canMountTmpfs)('backup into a repository on a full disk: clear error, earlier snapshots intact', async () => {
    const mnt = path.join(tmp, 'repo-disk');
    await mountTmpfs(mnt, '40m');
    const repo = path.join(mnt, 'repo');
    await tenderOk(['--repo', repo, 'init']);
    const first = path.join(tmp, 'first');
    await makeTree(first, { 'a.bin': { type: 'file', random: 3 * MiB }, 'b.txt': 'bee' });
    const s1 = await backupJson(repo, [first]);
    const before = await hashFiles(repo);

    const big = path.join(tmp, 'too-big');
    await mkdir(big);
    await writeRandomFile(path.join(big, 'huge.bin'), 64 * MiB);
    const { message, hint } = await fails(['--repo', repo, '--quiet', 'backup', big], 1);
    expect(message).toMatch(/disk holding .* is full/);
    expect(message).toContain(repo);
    expect(hint).toMatch(/free space/);

    expectRepoUnchanged(before, await hashFiles(repo), ['data/', 'index/']);
    const snaps = JSON.parse((await tenderOk(['--repo', repo, '--json', 'snapshots'])).stdout) as Array<{ id: string }>;
    expect(snaps.map((s) => s.id)).toEqual([s1.snapshot_id]);
    const check = await runTender(['--repo', repo, '--quiet', 'check']);
    expect(check.code, describeRun(['check'], check)).toBe(0);
    const out = path.join(tmp, 'out-after-full');
    await tenderOk(['--repo', repo, '--quiet', 'restore', s1.snapshot_id, '--target', out]);
    await assertSameTree(first, path.join(out, 'first'));
  });
});
