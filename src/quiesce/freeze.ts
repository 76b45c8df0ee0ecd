import { type ChildProcessByStdio, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { freezeGuardPath, loadNative, nativeUnavailableReason } from '../util/native.js';

/**
 * Filesystem freeze with a guaranteed thaw (docs/design.md, "Quiesce"). The freeze is done by
 * tender-freeze-guard (native/src/freeze_guard.cc), a process in a session of its own that thaws
 * on tender's word, at the deadline, or at once when tender dies (its stdin ends). Before it is
 * started, a record file names the filesystem; the guard removes it once thawed, and
 * `thawLeftFrozen` (run when tender starts) thaws whatever a record still names when its owner is
 * gone or its deadline has passed: the guard itself was killed.
 */

/** What a record file holds. */
interface FreezeRecord {
  path: string;
  /** The tender process that froze it: pid and start time (clock ticks after boot, /proc/PID/stat). */
  ownerPid: number;
  ownerStart: string;
  /** Epoch milliseconds after which the guard has thawed it (set once frozen). */
  deadlineAt?: number;
}

export interface ThawResult {
  frozenMs: number;
  /** The guard thawed at the deadline, before tender said so. */
  deadlinePassed: boolean;
}

/** Why a filesystem cannot be frozen: the freeze step fails with this message. */
class FreezeRefused extends Error {}

let records = 0;

/** The addon's thaw, or why there is none. */
function nativeThaw(): (path: string) => boolean {
  const addon = loadNative();
  if (!addon?.thawFs) {
    throw new FreezeRefused(`fsfreeze needs the native addon: ${addon ? (addon.freezeUnavailable ?? 'it has no thawFs') : nativeUnavailableReason()}`);
  }
  return addon.thawFs.bind(addon);
}

/**
 * A frozen filesystem and its guard. `freeze` starts the guard and freezes; `thaw` ends both;
 * `expired` resolves when the guard thawed on its own (deadline).
 */
export class FreezeGuard {
  /** Resolves when the guard thawed on its own: the deadline passed. */
  readonly expired: Promise<void>;
  private expire!: () => void;
  /** Settles once the guard has thawed and said so (or died, and it was thawed from here). */
  private finished: Promise<{ why: string; frozenMs: number; errno: number }> | undefined;
  private readonly lines: AsyncIterator<string>;
  private readonly frozenAt = performance.now();

  private constructor(
    private readonly target: string,
    private readonly record: string,
    private readonly child: ChildProcessByStdio<Writable, Readable, null>,
    private readonly thawHere: (path: string) => boolean,
  ) {
    this.expired = new Promise((resolve) => (this.expire = resolve));
    this.lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    // A guard that could not start or has died (EPIPE on writes) is handled through its stdout,
    // which then ends without the expected line.
    child.on('error', () => undefined);
    child.stdin.on('error', () => undefined);
  }

  /**
   * Starts a guard for the filesystem holding `target` and freezes it. Throws FreezeRefused when
   * it cannot (no addon or guard, not Linux, a filesystem that must stay writable, no freeze
   * support): then nothing is frozen.
   */
  static async freeze(target: string, options: { deadlineMs: number; recordDir: string; keepWritable: string[] }): Promise<FreezeGuard> {
    const thawHere = nativeThaw();
    const guardPath = freezeGuardPath();
    if (!existsSync(guardPath)) throw new FreezeRefused(`the freeze guard ${guardPath} is not built (run npm run build:native)`);
    mkdirSync(options.recordDir, { recursive: true, mode: 0o700 });
    const device = statSync(target).dev;
    for (const other of ['/', options.recordDir, ...options.keepWritable]) {
      if (existsSync(other) && statSync(other).dev === device) {
        throw new FreezeRefused(
          other === '/'
            ? `${target} is on the same filesystem as /: freezing it would stop the whole node`
            : `${target} is on the same filesystem as ${other}, which tender writes while the freeze lasts`,
        );
      }
    }
    const record = path.join(options.recordDir, `${process.pid}-${++records}.json`);
    const entry: FreezeRecord = { path: target, ownerPid: process.pid, ownerStart: processStart(process.pid)! };
    writeRecord(record, entry);
    const child = spawn(guardPath, [target, String(options.deadlineMs), record], {
      // A session of its own: a signal to tender's process group does not reach it.
      detached: true,
      stdio: ['pipe', 'pipe', 'ignore'],
      cwd: '/',
    });
    const guard = new FreezeGuard(target, record, child, thawHere);
    try {
      const ready = await guard.nextLine();
      if (ready !== 'ready') throw new FreezeRefused(`the freeze guard could not start: ${guardError(ready)}`);
      child.stdin.write('freeze\n');
      const answer = await guard.nextLine();
      if (answer !== 'frozen') throw new FreezeRefused(guardError(answer));
    } catch (err) {
      child.stdin.end();
      if (child.exitCode === null && child.signalCode === null) await new Promise((resolve) => child.once('exit', resolve));
      rmSync(record, { force: true });
      throw err;
    }
    writeRecord(record, { ...entry, deadlineAt: Date.now() + options.deadlineMs });
    guard.finished = guard.watch();
    return guard;
  }

  /** Thaws (through the guard; from here when the guard is gone) and says how long it was frozen. */
  async thaw(): Promise<ThawResult> {
    this.child.stdin.end('thaw\n');
    const ended = await this.finished!;
    if (ended.errno !== 0) this.thawFallback();
    return { frozenMs: ended.frozenMs, deadlinePassed: ended.why === 'deadline' };
  }

  /** Waits for the guard's last word: its answer to "thaw", or the deadline it reached first. */
  private async watch(): Promise<{ why: string; frozenMs: number; errno: number }> {
    const [why = '', ms, errno] = (await this.nextLine()).split(' ');
    if (why === 'deadline') this.expire();
    if ((why === 'deadline' || why === 'thawed' || why === 'abandoned') && ms !== undefined && errno !== undefined) {
      return { why, frozenMs: Number(ms), errno: Number(errno) };
    }
    // The guard died (killed) or said something else: thaw from here at once.
    try {
      this.thawFallback();
      return { why: 'lost', frozenMs: this.frozenFor(), errno: 0 };
    } catch {
      return { why: 'lost', frozenMs: this.frozenFor(), errno: 1 };
    }
  }

  private frozenFor(): number {
    return Math.round(performance.now() - this.frozenAt);
  }

  private async nextLine(): Promise<string> {
    const { value, done } = await this.lines.next();
    return done ? '' : (value as string);
  }

  private thawFallback(): void {
    this.thawHere(this.target);
    rmSync(this.record, { force: true });
  }
}

function guardError(line: string): string {
  if (line === '') return 'the freeze guard exited without an answer';
  const match = /^error (\w+) (\d+) (.*)$/.exec(line);
  if (!match) return `the freeze guard said ${JSON.stringify(line)}`;
  const [, call, errno, message] = match;
  if (call === 'freeze' && (errno === '95' || errno === '25')) return `the filesystem does not support freezing (FIFREEZE: ${message})`;
  if (call === 'freeze' && errno === '1') return `FIFREEZE: ${message} (freezing needs root, CAP_SYS_ADMIN)`;
  return `${call === 'open' ? 'open' : 'FIFREEZE'}: ${message}`;
}

function writeRecord(file: string, record: FreezeRecord): void {
  const partial = `${file}.tmp`;
  writeFileSync(partial, JSON.stringify(record));
  renameSync(partial, file);
}

/** A process's start time (field 22 of /proc/PID/stat), or undefined when it does not exist. */
function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

export interface LeftFrozen {
  path: string;
  /** It was still frozen and is thawed now (false: it was not frozen any more). */
  thawed: boolean;
  /** Why it could not be thawed (the record stays, for the next start). */
  error?: string;
}

/**
 * The startup check: thaws every filesystem a record names whose owner is gone or whose
 * deadline has passed, and removes those records. Records of a live owner within its deadline
 * (another tender run, frozen right now) are left alone.
 */
export function thawLeftFrozen(recordDir: string, now = Date.now()): LeftFrozen[] {
  let names: string[];
  try {
    names = readdirSync(recordDir).filter((n) => n.endsWith('.json'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const results: LeftFrozen[] = [];
  for (const name of names) {
    const file = path.join(recordDir, name);
    let record: FreezeRecord;
    try {
      record = JSON.parse(readFileSync(file, 'utf8')) as FreezeRecord;
      if (typeof record.path !== 'string') throw new Error('no path');
    } catch {
      rmSync(file, { force: true }); // written whole then renamed: a damaged one names nothing
      continue;
    }
    const ownerAlive = processStart(record.ownerPid) === record.ownerStart;
    if (ownerAlive && (record.deadlineAt === undefined || now < record.deadlineAt)) continue;
    try {
      const thawed = nativeThaw()(record.path);
      rmSync(file, { force: true });
      results.push({ path: record.path, thawed });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (code === 'ENOENT') {
        rmSync(file, { force: true }); // unmounted since: nothing left to thaw
        results.push({ path: record.path, thawed: false });
      } else {
        results.push({ path: record.path, thawed: false, error: (err as Error).message });
      }
    }
  }
  return results;
}

/** fsync(2) of one file (opened read-only; Linux allows that). */
export async function fsyncFile(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * syncfs(2) on the filesystem holding `target`: writes back every dirty page of the volume. False
 * when the addon is missing (TENDER_NATIVE=0, not built, not Linux): then only the files read are
 * fsynced, which covers everything tender stores.
 */
export async function syncVolume(target: string): Promise<boolean> {
  const addon = loadNative();
  if (!addon?.syncFs) return false;
  await addon.syncFs(target);
  return true;
}

/** The record directory the CLI uses: $TENDER_RUN_DIR/frozen (default /run/tender/frozen; /run is cleared at boot, as freezes are). */
export function defaultFreezeRecordDir(): string {
  return path.join(process.env.TENDER_RUN_DIR ?? '/run/tender', 'frozen');
}

