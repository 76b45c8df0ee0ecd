/**
 * A writer's index files list every pack it stored, also the packs stored while an index file
 * was being written (those were once dropped: a 1 GiB backup then missed a dozen blobs in its
 * index, and its restore failed with "data blob … is not in the index").
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BlobType } from '../../src/repo/blob.js';
import { Repository } from '../../src/repo/repository.js';
import { MemStorage } from '../../src/storage/mem.js';
import { FaultyStorage } from '../../src/storage/wrap/faults.js';

describe('writer index files', () => {
  it('keep the packs stored while an earlier index file is being written', async () => {
    const storage = new FaultyStorage(new MemStorage());
    const repo = await Repository.init(storage, 'pw', { kdf: { N: 1024, r: 8, p: 1 }, workers: 0, packSize: 1024 * 1024 });
    const writer = repo.openWriter({ packsPerIndex: 1 });
    // The first index file waits: the packs stored meanwhile queue behind it.
    const gate = storage.hold({ op: 'put', prefix: 'index/' });
    const ids: Buffer[] = [];
    const save = async (n: number) => {
      for (let i = 0; i < n; i++) ids.push(await writer.saveBlob(BlobType.data, randomBytes(640 * 1024)));
    };
    await save(2); // the second blob does not fit the first pack: it is stored, its index file waits
    await gate.reached;
    await save(4); // three more packs stored while the index file is held
    gate.release();
    await writer.flush();
    await writer.close();

    const reopened = await Repository.open(storage, 'pw', { workers: 0 });
    await reopened.refreshIndex();
    const missing = ids.filter((id) => !reopened.has(id));
    expect(missing.length, 'blobs whose pack no index file lists').toBe(0);
    await reopened.close();
    await repo.close();
  });
});
