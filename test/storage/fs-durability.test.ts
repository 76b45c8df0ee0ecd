/**
 * A published object survives a power cut: FsStorage fsyncs the directory that holds the new name
 * after link(2), and the parent of every directory it made for it. Seen by recording the calls
 * FsStorage makes to node:fs/promises (the real ones run underneath).
 */
import { constants } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { FsStorage } from '../../src/storage/fs.js';

const log = vi.hoisted(() => [] as string[]);

vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  const open: typeof real.open = async (file, flags, mode) => {
    const handle = await real.open(file, flags, mode);
    const isDir = typeof flags === 'number' && (flags & constants.O_DIRECTORY) !== 0;
    const sync = handle.sync.bind(handle);
    handle.sync = async () => {
      await sync();
      log.push(`${isDir ? 'fsync-dir' : 'fsync-file'} ${String(file)}`);
    };
    return handle;
  };
  const link: typeof real.link = async (from, to) => {
    await real.link(from, to);
    log.push(`link ${String(to)}`);
  };
  const mkdir = (async (dir: string, options: Parameters<typeof real.mkdir>[1]) => {
    const made = await real.mkdir(dir, options);
    if (made !== undefined) log.push(`mkdir ${made}`);
    return made;
  }) as typeof real.mkdir;
  return { ...real, default: { ...real, open, link, mkdir }, open, link, mkdir };
});

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('FsStorage durability', () => {
  let root: string;
  beforeEach(async () => {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-fs-sync-'));
    dirs.push(tmp);
    root = path.join(tmp, 'repo');
    log.length = 0;
  });

  it('fsyncs the new fan-out directories into their parents, then the file, then the directory after the link', async () => {
    const s = new FsStorage(root);
    expect(await s.put('data/ab/abcd', [Buffer.from('pack')])).toBe('stored');
    const rel = log.map((l) => l.replace(root, '<repo>').replace(/tmp\/[0-9a-f]+\.tmp/, 'tmp/T'));
    const at = (entry: string) => {
      const i = rel.indexOf(entry);
      expect(i, `${entry} in ${JSON.stringify(rel)}`).toBeGreaterThanOrEqual(0);
      return i;
    };
    // <repo>, <repo>/data and <repo>/data/ab were made: each is fsynced into its parent.
    const madeFirst = at(`mkdir <repo>`);
    const syncData = at(`fsync-dir <repo>/data`);
    const syncRepo = at(`fsync-dir <repo>`);
    const syncParent = at(`fsync-dir ${path.dirname(root)}`);
    const file = at('fsync-file <repo>/tmp/T');
    const link = at('link <repo>/data/ab/abcd');
    const syncAb = at('fsync-dir <repo>/data/ab');
    expect(madeFirst).toBeLessThan(syncData);
    expect(Math.max(syncData, syncRepo, syncParent), 'directories are durable before the object is linked into them').toBeLessThan(link);
    expect(file).toBeLessThan(link);
    expect(link, 'the new name is fsynced after the link').toBeLessThan(syncAb);
  });

  it('a second object in the same directory: one file fsync and one directory fsync after its link', async () => {
    const s = new FsStorage(root);
    await s.put('data/ab/1', [Buffer.from('a')]);
    log.length = 0;
    await s.put('data/ab/2', [Buffer.from('b')]);
    const rel = log.map((l) => l.replace(root, '<repo>').replace(/tmp\/[0-9a-f]+\.tmp/, 'tmp/T'));
    expect(rel).toEqual(['fsync-file <repo>/tmp/T', 'link <repo>/data/ab/2', 'fsync-dir <repo>/data/ab']);
  });

  it('a put that finds the object links nothing and syncs no directory', async () => {
    const s = new FsStorage(root);
    await s.put('keys/k', [Buffer.from('a')]);
    log.length = 0;
    expect(await s.put('keys/k', [Buffer.from('b')])).toBe('exists');
    expect(log.filter((l) => l.startsWith('fsync-dir') || l.startsWith('link'))).toEqual([]);
  });
});
