/**
 * Delta blobs end to end through the CLI, on a real repository directory: versions of a
 * checkpoint whose tensors drift as training moves them are stored as XOR-deltas against the
 * first version's chunks (a chain one deep), restore byte-identically, survive a prune after the
 * snapshot that stored their bases is forgotten, and `check` names a delta whose base is gone.
 */
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobFlag, BlobType } from '../../src/repo/blob.js';
import { configKey } from '../../src/repo/config.js';
import { hexToId, idToHex } from '../../src/repo/ids.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStorage } from '../../src/storage/fs.js';
import { Pickler, orderedDict, tensorRef, writeTorchArchive } from '../../bench/ckpt-formats.mjs';
import { backends } from '../helpers/backends.js';
import { backupJson, errorLine, jsonLines, runTender, tenderOk, testPassword } from '../helpers/cli.js';
import { checkRepo, expectCheckClean, pruneJson } from '../lifecycle/helpers.js';
import { type Tensor, writeSafetensors } from './checkpoints.js';
import { gaussianBf16, gaussianFloats } from './floats.js';

const elements = 1 << 20;

/** Version v of the weights: each version moves every weight by ~1e-3 of the weights' scale. */
function weights(seed: number, v: number): Float32Array {
  const w = gaussianFloats(elements, 0.02, seed);
  for (let step = 1; step < v; step++) {
    const drift = gaussianFloats(elements, 0.02 * 1e-3, seed * 100 + step);
    for (let i = 0; i < elements; i++) w[i]! += drift[i]!;
  }
  return w;
}

const bytesOf = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** model.safetensors (fp32 + a bf16 export of other weights) and model.pt (a torch.save zip of fp32). */
async function writeVersion(dir: string, v: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  const tensors: Tensor[] = [
    { name: 'layer.0.weight', dtype: 'F32', shape: [elements], data: bytesOf(weights(1, v)) },
    { name: 'layer.1.weight', dtype: 'BF16', shape: [elements], data: gaussianBf16(weights(2, v)) },
    { name: 'step', dtype: 'I64', shape: [1], data: new Uint8Array(new BigInt64Array([BigInt(v)]).buffer) },
  ];
  await writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { step: String(v) });
  await writeFile(path.join(dir, 'model.pt'), torchSave('weight', bytesOf(weights(3, v))));
}

/** A torch.save ZIP archive of one fp32 tensor, written as torch writes it (bench/ckpt-formats.mjs). */
function torchSave(name: string, data: Uint8Array): Buffer {
  const parts: Buffer[] = [];
  const w = {
    size: 0,
    write(bytes: Uint8Array) {
      parts.push(Buffer.from(bytes));
      this.size += bytes.length;
    },
    patch(offset: number, bytes: Uint8Array) {
      let at = 0;
      for (const part of parts) {
        if (offset >= at && offset < at + part.length) Buffer.from(bytes).copy(part, offset - at);
        at += part.length;
      }
    },
  };
  const pickler = new Pickler();
  pickler.value(orderedDict([[name, tensorRef(0, 'F32', [data.length / 4])]]));
  writeTorchArchive(w, pickler.bytes(), [{ key: '0', bytes: data.length }], (_s: unknown, write: (b: Uint8Array) => void) => write(data));
  return Buffer.concat(parts);
}

async function deltaEntries(repoDir: string): Promise<Array<{ id: string; base: string; baseFlags: number; sameLength: boolean }>> {
  const repo = await Repository.open(new FsStorage(repoDir), testPassword, { workers: 0 });
  try {
    const view = await repo.loadIndex();
    const out: Array<{ id: string; base: string; baseFlags: number; sameLength: boolean }> = [];
    view.forEachBlob((id, loc) => {
      if (loc.type !== BlobType.data || !(loc.flags & BlobFlag.delta)) return;
      const base = view.lookup(loc.base!);
      out.push({ id: idToHex(id), base: idToHex(loc.base!), baseFlags: base?.flags ?? -1, sameLength: base?.rawLength === loc.rawLength });
    });
    return out;
  } finally {
    await repo.close();
  }
}

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-delta-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('delta blobs in a repository', () => {
  it('stores drifted versions as deltas one deep, restores every version, keeps bases through a prune, and check names a lost base', async () => {
    const repo = path.join(tmp, 'repo');
    await tenderOk(['--repo', repo, 'init']);
    expect(JSON.parse(await readFile(path.join(repo, configKey), 'utf8')).version).toBe(3);
    const work = path.join(tmp, 'ckpt');
    const ids: string[] = [];
    const stored: number[] = [];
    for (let v = 1; v <= 3; v++) {
      await writeVersion(work, v);
      await cp(work, path.join(tmp, `v${v}`), { recursive: true });
      const summary = await backupJson(repo, [work]);
      ids.push(summary.snapshot_id);
      stored.push(summary.bytesStored);
      const kinds = summary.transforms!.kinds;
      const deltaBlobs = (dtype: string) => kinds.filter((k) => k.dtype === dtype).reduce((a, k) => a + k.transforms.delta.blobs, 0);
      if (v === 1) {
        expect(deltaBlobs('F32') + deltaBlobs('BF16')).toBe(0);
      } else {
        // Every float chunk changed and became a delta (two fp32 tensors of 4 MiB, one bf16 of 2 MiB).
        expect(deltaBlobs('F32'), `v${v} fp32`).toBeGreaterThanOrEqual(8);
        expect(deltaBlobs('BF16'), `v${v} bf16`).toBeGreaterThanOrEqual(2);
      }
    }
    // fp32 drifted by 1e-3: about 0.6 of the chunk against 0.85 stored whole; bf16 much less.
    expect(stored[1]!).toBeLessThan(0.75 * stored[0]!);
    expect(stored[2]!).toBeLessThan(0.75 * stored[0]!);

    // One deep: every base is a whole data blob of the same length, stored by version 1.
    const deltas = await deltaEntries(repo);
    expect(deltas.length).toBeGreaterThanOrEqual(20);
    for (const d of deltas) {
      expect(d.baseFlags & BlobFlag.delta, d.id).toBe(0);
      expect(d.baseFlags, d.id).not.toBe(-1);
      expect(d.sameLength, d.id).toBe(true);
    }

    const stats = await tenderOk(['--repo', repo, 'stats']);
    expect(stats.stdout).toMatch(/delta saved/);
    expect(stats.stdout).toMatch(/^ {2}delta\s+\d+ blobs/m);
    const json = jsonLines((await tenderOk(['--repo', repo, '--json', 'stats'])).stdout).find((l) => l.message_type === 'stats')!;
    expect((json.stored as Record<string, { blobs: number }>).delta.blobs).toBe(deltas.length);

    const restoreAndCompare = async (i: number) => {
      const out = path.join(tmp, `out-${i}-${Math.random().toString(36).slice(2)}`);
      await tenderOk(['--repo', repo, '--quiet', 'restore', ids[i]!, '--target', out]);
      for (const name of ['model.safetensors', 'model.pt']) {
        const restored = await readFile(path.join(out, 'ckpt', name));
        expect(restored.equals(await readFile(path.join(tmp, `v${i + 1}`, name))), `v${i + 1} ${name}`).toBe(true);
      }
    };
    for (let i = 0; i < 3; i++) await restoreAndCompare(i);
    await expectCheckClean(repo, true, 'after three versions');

    // Forget the snapshot that stored the bases: prune must keep them (the deltas need them).
    await tenderOk(['--repo', repo, 'forget', ids[0]!]);
    await pruneJson(repo);
    await pruneJson(repo);
    const after = await deltaEntries(repo);
    expect(after.map((d) => d.id).sort()).toEqual(deltas.map((d) => d.id).sort());
    for (const d of after) expect(d.baseFlags, `base of ${d.id} after prune`).not.toBe(-1);
    await restoreAndCompare(1);
    await restoreAndCompare(2);
    await expectCheckClean(repo, true, 'after the prune');

    // An index that lost a base: check names the delta blob, its base and the files it affects.
    const lost = after[0]!;
    const opened = await Repository.open(new FsStorage(repo), testPassword, { workers: 0 });
    try {
      const files = await opened.listIndexFiles();
      const packs = [];
      for (const key of files) for (const p of (await opened.readIndexFile(key)).packs) packs.push({ ...p, blobs: p.blobs.filter((b) => idToHex(b.id) !== lost.base) });
      await opened.saveIndexFile({ superseded: files.map((k) => hexToId(k.slice('index/'.length))), packs });
      for (const key of files) await opened.deleteIndexFile(key);
    } finally {
      await opened.close();
    }
    const { code, report } = await checkRepo(repo, false);
    expect(code).not.toBe(0);
    const problem = report!.problems.find((p) => p.object === `blob ${lost.id}`);
    expect(problem?.problem).toBe(`is a delta against base ${lost.base}, which is not in any index (missing)`);
    expect(problem?.affects?.some((a) => /ckpt\/model\.(safetensors|pt)$/.test(a))).toBe(true);
    // Restoring a file that needs it fails naming the blob and what to do.
    const failed = await runTender(['--repo', repo, '--quiet', 'restore', ids[2]!, '--target', path.join(tmp, 'out-lost')]);
    expect(failed.code).not.toBe(0);
    expect(errorLine(failed).message).toContain(`needs its base ${lost.base}, which is not in the index`);
  });

  it.each(backends)('restores deltas from $name with the bases read in ranges, byte-identically', async ({ makeRepoUrl }) => {
    const repo = makeRepoUrl(tmp);
    await tenderOk(['--repo', repo, 'init']);
    const work = path.join(tmp, `series-${path.basename(repo)}`);
    let last = '';
    for (let v = 1; v <= 2; v++) {
      await writeVersion(work, v);
      const summary = await backupJson(repo, [work]);
      last = summary.snapshot_id;
      if (v === 2) expect(summary.transforms!.kinds.reduce((a, k) => a + k.transforms.delta.blobs, 0)).toBeGreaterThanOrEqual(10);
    }
    const out = path.join(tmp, `out-${path.basename(repo)}`);
    await tenderOk(['--repo', repo, '--quiet', 'restore', last, '--target', out]);
    for (const name of ['model.safetensors', 'model.pt']) {
      expect((await readFile(path.join(out, path.basename(work), name))).equals(await readFile(path.join(work, name))), name).toBe(true);
    }
    await tenderOk(['--repo', repo, 'check', '--read-data']);
  });

  it('a version-3 repository is refused by a tender that reads up to version 2, and "delta" is checked in the config', async () => {
    const repo = path.join(tmp, 'newer');
    await tenderOk(['--repo', repo, 'init']);
    const configPath = path.join(repo, configKey);
    const envelope = JSON.parse(await readFile(configPath, 'utf8'));
    await writeFile(configPath, JSON.stringify({ ...envelope, version: 4 }));
    const r = await runTender(['--repo', repo, 'snapshots']);
    expect(r.code).not.toBe(0);
    expect(errorLine(r).message).toMatch(/has format version 4; this tender reads up to version 3/);
  });
});
