/**
 * Pressure stall information (PSI, Linux ≥ 4.20): the share of wall time in which some (or all)
 * tasks of the node or of a cgroup were stalled waiting for I/O, CPU or memory. The node's are
 * /proc/pressure/{io,cpu,memory}; on cgroup v2 each cgroup has {io,cpu,memory}.pressure, which
 * measure its own tasks only: a training pod's cgroup says whether the trainer is stalled, not
 * whether the disk is busy (tender's own reads stall tender's tasks, which the node's files
 * count too). cgroup v1 has no per-cgroup PSI.
 *
 *   some avg10=0.12 avg60=0.05 avg300=0.01 total=123456
 *   full avg10=0.00 avg60=0.00 avg300=0.00 total=4567
 *
 * avg10 is a ten-second average: too slow to react within a second. A probe therefore reads
 * `total` (microseconds stalled, cumulative) twice and takes the share of the time between.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { PressureResource } from './parse.js';

export interface PressureLine {
  avg10: number;
  avg60: number;
  avg300: number;
  /** Microseconds stalled since boot (or since the cgroup was created). */
  total: number;
}

export interface Pressure {
  some: PressureLine;
  /** Absent where the kernel has none (cpu on kernels before 5.13). */
  full?: PressureLine;
}

/** Parses a pressure file's text; throws naming what is malformed. */
export function parsePressure(text: string, source = 'pressure file'): Pressure {
  const lines: Partial<Record<'some' | 'full', PressureLine>> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    const m = /^(some|full)\s+(.*)$/.exec(line);
    if (!m) throw new Error(`${source}: unexpected line ${JSON.stringify(line)} (expected "some ..." or "full ...")`);
    const fields: Record<string, number> = {};
    for (const kv of m[2]!.split(/\s+/)) {
      const [k, v] = kv.split('=');
      const n = Number(v);
      if (!k || v === undefined || v === '' || !Number.isFinite(n) || n < 0) throw new Error(`${source}: bad field ${JSON.stringify(kv)} in ${JSON.stringify(line)}`);
      fields[k] = n;
    }
    for (const k of ['avg10', 'avg60', 'avg300', 'total'] as const) {
      if (fields[k] === undefined) throw new Error(`${source}: ${m[1]} line lacks ${k}: ${JSON.stringify(line)}`);
    }
    lines[m[1] as 'some' | 'full'] = { avg10: fields.avg10!, avg60: fields.avg60!, avg300: fields.avg300!, total: fields.total! };
  }
  if (!lines.some) throw new Error(`${source}: no "some" line`);
  return { some: lines.some, ...(lines.full ? { full: lines.full } : {}) };
}

/** The share of time stalled between two readings, in percent (some and full). */
export interface PressureShare {
  some: number;
  full?: number;
}

/**
 * One pressure file, read on demand: each `sample()` returns the stall share since the previous
 * one (undefined the first time, or when the file cannot be read: a pod's cgroup goes away).
 */
export class PressureProbe {
  private previous: { at: number; pressure: Pressure } | undefined;

  constructor(
    readonly file: string,
    /** Microseconds, monotonic. */
    private readonly nowUs: () => number = () => performance.now() * 1000,
    private readonly read: (file: string) => string = (f) => readFileSync(f, 'utf8'),
  ) {}

  sample(): PressureShare | undefined {
    let pressure: Pressure;
    const at = this.nowUs();
    try {
      pressure = parsePressure(this.read(this.file), this.file);
    } catch {
      this.previous = undefined;
      return undefined;
    }
    const before = this.previous;
    this.previous = { at, pressure };
    if (!before || at <= before.at) return undefined;
    const span = at - before.at;
    const share = (a: PressureLine | undefined, b: PressureLine | undefined) => (a && b ? clampPercent(((b.total - a.total) / span) * 100) : undefined);
    const full = share(before.pressure.full, pressure.full);
    return { some: share(before.pressure.some, pressure.some)!, ...(full !== undefined ? { full } : {}) };
  }
}

function clampPercent(p: number): number {
  return Math.min(100, Math.max(0, p));
}

/** The node's pressure file for a resource. */
export function nodePressureFile(resource: PressureResource, procPressure = '/proc/pressure'): string {
  return path.join(procPressure, resource);
}

/** A cgroup v2 directory's pressure file for a resource. */
export function cgroupPressureFile(cgroupDir: string, resource: PressureResource): string {
  return path.join(cgroupDir, `${resource}.pressure`);
}

/**
 * The cgroup v2 directory of a pod (by UID) on this node, or undefined. The kubelet names it
 * after its cgroup driver and the pod's QoS class:
 *   systemd:  kubepods.slice/[kubepods-{burstable,besteffort}.slice/]kubepods[-{qos}]-pod<uid with _>.slice
 *   cgroupfs: kubepods/[{burstable,besteffort}/]pod<uid>
 * Looked for under `root` and the kubelet's own slice (kind-style nodes nest kubepods there).
 */
export function findPodCgroup(uid: string, root = '/sys/fs/cgroup'): string | undefined {
  const underscored = uid.replace(/-/g, '_');
  const bases = [root, path.join(root, 'kubelet.slice'), path.join(root, 'kubelet')];
  for (const base of bases) {
    const candidates = [path.join(base, 'kubepods.slice', `kubepods-pod${underscored}.slice`), path.join(base, 'kubepods', `pod${uid}`)];
    for (const qos of ['burstable', 'besteffort']) {
      candidates.push(path.join(base, 'kubepods.slice', `kubepods-${qos}.slice`, `kubepods-${qos}-pod${underscored}.slice`));
      candidates.push(path.join(base, 'kubepods', qos, `pod${uid}`));
    }
    for (const dir of candidates) if (hasPressure(dir)) return dir;
  }
  return undefined;
}

function hasPressure(dir: string): boolean {
  try {
    return readdirSync(dir).includes('io.pressure');
  } catch {
    return false;
  }
}
