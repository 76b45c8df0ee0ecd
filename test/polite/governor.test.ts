/**
 * The governor end to end:
 * - real I/O pressure: a competing O_DIRECT reader in a cgroup whose PSI the governor watches
 *   slows a real backup's reading within a second, and reading resumes once it stops;
 * - GPU backoff with scripted GpuReader objects (test doubles of the interface): busy GPUs pause
 *   reading within a second, idle ones release it after the hold; a source that hangs, rejects,
 *   throws or returns garbage never stalls the governor or the reads;
 * - no GPU source: a no-op that says so once.
 * Synchronised on the governor's 'change' and 'note' events; timeouts are safety nets.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/backup/archiver.js';
import { Governor, type ThrottleChange } from '../../src/polite/governor.js';
import type { GpuReader, GpuSample } from '../../src/polite/gpu-reader.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStorage } from '../../src/storage/fs.js';
import { createOperationContext } from '../../src/util/operation.js';

const MiB = 2 ** 20;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'tender-governor-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The next 'change' event that satisfies `match`. */
function nextChange(g: Governor, match: (c: ThrottleChange) => boolean, timeoutMs = 15_000): Promise<ThrottleChange> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      g.off('change', on);
      reject(new Error(`no matching change within ${timeoutMs} ms (now ${JSON.stringify(g.current)})`));
    }, timeoutMs);
    const on = (c: ThrottleChange) => {
      if (!match(c)) return;
      clearTimeout(timer);
      g.off('change', on);
      resolve(c);
    };
    g.on('change', on);
  });
}

function nextNote(g: Governor, match: (n: string) => boolean, timeoutMs = 15_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no matching note within ${timeoutMs} ms`)), timeoutMs);
    const on = (n: string) => {
      if (!match(n)) return;
      clearTimeout(timer);
      g.off('note', on);
      resolve(n);
    };
    g.on('note', on);
  });
}

const v2Root = ['/sys/fs/cgroup', '/sys/fs/cgroup/unified'].find((r) => existsSync(path.join(r, 'cgroup.procs')) && existsSync(path.join(r, 'io.pressure')));
const direct = process.platform === 'linux' && process.getuid?.() === 0 && v2Root !== undefined;

describe.skipIf(!direct)('pressure backoff under real I/O pressure', () => {
  it('a competing O_DIRECT reader in the watched cgroup slows reading within 1 s; reading resumes after it stops', async () => {
    const trainer = path.join(v2Root!, `tender-trainer-${process.pid}`);
    mkdirSync(trainer);
    // What the trainer reads (O_DIRECT: from the disk every time) and what tender backs up.
    const disk = path.join(tmp, 'trainer.bin');
    writeFileSync(disk, Buffer.alloc(64 * MiB, 1));
    const data = path.join(tmp, 'volume');
    mkdirSync(data);
    const block = Buffer.alloc(96 * MiB);
    for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((Math.imul(i, 2654435761) ^ (i >>> 9)) >>> 0, i);
    // Written now, so it is in the page cache: tender's own reads stall nobody.
    writeFileSync(path.join(data, 'weights'), block);
    const repo = await Repository.init(new FsStorage(path.join(tmp, 'repo')), 'pw', { workers: 1 });
    const governor = new Governor({
      readLimit: 16 * MiB,
      readFloor: 256 * 1024,
      pressure: { io: 20 },
      watch: () => [trainer],
      law: { holdMs: 600, recoverEveryMs: 150, increase: 2, pauseAfterMs: 500 },
    });
    const changes: ThrottleChange[] = [];
    governor.on('change', (c) => changes.push(c));
    governor.start();
    const cancel = new AbortController();
    const running = backup(repo, { paths: [data], hooks: { beforeRead: governor.beforeRead } }, createOperationContext({ signal: cancel.signal }));
    running.catch(() => undefined);
    let competitor: ChildProcess | undefined;
    try {
      // Reading at the ceiling first.
      while (governor.readBudget.granted < 8 * MiB) await new Promise((r) => setTimeout(r, 20));
      expect(governor.current.state).toBe('full');
      const slowed = nextChange(governor, (c) => c.state !== 'full');
      competitor = spawn('sh', ['-c', `echo $$ > ${trainer}/cgroup.procs && while :; do dd if=${disk} of=/dev/null iflag=direct bs=256k 2>/dev/null; done`], {
        stdio: 'ignore',
        detached: true,
      });
      const started = performance.now();
      const first = await slowed;
      const reaction = performance.now() - started;
      expect(reaction).toBeLessThan(1000);
      expect(first.reason).toMatch(/^io pressure \d+(\.\d)?% > 20%$/);
      expect(first.rate).toBeLessThan(16 * MiB);
      // While the pressure lasts, reading stays far below the ceiling.
      await nextChange(governor, (c) => c.state === 'paused');
      const before = governor.readBudget.granted;
      await new Promise((r) => setTimeout(r, 500));
      expect(governor.readBudget.granted - before).toBeLessThan(1 * MiB);
      process.kill(-competitor.pid!, 'SIGKILL');
      competitor = undefined;
      const resumed = await nextChange(governor, (c) => c.state === 'full');
      expect(resumed.rate).toBe(16 * MiB);
      const after = governor.readBudget.granted;
      await new Promise((r) => setTimeout(r, 500));
      expect(governor.readBudget.granted).toBeGreaterThan(after);
      // Every change was a step of the law: cuts, a pause, recovery steps, full speed again.
      const states = changes.map((c) => c.state);
      expect(states.indexOf('paused')).toBeGreaterThan(states.indexOf('throttled'));
      expect(states.at(-1)).toBe('full');
    } finally {
      if (competitor) process.kill(-competitor.pid!, 'SIGKILL');
      cancel.abort();
      await running.catch(() => undefined);
      await governor.close();
      await repo.close();
      for (let i = 0; i < 50; i++) {
        try {
          rmdirSync(trainer);
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 100)); // the killed reader is still leaving the cgroup
        }
      }
    }
  });
});

/** A GpuReader whose behaviour the test scripts step by step. */
class ScriptedGpus implements GpuReader {
  readonly source = 'nvml' as const;
  behaviour: 'busy' | 'idle' | 'hang' | 'reject' | 'throw' | 'garbage' = 'idle';
  reads = 0;
  closed = false;

  read(): Promise<GpuSample[]> {
    this.reads++;
    switch (this.behaviour) {
      case 'busy':
        return Promise.resolve([{ index: 0, utilisation: 12 }, { index: 1, uuid: 'GPU-b', utilisation: 97 }]);
      case 'idle':
        return Promise.resolve([{ index: 0, utilisation: 3 }, { index: 1, uuid: 'GPU-b', utilisation: 5 }]);
      case 'hang':
        return new Promise(() => {}); // ignores its signal, never settles
      case 'reject':
        return Promise.reject(new Error('NVML_ERROR_GPU_IS_LOST'));
      case 'throw':
        throw new Error('driver exploded');
      case 'garbage':
        return Promise.resolve([{ index: 0, utilisation: Number.NaN }] as GpuSample[]);
    }
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}

describe('GPU backoff', () => {
  it('busy GPUs pause reading within 1 s; full speed only after they stayed idle for the hold time', async () => {
    const gpus = new ScriptedGpus();
    const governor = new Governor({ gpu: { busyPercent: 80, holdLowMs: 400, mode: 'pause' }, gpuReader: gpus, gpuPollMs: 50, tickMs: 50, procPressure: path.join(tmp, 'no-psi') });
    governor.start();
    try {
      await nextChange(governor, (c) => c.state === 'full');
      const paused = nextChange(governor, (c) => c.state === 'paused');
      gpus.behaviour = 'busy';
      const started = performance.now();
      const c = await paused;
      expect(performance.now() - started).toBeLessThan(1000);
      expect(c.reason).toBe('GPU 1 busy 97% ≥ 80%');
      // A reader waiting on the budget waits while paused.
      let read = false;
      const waiting = governor.beforeRead(1).then(() => (read = true));
      await new Promise((r) => setTimeout(r, 200));
      expect(read).toBe(false);
      const capped = nextChange(governor, (x) => x.state === 'throttled');
      const full = nextChange(governor, (x) => x.state === 'full');
      gpus.behaviour = 'idle';
      const t0 = performance.now();
      expect((await capped).reason).toMatch(/^GPUs idle for [\d.]+ s of 0.4 s$/);
      await waiting;
      await full;
      expect(performance.now() - t0).toBeGreaterThanOrEqual(390);
    } finally {
      await governor.close();
    }
    expect(gpus.closed).toBe(true);
  });

  it('only the GPUs of the pods being read count', async () => {
    const gpus = new ScriptedGpus();
    gpus.behaviour = 'busy';
    const governor = new Governor({
      gpu: { busyPercent: 80, holdLowMs: 0, mode: 'pause' },
      gpuReader: gpus,
      gpuPollMs: 50,
      gpus: () => ['0'],
      tickMs: 50,
      procPressure: path.join(tmp, 'no-psi'),
    });
    governor.start();
    try {
      // GPU 1 is busy but not watched; GPU 0 idles at 12%: no pause ever happens.
      while (gpus.reads < 6) await new Promise((r) => setTimeout(r, 50));
      expect(governor.current.state).toBe('full');
    } finally {
      await governor.close();
    }
  });

  it('a source that hangs, rejects, throws or returns garbage never stalls the governor or the reads; each failure is told once', async () => {
    const gpus = new ScriptedGpus();
    const governor = new Governor({
      gpu: { busyPercent: 80, holdLowMs: 0, mode: 'pause' },
      gpuReader: gpus,
      gpuPollMs: 30,
      gpuTimeoutMs: 150,
      tickMs: 30,
      procPressure: path.join(tmp, 'no-psi'),
    });
    const notes: string[] = [];
    governor.on('note', (n) => notes.push(n));
    governor.start();
    try {
      gpus.behaviour = 'busy';
      await nextChange(governor, (c) => c.state === 'paused');
      for (const [behaviour, told] of [
        ['hang', 'the nvml GPU source failed (no answer within 150 ms): GPU backoff is off until it answers again'],
        ['reject', 'the nvml GPU source failed (NVML_ERROR_GPU_IS_LOST): GPU backoff is off until it answers again'],
        ['throw', 'the nvml GPU source failed (driver exploded): GPU backoff is off until it answers again'],
        ['garbage', 'the nvml GPU source returned samples that are not GPU utilisations: GPU backoff is off until it answers properly'],
      ] as const) {
        gpus.behaviour = 'busy';
        if (governor.current.state !== 'paused') await nextChange(governor, (c) => c.state === 'paused');
        const note = nextNote(governor, (n) => n === told);
        const released = nextChange(governor, (c) => c.state === 'full');
        gpus.behaviour = behaviour;
        await note;
        // Unknown: the pressure law alone decides, and reads go on.
        await released;
        await governor.beforeRead(MiB);
        const readsBefore = gpus.reads;
        await new Promise((r) => setTimeout(r, behaviour === 'hang' ? 400 : 150));
        // Still polling (a hung read was abandoned at its timeout, not waited for).
        expect(gpus.reads).toBeGreaterThan(readsBefore);
      }
      // Each failure was told once, however many polls it lasted.
      for (const n of notes.filter((x) => x.includes('failed') || x.includes('not GPU utilisations'))) expect(notes.filter((x) => x === n)).toHaveLength(1);
      expect(notes.filter((n) => n.includes('failed') || n.includes('not GPU utilisations'))).toHaveLength(4);
    } finally {
      await governor.close();
    }
  });

  it('without a GPU source: a no-op that says so once', async () => {
    const governor = new Governor({ gpu: { busyPercent: 80, holdLowMs: 1000, mode: 'pause' }, tickMs: 20, procPressure: path.join(tmp, 'no-psi') });
    const notes: string[] = [];
    governor.on('note', (n) => notes.push(n));
    governor.start();
    await new Promise((r) => setTimeout(r, 200));
    await governor.beforeRead(10 * MiB);
    expect(governor.current).toEqual({ state: 'full', rate: undefined, reason: 'no limit', cause: 'none' });
    await governor.close();
    expect(notes).toEqual(['GPU backoff is on but there is no GPU source on this node: it does nothing']);
  });
});

describe('run-time limits', () => {
  it('setReadLimit and setUploadLimit change the shared budgets at once, with an event', async () => {
    const governor = new Governor({ readLimit: 10 * MiB });
    const changes: ThrottleChange[] = [];
    governor.on('change', (c) => changes.push(c));
    governor.setReadLimit(2 * MiB);
    expect(governor.readBudget.bytesPerSecond).toBe(2 * MiB);
    governor.setReadLimit(undefined);
    expect(governor.readBudget.bytesPerSecond).toBeUndefined();
    governor.setUploadLimit(MiB);
    expect(governor.uploadBudget.bytesPerSecond).toBe(MiB);
    expect(changes.map((c) => [c.state, c.rate])).toEqual([
      ['full', 2 * MiB],
      ['full', undefined],
    ]);
  });
});
