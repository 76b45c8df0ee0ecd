/**
 * Format versions: a version-1 repository written by the release before byte planes is still
 * read (and stays version 1 when this tender writes into it); a version-2 repository says so in
 * its config, and what this tender cannot read is refused with a clear error.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RepositoryConfig, configKey, encodeConfig } from '../../src/repo/config.js';
import { BlobFlag, BlobType } from '../../src/repo/blob.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStorage } from '../../src/storage/fs.js';
import { backupJson, errorLine, runTender, tenderOk, testPassword } from '../helpers/cli.js';
import { writeSafetensors } from './checkpoints.js';
import { gaussianFloats } from './floats.js';

const weights = [{ name: 'w', dtype: 'F32' as const, shape: [600, 1000], data: new Uint8Array(gaussianFloats(600_000, 0.02).buffer) }];

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-format-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function dataBlobFlags(repoDir: string): Promise<number[]> {
  const repo = await Repository.open(new FsStorage(repoDir), testPassword, { workers: 0 });
  const index = await repo.loadIndex();
  const flags: number[] = [];
  index.forEachBlob((_id, loc) => {
    if (loc.type === BlobType.data) flags.push(loc.flags);
  });
  return flags;
}

async function rewriteConfig(repoDir: string, change: (c: RepositoryConfig) => RepositoryConfig): Promise<void> {
  const repo = await Repository.open(new FsStorage(repoDir), testPassword, { workers: 0 });
  await writeFile(path.join(repoDir, configKey), encodeConfig(repo.keys.encryption, change({ ...repo.config })));
}

describe('format versions', () => {
  it('reads a version-1 repository written by the previous release, and keeps it version 1', async () => {
    const repo = path.join(tmp, 'v1');
    await cp(path.join(fixtures, 'v1-repo'), repo, { recursive: true });
    const out = path.join(tmp, 'v1-out');
    await tenderOk(['--repo', repo, 'restore', 'latest', '--target', out, '--quiet']);
    for (const name of ['weights.bin', 'config.json']) {
      const restored = await readFile(path.join(out, 'v1-source', 'ckpt', name));
      expect(restored.equals(await readFile(path.join(fixtures, 'v1-source', 'ckpt', name))), name).toBe(true);
    }
    await tenderOk(['--repo', repo, 'check', '--read-data']);
    // Writing float data into it: no byte-plane blob, so the previous release can still read it all.
    const src = path.join(tmp, 'v1-src');
    await cp(path.join(fixtures, 'v1-source'), src, { recursive: true });
    await writeSafetensors(path.join(src, 'ckpt', 'model.safetensors'), weights);
    await backupJson(repo, [src]);
    const config = JSON.parse(await readFile(path.join(repo, configKey), 'utf8')) as { version: number };
    expect(config.version).toBe(1);
    const flags = await dataBlobFlags(repo);
    expect(flags.length).toBeGreaterThan(2);
    expect(flags.every((f) => (f & BlobFlag.planes) === 0)).toBe(true);
  });

  it('creates version 3 with byte planes and deltas by default (and writes planes) and version 1 with --no-transforms', async () => {
    const v2 = path.join(tmp, 'new-v2');
    const v1 = path.join(tmp, 'new-v1');
    await tenderOk(['--repo', v2, 'init']);
    await tenderOk(['--repo', v1, 'init', '--no-transforms']);
    expect(JSON.parse(await readFile(path.join(v2, configKey), 'utf8')).version).toBe(3);
    expect(JSON.parse(await readFile(path.join(v1, configKey), 'utf8')).version).toBe(1);
    const open = async (dir: string) => (await Repository.open(new FsStorage(dir), testPassword, { workers: 0 })).config.transforms;
    expect(await open(v2)).toEqual(['planes', 'delta']);
    expect(await open(v1)).toBeUndefined();
    const src = path.join(tmp, 'v2-src');
    await cp(path.join(fixtures, 'v1-source'), src, { recursive: true });
    await writeSafetensors(path.join(src, 'ckpt', 'model.safetensors'), weights);
    for (const repo of [v1, v2]) {
      const summary = await backupJson(repo, [src]);
      const out = path.join(tmp, `${path.basename(repo)}-out`);
      await tenderOk(['--repo', repo, 'restore', summary.snapshot_id, '--target', out, '--quiet']);
      const restored = await readFile(path.join(out, 'v2-src', 'ckpt', 'model.safetensors'));
      expect(restored.equals(await readFile(path.join(src, 'ckpt', 'model.safetensors')))).toBe(true);
    }
    expect((await dataBlobFlags(v2)).some((f) => f === BlobFlag.planes)).toBe(true);
    expect((await dataBlobFlags(v1)).some((f) => f === BlobFlag.planes)).toBe(false);
  });

  it('refuses a newer version, an unknown transform and a damaged transform list clearly', async () => {
    const make = async (name: string) => {
      const dir = path.join(tmp, name);
      await tenderOk(['--repo', dir, 'init']);
      return dir;
    };
    const newer = await make('newer');
    const configPath = path.join(newer, configKey);
    const envelope = JSON.parse(await readFile(configPath, 'utf8'));
    await writeFile(configPath, JSON.stringify({ ...envelope, version: 4 }));
    let r = await runTender(['--repo', newer, 'snapshots']);
    expect(r.code).not.toBe(0);
    expect(errorLine(r).message).toMatch(/has format version 4; this tender reads up to version 3/);

    const unknown = await make('unknown-transform');
    await rewriteConfig(unknown, (c) => ({ ...c, transforms: ['planes', 'xor-delta-v9'] as never }));
    r = await runTender(['--repo', unknown, 'snapshots']);
    expect(r.code).not.toBe(0);
    const line = errorLine(r);
    expect(line.message).toMatch(/uses the blob transform "xor-delta-v9", which this tender does not know/);
    expect(line.hint).toMatch(/upgrade tender/);

    const damaged = await make('damaged-transforms');
    await rewriteConfig(damaged, (c) => ({ ...c, version: 1, transforms: ['planes'] }));
    const envelope1 = JSON.parse(await readFile(path.join(damaged, configKey), 'utf8'));
    expect(envelope1.version).toBe(1);
    r = await runTender(['--repo', damaged, 'snapshots']);
    expect(errorLine(r).message).toMatch(/names transforms in format version 1/);

    // Deltas in version 2 (where a version-2 tender would not know them), or without planes.
    const deltaV2 = await make('delta-in-v2');
    await rewriteConfig(deltaV2, (c) => ({ ...c, version: 2 }));
    r = await runTender(['--repo', deltaV2, 'snapshots']);
    expect(errorLine(r).message).toMatch(/names the transform "delta" in format version 2/);
    const deltaAlone = await make('delta-alone');
    await rewriteConfig(deltaAlone, (c) => ({ ...c, transforms: ['delta'] }));
    r = await runTender(['--repo', deltaAlone, 'snapshots']);
    expect(errorLine(r).message).toMatch(/names the transform "delta" without "planes"/);
  });
});
