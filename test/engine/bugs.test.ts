/**
 * Bugs of the engine, each with the test that failed before its fix.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/archiver.js';
import { check } from '../../src/check/checker.js';
import { BlobType } from '../../src/repo/blob.js';
import { idToHex } from '../../src/repo/ids.js';
import { Repository } from '../../src/repo/repository.js';
import { restore } from '../../src/restore/restorer.js';
import { MemStorage } from '../../src/storage/mem.js';
import { createOperationContext } from '../../src/util/operation.js';
import { readFile } from 'node:fs/promises';
import { assertSameTree, runTender, tenderOk } from '../helpers/cli.js';

const cheapKdf = { N: 1024, r: 8, p: 1 };
const scratch: string[] = [];
afterAll(async () => {
  for (const dir of scratch) await rm(dir, { recursive: true, force: true });
});
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tender-bugs-'));
  scratch.push(dir);
  return dir;
}

describe('incremental backup and a concurrent prune', () => {
  it('re-reads an unchanged file whose chunk list is still indexed but whose chunks a pending plan dooms', async () => {
    const dir = await tempDir();
    const source = path.join(dir, 'data');
    await mkdir(source);
    // Tiny chunks: 256 KiB make ~2000 chunks, more than a tree node holds inline, so the file's
    // content is a list blob (in a tree/list pack) naming data chunks (in data packs).
    await writeFile(path.join(source, 'big.bin'), randomBytes(256 * 1024));
    const repo = await Repository.init(new MemStorage(), 'pw', { kdf: cheapKdf, workers: 0, chunker: { minSize: 64, avgSize: 128, maxSize: 256 } });
    const first = await backup(repo, { paths: [source] }, createOperationContext());
    const node = (await repo.loadTree((await repo.loadTree(first.snapshot.tree)).nodes[0]!.subtree!)).nodes[0]!;
    expect(node.contentLists?.length, 'the file is stored through a chunk list').toBe(1);

    // A prune has planned to delete every data pack (say, to repack them): only the list blob's
    // pack stays. A backup that starts now must not come to depend on the doomed packs.
    const dataPacks = new Set<string>();
    const view = await repo.loadIndex();
    view.forEachBlob((_, loc) => {
      if (loc.type === BlobType.data) dataPacks.add(idToHex(view.packIdAt(loc.packIndex)));
    });
    expect(view.hasHex(node.contentLists![0]!)).toBe(true);
    await repo.saveDeletionPlan({ version: 1, createdMs: Date.now(), packs: [...dataPacks], snapshots: [] });

    const second = await backup(repo, { paths: [source], parent: { id: first.snapshotId, snapshot: first.snapshot } }, createOperationContext());
    expect(second.snapshot.summary!.filesUnchanged, 'the file is not taken from the parent').toBe(0);
    expect(second.snapshot.summary!.filesRead).toBe(1);

    // The sweep deletes the doomed packs: the new snapshot must not miss anything.
    for (const hex of dataPacks) await repo.deletePack(hex);
    const target = path.join(dir, 'restored');
    await restore(repo, second.snapshot, { target, subpath: 'data' }, createOperationContext());
    await assertSameTree(source, target, { ignore: (rel) => rel === '' });
    await repo.close();
  });
});

describe('snapshot of /', () => {
  it('restores the contents of the root directory into the target', async () => {
    const dir = await tempDir();
    const source = path.join(dir, 'rootfs');
    await mkdir(path.join(source, 'etc'), { recursive: true });
    await writeFile(path.join(source, 'etc', 'hostname'), 'node-1\n');
    await writeFile(path.join(source, 'init'), randomBytes(5000));
    const repo = await Repository.init(new MemStorage(), 'pw', { kdf: cheapKdf, workers: 0 });
    // A snapshot of `/` names its root "/": take the tree of this directory under that name.
    const taken = await backup(repo, { paths: [source], rootNames: ['/'] }, createOperationContext());
    expect((await repo.loadTree(taken.snapshot.tree)).nodes.map((n) => n.name)).toEqual(['/']);

    const target = path.join(dir, 'restored');
    const result = await restore(repo, taken.snapshot, { target }, createOperationContext());
    expect(result.files).toBe(2);
    await assertSameTree(source, target, { ignore: (rel) => rel === '' });
    // And through a path inside it.
    const etc = path.join(dir, 'etc-only');
    await restore(repo, taken.snapshot, { target: etc, subpath: 'etc' }, createOperationContext());
    await assertSameTree(path.join(source, 'etc'), etc, { ignore: (rel) => rel === '' });
    expect((await check(repo, { readData: true }, createOperationContext())).problems).toEqual([]);
    await repo.close();
  });
});

describe('one writer failing', () => {
  it('does not fail the next operation on the same repository', async () => {
    const dir = await tempDir();
    const source = path.join(dir, 'v');
    await mkdir(source);
    await writeFile(path.join(source, 'a.bin'), randomBytes(3 * 1024 * 1024));
    const { FaultyStorage } = await import('../../src/storage/wrap/faults.js');
    const faulty = new FaultyStorage(new MemStorage());
    const repo = await Repository.init(faulty, 'pw', { kdf: cheapKdf, workers: 0, packSize: 1024 * 1024 });
    const fault = faulty.add({ op: 'put', prefix: 'data/', nth: 1, times: 1, permanent: true });
    await expect(backup(repo, { paths: [source] }, createOperationContext())).rejects.toMatchObject({ code: 'TENDER_STORAGE' });
    fault.remove();
    const next = await backup(repo, { paths: [source] }, createOperationContext());
    const target = path.join(dir, 'r');
    await restore(repo, next.snapshot, { target, subpath: 'v' }, createOperationContext());
    await assertSameTree(source, target, { ignore: (rel) => rel === '' });
    await repo.close();
  });
});

describe('opening a repository of a newer format', () => {
  it('stops with "newer format" before asking for a password', async () => {
    const dir = await tempDir();
    const repo = path.join(dir, 'repo');
    await tenderOk(['--repo', repo, 'init']);
    const config = JSON.parse(await readFile(path.join(repo, 'config'), 'utf8')) as { version: number };
    config.version = 99;
    await rm(path.join(repo, 'config'));
    await writeFile(path.join(repo, 'config'), JSON.stringify(config));
    // No password anywhere, and no terminal to ask on: asking first would fail with "no password".
    const r = await runTender(['--repo', repo, '--json', 'snapshots'], { env: { TENDER_PASSWORD: undefined } });
    expect(r.code).not.toBe(0);
    expect(JSON.parse(r.stderr.trim().split('\n').at(-1)!)).toMatchObject({ code: 'TENDER_REPO_VERSION' });
  });
});
