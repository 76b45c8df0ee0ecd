/**
 * Consistency labels through the CLI (`node bin/tender.js`, built dist/): a volume with a whole
 * DCP checkpoint, one still being saved (`.metadata.tmp`), a truncated safetensors file and a
 * plain file. `backup` labels them, `ls --json` and `snapshots` show the labels, `restore
 * --only-consistent` leaves out what is not whole and says so; `--incomplete skip` leaves the
 * incomplete checkpoint out of the snapshot, `--incomplete wait=…` waits for it.
 */
import { cp, mkdir, mkdtemp, readdir, rename, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupSummary, jsonLines, repoRoot, tenderOk } from '../helpers/cli.js';

const fixtures = path.join(repoRoot, 'test/fixtures/checkpoint');

describe('consistency in the CLI', () => {
  let tmp: string;
  let repo: string;
  let volume: string;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-consistency-cli-'));
    repo = path.join(tmp, 'repo');
    await tenderOk(['--repo', repo, '--quiet', 'init']);
    volume = path.join(tmp, 'ckpt');
    await cp(path.join(fixtures, 'dcp'), path.join(volume, 'step-1'), { recursive: true });
    await mkdir(path.join(volume, 'step-2'));
    await cp(path.join(fixtures, 'dcp', '__0_0.distcp'), path.join(volume, 'step-2', '__0_0.distcp'));
    await cp(path.join(fixtures, 'dcp', '__1_0.distcp'), path.join(volume, 'step-2', '__1_0.distcp'));
    await cp(path.join(fixtures, 'dcp', '.metadata'), path.join(volume, 'step-2', '.metadata.tmp'));
    await cp(path.join(fixtures, 'files', 'model.safetensors'), path.join(volume, 'half.safetensors'));
    await truncate(path.join(volume, 'half.safetensors'), 100);
    await writeFile(path.join(volume, 'notes.txt'), 'step 2 is being saved');
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('backup labels, ls and snapshots show, restore --only-consistent skips', async () => {
    const summary = backupSummary((await tenderOk(['--repo', repo, '--json', 'backup', volume])).stdout);
    // half.safetensors, and in step-2: .metadata.tmp (a temporary name) and both shards (no
    // .metadata to check them against).
    expect(summary).toMatchObject({ filesTorn: 0, filesIncomplete: 4 });

    const entries = jsonLines((await tenderOk(['--repo', repo, '--json', 'ls', 'latest'])).stdout);
    const byPath = new Map(entries.map((e) => [e.path as string, e]));
    expect(byPath.get('/ckpt/step-1')).toMatchObject({ type: 'dir', checkpoint: { kind: 'dcp', complete: true } });
    expect(byPath.get('/ckpt/step-2')).toMatchObject({ type: 'dir', checkpoint: { kind: 'dcp', complete: false, reason: expect.stringContaining('.metadata.tmp') } });
    expect(byPath.get('/ckpt/half.safetensors')).toMatchObject({ consistency: 'incomplete', reason: expect.any(String) });
    expect(byPath.get('/ckpt/notes.txt')).toMatchObject({ consistency: 'consistent' });
    expect(byPath.get('/ckpt/step-1/.metadata')).toMatchObject({ consistency: 'consistent' });
    expect(byPath.get('/ckpt/step-1/__0_0.distcp')).toMatchObject({ consistency: 'consistent' });
    expect(byPath.get('/ckpt/step-2/.metadata.tmp')).toMatchObject({ consistency: 'incomplete' });

    const text = (await tenderOk(['--repo', repo, 'snapshots'])).stdout;
    expect(text).toContain('1 checkpoint complete, 1 incomplete, 0 torn files, 4 incomplete files');
    const [listed] = JSON.parse((await tenderOk(['--repo', repo, '--json', 'snapshots'])).stdout) as Array<Record<string, unknown>>;
    expect(listed!.consistency).toEqual({ checkpointsComplete: 1, checkpointsIncomplete: 1, checkpointsSkipped: 0, filesTorn: 0, filesIncomplete: 4 });

    const target = path.join(tmp, 'restored');
    const restored = await tenderOk(['--repo', repo, 'restore', 'latest:ckpt', '--target', target, '--only-consistent']);
    expect(restored.stdout).toContain('skipped step-2: incomplete dcp checkpoint: .metadata.tmp');
    expect(restored.stdout).toMatch(/skipped half\.safetensors: incomplete: /);
    expect((await readdir(target)).sort()).toEqual(['notes.txt', 'step-1']);
    expect((await readdir(path.join(target, 'step-1'))).sort()).toEqual(['.metadata', '__0_0.distcp', '__1_0.distcp']);
    const json = jsonLines((await tenderOk(['--repo', repo, '--json', 'restore', 'latest', '--target', path.join(tmp, 'restored-json'), '--only-consistent'])).stdout);
    expect(json.at(-1)!.skipped).toEqual([
      { path: 'ckpt/half.safetensors', message: expect.stringMatching(/^incomplete: /) },
      { path: 'ckpt/step-2', message: expect.stringMatching(/^incomplete dcp checkpoint: /) },
    ]);
  });

  it('--incomplete skip leaves the incomplete checkpoint out, and records it', async () => {
    await tenderOk(['--repo', repo, '--json', 'backup', volume, '--incomplete', 'skip']);
    const entries = jsonLines((await tenderOk(['--repo', repo, '--json', 'ls', 'latest'])).stdout).map((e) => e.path);
    expect(entries).toContain('/ckpt/step-1/.metadata');
    expect(entries.filter((p) => String(p).startsWith('/ckpt/step-2/'))).toEqual([]);
    const listed = JSON.parse((await tenderOk(['--repo', repo, '--json', 'snapshots'])).stdout) as Array<{ checkpoints: unknown[] }>;
    expect(listed.at(-1)!.checkpoints).toEqual([
      { path: '/ckpt/step-1', kind: 'dcp', complete: true },
      { path: '/ckpt/step-2', kind: 'dcp', complete: false, reason: expect.stringContaining('.metadata.tmp'), skipped: true },
    ]);
  });

  it('--incomplete wait=… waits for the checkpoint to complete; a bad value is a usage error', async () => {
    const bad = await tenderOk(['--repo', repo, 'backup', volume, '--incomplete', 'later'], {}, 2);
    expect(bad.stderr).toMatch(/--incomplete "later" is not store, skip or wait=DURATION/);
    const backup = tenderOk(['--repo', repo, '--json', 'backup', volume, '--incomplete', 'wait=60s']);
    // The trainer finishes its save while the backup waits (or before it looked: either way it
    // must be stored complete, well before the 60 s bound).
    await rename(path.join(volume, 'step-2', '.metadata.tmp'), path.join(volume, 'step-2', '.metadata'));
    await backup;
    const listed = JSON.parse((await tenderOk(['--repo', repo, '--json', 'snapshots'])).stdout) as Array<{ checkpoints: unknown[] }>;
    expect(listed.at(-1)!.checkpoints).toEqual([
      { path: '/ckpt/step-1', kind: 'dcp', complete: true },
      { path: '/ckpt/step-2', kind: 'dcp', complete: true },
    ]);
  });
});
