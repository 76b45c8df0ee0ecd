/**
 * `tender backup --fsfreeze` on real loop-mounted ext4 and xfs: a real writer blocks while the
 * filesystem is frozen and goes on after the thaw; SIGKILL of tender while frozen leaves the
 * filesystem writable within the deadline (20 tries with a 2 s deadline, one with the 10 s
 * default where tender hangs instead); a guard killed with tender leaves a record that the next
 * start thaws; tmpfs (no FIFREEZE) is a clear error or "not quiesced", per policy.
 */
import { type ChildProcess, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fsyncFile, syncVolume, thawLeftFrozen } from '../../src/quiesce/freeze.js';
import { describeRun, jsonLines, runTender, startTender, tenderOk, writeRandomFile } from '../helpers/cli.js';
import { type LoopFs, cleanupLoopFs, guardPids, hasMkfs, makeLoopFs, startWriter, unmount, untilBlocked } from './loopfs.js';

const types = (['ext4', 'xfs'] as const).filter((t) => t === 'ext4' || hasMkfs(t));

let tmp: string;
let runDir: string;
let repo: string;
let ext4: LoopFs;
const filesystems = new Map<string, LoopFs>();
let tmpfsMount: string | undefined;
const cleanups: Array<() => void> = [];

const env = () => ({ TENDER_RUN_DIR: runDir });
const records = () => (existsSync(path.join(runDir, 'frozen')) ? readdirSync(path.join(runDir, 'frozen')) : []);

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'tender-freeze-'));
  runDir = path.join(tmp, 'run');
  repo = path.join(tmp, 'repo');
  for (const type of types) {
    const fs = makeLoopFs(tmp, type);
    mkdirSync(path.join(fs.mount, 'ckpt'));
    await writeRandomFile(path.join(fs.mount, 'ckpt', 'model.bin'), 2 << 20);
    filesystems.set(type, fs);
  }
  ext4 = filesystems.get('ext4')!;
  await tenderOk(['--repo', repo, 'init']);
});

/** Processes a test started: killed after each test, whatever happened in it. */
const started: Array<{ tender: ChildProcess; hookPid: number }> = [];

afterEach(async () => {
  for (const { tender, hookPid } of started.splice(0)) {
    tender.kill('SIGKILL');
    await exited(tender);
    killGroup(hookPid);
  }
});

afterAll(() => {
  try {
    cleanupLoopFs();
    if (tmpfsMount) unmount(tmpfsMount);
  } finally {
    for (const cleanup of cleanups) cleanup();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
});

/** A fifo pair for a --while-frozen command: it says its PID on `out`, then waits for a line on `in`. */
function fifos(name: string): { out: string; in: string; command: string } {
  const out = path.join(tmp, `${name}.out`);
  const inp = path.join(tmp, `${name}.in`);
  for (const f of [out, inp]) if (!existsSync(f)) execFileSync('mkfifo', [f]);
  return { out, in: inp, command: `echo $$ > ${out}; read line < ${inp}` };
}

/** Starts `backup --fsfreeze --while-frozen` and resolves once the filesystem is frozen: the command's PID. */
async function startFrozen(volume: string, name: string, extra: string[] = []): Promise<{ tender: ChildProcess; hookPid: number; release: () => Promise<void> }> {
  const f = fifos(name);
  const tender = startTender(['--repo', repo, '--json', 'backup', volume, '--fsfreeze', '--while-frozen', f.command, ...extra], { env: env() });
  tender.stdin!.end();
  const hookPid = Number((await readFile(f.out, 'utf8')).trim());
  started.push({ tender, hookPid });
  return { tender, hookPid, release: () => writeFile(f.in, 'go\n') };
}

function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve(child.exitCode) : new Promise((resolve) => child.once('exit', resolve));
}

async function untilNoGuard(mount: string): Promise<void> {
  while (guardPids(mount).length > 0) await new Promise((resolve) => setTimeout(resolve, 10));
}

function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // gone
  }
}

describe.each(types)('fsfreeze on %s', (type) => {
  it('blocks a writer while --while-frozen runs, thaws, then reads; the snapshot says how long', async () => {
    const fs = filesystems.get(type)!;
    const volume = path.join(fs.mount, 'ckpt');
    const { tender, release } = await startFrozen(volume, `block-${type}`);
    const out: Buffer[] = [];
    tender.stdout!.on('data', (b: Buffer) => out.push(b));
    const writer = startWriter(path.join(volume, `written-while-frozen-${type}`));
    await untilBlocked(writer.child.pid!);
    await release();
    expect(await exited(tender)).toBe(0);
    await writer.done;
    const quiesce = jsonLines(Buffer.concat(out).toString('utf8')).find((l) => l.message_type === 'quiesce')!;
    expect(quiesce).toMatchObject({ path: volume, quiesced: true });
    expect(quiesce.frozenMs).toBeGreaterThanOrEqual(0);
    const snapshots = JSON.parse((await tenderOk(['--repo', repo, '--json', 'snapshots', '--path', volume])).stdout) as Array<{ quiesce?: unknown[] }>;
    expect(snapshots.at(-1)!.quiesce).toEqual([{ path: volume, quiesced: true, frozenMs: quiesce.frozenMs }]);
    expect(records()).toEqual([]);
  });

  it('freezes for the read itself when there is no --while-frozen', async () => {
    const volume = path.join(filesystems.get(type)!.mount, 'ckpt');
    const r = await tenderOk(['--repo', repo, '--json', 'backup', volume, '--fsfreeze', '--force'], { env: env() });
    const quiesce = jsonLines(r.stdout).find((l) => l.message_type === 'quiesce')!;
    expect(quiesce).toMatchObject({ path: volume, quiesced: true });
    expect(typeof quiesce.frozenMs).toBe('number');
    expect(records()).toEqual([]);
  });
});

describe('syncfs and fsync write dirty pages back', () => {
  /** Sectors written to the loop device so far (/sys/block/loopN/stat, field 7). */
  const sectorsWritten = () => Number(readFileSync(`/sys/block/${path.basename(ext4.device)}/stat`, 'utf8').trim().split(/\s+/)[6]);

  beforeAll(() => {
    // Dirty pages younger than this are not written back by the kernel's flusher on its own.
    const expireCs = Number(readFileSync('/proc/sys/vm/dirty_expire_centisecs', 'utf8'));
    if (expireCs < 1000) throw new Error(`vm.dirty_expire_centisecs is ${expireCs}: the flusher could write the test's pages back itself`);
  });

  it('syncVolume writes back a file just written', async () => {
    const file = path.join(ext4.mount, 'dirty-syncfs.bin');
    await writeRandomFile(file, 8 << 20);
    const before = sectorsWritten();
    expect(await syncVolume(file)).toBe(true);
    expect(sectorsWritten() - before).toBeGreaterThanOrEqual((8 << 20) / 512);
  });

  it('fsyncFile (opened read-only) writes back a file just written', async () => {
    const file = path.join(ext4.mount, 'dirty-fsync.bin');
    await writeRandomFile(file, 8 << 20);
    const before = sectorsWritten();
    await fsyncFile(file);
    expect(sectorsWritten() - before).toBeGreaterThanOrEqual((8 << 20) / 512);
  });
});

describe('SIGKILL while frozen', () => {
  it('the filesystem is writable again within the 2 s deadline, in each of 20 tries', async () => {
    const volume = path.join(ext4.mount, 'ckpt');
    const thawedAfter: number[] = [];
    for (let i = 0; i < 20; i++) {
      const { tender, hookPid } = await startFrozen(volume, 'kill', ['--freeze-timeout', '2s']);
      const writer = startWriter(path.join(volume, `after-kill-${i}`));
      await untilBlocked(writer.child.pid!);
      const killedAt = performance.now();
      tender.kill('SIGKILL');
      await writer.done;
      thawedAfter.push(performance.now() - killedAt);
      await exited(tender);
      killGroup(hookPid);
      await untilNoGuard(ext4.mount);
      expect(records(), `try ${i}`).toEqual([]);
    }
    const sorted = [...thawedAfter].sort((a, b) => a - b);
    console.log(`SIGKILL → writable (ms) over ${sorted.length} tries: min ${sorted[0]!.toFixed(0)}, median ${sorted[10]!.toFixed(0)}, max ${sorted.at(-1)!.toFixed(0)}`);
    expect(Math.max(...thawedAfter), `thawed after (ms): ${thawedAfter.map((t) => t.toFixed(0)).join(', ')}`).toBeLessThan(2000);
  });

  it('and with the 10 s default deadline', async () => {
    const volume = path.join(ext4.mount, 'ckpt');
    const { tender, hookPid } = await startFrozen(volume, 'kill-default');
    const writer = startWriter(path.join(volume, 'after-kill-default'));
    await untilBlocked(writer.child.pid!);
    const killedAt = performance.now();
    tender.kill('SIGKILL');
    await writer.done;
    expect(performance.now() - killedAt).toBeLessThan(10_000);
    killGroup(hookPid);
    await untilNoGuard(ext4.mount);
    expect(records()).toEqual([]);
  });

  it('a hung tender (SIGSTOP) is thawed at the 10 s default deadline, then SIGKILLed', async () => {
    const volume = path.join(ext4.mount, 'ckpt');
    const { tender, hookPid } = await startFrozen(volume, 'stop');
    const frozenAt = performance.now();
    tender.kill('SIGSTOP');
    const writer = startWriter(path.join(volume, 'after-stop'));
    await untilBlocked(writer.child.pid!);
    await writer.done;
    const thawedAfter = performance.now() - frozenAt;
    // The guard's deadline, not anything earlier: tender was alive (stopped) all along.
    expect(thawedAfter).toBeGreaterThan(9000);
    expect(thawedAfter).toBeLessThan(10_000 + 1500);
    tender.kill('SIGKILL');
    await exited(tender);
    killGroup(hookPid);
    await untilNoGuard(ext4.mount);
    expect(records()).toEqual([]);
  }, 60_000);

  it('guard and tender both killed: the record stays, and the next start thaws it', async () => {
    const volume = path.join(ext4.mount, 'ckpt');
    const { tender, hookPid } = await startFrozen(volume, 'both');
    tender.kill('SIGSTOP'); // so it cannot thaw from its side when the guard dies
    const [guard] = guardPids(ext4.mount);
    expect(guard).toBeDefined();
    process.kill(guard!, 'SIGKILL');
    await untilNoGuard(ext4.mount);
    tender.kill('SIGKILL');
    await exited(tender);
    killGroup(hookPid);
    expect(records()).toHaveLength(1);
    const writer = startWriter(path.join(volume, 'after-both'));
    await untilBlocked(writer.child.pid!);
    // Any backup starts with the check; this one backs up something else entirely.
    const other = path.join(tmp, 'other');
    mkdirSync(other, { recursive: true });
    const r = await tenderOk(['--repo', repo, 'backup', other], { env: env() });
    expect(r.stderr).toContain(`${volume}: thawed, left frozen by an earlier run`);
    await writer.done;
    expect(records()).toEqual([]);
  });
});

describe('the startup check (thawLeftFrozen)', () => {
  it('leaves a live owner within its deadline alone, thaws once the deadline passed, drops damaged records', async () => {
    const dir = path.join(tmp, 'records-check');
    mkdirSync(dir, { recursive: true });
    const stat = readFileSync(`/proc/${process.pid}/stat`, 'utf8');
    const ownerStart = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    const record = (deadlineAt: number) =>
      writeFileSync(path.join(dir, 'live-1.json'), JSON.stringify({ path: ext4.mount, ownerPid: process.pid, ownerStart, deadlineAt }));
    writeFileSync(path.join(dir, 'damaged-1.json'), '{"path": ');
    execFileSync('fsfreeze', ['-f', ext4.mount]);
    const writer = startWriter(path.join(ext4.mount, 'after-check'));
    await untilBlocked(writer.child.pid!);
    record(Date.now() + 60_000);
    expect(thawLeftFrozen(dir)).toEqual([]);
    expect(readdirSync(dir)).toEqual(['live-1.json']);
    record(Date.now() - 1);
    expect(thawLeftFrozen(dir)).toEqual([{ path: ext4.mount, thawed: true }]);
    await writer.done;
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('a filesystem without freeze support (tmpfs)', () => {
  beforeAll(() => {
    tmpfsMount = path.join(tmp, 'tmpfs');
    mkdirSync(tmpfsMount);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', tmpfsMount]);
    execFileSync('sh', ['-c', `echo data > ${tmpfsMount}/file`]);
  });

  it('fails the backup with a clear error by default', async () => {
    const args = ['--repo', repo, 'backup', tmpfsMount!, '--fsfreeze'];
    const r = await runTender(args, { env: env() });
    expect(r.code, describeRun(args, r)).toBe(1);
    expect(r.stderr).toContain(`tender: cannot quiesce ${tmpfsMount}: fsfreeze: the filesystem does not support freezing`);
    expect(r.stderr).toMatch(/hint: /);
    expect(records()).toEqual([]);
  });

  it('with --hook-on-error continue: backed up and recorded as not quiesced', async () => {
    const r = await tenderOk(['--repo', repo, '--json', 'backup', tmpfsMount!, '--fsfreeze', '--hook-on-error', 'continue'], { env: env() });
    const quiesce = jsonLines(r.stdout).find((l) => l.message_type === 'quiesce')!;
    expect(quiesce.quiesced).toBe(false);
    expect(quiesce.reasons).toEqual([expect.stringContaining('fsfreeze: the filesystem does not support freezing')]);
    const snapshots = JSON.parse((await tenderOk(['--repo', repo, '--json', 'snapshots', '--path', tmpfsMount!])).stdout) as Array<{ quiesce?: unknown[] }>;
    expect(snapshots.at(-1)!.quiesce).toEqual([{ path: tmpfsMount, quiesced: false, reasons: quiesce.reasons }]);
  });
});

describe('refusals', () => {
  it('never freezes the filesystem of /', async () => {
    const onRoot = [tmp, '/var/tmp', os.homedir()].find((dir) => statSync(dir).dev === statSync('/').dev);
    if (!onRoot) throw new Error('no writable directory on the filesystem of / to test with');
    const volume = mkdtempSync(path.join(onRoot, 'tender-on-root-'));
    cleanups.push(() => rmSync(volume, { recursive: true, force: true }));
    const args = ['--repo', repo, 'backup', volume, '--fsfreeze'];
    const r = await runTender(args, { env: env() });
    expect(r.code, describeRun(args, r)).toBe(1);
    expect(r.stderr).toContain('is on the same filesystem as /: freezing it would stop the whole node');
  });

  it('--while-frozen needs --fsfreeze', async () => {
    const r = await runTender(['--repo', repo, 'backup', tmp, '--while-frozen', 'true'], { env: env() });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--while-frozen runs while the filesystem is frozen: it needs --fsfreeze');
  });
});
