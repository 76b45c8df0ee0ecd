/**
 * Real filesystems for the quiesce tests: an image file, a loop device, mkfs, mount (root only;
 * tmpfs refuses FIFREEZE). A missing loop device or mkfs is a failure with the reason, never a
 * skip. `cleanup` thaws, unmounts and detaches whatever is left, also after a failed test.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';

export interface LoopFs {
  mount: string;
  device: string;
  image: string;
}

const made: LoopFs[] = [];

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
  }
}

export function hasMkfs(type: 'ext4' | 'xfs'): boolean {
  return ['/usr/sbin', '/sbin', '/usr/bin'].some((dir) => existsSync(path.join(dir, `mkfs.${type}`)));
}

/** A fresh filesystem of `type` mounted at dir/mnt-<name>, on a loop device over dir/<name>.img. */
export function makeLoopFs(dir: string, type: 'ext4' | 'xfs', sizeMiB = 320, name: string = type): LoopFs {
  if (process.getuid?.() !== 0) throw new Error('the quiesce tests need root (losetup, mount, FIFREEZE)');
  if (!existsSync('/dev/loop-control')) throw new Error('no /dev/loop-control: loop devices are unavailable here, the freeze tests cannot run');
  const image = path.join(dir, `${name}.img`);
  const mount = path.join(dir, `mnt-${name}`);
  mkdirSync(mount, { recursive: true });
  run('truncate', ['-s', `${sizeMiB}M`, image]);
  run(`mkfs.${type}`, type === 'ext4' ? ['-q', '-F', image] : ['-q', '-f', image]);
  const device = run('losetup', ['--find', '--show', image]).trim();
  const fs = { mount, device, image };
  made.push(fs);
  run('mount', [device, mount]);
  return fs;
}

/** Thaws (harmless when not frozen), unmounts and detaches every filesystem made here. */
export function cleanupLoopFs(): void {
  const problems: string[] = [];
  for (const fs of made.splice(0)) {
    try {
      execFileSync('fsfreeze', ['-u', fs.mount], { stdio: 'ignore' });
    } catch {
      // not frozen
    }
    try {
      unmount(fs.mount);
      execFileSync('losetup', ['-d', fs.device], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (err) {
      problems.push(`${fs.mount} on ${fs.device}: ${(err as Error).message}`);
    }
    rmSync(fs.image, { force: true });
  }
  if (problems.length > 0) throw new Error(`cleanup: ${problems.join('; ')}`);
}

/** umount; a writer just released by the thaw may still hold a file for a moment: then again, then lazily. */
export function unmount(mount: string): void {
  for (let attempt = 0; ; attempt++) {
    try {
      execFileSync('umount', [mount], { stdio: ['ignore', 'ignore', 'pipe'] });
      return;
    } catch (err) {
      if (attempt === 20) {
        execFileSync('umount', ['--lazy', mount], { stdio: ['ignore', 'ignore', 'pipe'] });
        throw new Error(`umount ${mount} kept failing (unmounted lazily): ${(err as Error).message}`);
      }
      execFileSync('sleep', ['0.1']);
    }
  }
}

/**
 * Starts a writer (a separate process: one blocked on a frozen filesystem cannot be killed) that
 * creates `file`; `done` resolves with the milliseconds it took.
 */
export function startWriter(file: string): { child: ChildProcess; done: Promise<number> } {
  const started = performance.now();
  const child = spawn('/bin/sh', ['-c', 'echo written > "$1"', 'writer', file], { stdio: 'ignore' });
  const done = new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(performance.now() - started) : reject(new Error(`writer exited with ${code}`))));
  });
  return { child, done };
}

/** True when the process sleeps uninterruptibly on a frozen filesystem's write lock. */
export function blockedOnFreeze(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state === 'D' && readFileSync(`/proc/${pid}/wchan`, 'utf8').includes('percpu_rwsem');
  } catch {
    return false;
  }
}

/** Waits (polling /proc, an observed state, not a time) until `pid` blocks on the freeze. */
export async function untilBlocked(pid: number): Promise<void> {
  while (!blockedOnFreeze(pid)) await new Promise((resolve) => setTimeout(resolve, 10));
}

/** PIDs of running freeze guards of a path on `mount`. */
export function guardPids(mount: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (argv[0]?.endsWith('tender-freeze-guard') && (argv[1] === mount || argv[1]?.startsWith(`${mount}/`))) pids.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}
