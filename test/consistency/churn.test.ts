/**
 * 200 backup cycles against a writer process (churn.mjs) that keeps saving checkpoints in every
 * layout: safetensors and npy rewritten in place, torch zip by tmp + rename, DCP step directories
 * and HF Trainer directories with rotation (so checkpoints are deleted mid-read). Every snapshot
 * is restored and checked:
 *   - a checkpoint directory labelled complete passes findCheckpoints on the restored copy, every
 *     file of it parses, and its files are all of one save (the writer stamps each save's tensor
 *     bytes with its version);
 *   - a file without a label whose format is known is complete after restore, and a single-file
 *     checkpoint is of one save.
 * Most cycles race the writer freely (the property must hold for any interleaving); every tenth
 * the writer is paused in the middle of a save first, so a half-written checkpoint is certainly
 * there, and the snapshot must label it.
 */
import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BackupResult, backup } from '../../src/backup/archiver.js';
import type { IncompletePolicy } from '../../src/backup/checkpoints.js';
import { fileCompleteness, findCheckpoints } from '../../src/checkpoint/completeness.js';
import { readFileLayout } from '../../src/checkpoint/layout.js';
import type { Repository } from '../../src/repo/repository.js';
import type { Snapshot } from '../../src/repo/snapshot/snapshot.js';
import type { TreeNode } from '../../src/repo/snapshot/tree.js';
import { walkTree } from '../../src/repo/snapshot/tree-walk.js';
import { restore } from '../../src/restore/restorer.js';
import { createOperationContext } from '../../src/util/operation.js';
import { repoRoot } from '../helpers/cli.js';
import { LineChild, smallRepo } from './helpers.js';

const cycles = Number(process.env.TENDER_CHURN_CYCLES ?? 200);
const fixtures = path.join(repoRoot, 'test/fixtures/checkpoint');

/** The version a save stamped into bytes [from, end): undefined if they hold more than one. */
function stampOf(bytes: Buffer, from: number): number | undefined {
  const v = bytes.readUInt32LE(from);
  for (let i = from; i + 4 <= bytes.length; i += 4) if (bytes.readUInt32LE(i) !== v) return undefined;
  return v;
}
const safetensorsData = (b: Buffer) => 8 + Number(b.readBigUInt64LE(0));
const npyData = (b: Buffer) => (b[6] === 1 ? 10 + b.readUInt16LE(8) : 12 + b.readUInt32LE(8));

async function verdictOf(file: string) {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    return { completeness: await fileCompleteness(handle.fd, file, size), layout: await readFileLayout(handle.fd, file, size) };
  } finally {
    await handle.close();
  }
}

describe('consistency under a writer that never stops', () => {
  let tmp: string;
  let repo: Repository;
  let writer: LineChild;
  let volume: string;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-churn-'));
    ({ repo } = await smallRepo(path.join(tmp, 'repo')));
    volume = path.join(tmp, 'vol');
    writer = new LineChild(process.execPath, [fileURLToPath(new URL('churn.mjs', import.meta.url)), fixtures, volume]);
    expect(await writer.next()).toEqual({ ready: true });
  });

  afterAll(async () => {
    await writer?.close();
    await repo?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it(`${cycles} cycles: no snapshot holds a checkpoint labelled complete that is not; complete ones parse after restore`, async () => {
    const seen = { complete: {} as Record<string, number>, incompleteCheckpoints: 0, skipped: 0, tornFiles: 0, incompleteFiles: 0, rereads: 0 };
    const count = (key: string) => (seen.complete[key] = (seen.complete[key] ?? 0) + 1);
    let parent: BackupResult | undefined;
    for (let cycle = 0; cycle < cycles; cycle++) {
      const paused = cycle % 10 === 5;
      if (paused) expect(Object.keys(await writer.ask({ op: 'pause' }))).toEqual(['paused']);
      const incomplete: IncompletePolicy = cycle % 7 === 3 ? { mode: 'wait', ms: 100 } : cycle % 3 === 1 ? { mode: 'skip' } : { mode: 'store' };
      const result = await backup(
        repo,
        {
          paths: [volume],
          rereads: cycle % 3,
          checkpoints: { incomplete },
          ...(parent ? { parent: { id: parent.snapshotId, snapshot: parent.snapshot } } : {}),
        },
        createOperationContext(),
      );
      if (paused) expect(await writer.ask({ op: 'resume' })).toEqual({ resumed: true });
      parent = result;
      const s = result.snapshot;
      const where = `cycle ${cycle}, snapshot ${result.snapshotId.slice(0, 8)}`;
      const target = path.join(tmp, 'restore');
      await restore(repo, s, { target }, createOperationContext());
      const labelled = await checkSnapshot(s, target, where, count);
      seen.incompleteCheckpoints += (s.checkpoints ?? []).filter((c) => !c.complete).length;
      seen.skipped += (s.checkpoints ?? []).filter((c) => c.skipped).length;
      seen.tornFiles += s.summary!.filesTorn!;
      seen.incompleteFiles += s.summary!.filesIncomplete!;
      seen.rereads += s.summary!.rereads!;
      if (paused) expect(labelled, `${where}: the half-written save the writer paused in is labelled`).toBeGreaterThan(0);
      await rm(target, { recursive: true, force: true });
    }
    console.log(`churn: ${cycles} cycles`, JSON.stringify(seen));
    for (const kind of ['dcp', 'hf-trainer', 'safetensors', 'npy', 'torch-zip']) expect(seen.complete[kind], `complete ${kind} copies verified`).toBeGreaterThan(0);
    expect(seen.incompleteCheckpoints + seen.incompleteFiles).toBeGreaterThan(0);
  }, 600_000);

  /**
   * Checks one restored snapshot; counts the complete copies verified by kind; returns how many
   * labels it carries (incomplete or skipped checkpoints, torn or incomplete files).
   */
  async function checkSnapshot(s: Snapshot, target: string, where: string, count: (kind: string) => void): Promise<number> {
    const restoredPath = (snapshotPath: string) => path.join(target, snapshotPath.replace(/^\//, ''));
    for (const c of s.checkpoints ?? []) {
      if (!c.complete) continue;
      const dir = restoredPath(c.path);
      const found = (await findCheckpoints(dir)).find((f) => f.path === dir);
      expect(found?.verdict, `${where}: ${c.path} is labelled complete`).toEqual({ complete: true, kind: c.kind });
      const versions = new Set<number | undefined>();
      for (const file of found!.files) {
        const name = path.basename(file);
        const bytes = await readFile(file);
        if (name.endsWith('.distcp')) versions.add(stampOf(bytes, 0));
        else if (name.endsWith('.safetensors')) versions.add(stampOf(bytes, safetensorsData(bytes)));
        else if (name === 'trainer_state.json') versions.add((JSON.parse(bytes.toString('utf8')) as { global_step: number }).global_step);
        const { completeness, layout } = await verdictOf(file);
        if (completeness) expect(completeness.complete, `${where}: ${file} of complete ${c.path}`).toBe(true);
        if (/\.(safetensors|pt|pth|npy)$/.test(name)) expect(layout, `${where}: ${file} parses`).not.toBeNull();
      }
      expect([...versions], `${where}: every file of ${c.path} is of one save`).toHaveLength(1);
      expect([...versions][0]).toBeDefined();
      count(c.kind);
    }
    let labels = (s.checkpoints ?? []).filter((c) => !c.complete).length;
    const files: Array<{ path: string; node: TreeNode }> = [];
    for await (const step of walkTree(repo, s.tree)) if (step.kind === 'entry' && step.node.type === 'file') files.push({ path: step.path, node: step.node });
    for (const { path: p, node } of files) {
      if (node.consistency) {
        labels++;
        continue;
      }
      const file = restoredPath(p);
      expect((await stat(file)).size).toBe(node.size);
      const { completeness } = await verdictOf(file);
      if (!completeness || p.includes('/dcp/') || p.includes('/hf/')) continue;
      expect(completeness, `${where}: ${p} has no label`).toEqual({ complete: true, kind: completeness.kind });
      const bytes = await readFile(file);
      if (p.endsWith('.safetensors')) expect(stampOf(bytes, safetensorsData(bytes)), `${where}: ${p} is of one save`).toBeDefined();
      if (p.endsWith('.npy')) expect(stampOf(bytes, npyData(bytes)), `${where}: ${p} is of one save`).toBeDefined();
      count(completeness.kind);
    }
    return labels;
  }
});

