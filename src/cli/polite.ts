import { existsSync } from 'node:fs';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { TenderError } from '../errors/errors.js';
import { type CgroupBox, type BoxSizing, detectBox, readLimitFor, sizeToBox } from '../polite/cgroup.js';
import { Governor } from '../polite/governor.js';
import type { GpuReader } from '../polite/gpu-reader.js';
import { type PressureThresholds, parseByteSize, parsePercent, parsePressureThresholds } from '../polite/parse.js';

/** The politeness flags of `tender backup` (see addPoliteOptions). */
export interface PoliteCliOptions {
  readLimit?: number;
  uploadLimit?: number;
  readFloor?: number;
  pressureBackoff?: PressureThresholds;
  pressureCgroup: string[];
  cpuShare?: number;
  gpuBackoff?: number;
  gpuHold: number;
  gpuMode: 'pause' | 'cap';
}

/** Wraps a parser so that a bad value names its flag. */
function flag<T>(name: string, parse: (v: string) => T, hint: string): (v: string) => T {
  return (v) => {
    try {
      return parse(v);
    } catch (err) {
      throw new TenderError('TENDER_USAGE', `${name}: ${(err as Error).message}`, { hint });
    }
  };
}

const sizeHint = 'give bytes per second with a unit, e.g. 200MiB, 1G, 50M';

export function addPoliteOptions(command: Command): Command {
  return command
    .addOption(new Option('--read-limit <size>', 'read at most this many bytes per second (e.g. 200MiB)').argParser(flag('--read-limit', parseByteSize, sizeHint)))
    .addOption(new Option('--upload-limit <size>', 'upload at most this many bytes per second (e.g. 100MiB)').argParser(flag('--upload-limit', parseByteSize, sizeHint)))
    .addOption(new Option('--read-floor <size>', 'the lowest read rate backoff cuts to before it pauses (default 1MiB)').argParser(flag('--read-floor', parseByteSize, sizeHint)))
    .addOption(
      new Option('--pressure-backoff <list>', 'slow down while pressure (PSI, % of time stalled) is above these: io=20,cpu=50,memory=10').argParser(
        flag('--pressure-backoff', parsePressureThresholds, 'e.g. --pressure-backoff io=20 or io=20,cpu=50,memory=10'),
      ),
    )
    .option('--pressure-cgroup <dir>', "watch this cgroup v2 directory's PSI (the trainer's) instead of the node's (repeatable)", (v: string, prev: string[]) => [...prev, v], [])
    .addOption(
      new Option('--cpu-share <cores>', 'use at most this many cores on average (e.g. 0.5)').argParser(
        flag(
          '--cpu-share',
          (v) => {
            const n = Number(v);
            if (!(n > 0) || !Number.isFinite(n)) throw new Error(`${JSON.stringify(v)} is not a positive number of cores`);
            return n;
          },
          'e.g. --cpu-share 1.5',
        ),
      ),
    )
    .addOption(new Option('--gpu-backoff <percent>', 'pause reading while a GPU is busier than this (e.g. 80)').argParser(flag('--gpu-backoff', (v) => parsePercent(v), 'e.g. --gpu-backoff 80')))
    .addOption(
      new Option('--gpu-hold <seconds>', 'full speed only after the GPUs stayed below --gpu-backoff this long').default(30).argParser(
        flag(
          '--gpu-hold',
          (v) => {
            const n = Number(v);
            if (!(n >= 0) || !Number.isFinite(n)) throw new Error(`${JSON.stringify(v)} is not a number of seconds`);
            return n;
          },
          'e.g. --gpu-hold 30',
        ),
      ),
    )
    .addOption(new Option('--gpu-mode <mode>', 'while GPUs are busy: pause, or cap at --read-floor').choices(['pause', 'cap']).default('pause'));
}

/** The box this process runs in and how tender sizes itself to it. */
export interface Box {
  box: CgroupBox;
  sizing: BoxSizing;
}

export function processBox(): Box {
  const box = detectBox();
  return { box, sizing: sizeToBox(box) };
}

/**
 * The governor for one CLI operation. The read ceiling is the tighter of --read-limit and the
 * kernel's read limit on the disks of `paths` (io.max / blkio throttle), so tender paces itself
 * instead of being stalled by the kernel.
 */
export function governorFromOptions(opts: PoliteCliOptions, box: CgroupBox, paths: readonly string[], gpuReader?: GpuReader): Governor {
  if (opts.pressureCgroup.length > 0 && !opts.pressureBackoff) {
    throw new TenderError('TENDER_USAGE', '--pressure-cgroup needs --pressure-backoff', { hint: 'e.g. --pressure-backoff io=10 --pressure-cgroup DIR' });
  }
  for (const dir of opts.pressureCgroup) {
    if (!existsSync(path.join(dir, 'io.pressure'))) {
      throw new TenderError('TENDER_USAGE', `--pressure-cgroup ${dir}: no io.pressure there`, {
        hint: 'give a cgroup v2 directory (e.g. /sys/fs/cgroup/kubepods.slice/…pod<uid>.slice); cgroup v1 has no per-cgroup pressure',
      });
    }
  }
  const kernelLimit = readLimitFor(box, paths);
  const readLimit = [opts.readLimit, kernelLimit].filter((v): v is number => v !== undefined).reduce<number | undefined>((a, b) => (a === undefined ? b : Math.min(a, b)), undefined);
  return new Governor({
    readLimit,
    uploadLimit: opts.uploadLimit,
    ...(opts.readFloor !== undefined ? { readFloor: opts.readFloor } : {}),
    ...(opts.pressureBackoff ? { pressure: opts.pressureBackoff } : {}),
    ...(opts.cpuShare !== undefined ? { cpuShareCores: opts.cpuShare } : {}),
    ...(opts.pressureCgroup.length > 0 ? { watch: () => opts.pressureCgroup } : {}),
    ...(opts.gpuBackoff !== undefined ? { gpu: { busyPercent: opts.gpuBackoff, holdLowMs: opts.gpuHold * 1000, mode: opts.gpuMode } } : {}),
    ...(gpuReader ? { gpuReader } : {}),
  });
}
