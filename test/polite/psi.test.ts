/**
 * PSI: parsing the kernel's pressure files (some and full lines), the share of time stalled
 * between two readings, and finding a pod's cgroup by UID under both kubelet naming schemes
 * (laid out in a temp dir, and as real cgroups in this host's cgroup v2 hierarchy when there is
 * one: per-cgroup pressure files are the kernel's own there).
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PressureProbe, findPodCgroup, parsePressure } from '../../src/polite/psi.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'tender-psi-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('parsePressure', () => {
  it('reads some and full lines', () => {
    expect(parsePressure('some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.01 avg300=0.00 total=789\n')).toEqual({
      some: { avg10: 1.5, avg60: 0.25, avg300: 0, total: 123456 },
      full: { avg10: 0, avg60: 0.01, avg300: 0, total: 789 },
    });
  });

  it('a file without a full line (cpu on older kernels)', () => {
    expect(parsePressure('some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n').full).toBeUndefined();
  });

  it('parses the files of this node, when it has PSI', () => {
    for (const r of ['io', 'cpu', 'memory']) {
      const file = `/proc/pressure/${r}`;
      if (existsSync(file)) expect(parsePressure(readFileSync(file, 'utf8'), file).some.total).toBeGreaterThanOrEqual(0);
    }
  });

  it('says what is malformed, and where', () => {
    expect(() => parsePressure('', '/proc/pressure/io')).toThrow('/proc/pressure/io: no "some" line');
    expect(() => parsePressure('some avg10=x avg60=0 avg300=0 total=1', 'f')).toThrow('f: bad field "avg10=x"');
    expect(() => parsePressure('some avg10=0 avg60=0 avg300=0', 'f')).toThrow('some line lacks total');
    expect(() => parsePressure('partial avg10=0', 'f')).toThrow('unexpected line "partial avg10=0"');
  });
});

describe('PressureProbe', () => {
  it('the share of time stalled between readings, from `total` (microseconds)', () => {
    let now = 0;
    let text = '';
    const probe = new PressureProbe('f', () => now, () => text);
    const set = (some: number, full: number) => (text = `some avg10=0 avg60=0 avg300=0 total=${some}\nfull avg10=0 avg60=0 avg300=0 total=${full}\n`);
    set(1_000_000, 500_000);
    expect(probe.sample()).toBeUndefined();
    now = 250_000;
    set(1_100_000, 525_000);
    expect(probe.sample()).toEqual({ some: 40, full: 10 });
    // Unreadable (a cgroup that went away): unknown, and the next reading starts over.
    text = 'garbage';
    now = 500_000;
    expect(probe.sample()).toBeUndefined();
    set(2_000_000, 600_000);
    now = 750_000;
    expect(probe.sample()).toBeUndefined();
    now = 1_000_000;
    set(2_300_000, 600_000);
    expect(probe.sample()).toEqual({ some: 100, full: 0 });
  });
});

describe('findPodCgroup', () => {
  const uid = '3f1c2a9e-7b4d-4e5f-9a8b-0c1d2e3f4a5b';
  const under = uid.replace(/-/g, '_');
  const cases: Array<[string, string]> = [
    ['systemd, burstable', `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${under}.slice`],
    ['systemd, besteffort', `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${under}.slice`],
    ['systemd, guaranteed', `kubepods.slice/kubepods-pod${under}.slice`],
    ['cgroupfs, burstable', `kubepods/burstable/pod${uid}`],
    ['cgroupfs, guaranteed', `kubepods/pod${uid}`],
    ['systemd under the kubelet slice', `kubelet.slice/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${under}.slice`],
  ];
  for (const [name, dir] of cases) {
    it(name, () => {
      const root = mkdtempSync(path.join(tmp, 'root-'));
      mkdirSync(path.join(root, dir), { recursive: true });
      writeFileSync(path.join(root, dir, 'io.pressure'), 'some avg10=0 avg60=0 avg300=0 total=0\n');
      expect(findPodCgroup(uid, root)).toBe(path.join(root, dir));
      expect(findPodCgroup('00000000-0000-0000-0000-000000000000', root)).toBeUndefined();
    });
  }

  // A real cgroup v2 hierarchy (the host's, or the unified one of a hybrid host): the kernel makes the pressure files.
  const v2Root = ['/sys/fs/cgroup', '/sys/fs/cgroup/unified'].find((r) => existsSync(path.join(r, 'cgroup.procs')) && existsSync(path.join(r, 'io.pressure')));
  it.skipIf(!v2Root || process.getuid?.() !== 0)('finds a real pod cgroup made like the kubelet makes it', () => {
    const slices = [`kubepods.slice`, `kubepods.slice/kubepods-burstable.slice`, `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${under}.slice`];
    const made: string[] = [];
    try {
      for (const s of slices) {
        const d = path.join(v2Root!, s);
        if (!existsSync(d)) {
          mkdirSync(d);
          made.push(d);
        }
      }
      const found = findPodCgroup(uid, v2Root);
      expect(found).toBe(path.join(v2Root!, slices[2]!));
      expect(parsePressure(readFileSync(path.join(found!, 'io.pressure'), 'utf8')).some.total).toBe(0);
    } finally {
      for (const d of made.reverse()) rmdirSync(d);
    }
  });
});
