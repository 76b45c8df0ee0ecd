/**
 * Restore of one large file: its reads run several at a time (bounded by `readAhead`), every
 * chunk lands at its offset, and a cancel or a failed read ends the restore with its error and
 * without a half-written file left behind, on a local directory and on MinIO.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { link, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/archiver.js';
import type { Snapshot } from '../../src/repo/snapshot/snapshot.js';
import { hexToId } from '../../src/repo/ids.js';
import { packKey } from '../../src/repo/pack/pack.js';
import { Repository } from '../../src/repo/repository.js';
import { type RestoreProgress, restore } from '../../src/restore/restorer.js';
import { openStorage } from '../../src/storage/open.js';
import type { ByteRange, Storage } from '../../src/storage/storage.js';
import { FaultyStorage } from '../../src/storage/wrap/faults.js';
import { TenderError } from '../../src/errors/errors.js';
import { createOperationContext } from '../../src/util/operation.js';
import { backends } from '../helpers/backends.js';
import { s3TestOptions } from '../helpers/s3.js';
import { PassThroughStorage } from '../helpers/storage.js';
import { testPassword } from '../helpers/cli.js';

const MiB = 1 << 20;
/** Six 8 MiB reads at least: more than the default read-ahead of 4. */
const fileSize = 48 * MiB + 12345;
const cheapKdf = { N: 1024, r: 8, p: 1 };

/** fp32 values of a checkpoint: random sign and mantissa, exponents in a narrow band (they compress a little). */
function floats(size: number, seed: string): Buffer {
  const cipher = createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16));
  const bytes = cipher.update(Buffer.alloc(size));
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, Math.floor(size / 4));
  for (let i = 0; i < words.length; i++) words[i] = (words[i]! & 0x807fffff) | ((118 + (words[i]! & 7)) << 23);
  return bytes;
}

/** Counts large data-pack reads (over 1 MiB: not the small files' batches) under way, and the most at once. */
class ReadCounter extends PassThroughStorage {
  inFlight = 0;
  maxInFlight = 0;
  dataReads = 0;

  override async get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    if (!key.startsWith('data/') || (range?.length ?? 0) <= MiB) return super.get(key, range, into);
    this.dataReads++;
    this.maxInFlight = Math.max(this.maxInFlight, ++this.inFlight);
    try {
      return await super.get(key, range, into);
    } finally {
      this.inFlight--;
    }
  }
}

/**
 * The pack of the large file's middle chunk: it holds nothing else (the small files went into the
 * first pack, before the large file's first chunks), and the file has reads before it.
 */
/**
 * The pack that holds the most of the large file: restore reads it in more than one ranged read
 * (reads are at most 8 MiB), so a gate after its first read is always reached. Which pack a
 * chunk lands in depends on how the workers' seals interleave, so it is chosen by content, not
 * by position in the file.
 */
async function fullestPack(repo: Repository, snapshot: Snapshot): Promise<string> {
  await repo.refreshIndex();
  const root = await repo.loadTree(snapshot.tree);
  const node = (await repo.loadTree(root.nodes[0]!.subtree!)).nodes.find((n) => n.name === 'model.bin')!;
  expect(node.content!.length, 'the chunk IDs are in the tree node').toBeGreaterThan(8);
  const bytesByPack = new Map<number, number>();
  for (const hex of node.content!) {
    const loc = repo.index.lookup(hexToId(hex))!;
    bytesByPack.set(loc.packIndex, (bytesByPack.get(loc.packIndex) ?? 0) + loc.storedLength);
  }
  const [packIndex, bytes] = [...bytesByPack].sort((a, b) => b[1] - a[1])[0]!;
  expect(bytes, 'the fullest pack takes more than one 8 MiB read').toBeGreaterThan(8 * MiB);
  return packKey(repo.index.packIdAt(packIndex));
}

let tmp: string;
let source: string;
let content: Buffer;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-restore-large-'));
  source = path.join(tmp, 'ckpt');
  content = floats(fileSize, 'restore-large');
  await mkdir(source);
  await writeFile(path.join(source, 'model.bin'), content);
  // Small files and a hardlink beside it: the batch path and the large path run in one restore.
  await writeFile(path.join(source, 'config.json'), '{"layers": 2}\n');
  await link(path.join(source, 'config.json'), path.join(source, 'config-link.json'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe.each(backends)('restore of a large file ($name)', ({ name, makeRepoUrl }) => {
  let url: string;
  let snapshot: Snapshot;

  /** The repository through `wrap`, with two worker threads (several blobs open at once). */
  const openRepo = async <S extends Storage>(wrap: (s: Storage) => S): Promise<{ repo: Repository; storage: S }> => {
    const storage = wrap(await openStorage(url, name === 's3' ? { ...s3TestOptions(), retry: false } : { retry: false }));
    return { repo: await Repository.open(storage, testPassword, { workers: 2 }), storage };
  };

  beforeAll(async () => {
    url = makeRepoUrl(tmp);
    const storage = await openStorage(url, name === 's3' ? s3TestOptions() : {});
    const repo = await Repository.init(storage, testPassword, { kdf: cheapKdf, workers: 2 });
    snapshot = (await backup(repo, { paths: [source] }, createOperationContext())).snapshot;
    await repo.close();
  });

  it('restores it byte-identical with several reads in flight, no more than the read-ahead', async () => {
    const { repo, storage } = await openRepo((s) => new ReadCounter(s));
    const target = path.join(tmp, `restored-${name}`);
    try {
      const result = await restore(repo, snapshot, { target, readAhead: 3 }, createOperationContext());
      expect(result.errors).toEqual([]);
      expect(result.files).toBe(3);
    } finally {
      await repo.close();
    }
    expect((await readFile(path.join(target, 'ckpt', 'model.bin'))).equals(content)).toBe(true);
    expect(await readFile(path.join(target, 'ckpt', 'config-link.json'), 'utf8')).toBe('{"layers": 2}\n');
    const [a, b] = await Promise.all(['config.json', 'config-link.json'].map((f) => stat(path.join(target, 'ckpt', f))));
    expect(b!.ino, 'the hardlink is restored as a link').toBe(a!.ino);
    expect(storage.dataReads, 'the file takes several ranged reads').toBeGreaterThan(3);
    expect(storage.maxInFlight, 'reads ran at once').toBeGreaterThanOrEqual(2);
    expect(storage.maxInFlight, 'read-ahead bounds the reads in flight').toBeLessThanOrEqual(3);
  });

  it('cancelled mid-file: fails with TENDER_CANCELLED and leaves no half-written file', async () => {
    const { repo, storage } = await openRepo((s) => new FaultyStorage(s));
    // The first read of that pack goes through, the next waits.
    const gate = storage.hold({ op: 'get', prefix: await fullestPack(repo, snapshot), after: 1 });
    const target = path.join(tmp, `cancelled-${name}`);
    const controller = new AbortController();
    const ctx = createOperationContext({ signal: controller.signal });
    const seen: RestoreProgress[] = [];
    ctx.events.on('progress', (p: RestoreProgress) => seen.push({ ...p }));
    try {
      const running = restore(repo, snapshot, { target, readAhead: 2 }, ctx);
      const outcome = running.then(
        () => undefined,
        (err: unknown) => err,
      );
      // Cancelled mid-file: once part of it is written, or once a read waits at the gate
      // (which comes first depends on the order the pack's reads are planned in; the gate is
      // always reached, as that pack takes more than one read).
      await Promise.race([gate.reached, new Promise<void>((resolve) => ctx.events.on('progress', (p: RestoreProgress) => p.bytesDone > MiB && resolve()))]);
      controller.abort();
      gate.release();
      const err = await outcome;
      expect(err).toBeInstanceOf(TenderError);
      expect((err as TenderError).code).toBe('TENDER_CANCELLED');
    } finally {
      await repo.close();
    }
    const left = await readdir(path.join(target, 'ckpt')).catch(() => []);
    expect(left, 'the unfinished large file is gone').not.toContain('model.bin');
    expect(seen.at(-1)!.bytesDone).toBeLessThan(fileSize);
    // Only the small files may have been counted as done, never the large one.
    expect(Math.max(...seen.map((p) => p.filesDone))).toBeLessThanOrEqual(left.length);
  });

  it('a failed read fails the restore with that error, not a hang, and removes the unfinished file', async () => {
    const { repo, storage } = await openRepo((s) => new FaultyStorage(s));
    const pack = await fullestPack(repo, snapshot);
    storage.add({ op: 'get', prefix: pack, permanent: true });
    const target = path.join(tmp, `failed-read-${name}`);
    try {
      const err = await restore(repo, snapshot, { target }, createOperationContext()).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TenderError);
      expect((err as TenderError).code).toBe('TENDER_STORAGE');
      expect((err as Error).message).toMatch(new RegExp(`^get ${pack} .* failed: injected fault$`));
    } finally {
      await repo.close();
    }
    expect(await readdir(path.join(target, 'ckpt')).catch(() => [])).not.toContain('model.bin');
  });
});

describe('restore of a large file from a damaged pack (local)', () => {
  it('fails naming the damaged pack and removes the unfinished file', async () => {
    const repoDir = path.join(tmp, 'damaged-repo');
    const repo = await Repository.init(await openStorage(repoDir), testPassword, { kdf: cheapKdf, workers: 2 });
    const { snapshot } = await backup(repo, { paths: [source] }, createOperationContext());
    // Damage the largest data pack in its middle (inside some blob's ciphertext).
    const packs: Array<{ file: string; size: number }> = [];
    for (const dir of await readdir(path.join(repoDir, 'data'))) {
      for (const f of await readdir(path.join(repoDir, 'data', dir))) {
        const file = path.join(repoDir, 'data', dir, f);
        packs.push({ file, size: (await stat(file)).size });
      }
    }
    const damaged = packs.sort((a, b) => b.size - a.size)[0]!;
    const bytes = await readFile(damaged.file);
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    await writeFile(damaged.file, bytes);
    const target = path.join(tmp, 'damaged-target');
    try {
      const err = await restore(repo, snapshot, { target }, createOperationContext()).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TenderError);
      expect((err as TenderError).code).toBe('TENDER_CORRUPT');
      expect((err as Error).message).toContain(`data/${path.basename(path.dirname(damaged.file))}/${path.basename(damaged.file)} is damaged`);
      expect(await readdir(path.join(target, 'ckpt')).catch(() => [])).not.toContain('model.bin');
    } finally {
      await repo.close();
    }
  });
});
