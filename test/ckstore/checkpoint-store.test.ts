/**
 * Checkpoint-aware storage end to end through the CLI: a generated checkpoint series backed up
 * version by version restores byte-identically on every backend; a safetensors file whose header
 * grew re-stores only the header-near chunk; the statistics equal what was stored.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobType, transformOf } from '../../src/repo/blob.js';
import type { TransformName } from '../../src/repo/blob.js';
import { backends } from '../helpers/backends.js';
import { assertSameTree, backupJson, jsonLines, tenderOk, treeDigest } from '../helpers/cli.js';
import { openRepository } from '../lifecycle/helpers.js';
import { type Tensor, writeCheckpointVersion, writeSafetensors } from './checkpoints.js';
import { gaussianBf16, gaussianFloats } from './floats.js';

/** The files' contents of two trees (their times differ: the copies were written later). */
async function expectSameContents(expected: string, actual: string): Promise<void> {
  const contents = async (root: string) =>
    Object.fromEntries(Object.entries((await treeDigest(root)).entries).map(([rel, e]) => [rel, { type: e.type, size: e.size, content: e.content }]));
  expect(await contents(actual)).toEqual(await contents(expected));
}

async function indexTotals(url: string): Promise<Record<TransformName, { blobs: number; bytes: number; stored: number }>> {
  const repo = await openRepository(url);
  try {
    const totals = { delta: { blobs: 0, bytes: 0, stored: 0 }, planes: { blobs: 0, bytes: 0, stored: 0 }, zstd: { blobs: 0, bytes: 0, stored: 0 }, raw: { blobs: 0, bytes: 0, stored: 0 } };
    (await repo.loadIndex()).forEachBlob((_id, loc) => {
      if (loc.type !== BlobType.data) return;
      const t = totals[transformOf(loc.flags)];
      t.blobs++;
      t.bytes += loc.rawLength;
      t.stored += loc.storedLength;
    });
    return totals;
  } finally {
    await repo.close();
  }
}

describe.each(backends)('checkpoint storage ($name)', ({ name, makeRepoUrl }) => {
  let tmp: string;
  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), `tender-ckstore-${name}-`));
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('backs up a checkpoint series version by version; every version restores byte-identically', async () => {
    const repo = makeRepoUrl(tmp);
    await tenderOk(['--repo', repo, 'init']);
    const work = path.join(tmp, 'run');
    const snapshots: string[] = [];
    const copies: string[] = [];
    for (let v = 1; v <= 3; v++) {
      await writeCheckpointVersion(work, v);
      // A copy of this version to compare its restore with, after later versions replaced it.
      const copy = path.join(tmp, `v${v}`);
      await writeCheckpointVersion(copy, v);
      copies.push(copy);
      const summary = await backupJson(repo, [work]);
      snapshots.push(summary.snapshot_id);
      const planes = summary.transforms!.kinds.filter((k) => k.transforms.planes.blobs > 0).map((k) => `${k.layout}/${k.dtype}`);
      expect(planes).toEqual(expect.arrayContaining(['safetensors/F32', 'safetensors/BF16']));
      if (v > 1) {
        // The frozen backbone is not stored again.
        const bf16 = summary.transforms!.kinds.find((k) => k.layout === 'safetensors' && k.dtype === 'BF16')!;
        expect(bf16.bytesDeduplicated).toBeGreaterThanOrEqual(4 * 262_144 * 2);
      }
    }
    for (const [i, id] of snapshots.entries()) {
      const out = path.join(tmp, `out-${i}`);
      await tenderOk(['--repo', repo, '--quiet', 'restore', id, '--target', out]);
      await expectSameContents(copies[i]!, path.join(out, 'run'));
    }
    await tenderOk(['--repo', repo, 'check', '--read-data']);
  });

  it('a safetensors file whose header grew by a few bytes re-stores only the header-near chunk', async () => {
    const repo = makeRepoUrl(tmp);
    await tenderOk(['--repo', repo, 'init']);
    const tensors: Tensor[] = [
      { name: 'a', dtype: 'F32', shape: [1 << 20], data: new Uint8Array(gaussianFloats(1 << 20, 0.02, 11).buffer) },
      { name: 'small', dtype: 'F32', shape: [100], data: new Uint8Array(gaussianFloats(100, 0.02, 12).buffer) },
      { name: 'b', dtype: 'BF16', shape: [3 << 20], data: gaussianBf16(gaussianFloats(3 << 20, 0.02, 13)) },
    ];
    const dir = path.join(tmp, 'shift');
    await mkdir(dir, { recursive: true });
    const file = path.join(dir, 'model.safetensors');
    // Unpadded headers: the tensors move by 3 bytes, off every alignment plain chunking could keep.
    await writeSafetensors(file, tensors, { note: 'x' }, false);
    const first = await backupJson(repo, [dir]);
    expect(first.bytesAdded).toBe(first.bytesRead);
    await writeSafetensors(file, tensors, { note: 'xyzw' }, false);
    const second = await backupJson(repo, [dir]);
    expect(second.bytesRead).toBe(first.bytesRead + 3);
    // Only the header is new: every tensor is the same chunks (the small one is the segment
    // between the two large ones). Plain CDC would re-store the first chunk, ≥ minSize (512 KiB).
    expect(second.blobsAdded).toBe(1);
    expect(second.bytesAdded).toBeLessThan(4096);
    const out = path.join(tmp, 'shift-out');
    await tenderOk(['--repo', repo, '--quiet', 'restore', second.snapshot_id, '--target', out]);
    await assertSameTree(dir, path.join(out, 'shift'));
  });

  it('stats: the figures recorded per kind add up to what the repository stores, per transform', async () => {
    const repo = makeRepoUrl(tmp);
    await tenderOk(['--repo', repo, 'init']);
    const work = path.join(tmp, 'stats');
    await writeCheckpointVersion(work, 1, 0.5);
    const summary = await backupJson(repo, [work]);
    const t = summary.transforms!;
    const sum = (pick: (f: { blobs: number; bytes: number; stored: number }) => number, transform?: TransformName) =>
      t.kinds.reduce((acc, k) => acc + (transform ? pick(k.transforms[transform]) : Object.values(k.transforms).reduce((a, f) => a + pick(f), 0)), 0);
    expect(sum((f) => f.stored)).toBe(summary.bytesStored);
    expect(sum((f) => f.bytes)).toBe(summary.bytesAdded);
    expect(sum((f) => f.blobs)).toBe(summary.blobsAdded);
    expect(t.kinds.reduce((a, k) => a + k.bytesIn, 0)).toBe(summary.bytesRead);
    const totals = await indexTotals(repo);
    for (const name of ['planes', 'zstd', 'raw'] as const) {
      expect(sum((f) => f.stored, name), name).toBe(totals[name].stored);
      expect(sum((f) => f.bytes, name), name).toBe(totals[name].bytes);
    }
    expect(totals.planes.stored).toBeLessThan(totals.planes.bytes);
    const r = await tenderOk(['--repo', repo, '--json', 'stats']);
    const stats = jsonLines(r.stdout).find((l) => l.message_type === 'stats')!;
    expect(stats.stored).toEqual(totals);
    expect(stats.kinds).toEqual(t.kinds);
    const text = await tenderOk(['--repo', repo, 'stats']);
    expect(text.stdout).toMatch(/^safetensors\s+F32\s/m);
    expect(text.stdout).toMatch(/time \(ms\): read \d+, chunk \d+ \(main thread\); hash \d+, seal \d+ .*; store \d+/);
    expect(t.stageMs.store).toBeGreaterThan(0);
  });
});

describe('checkpoint storage: transforms on and off', () => {
  let tmp: string;
  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-ckstore-size-'));
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('byte planes store the series in less space than zstd alone', async () => {
    const work = path.join(tmp, 'run');
    const stored: Record<string, number> = {};
    for (const variant of ['on', 'off']) {
      const repo = path.join(tmp, `repo-${variant}`);
      await tenderOk(['--repo', repo, 'init', ...(variant === 'off' ? ['--no-transforms'] : [])]);
      stored[variant] = 0;
      for (let v = 1; v <= 2; v++) {
        await writeCheckpointVersion(work, v, 0.5);
        stored[variant] += (await backupJson(repo, [work])).bytesStored;
      }
    }
    expect(stored.on!).toBeLessThan(0.95 * stored.off!);
  });
});
