/**
 * Knowing the box: cgroup v1 through real cgroups on this host (a child `tender box` in a cpu,
 * memory and blkio cgroup with limits set reports them and the worker count it picks); cgroup v2
 * from directories laid out like /sys/fs/cgroup on a v2 host (the kernel files' formats, nested
 * limits, a container's `0::/`).
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeBox, detectBox, parseProcCgroup, readLimitFor, sizeToBox } from '../../src/polite/cgroup.js';
import { runTender } from '../helpers/cli.js';

const MiB = 2 ** 20;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'tender-cgroup-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function layout(files: Record<string, string>): string {
  const root = mkdtempSync(path.join(tmp, 'fs-'));
  for (const [file, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(root, file)), { recursive: true });
    writeFileSync(path.join(root, file), text);
  }
  return root;
}

describe('cgroup v2 (files laid out like a v2 host)', () => {
  const v2Files = {
    'cgroup.controllers': 'cpuset cpu io memory pids\n',
    'kubepods.slice/cpu.max': '4000000 100000\n',
    'kubepods.slice/memory.max': String(8 * 2 ** 30) + '\n',
    'kubepods.slice/tender.slice/cpu.max': '150000 100000\n',
    'kubepods.slice/tender.slice/memory.max': 'max\n',
    'kubepods.slice/tender.slice/memory.current': String(100 * MiB) + '\n',
    'kubepods.slice/tender.slice/io.max': '254:0 rbps=52428800 wbps=max riops=max wiops=max\n8:0 rbps=max wbps=1048576 riops=100 wiops=max\n',
  };

  it('reads the limits along the path: the tightest binds', () => {
    const root = layout(v2Files);
    const box = detectBox({ root, procSelfCgroup: '0::/kubepods.slice/tender.slice\n', cpusAllowed: 16 });
    expect(box).toEqual({
      version: 2,
      path: '/kubepods.slice/tender.slice',
      dir: path.join(root, 'kubepods.slice/tender.slice'),
      cpuQuotaCores: 1.5,
      memoryLimitBytes: 8 * 2 ** 30,
      memoryUsageBytes: 100 * MiB,
      cpusAllowed: 16,
      io: [
        { device: '254:0', readBytesPerSecond: 50 * MiB },
        { device: '8:0', writeBytesPerSecond: MiB },
      ],
    });
    expect(sizeToBox(box)).toEqual({ workers: 2, bufferBudgetBytes: Math.floor((8 * 2 ** 30 - 100 * MiB) / 2) });
    expect(describeBox(box, sizeToBox(box))).toBe(
      'cgroup v2 /kubepods.slice/tender.slice, cpu quota 1.5 cores, memory limit 8192 MiB (100 MiB used), io 254:0 read 50 MiB/s, io 8:0 write 1 MiB/s → 2 workers, buffers within 4046 MiB',
    );
  });

  it("in a container (`0::/`, the mount is the container's cgroup) and when the path is not under the mount", () => {
    const root = layout({ 'cgroup.controllers': 'cpu memory\n', 'cpu.max': '50000 100000\n', 'memory.max': String(512 * MiB), 'memory.current': String(12 * MiB) });
    for (const own of ['0::/\n', '0::/kubepods.slice/elsewhere.slice\n']) {
      const box = detectBox({ root, procSelfCgroup: own, cpusAllowed: 8 });
      expect(box).toMatchObject({ version: 2, dir: root, cpuQuotaCores: 0.5, memoryLimitBytes: 512 * MiB, memoryUsageBytes: 12 * MiB });
      expect(sizeToBox(box).workers).toBe(1);
    }
  });

  it('no limits: workers from the CPUs allowed (at most 8); none found at all', () => {
    const root = layout({ 'cgroup.controllers': 'cpu\n', 'cpu.max': 'max 100000\n', 'memory.max': 'max\n' });
    const box = detectBox({ root, procSelfCgroup: '0::/\n', cpusAllowed: 3 });
    expect(box).toEqual({ version: 2, path: '/', dir: root, cpusAllowed: 3, io: [] });
    expect(sizeToBox(box)).toEqual({ workers: 3 });
    expect(sizeToBox({ ...box, cpusAllowed: 64 }).workers).toBe(8);
    expect(detectBox({ root: path.join(tmp, 'nothing'), procSelfCgroup: '', cpusAllowed: 2 })).toEqual({ version: 0, path: '/', cpusAllowed: 2, io: [] });
  });

  it('parses /proc/self/cgroup of v1, hybrid and v2 hosts', () => {
    expect(parseProcCgroup('12:cpu,cpuacct:/a/b\n1:name=systemd:/x\n0::/u\n')).toEqual([
      { hierarchy: '12', controllers: ['cpu', 'cpuacct'], path: '/a/b' },
      { hierarchy: '1', controllers: ['name=systemd'], path: '/x' },
      { hierarchy: '0', controllers: [], path: '/u' },
    ]);
  });

  it('the read limit on the disk a path lives on (io.max lists the whole disk)', () => {
    const root = layout(v2Files);
    const box = detectBox({ root, procSelfCgroup: '0::/kubepods.slice/tender.slice\n', cpusAllowed: 4 });
    // Small device numbers: major in bits 8-19, minor in bits 0-7.
    const { dev } = statSync(tmp);
    const here = `${Math.floor(dev / 256) & 0xfff}:${dev & 0xff}`;
    const limited = { ...box, io: [{ device: here, readBytesPerSecond: 7 * MiB }] };
    expect(readLimitFor(limited, [tmp])).toBe(7 * MiB);
    expect(readLimitFor(box, [path.join(tmp, 'missing')])).toBeUndefined();
  });
});

/** Real cgroup v1 on this host: we are root; a cgroup per controller, removed afterwards. */
const v1 = existsSync('/sys/fs/cgroup/cpu/cpu.cfs_quota_us') && existsSync('/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device') && process.getuid?.() === 0;

describe.skipIf(!v1)('cgroup v1 (real cgroups on this host)', () => {
  const name = `tender-test-${process.pid}`;
  const dirs = { cpu: `/sys/fs/cgroup/cpu/${name}`, memory: `/sys/fs/cgroup/memory/${name}`, blkio: `/sys/fs/cgroup/blkio/${name}` };
  beforeAll(() => {
    for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
    writeFileSync(`${dirs.memory}/memory.limit_in_bytes`, String(768 * MiB));
    writeFileSync(`${dirs.blkio}/blkio.throttle.read_bps_device`, `254:0 ${40 * MiB}`);
  });
  afterAll(() => {
    for (const d of Object.values(dirs)) {
      try {
        rmdirSync(d);
      } catch {
        // a child still exiting: the kernel frees it later
      }
    }
  });

  /** `tender box --json` started inside the cgroups (the shell joins them, then execs node). */
  async function boxInCgroup(quotaUs: number): Promise<Record<string, unknown>> {
    writeFileSync(`${dirs.cpu}/cpu.cfs_period_us`, '100000');
    writeFileSync(`${dirs.cpu}/cpu.cfs_quota_us`, String(quotaUs));
    const join = Object.values(dirs)
      .map((d) => `echo $$ > ${d}/cgroup.procs`)
      .join(' && ');
    const r = await runTender(['box', '--json'], { wrap: ['sh', '-c', `${join} && exec "$@"`, 'sh'] });
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  }

  it('the worker count follows the cpu quota; memory and blkio limits are found', async () => {
    const half = await boxInCgroup(50_000);
    expect(half).toMatchObject({ version: 1, path: `/${name}`, cpuQuotaCores: 0.5, workers: 1, memoryLimitBytes: 768 * MiB, io: [{ device: '254:0', readBytesPerSecond: 40 * MiB }] });
    expect(half.memoryUsageBytes).toBeGreaterThan(0);
    const oneAndHalf = await boxInCgroup(150_000);
    expect(oneAndHalf).toMatchObject({ cpuQuotaCores: 1.5, workers: Math.min(2, os.availableParallelism()) });
    const none = await boxInCgroup(-1);
    expect(none.cpuQuotaCores).toBeUndefined();
    expect(none.workers).toBe(Math.min(8, os.availableParallelism()));
  });
});
