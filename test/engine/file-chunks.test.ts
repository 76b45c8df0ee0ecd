/**
 * A file node's ordered chunks (src/repo/snapshot/file-chunks.ts), resolved for restore and for
 * delta bases from one function: the chunks of a file stored through chunk lists in file order,
 * and what each caller makes of a blob the index lacks or a list blob of a bad length, on file
 * nodes of a real snapshot whose content is rewritten to name such blobs.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/archiver.js';
import { DeltaBaseFinder } from '../../src/backup/delta-bases.js';
import { TenderError } from '../../src/errors/errors.js';
import { BlobType } from '../../src/repo/blob.js';
import { hexToId, idToHex } from '../../src/repo/ids.js';
import { Repository } from '../../src/repo/repository.js';
import type { RepositoryWriter } from '../../src/repo/writer.js';
import { fileChunks } from '../../src/repo/snapshot/file-chunks.js';
import type { Snapshot } from '../../src/repo/snapshot/snapshot.js';
import type { TreeNode } from '../../src/repo/snapshot/tree.js';
import { restore } from '../../src/restore/restorer.js';
import { MemStorage } from '../../src/storage/mem.js';
import { createOperationContext } from '../../src/util/operation.js';

const cheapKdf = { N: 1024, r: 8, p: 1 };
/** Tiny chunks: ~2000 of them, more than a tree node holds inline, so the content goes through a list blob. */
const chunker = { minSize: 64, avgSize: 128, maxSize: 256 };

let tmp: string;
let repo: Repository;
let content: Buffer;
let snapshot: Snapshot;
let node: TreeNode;

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-file-chunks-'));
  const source = path.join(tmp, 'data');
  await mkdir(source);
  content = randomBytes(256 * 1024);
  await writeFile(path.join(source, 'big.bin'), content);
  repo = await Repository.init(new MemStorage(), 'pw', { kdf: cheapKdf, chunker });
  snapshot = (await backup(repo, { paths: [source] }, createOperationContext())).snapshot;
  node = (await repo.loadTree((await repo.loadTree(snapshot.tree)).nodes[0]!.subtree!)).nodes[0]!;
});

afterAll(async () => {
  await repo?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** The repository's shared index, as delta bases read it. */
const sharedIndex = () => ({ lookup: (id: Uint8Array) => repo.lookup(id), loadList: (id: Uint8Array) => repo.loadBlob(id, BlobType.list) });

/** Runs `save` with a writer of its own, flushed: what it saved is in the index then. */
async function saved<T>(save: (writer: RepositoryWriter) => Promise<T>): Promise<T> {
  const writer = repo.openWriter();
  try {
    const result = await save(writer);
    await writer.flush();
    return result;
  } finally {
    await writer.close();
  }
}

/** A snapshot like the backup's whose file has `rewrite`'s content instead (stored for real). */
function snapshotWithContent(rewrite: Pick<TreeNode, 'content' | 'contentLists'>): Promise<Snapshot> {
  return saved(async (writer) => {
    const dir = await writer.saveTree({ nodes: [{ ...node, content: undefined, contentLists: undefined, ...rewrite }] });
    const [root] = (await repo.loadTree(snapshot.tree)).nodes;
    return { ...snapshot, tree: await writer.saveTree({ nodes: [{ ...root!, subtree: dir }] }) };
  });
}

/** The restore's failure (it must fail) and that nothing of the file is left in the target. */
async function restoreFailure(broken: Snapshot, name: string): Promise<TenderError> {
  const target = path.join(tmp, name);
  const err = await restore(repo, broken, { target }, createOperationContext()).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TenderError);
  expect(await readdir(path.join(target, 'data')).catch(() => [])).not.toContain('big.bin');
  return err as TenderError;
}

const missingId = () => randomBytes(32).toString('hex');

describe("a file node's ordered chunks", () => {
  it('resolves content stored through a chunk list into the file in order: each chunk is the bytes at its offset', async () => {
    expect(node.contentLists?.length, 'the file is stored through a chunk list').toBe(1);
    const chunks = await fileChunks(node, sharedIndex(), () => {
      throw new Error('nothing is missing');
    });
    expect(chunks.length).toBeGreaterThan(1024);
    let offset = 0;
    for (const chunk of chunks) {
      expect(chunk.fileOffset).toBe(offset);
      const bytes = await repo.loadBlob(chunk.id, BlobType.data);
      expect(bytes.equals(content.subarray(offset, offset + chunk.loc.rawLength)), `chunk at ${offset}`).toBe(true);
      offset += chunk.loc.rawLength;
    }
    expect(offset).toBe(content.length);
  });

  it('restore: a missing data blob fails naming it, with its hint', async () => {
    const [first] = await fileChunks(node, sharedIndex(), () => undefined).then((c) => c!);
    const lost = missingId();
    const err = await restoreFailure(await snapshotWithContent({ content: [idToHex(first!.id), lost] }), 'missing-data');
    expect(err.code).toBe('TENDER_CORRUPT');
    expect(err.message).toBe(`data blob ${lost} is not in the index`);
    expect(err.hint).toBe('run `tender check`; the snapshot refers to data the repository lacks');
  });

  it('restore: a missing list blob fails naming it, with the hint of any blob the index lacks', async () => {
    const lost = missingId();
    const err = await restoreFailure(await snapshotWithContent({ contentLists: [node.contentLists![0]!, lost] }), 'missing-list');
    expect(err.code).toBe('TENDER_CORRUPT');
    expect(err.message).toBe(`blob ${lost} is not in the index`);
    expect(err.hint).toBe('run `tender check`; if packs are intact, `tender repair index` rebuilds the index');
  });

  it('restore: a list blob whose length is not a multiple of 32 fails naming it', async () => {
    const list = await repo.loadBlob(hexToId(node.contentLists![0]!), BlobType.list);
    const bad = idToHex(await saved((writer) => writer.saveBlob(BlobType.list, list.subarray(0, 32 * 3 + 5))));
    const err = await restoreFailure(await snapshotWithContent({ contentLists: [bad] }), 'bad-list');
    expect(err.code).toBe('TENDER_CORRUPT');
    expect(err.message).toBe(`list blob ${bad} has a length that is not a multiple of 32`);
    expect(err.hint).toBe('run `tender check` to list all damage');
  });

  it('delta bases: the parent chunk at an offset, and none where a list blob or a chunk is missing', async () => {
    const finder = new DeltaBaseFinder(repo);
    expect(finder.enabled, 'a new repository stores delta blobs').toBe(true);
    const chunks = await fileChunks(node, sharedIndex(), () => undefined).then((c) => c!);
    const bases = (await finder.forFile(node))!;
    for (const chunk of [chunks[0]!, chunks[700]!, chunks.at(-1)!]) {
      expect(bases.baseFor(chunk.fileOffset, chunk.loc.rawLength)).toEqual(chunk.id);
      expect(bases.baseFor(chunk.fileOffset, chunk.loc.rawLength + 1), 'another length').toBeUndefined();
      expect(bases.baseFor(chunk.fileOffset + 1, chunk.loc.rawLength), 'another offset').toBeUndefined();
    }
    expect(await finder.forFile({ contentLists: [node.contentLists![0]!, missingId()] })).toBeUndefined();
    expect(await finder.forFile({ content: [idToHex(chunks[0]!.id), missingId()] })).toBeUndefined();
    expect(await finder.forFile(undefined)).toBeUndefined();
  });
});
