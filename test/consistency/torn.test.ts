/**
 * Torn reads: a separate writer process changes a file while tender reads it. The backup is
 * stopped mid-file deterministically: its first pack upload is held at a storage gate, so the
 * reader soon waits for pack room with the file open and half read; then the writer changes the
 * file (and says when it is on disk), and the gate opens. No timing is involved.
 */
import { createHash, randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BackupOptions, backup } from '../../src/backup/archiver.js';
import type { Repository } from '../../src/repo/repository.js';
import type { Snapshot } from '../../src/repo/snapshot/snapshot.js';
import type { TreeNode } from '../../src/repo/snapshot/tree.js';
import { restore } from '../../src/restore/restorer.js';
import type { FaultyStorage } from '../../src/storage/wrap/faults.js';
import { createOperationContext } from '../../src/util/operation.js';
import { repoRoot } from '../helpers/cli.js';
import { LineChild, MiB, smallRepo } from './helpers.js';

const fixtures = path.join(repoRoot, 'test/fixtures/checkpoint');
import { seeded } from './rewriter.mjs';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('torn-read detection', () => {
  let tmp: string;
  let repo: Repository;
  let faulty: FaultyStorage;
  let writer: LineChild;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-torn-'));
    ({ repo, faulty } = await smallRepo(path.join(tmp, 'repo')));
    writer = new LineChild(process.execPath, [fileURLToPath(new URL('rewriter.mjs', import.meta.url))]);
  });

  afterAll(async () => {
    await writer?.close();
    await repo?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  /** Backs up `dir` while `change` is sent to the writer with the file half read. */
  async function backupWithChange(dir: string, change: Record<string, unknown>, options: Partial<BackupOptions> = {}) {
    const gate = faulty.hold({ op: 'put', prefix: 'data/' });
    const running = backup(repo, { paths: [dir], ...options }, createOperationContext());
    running.catch(() => undefined);
    await gate.reached;
    expect(await writer.ask(change)).toEqual({ done: change.op });
    gate.release();
    return running;
  }

  async function fileNode(snapshot: Snapshot, ...names: string[]): Promise<TreeNode> {
    let tree = await repo.loadTree(snapshot.tree);
    let node: TreeNode | undefined;
    for (const name of names) {
      node = tree.nodes.find((n) => n.name === name);
      if (!node) throw new Error(`${names.join('/')} is not in the snapshot`);
      if (node.subtree) tree = await repo.loadTree(node.subtree);
    }
    return node!;
  }

  async function newVolume(name: string, size: number): Promise<{ dir: string; file: string; original: Buffer }> {
    const dir = path.join(tmp, name);
    await mkdir(dir, { recursive: true });
    const file = path.join(dir, 'model.bin');
    const original = randomBytes(size);
    await writeFile(file, original);
    await writeFile(path.join(dir, 'quiet.txt'), 'not touched');
    return { dir, file, original };
  }

  it('a file rewritten in place mid-read (same size, same inode) is read again and stored consistent', async () => {
    const { dir, file } = await newVolume('rewrite', 8 * MiB);
    const result = await backupWithChange(dir, { op: 'overwrite', path: file, seed: 7 });
    const s = result.snapshot.summary!;
    expect(s.rereads).toBe(1);
    expect(s.filesTorn).toBe(0);
    const node = await fileNode(result.snapshot, 'rewrite', 'model.bin');
    expect(node.consistency).toBeUndefined();
    const target = path.join(tmp, 'out-rewrite');
    await restore(repo, result.snapshot, { target }, createOperationContext());
    expect(sha(await readFile(path.join(target, 'rewrite', 'model.bin'))), 'the stored copy is the version after the rewrite').toBe(sha(seeded(8 * MiB, 7)));
  });

  it('with no re-reads left it is stored labelled torn; --only-consistent leaves it out; the next backup reads it again', async () => {
    const { dir, file, original } = await newVolume('torn', 8 * MiB);
    const result = await backupWithChange(dir, { op: 'overwrite', path: file, seed: 8 }, { rereads: 0 });
    expect(result.snapshot.summary).toMatchObject({ filesTorn: 1, rereads: 0 });
    const node = await fileNode(result.snapshot, 'torn', 'model.bin');
    expect(node.consistency).toBe('torn');
    expect(node.consistencyReason).toMatch(/modified|ctime/);
    // What was stored is neither version: the start of the old file, the rest of the new one.
    const all = path.join(tmp, 'out-torn-all');
    await restore(repo, result.snapshot, { target: all }, createOperationContext());
    const stored = await readFile(path.join(all, 'torn', 'model.bin'));
    expect(stored.length).toBe(8 * MiB);
    expect(sha(stored)).not.toBe(sha(original));
    expect(sha(stored)).not.toBe(sha(seeded(8 * MiB, 8)));
    expect(stored.subarray(0, 1024).equals(original.subarray(0, 1024))).toBe(true);

    const consistent = path.join(tmp, 'out-torn-consistent');
    const r = await restore(repo, result.snapshot, { target: consistent, onlyConsistent: true }, createOperationContext());
    expect(r.skipped).toEqual([{ path: 'torn/model.bin', message: expect.stringMatching(/^torn: /) }]);
    expect(await readFile(path.join(consistent, 'torn', 'quiet.txt'), 'utf8')).toBe('not touched');
    await expect(readFile(path.join(consistent, 'torn', 'model.bin'))).rejects.toMatchObject({ code: 'ENOENT' });

    // Quiet now, and unchanged since the torn read: still read again, never reused.
    const next = await backup(repo, { paths: [dir], parent: { id: result.snapshotId, snapshot: result.snapshot } }, createOperationContext());
    expect(next.snapshot.summary).toMatchObject({ filesTorn: 0, filesRead: 1, filesUnchanged: 1 });
    expect((await fileNode(next.snapshot, 'torn', 'model.bin')).consistency).toBeUndefined();
    const again = path.join(tmp, 'out-torn-next');
    await restore(repo, next.snapshot, { target: again }, createOperationContext());
    expect(sha(await readFile(path.join(again, 'torn', 'model.bin')))).toBe(sha(seeded(8 * MiB, 8)));
  });

  it('a file renamed over between the walk and the read is read again: the new version is stored', async () => {
    const { dir, file } = await newVolume('renamed', 1 * MiB);
    const replacement = randomBytes(1 * MiB);
    await writeFile(path.join(tmp, 'replacement.bin'), replacement);
    const result = await backup(
      repo,
      {
        paths: [dir],
        hooks: {
          // Runs after the walk's lstat and before the open: a trainer's tmp + rename lands here.
          aroundFile: async (p, _size, read) => {
            if (p === file) await rename(path.join(tmp, 'replacement.bin'), file);
            return read();
          },
        },
      },
      createOperationContext(),
    );
    expect(result.snapshot.summary).toMatchObject({ rereads: 1, filesTorn: 0 });
    const target = path.join(tmp, 'out-renamed');
    await restore(repo, result.snapshot, { target }, createOperationContext());
    expect(sha(await readFile(path.join(target, 'renamed', 'model.bin')))).toBe(sha(replacement));
  });

  it('a file that shrinks mid-read ends early: torn, and what was read is what is stored', async () => {
    const { dir, file, original } = await newVolume('shrink', 8 * MiB);
    const result = await backupWithChange(dir, { op: 'truncate', path: file, size: 6 * MiB }, { rereads: 0 });
    const node = await fileNode(result.snapshot, 'shrink', 'model.bin');
    expect(node.consistency).toBe('torn');
    expect(node.consistencyReason).toMatch(/size changed from 8388608 to 6291456/);
    expect(node.size).toBe(6 * MiB);
    const target = path.join(tmp, 'out-shrink');
    await restore(repo, result.snapshot, { target }, createOperationContext());
    expect(sha(await readFile(path.join(target, 'shrink', 'model.bin')))).toBe(sha(original.subarray(0, 6 * MiB)));
  });

  it('a checkpoint deleted mid-read is labelled incomplete, its half-read file torn', async () => {
    const dir = path.join(tmp, 'deleted');
    const step = path.join(dir, 'checkpoint-5');
    await mkdir(step, { recursive: true });
    const bytes = 8 * MiB;
    const header = Buffer.from(JSON.stringify({ w: { dtype: 'U8', shape: [bytes], data_offsets: [0, bytes] } }));
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(header.length));
    await writeFile(path.join(step, 'model.safetensors'), Buffer.concat([length, header, randomBytes(bytes)]));
    await writeFile(path.join(step, 'trainer_state.json'), JSON.stringify({ global_step: 5 }));
    const warnings: string[] = [];
    const ctx = createOperationContext();
    ctx.events.on('warning', (w) => warnings.push(w.path));
    // The writer's rotation deletes the checkpoint while model.safetensors is half read.
    const gate = faulty.hold({ op: 'put', prefix: 'data/' });
    const running = backup(repo, { paths: [dir] }, ctx);
    running.catch(() => undefined);
    await gate.reached;
    await rm(step, { recursive: true });
    gate.release();
    const result = await running;
    // trainer_state.json is small: read at once, before the gate, unless the deletion beat it
    // (then it is reported as vanished).
    expect(warnings.every((w) => w === path.join(step, 'trainer_state.json'))).toBe(true);
    expect(result.errors).toHaveLength(warnings.length);
    // Unlinking moved its ctime: the read is not trusted, and the file is gone for a re-read.
    const model = await fileNode(result.snapshot, 'deleted', 'checkpoint-5', 'model.safetensors');
    expect(model).toMatchObject({ consistency: 'torn', consistencyReason: expect.stringMatching(/deleted$/) });
    expect(result.snapshot.checkpoints).toEqual([
      { path: '/deleted/checkpoint-5', kind: 'hf-trainer', complete: false, reason: 'it was deleted or stopped being a checkpoint during the backup' },
    ]);
    const r = await restore(repo, result.snapshot, { target: path.join(tmp, 'out-deleted'), onlyConsistent: true }, createOperationContext());
    expect(r.skipped.map((x) => x.path)).toEqual(['deleted/checkpoint-5']);
  });

  it('an unchanged file labelled incomplete is not read again: its verdict is checked again, and it loses the label once its writer has closed it', async () => {
    const dir = path.join(tmp, 'held');
    await mkdir(dir, { recursive: true });
    const file = path.join(dir, 'model.safetensors');
    await cp(path.join(fixtures, 'files', 'model.safetensors'), file);
    // A writer that has the file open for writing (and writes nothing more) until its stdin ends.
    const holder = new LineChild(process.execPath, ['-e', `require('fs').openSync(${JSON.stringify(file)}, 'r+'); console.log('{"open":true}'); process.stdin.resume(); process.stdin.on('end', () => process.exit(0));`]);
    expect(await holder.next()).toEqual({ open: true });
    const first = await backup(repo, { paths: [dir] }, createOperationContext());
    expect(await fileNode(first.snapshot, 'held', 'model.safetensors')).toMatchObject({ consistency: 'incomplete', consistencyReason: expect.stringContaining('open for writing') });
    const parentOf = (r: typeof first) => ({ parent: { id: r.snapshotId, snapshot: r.snapshot } });
    const second = await backup(repo, { paths: [dir], ...parentOf(first) }, createOperationContext());
    expect(second.snapshot.summary).toMatchObject({ filesUnchanged: 1, filesRead: 0, filesIncomplete: 1 });
    await holder.close();
    const third = await backup(repo, { paths: [dir], ...parentOf(second) }, createOperationContext());
    expect(third.snapshot.summary).toMatchObject({ filesUnchanged: 1, filesRead: 0, filesIncomplete: 0 });
    const node = await fileNode(third.snapshot, 'held', 'model.safetensors');
    expect(node.consistency).toBeUndefined();
    expect(node.content).toEqual((await fileNode(first.snapshot, 'held', 'model.safetensors')).content);
  });

  it('a re-read stores nothing twice: the summary counts exactly the blobs the repository gained', async () => {
    const { dir, file } = await newVolume('dedup', 8 * MiB);
    await repo.refreshIndex();
    const blobsBefore = repo.index.blobCount;
    const result = await backupWithChange(dir, { op: 'overwrite', path: file, seed: 9 });
    const s = result.snapshot.summary!;
    expect(s.rereads).toBe(1);
    await repo.refreshIndex();
    // Data blobs of both reads (the re-read's chunks that the torn read had stored are dedup
    // hits), plus two trees: the volume's directory and the root.
    expect(repo.index.blobCount - blobsBefore).toBe(s.blobsAdded + 2);
    expect(s.bytesRead, 'bytes read counts both reads').toBeGreaterThan(8 * MiB);
    const target = path.join(tmp, 'out-dedup');
    await restore(repo, result.snapshot, { target }, createOperationContext());
    expect(sha(await readFile(path.join(target, 'dedup', 'model.bin')))).toBe(sha(seeded(8 * MiB, 9)));
  });
});
