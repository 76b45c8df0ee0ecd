/**
 * `backup --cache-neutral`: the page cache after a backup holds what it held before, observed from
 * outside with util-linux `fincore`, on a real disk file system (tmpfs pages cannot be evicted).
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNative } from '../src/util/native.js';
import { randomBuffer, tenderOk, writeRandomFile } from './helpers/cli.js';

const MiB = 1 << 20;
const fsType = execFileSync('stat', ['-f', '-c', '%T', os.tmpdir()], { encoding: 'utf8' }).trim();
const hasFincore = (() => {
  try {
    execFileSync('fincore', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const usable = process.platform === 'linux' && fsType !== 'tmpfs' && hasFincore && !!loadNative()?.residentPages;

/** Bytes of each file in the page cache. */
function cached(files: string[]): number[] {
  const out = execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', ...files], { encoding: 'utf8' });
  return out.trim().split('\n').map((l) => Number(l.trim()));
}

/** Writes back and evicts the files' pages (GNU dd: nocache with count=0 drops the whole file). */
function evict(files: string[]): void {
  execFileSync('sync');
  for (const f of files) execFileSync('dd', [`if=${f}`, 'iflag=nocache', 'count=0', 'status=none']);
}

describe.skipIf(!usable)(`backup --cache-neutral (${fsType})`, () => {
  let tmp: string;
  let repo: string;
  let data: string;
  let files: string[];
  const big = () => files[0]!;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-cache-'));
    repo = path.join(tmp, 'repo');
    data = path.join(tmp, 'data');
    await mkdir(data);
    files = [path.join(data, 'big.bin')];
    await writeRandomFile(big(), 80 * MiB);
    for (let i = 0; i < 20; i++) {
      const f = path.join(data, `small-${i}.bin`);
      await writeFile(f, randomBuffer(1000 + i * 9000));
      files.push(f);
    }
    await tenderOk(['--repo', repo, 'init']);
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('evicts only what its reads brought in: pages cached before stay cached', async () => {
    evict(files);
    // The trainer's part of the cache: the first 10 MB of the big file and two small files.
    execFileSync('sh', ['-c', `head -c 10000000 "${big()}" > /dev/null; cat "${files[3]}" "${files[7]}" > /dev/null`]);
    const before = cached(files);
    expect(before[0], 'the pre-read is cached').toBeGreaterThanOrEqual(10_000_000 - 4096);
    expect(before[0]).toBeLessThan(40 * MiB);
    expect(before[3]).toBeGreaterThan(0);
    expect(before[1]).toBe(0);

    await tenderOk(['--repo', repo, '--quiet', 'backup', '--force', '--cache-neutral', data]);
    const after = cached(files);
    expect(after[0], 'the big file: what was cached, and nothing the backup read').toBe(before[0]);
    expect(after.slice(1), 'small files: cached ones stay, others are evicted').toEqual(before.slice(1));
  });

  it('without --cache-neutral the same backup leaves what it read in the cache', async () => {
    evict(files);
    expect(cached(files).every((n) => n === 0)).toBe(true);
    await tenderOk(['--repo', repo, '--quiet', 'backup', '--force', data]);
    const after = cached(files);
    expect(after[0]).toBe(80 * MiB);
    expect(after.slice(1).every((n) => n > 0)).toBe(true);
  });
});

describe('backup --cache-neutral without the native addon', () => {
  it('is refused before anything is written, saying why and what to do', async () => {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-cache-off-'));
    try {
      const repo = path.join(tmp, 'repo');
      await tenderOk(['--repo', repo, 'init']);
      await writeFile(path.join(tmp, 'a.txt'), 'a');
      const r = await tenderOk(['--repo', repo, 'backup', '--cache-neutral', path.join(tmp, 'a.txt')], { env: { TENDER_NATIVE: '0' } }, 2);
      expect(r.stderr).toContain('cache-neutral reads are not available: disabled by TENDER_NATIVE=0');
      expect(r.stderr).toContain('back up without --cache-neutral');
      const snapshots = await tenderOk(['--repo', repo, '--json', 'snapshots']);
      expect(JSON.parse(snapshots.stdout)).toEqual([]);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });
});
