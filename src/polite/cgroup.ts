/**
 * The box tender runs in: its own cgroup (v2 or v1) and the limits on it, so it sizes itself to
 * what it may use instead of the host's cores and memory.
 *
 * - Which cgroup: /proc/self/cgroup. On v2 it is the `0::PATH` line; on v1 each controller has
 *   its own line and hierarchy. In a container with a cgroup namespace the path is `/` and the
 *   mounted /sys/fs/cgroup already is the container's cgroup; when the path does not exist under
 *   the mount (a path from outside the namespace), the mount's root is read instead.
 * - Which limits: the tightest along the path up to the root (a parent's limit binds the child):
 *   CPU from `cpu.max` (v2) or `cpu.cfs_quota_us`/`cpu.cfs_period_us` (v1); memory from
 *   `memory.max` (v2) or `memory.limit_in_bytes` (v1), with the usage next to it; read and write
 *   bandwidth per device from `io.max` (v2) or `blkio.throttle.{read,write}_bps_device` (v1).
 * Whatever cannot be read is simply not there (no limit known); nothing here throws.
 */
import { readFileSync, existsSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface DeviceLimit {
  /** `MAJ:MIN` of the whole disk, as the kernel lists it. */
  device: string;
  readBytesPerSecond?: number;
  writeBytesPerSecond?: number;
}

export interface CgroupBox {
  /** 2: unified hierarchy; 1: v1 controllers (a hybrid host counts as 1); 0: none found. */
  version: 0 | 1 | 2;
  /** The cgroup's path as /proc/self/cgroup names it (v1: the cpu controller's). */
  path: string;
  /** The directory its files were read from (v1: the cpu controller's). */
  dir?: string;
  /** The CPU quota in cores (1.5 = 150 ms per 100 ms), undefined when unlimited. */
  cpuQuotaCores?: number;
  /** CPUs this process may run on (affinity, cpuset). */
  cpusAllowed: number;
  memoryLimitBytes?: number;
  memoryUsageBytes?: number;
  io: DeviceLimit[];
}

export interface BoxOptions {
  /** Where the cgroup file systems are mounted (default /sys/fs/cgroup). */
  root?: string;
  /** The text of /proc/self/cgroup (default: read it). */
  procSelfCgroup?: string;
  /** CPUs this process may use (default os.availableParallelism()). */
  cpusAllowed?: number;
}

/** v1 reports "no limit" as a huge page-rounded number (2^63 - 4096 on x86-64). */
const v1Unlimited = 2 ** 62;

export function detectBox(options: BoxOptions = {}): CgroupBox {
  const root = options.root ?? '/sys/fs/cgroup';
  const cpusAllowed = options.cpusAllowed ?? os.availableParallelism();
  let text = options.procSelfCgroup;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/cgroup', 'utf8');
    } catch {
      return { version: 0, path: '/', cpusAllowed, io: [] };
    }
  }
  const lines = parseProcCgroup(text);
  if (existsSync(path.join(root, 'cgroup.controllers'))) {
    const own = lines.find((l) => l.hierarchy === '0')?.path ?? '/';
    return { version: 2, path: own, ...readV2(root, own), cpusAllowed };
  }
  const v1 = (controller: string) => lines.find((l) => l.controllers.includes(controller));
  const cpu = v1('cpu');
  if (!cpu && !v1('memory') && !v1('blkio')) return { version: 0, path: '/', cpusAllowed, io: [] };
  return { version: 1, path: cpu?.path ?? '/', ...readV1(root, v1), cpusAllowed };
}

interface ProcCgroupLine {
  hierarchy: string;
  controllers: string[];
  path: string;
}

/** `hierarchy-ID:controller-list:path` per line (/proc/PID/cgroup). */
export function parseProcCgroup(text: string): ProcCgroupLine[] {
  const out: ProcCgroupLine[] = [];
  for (const line of text.split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line.trim());
    if (m) out.push({ hierarchy: m[1]!, controllers: m[2]!.split(',').filter((c) => c !== ''), path: m[3]! });
  }
  return out;
}

/** From the cgroup's directory up to `top`: the directories whose limits bind it. */
function ancestry(mount: string, cgroupPath: string): string[] {
  const top = path.resolve(mount);
  let dir = path.resolve(path.join(top, cgroupPath));
  // Outside our cgroup namespace's view (or not mounted there): the mount is our box.
  if (!isDir(dir)) dir = top;
  const dirs = [dir];
  while (dir !== top && dir.startsWith(top + path.sep)) {
    dir = path.dirname(dir);
    dirs.push(dir);
  }
  return dirs;
}

function readV2(root: string, own: string): Omit<CgroupBox, 'version' | 'path' | 'cpusAllowed'> {
  const dirs = ancestry(root, own);
  let cpuQuotaCores: number | undefined;
  let memoryLimitBytes: number | undefined;
  const io = new Map<string, DeviceLimit>();
  for (const dir of dirs) {
    const cpu = readText(path.join(dir, 'cpu.max'))?.trim().split(/\s+/);
    if (cpu && cpu[0] !== 'max' && Number(cpu[0]) > 0 && Number(cpu[1]) > 0) cpuQuotaCores = min(cpuQuotaCores, Number(cpu[0]) / Number(cpu[1]));
    const mem = readText(path.join(dir, 'memory.max'))?.trim();
    if (mem && mem !== 'max' && Number(mem) >= 0) memoryLimitBytes = min(memoryLimitBytes, Number(mem));
    for (const line of (readText(path.join(dir, 'io.max')) ?? '').split('\n')) {
      const m = /^(\d+:\d+)\s+(.*)$/.exec(line.trim());
      if (!m) continue;
      const fields = Object.fromEntries(m[2]!.split(/\s+/).map((kv) => kv.split('=') as [string, string]));
      addDeviceLimit(io, m[1]!, numberOrUndefined(fields.rbps), numberOrUndefined(fields.wbps));
    }
  }
  const usage = numberOrUndefined(readText(path.join(dirs[0]!, 'memory.current'))?.trim());
  return { dir: dirs[0]!, ...optional({ cpuQuotaCores, memoryLimitBytes, memoryUsageBytes: usage }), io: [...io.values()] };
}

function readV1(root: string, line: (controller: string) => ProcCgroupLine | undefined): Omit<CgroupBox, 'version' | 'path' | 'cpusAllowed'> {
  /** The controller's mount (a co-mounted `cpu,cpuacct` too) and the cgroup's ancestry in it. */
  const hierarchy = (controller: string): string[] => {
    const l = line(controller);
    if (!l) return [];
    const mount = [controller, l.controllers.join(',')].map((name) => path.join(root, name)).find(isDir);
    return mount ? ancestry(mount, l.path) : [];
  };
  const cpuDirs = hierarchy('cpu');
  let cpuQuotaCores: number | undefined;
  for (const dir of cpuDirs) {
    const quota = numberOrUndefined(readText(path.join(dir, 'cpu.cfs_quota_us'))?.trim());
    const period = numberOrUndefined(readText(path.join(dir, 'cpu.cfs_period_us'))?.trim());
    if (quota !== undefined && quota > 0 && period !== undefined && period > 0) cpuQuotaCores = min(cpuQuotaCores, quota / period);
  }
  const memoryDirs = hierarchy('memory');
  let memoryLimitBytes: number | undefined;
  for (const dir of memoryDirs) {
    const limit = numberOrUndefined(readText(path.join(dir, 'memory.limit_in_bytes'))?.trim());
    if (limit !== undefined && limit < v1Unlimited) memoryLimitBytes = min(memoryLimitBytes, limit);
  }
  const usage = memoryDirs[0] ? numberOrUndefined(readText(path.join(memoryDirs[0], 'memory.usage_in_bytes'))?.trim()) : undefined;
  const io = new Map<string, DeviceLimit>();
  for (const dir of hierarchy('blkio')) {
    for (const [file, isRead] of [
      ['blkio.throttle.read_bps_device', true],
      ['blkio.throttle.write_bps_device', false],
    ] as const) {
      for (const l of (readText(path.join(dir, file)) ?? '').split('\n')) {
        const m = /^(\d+:\d+)\s+(\d+)$/.exec(l.trim());
        if (m) addDeviceLimit(io, m[1]!, isRead ? Number(m[2]) : undefined, isRead ? undefined : Number(m[2]));
      }
    }
  }
  return { ...(cpuDirs[0] ? { dir: cpuDirs[0] } : {}), ...optional({ cpuQuotaCores, memoryLimitBytes, memoryUsageBytes: usage }), io: [...io.values()] };
}

function addDeviceLimit(io: Map<string, DeviceLimit>, device: string, read: number | undefined, write: number | undefined): void {
  const d = io.get(device) ?? { device };
  if (read !== undefined) d.readBytesPerSecond = min(d.readBytesPerSecond, read);
  if (write !== undefined) d.writeBytesPerSecond = min(d.writeBytesPerSecond, write);
  if (d.readBytesPerSecond !== undefined || d.writeBytesPerSecond !== undefined) io.set(device, d);
}

/**
 * The read limit the kernel puts on reading `paths`: the tightest read bps of the whole disks
 * they live on (io.max and blkio list the disk, not the partition). Undefined: none.
 */
export function readLimitFor(box: CgroupBox, paths: readonly string[], sysDevBlock = '/sys/dev/block'): number | undefined {
  let limit: number | undefined;
  for (const p of paths) {
    let dev: number;
    try {
      dev = statSync(p).dev;
    } catch {
      continue;
    }
    const devices = [`${major(dev)}:${minor(dev)}`];
    // A partition's parent directory in sysfs is its disk, which has a `dev` file of its own.
    const parent = readText(path.join(sysDevBlock, devices[0]!, '..', 'dev'))?.trim();
    if (parent) devices.push(parent);
    for (const d of box.io) if (devices.includes(d.device)) limit = min(limit, d.readBytesPerSecond);
  }
  return limit;
}

/** Linux's dev_t encoding (glibc gnu_dev_major/minor). */
function major(dev: number): number {
  return Number(((BigInt(dev) >> 8n) & 0xfffn) | ((BigInt(dev) >> 32n) & ~0xfffn));
}

function minor(dev: number): number {
  return Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & ~0xffn));
}

export interface BoxSizing {
  /** Worker threads for sealing: the CPU quota rounded up, at most the CPUs allowed, at most 8. */
  workers: number;
  /** Memory tender may plan for its buffers: half of what the limit leaves above the usage now. */
  bufferBudgetBytes?: number;
}

/** How big tender makes itself in this box (see BoxSizing). */
export function sizeToBox(box: CgroupBox, maxWorkers = 8): BoxSizing {
  const cores = Math.min(box.cpusAllowed, box.cpuQuotaCores ?? Infinity);
  const workers = Math.max(1, Math.min(maxWorkers, Math.ceil(cores - 1e-9)));
  if (box.memoryLimitBytes === undefined) return { workers };
  const free = Math.max(0, box.memoryLimitBytes - (box.memoryUsageBytes ?? 0));
  return { workers, bufferBudgetBytes: Math.floor(free / 2) };
}

/** One line for logs and the CLI: what the box is and how tender sized itself to it. */
export function describeBox(box: CgroupBox, sizing: BoxSizing): string {
  if (box.version === 0) return `no cgroup found; ${sizing.workers} workers for ${box.cpusAllowed} CPUs`;
  const parts = [`cgroup v${box.version} ${box.path}`];
  parts.push(box.cpuQuotaCores !== undefined ? `cpu quota ${round(box.cpuQuotaCores)} cores` : `no cpu quota (${box.cpusAllowed} CPUs)`);
  parts.push(box.memoryLimitBytes !== undefined ? `memory limit ${mib(box.memoryLimitBytes)} (${mib(box.memoryUsageBytes ?? 0)} used)` : 'no memory limit');
  for (const d of box.io) {
    const r = d.readBytesPerSecond !== undefined ? ` read ${mib(d.readBytesPerSecond)}/s` : '';
    const w = d.writeBytesPerSecond !== undefined ? ` write ${mib(d.writeBytesPerSecond)}/s` : '';
    parts.push(`io ${d.device}${r}${w}`);
  }
  const buffers = sizing.bufferBudgetBytes !== undefined ? `, buffers within ${mib(sizing.bufferBudgetBytes)}` : '';
  return `${parts.join(', ')} → ${sizing.workers} workers${buffers}`;
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function numberOrUndefined(s: string | undefined): number | undefined {
  if (s === undefined || s === '' || s === 'max') return undefined;
  const n = Number(s);
  return Number.isFinite(n) ? n : undefined;
}

function min(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return Math.min(a, b);
}

function optional<T extends Record<string, number | undefined>>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

const round = (n: number) => Math.round(n * 100) / 100;
const mib = (n: number) => `${round(n / 2 ** 20)} MiB`;
