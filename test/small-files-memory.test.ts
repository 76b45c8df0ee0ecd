/**
 * A backup of many small files holds, for every blob it has stored in a pack but not yet indexed
 * (tens of thousands: a 16 MiB pack of tiny files), packed records outside the JS heap
 * (BlobEntryList, IdSet), not objects. Measured as the growth of the live JS heap (after a full
 * collection, from a heap snapshot) between the 25,000th and the 50,000th file of one backup, while all of those
 * files' blobs are in the open pack: objects per blob (an entry, its ID Buffer, a view of its
 * bytes, a hex string in a Set) took about 400 bytes each, 10 MB here; now the growth is what
 * the walk and the saves in flight happen to hold.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeHeapSnapshot } from 'node:v8';
import { afterAll, describe, expect, it } from 'vitest';
import { backup } from '../src/backup/archiver.js';
import { Repository } from '../src/repo/repository.js';
import { openStorage } from '../src/storage/open.js';
import { createOperationContext } from '../src/util/operation.js';

/**
 * Bytes of the JS objects reachable now (a heap snapshot, taken after a full collection), not
 * counting the memory of ArrayBuffers. jsBytes after gc() is no measure: it counts dead objects
 * not yet swept (it varied by 25 MB between runs here).
 */
function liveJsBytes(file: string): number {
  writeHeapSnapshot(file);
  const snapshot = JSON.parse(readFileSync(file, 'utf8')) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
    nodes: number[];
  };
  rmSync(file);
  const fields = snapshot.snapshot.meta.node_fields;
  const typeAt = fields.indexOf('type');
  const sizeAt = fields.indexOf('self_size');
  const native = snapshot.snapshot.meta.node_types[0].indexOf('native');
  let bytes = 0;
  for (let i = 0; i < snapshot.nodes.length; i += fields.length) if (snapshot.nodes[i + typeAt] !== native) bytes += snapshot.nodes[i + sizeAt]!;
  return bytes;
}

const dirs = 50;
const filesPerDir = 1000;
/** Allowed growth of the live heap over the 25,000 files between the two samples (40 bytes a file). */
const allowedGrowth = 1_000_000;

const scratch: string[] = [];
afterAll(async () => {
  for (const dir of scratch) await rm(dir, { recursive: true, force: true });
});

describe('memory of a backup of many small files', () => {
  it('does not hold JS objects per blob waiting in a pack: the live heap grows < 1 MB from 25k to 50k files', async () => {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-small-files-'));
    scratch.push(tmp);
    const source = path.join(tmp, 'source');
    // 16–200 distinct random bytes each: every file is a new blob, all 50k fit one data pack.
    const pool = randomBytes(dirs * filesPerDir * 200);
    for (let d = 0; d < dirs; d++) {
      const dir = path.join(source, `d${String(d).padStart(2, '0')}`);
      mkdirSync(dir, { recursive: true });
      for (let f = 0; f < filesPerDir; f++) {
        const at = (d * filesPerDir + f) * 200;
        writeFileSync(path.join(dir, `f${String(f).padStart(4, '0')}`), pool.subarray(at, at + 16 + ((f * 37) % 185)));
      }
    }
    const repo = await Repository.init(await openStorage(path.join(tmp, 'repo')), 'pw', { kdf: { N: 1024, r: 8, p: 1 }, workers: 2 });
    try {
      const samples: Array<{ jsBytes: number; indexed: number }> = [];
      let files = 0;
      const result = await backup(
        repo,
        {
          paths: [source],
          hooks: {
            // The last file of d24 and of d49: the walk is at the same place in its directory.
            aroundFile(_path, _size, read) {
              files++;
              if (files === 25_000 || files === 50_000) {
                samples.push({ jsBytes: liveJsBytes(path.join(tmp, `heap-${files}.heapsnapshot`)), indexed: repo.index.blobCount });
              }
              return read();
            },
          },
        },
        createOperationContext(),
      );
      expect(result.snapshot.summary.files).toBe(dirs * filesPerDir);
      expect(result.snapshot.summary.blobsAdded).toBe(dirs * filesPerDir);
      expect(samples).toHaveLength(2);
      const [at25k, at50k] = samples as [(typeof samples)[0], (typeof samples)[0]];
      // The premise: the data blobs of the 25,000 files in between are all waiting in the
      // writer (no data pack was stored; only tree blobs were indexed meanwhile).
      expect(at50k.indexed - at25k.indexed).toBeLessThan(100);
      const growth = at50k.jsBytes - at25k.jsBytes;
      expect(growth, `live heap grew by ${growth} bytes over 25,000 files`).toBeLessThan(allowedGrowth);
    } finally {
      await repo.close();
    }
  });
});
