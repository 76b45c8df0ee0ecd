/**
 * The agent's run queue, runner, state file and scheduler, with a fake backup function: fast
 * and deterministic (no repository, no Kubernetes).
 */
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type ExecuteContext, type ExecuteResult, type RunRecord, type RunVolume, RunQueue, Runner } from '../../src/agent/runs.js';
import { Scheduler, nextCron, nextDue, scheduleProblem } from '../../src/agent/scheduler.js';
import { type AgentStateData, StateStore, stateFileName } from '../../src/agent/state.js';

const logger = pino({ level: 'silent' });

function vol(pod: string, volume: string, namespace = 'ns'): RunVolume {
  return { namespace, pod, volume, identity: `${namespace}.${pod}.${volume}` };
}

/** A backup that runs until the test settles it (or its signal aborts it). */
class FakeBackups {
  readonly started: RunRecord[] = [];
  private readonly pending = new Map<string, { resolve: (r: ExecuteResult) => void; reject: (e: unknown) => void; ctx: ExecuteContext }>();
  private waiters: Array<() => void> = [];
  concurrent = 0;
  maxConcurrent = 0;
  /** Identities running right now (to catch two runs of one volume at once). */
  readonly running = new Set<string>();
  overlap = false;

  execute = (run: Readonly<RunRecord>, ctx: ExecuteContext): Promise<ExecuteResult> => {
    this.started.push({ ...run });
    if (this.running.has(run.identity)) this.overlap = true;
    this.running.add(run.identity);
    this.concurrent++;
    this.maxConcurrent = Math.max(this.maxConcurrent, this.concurrent);
    const done = () => {
      this.concurrent--;
      this.running.delete(run.identity);
      this.pending.delete(run.id);
    };
    const p = new Promise<ExecuteResult>((resolve, reject) => {
      this.pending.set(run.id, {
        resolve: (r) => {
          done();
          resolve(r);
        },
        reject: (e) => {
          done();
          reject(e);
        },
        ctx,
      });
      ctx.signal.addEventListener('abort', () => {
        const entry = this.pending.get(run.id);
        if (entry) {
          const err = Object.assign(new Error('the operation was cancelled'), { code: 'TENDER_CANCELLED' });
          entry.reject(err);
        }
      });
    });
    for (const w of this.waiters.splice(0)) w();
    return p;
  };

  async waitStarted(n: number): Promise<void> {
    while (this.started.length < n) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  succeed(id: string, bytes = 100): void {
    const e = this.pending.get(id);
    if (!e) throw new Error(`run ${id} is not running`);
    e.ctx.progress({ bytesDone: bytes, filesDone: 1, totalBytes: bytes });
    e.resolve({ snapshotId: `snap-${id}`, summary: summary(bytes) });
  }

  fail(id: string, err: unknown): void {
    this.pending.get(id)!.reject(err);
  }

  progress(id: string, p: Parameters<ExecuteContext['progress']>[0]): void {
    this.pending.get(id)!.ctx.progress(p);
  }

  ids(): string[] {
    return [...this.pending.keys()];
  }
}

function summary(bytes: number) {
  return { files: 1, dirs: 1, filesRead: 1, filesUnchanged: 0, bytesRead: bytes, totalBytes: bytes, blobsAdded: 1, bytesAdded: bytes, bytesStored: bytes, errors: 0, durationMs: 10 };
}

async function tick(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tender-runs-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('RunQueue', () => {
  it('serves pods round-robin, oldest first within a pod, skipping busy volumes', () => {
    const q = new RunQueue();
    let n = 0;
    const run = (pod: string, volume: string) => ({ ...vol(pod, volume), id: `r${n++}`, state: 'queued' as const, trigger: 'api' as const, queuedAt: '', progress: { bytesDone: 0, filesDone: 0 } });
    for (const r of [run('a', '1'), run('a', '2'), run('a', '3'), run('b', '1'), run('c', '1'), run('b', '2')]) q.push(r);
    expect(q.size).toBe(6);
    expect(q.list().map((r) => `${r.pod}${r.volume}`)).toEqual(['a1', 'b1', 'c1', 'a2', 'b2', 'a3']);
    const order: string[] = [];
    for (let r = q.take(() => false); r; r = q.take(() => false)) order.push(`${r.pod}${r.volume}`);
    expect(order).toEqual(['a1', 'b1', 'c1', 'a2', 'b2', 'a3']);
    // A busy volume is skipped, not dropped.
    q.push(run('a', '1'));
    q.push(run('a', '2'));
    expect(q.take((r) => r.volume === '1')?.volume).toBe('2');
    expect(q.take((r) => r.volume === '1')).toBeUndefined();
    expect(q.size).toBe(1);
    expect(q.take(() => false)?.volume).toBe('1');
  });
});

describe('Runner', () => {
  it('runs fairly across pods, one at a time per node by default', async () => {
    const fake = new FakeBackups();
    const runner = new Runner({ execute: fake.execute, logger });
    for (const [p, v] of [['a', '1'], ['a', '2'], ['a', '3'], ['b', '1'], ['c', '1']] as const) runner.enqueue(vol(p, v), 'schedule');
    runner.setReady(true);
    for (let i = 1; i <= 5; i++) {
      await fake.waitStarted(i);
      expect(runner.runningCount).toBe(1);
      fake.succeed(fake.ids()[0]!);
    }
    await runner.idle();
    expect(fake.started.map((r) => `${r.pod}${r.volume}`)).toEqual(['a1', 'b1', 'c1', 'a2', 'a3']);
    expect(fake.maxConcurrent).toBe(1);
    expect(runner.list().filter((r) => r.state === 'succeeded')).toHaveLength(5);
  });

  it('runs up to maxConcurrent at once but never one volume twice at once', async () => {
    const fake = new FakeBackups();
    const runner = new Runner({ execute: fake.execute, logger, maxConcurrent: 3 });
    runner.setReady(true);
    const first = runner.enqueue(vol('a', '1'), 'api');
    if (first.outcome !== 'queued') throw new Error('not queued');
    await fake.waitStarted(1);
    // Same volume while it runs: a new run, queued behind it.
    const second = runner.enqueue(vol('a', '1'), 'api');
    expect(second.outcome).toBe('queued');
    // Same volume while that one waits: the waiting one is returned.
    const third = runner.enqueue(vol('a', '1'), 'schedule');
    expect(third).toMatchObject({ outcome: 'existing' });
    if (third.outcome !== 'existing' || second.outcome !== 'queued') throw new Error('unreachable');
    expect(third.run.id).toBe(second.run.id);
    // The same volume under a recreated pod (same identity): still exclusive.
    const recreated = { ...vol('a', '1'), pod: 'a-new' };
    expect(runner.enqueue(recreated, 'api').outcome).toBe('existing');
    runner.enqueue(vol('b', '1'), 'api');
    runner.enqueue(vol('c', '1'), 'api');
    await fake.waitStarted(3);
    await tick();
    expect(runner.runningCount).toBe(3);
    expect(fake.started.map((r) => r.pod)).toEqual(['a', 'b', 'c']);
    expect(runner.queueDepth).toBe(1);
    runner.enqueue(vol('d', '1'), 'api');
    await tick();
    expect(fake.started).toHaveLength(3);
    // a1 finishes: the waiting a1 run and d1 compete for one slot; round-robin serves pod a first (it was queued first).
    fake.succeed(first.run.id);
    await fake.waitStarted(4);
    expect(fake.started[3]!.id).toBe(second.run.id);
    for (const id of fake.ids()) fake.succeed(id);
    await fake.waitStarted(5);
    for (const id of fake.ids()) fake.succeed(id);
    await runner.idle();
    expect(fake.overlap).toBe(false);
    expect(fake.maxConcurrent).toBe(3);
  });

  it('cancels a queued run at once and a running one through its signal', async () => {
    const fake = new FakeBackups();
    const runner = new Runner({ execute: fake.execute, logger });
    const a = runner.enqueue(vol('a', '1'), 'api');
    const b = runner.enqueue(vol('b', '1'), 'api');
    if (a.outcome !== 'queued' || b.outcome !== 'queued') throw new Error('unreachable');
    // Queued: cancelled at once, never started.
    expect(runner.cancel(b.run.id)).toMatchObject({ outcome: 'cancelled' });
    expect(runner.get(b.run.id)?.state).toBe('cancelled');
    runner.setReady(true);
    await fake.waitStarted(1);
    fake.progress(a.run.id, { bytesDone: 10, filesDone: 1, totalBytes: 1000 });
    expect(runner.get(a.run.id)?.progress).toEqual({ bytesDone: 10, filesDone: 1, totalBytes: 1000 });
    const finished = new Promise<RunRecord>((resolve) => runner.once('finished', resolve));
    expect(runner.cancel(a.run.id, 'cancelled by test')).toMatchObject({ outcome: 'cancelling' });
    const run = await finished;
    expect(run).toMatchObject({ id: a.run.id, state: 'cancelled', error: 'cancelled by test' });
    expect(run.endedAt).toBeDefined();
    // Finished and unknown runs.
    expect(runner.cancel(a.run.id)).toMatchObject({ outcome: 'finished' });
    expect(runner.cancel('nope')).toEqual({ outcome: 'unknown' });
    expect(fake.started).toHaveLength(1);
  });

  it('records a failure with its error and code, and goes on with the next run', async () => {
    const fake = new FakeBackups();
    const runner = new Runner({ execute: fake.execute, logger });
    runner.setReady(true);
    const a = runner.enqueue(vol('a', '1'), 'api');
    runner.enqueue(vol('b', '1'), 'api');
    await fake.waitStarted(1);
    fake.fail(fake.ids()[0]!, Object.assign(new Error('cannot back up /x: vanished'), { code: 'TENDER_USAGE', hint: 'check the path' }));
    await fake.waitStarted(2);
    if (a.outcome !== 'queued') throw new Error('unreachable');
    expect(runner.get(a.run.id)).toMatchObject({ state: 'failed', errorCode: 'TENDER_USAGE', error: 'cannot back up /x: vanished (check the path)' });
    expect(runner.volumeState(a.run.identity)).toMatchObject({ lastOutcome: 'failed', consecutiveFailures: 1 });
    // A function that throws synchronously is a failed run too, not a crash.
    fake.succeed(fake.ids()[0]!);
    await runner.idle();
    const throwing = new Runner({
      execute: () => {
        throw new Error('boom');
      },
      logger,
    });
    throwing.setReady(true);
    const t = throwing.enqueue(vol('a', '1'), 'api');
    await throwing.idle();
    if (t.outcome !== 'queued') throw new Error('unreachable');
    expect(throwing.get(t.run.id)).toMatchObject({ state: 'failed', error: 'boom' });
  });

  it('aborts a run whose pod went away: failed, POD_DELETED', async () => {
    const fake = new FakeBackups();
    const runner = new Runner({ execute: fake.execute, logger });
    runner.setReady(true);
    const a = runner.enqueue(vol('a', '1'), 'schedule');
    await fake.waitStarted(1);
    runner.abortVanished(runner.runningRuns()[0]!.id, 'pod ns/a was deleted during the backup');
    await runner.idle();
    if (a.outcome !== 'queued') throw new Error('unreachable');
    expect(runner.get(a.run.id)).toMatchObject({ state: 'failed', errorCode: 'POD_DELETED', error: 'pod ns/a was deleted during the backup' });
  });

  it('persists runs atomically, keeps at most N finished runs, and reloads them', async () => {
    const store = new StateStore(dir, { maxFinishedRuns: 3, logger });
    const runner = new Runner({ execute: async () => ({ snapshotId: 'abc', summary: summary(5) }), store, logger });
    runner.load(await store.load());
    runner.setReady(true);
    for (let i = 0; i < 5; i++) {
      runner.enqueue(vol('p', String(i)), 'api');
      await runner.idle();
    }
    await store.flush();
    const data = JSON.parse(await readFile(path.join(dir, stateFileName), 'utf8')) as AgentStateData;
    expect(data.runs).toHaveLength(3);
    expect(data.runs.map((r) => r.volume).sort()).toEqual(['2', '3', '4']);
    expect(data.volumes).toHaveLength(5);
    expect(data.volumes.find((v) => v.volume === '4')).toMatchObject({ lastOutcome: 'succeeded', lastSnapshotId: 'abc' });
    // Nothing but the state file is left (no temporary files).
    expect(await readdir(dir)).toEqual([stateFileName]);
    // A new runner sees the history.
    const againStore = new StateStore(dir, { maxFinishedRuns: 3 });
    const again = new Runner({ execute: async () => ({ snapshotId: 'x' }), store: againStore, logger });
    again.load(await new StateStore(dir, { maxFinishedRuns: 3 }).load());
    expect(again.list().map((r) => r.state)).toEqual(['succeeded', 'succeeded', 'succeeded']);
    expect(again.volumeState(vol('p', '4').identity)?.lastSuccessAt).toBeDefined();
    // Whatever loading wrote is on disk before the directory is removed (ENOTEMPTY otherwise).
    await againStore.flush();
  });

  it('after a SIGKILL: a run found running is reported interrupted and its volume runs again', async () => {
    const fake = new FakeBackups();
    const store = new StateStore(dir, { logger, maxFinishedRuns: 10 });
    const runner = new Runner({ execute: fake.execute, store, logger, progressPersistMs: 0 });
    runner.load(await store.load());
    runner.setReady(true);
    const a = runner.enqueue(vol('a', '1'), 'api');
    runner.enqueue(vol('b', '1'), 'schedule');
    await fake.waitStarted(1);
    fake.progress(fake.ids()[0]!, { bytesDone: 4096, filesDone: 2 });
    await store.flush();
    // The process dies here: no stop(), nothing more written. A new agent starts.
    if (a.outcome !== 'queued') throw new Error('unreachable');
    const before = JSON.parse(await readFile(path.join(dir, stateFileName), 'utf8')) as AgentStateData;
    expect(before.runs.find((r) => r.id === a.run.id)).toMatchObject({ state: 'running', progress: { bytesDone: 4096, filesDone: 2 } });

    const fake2 = new FakeBackups();
    const store2 = new StateStore(dir, { logger });
    const runner2 = new Runner({ execute: fake2.execute, store: store2, logger });
    const interrupted = runner2.load(await store2.load());
    expect(interrupted.map((r) => r.id)).toEqual([a.run.id]);
    expect(runner2.get(a.run.id)).toMatchObject({ state: 'interrupted', progress: { bytesDone: 4096 } });
    expect(runner2.get(a.run.id)!.error).toMatch(/agent stopped during this run/);
    // Queued: the run that was waiting (b) and a new startup run for a.
    const queued = runner2.list().filter((r) => r.state === 'queued');
    expect(queued.map((r) => `${r.pod}:${r.trigger}`).sort()).toEqual(['a:startup', 'b:schedule']);
    runner2.setReady(true);
    await fake2.waitStarted(1);
    fake2.succeed(fake2.ids()[0]!);
    await fake2.waitStarted(2);
    fake2.succeed(fake2.ids()[0]!);
    await runner2.idle();
    expect(runner2.list().filter((r) => r.state === 'succeeded')).toHaveLength(2);
    await store2.flush();
  });

  it('stop() interrupts running runs and queues them again for the next agent', async () => {
    const fake = new FakeBackups();
    const store = new StateStore(dir, { logger });
    const runner = new Runner({ execute: fake.execute, store, logger });
    runner.load(await store.load());
    runner.setReady(true);
    const a = runner.enqueue(vol('a', '1'), 'api');
    await fake.waitStarted(1);
    await runner.stop(1000);
    if (a.outcome !== 'queued') throw new Error('unreachable');
    expect(runner.get(a.run.id)).toMatchObject({ state: 'interrupted', error: 'the agent was shut down during this run' });
    expect(runner.enqueue(vol('x', '1'), 'api').outcome).toBe('full');
    const data = JSON.parse(await readFile(path.join(dir, stateFileName), 'utf8')) as AgentStateData;
    expect(data.runs.map((r) => `${r.pod}:${r.state}:${r.trigger}`).sort()).toEqual(['a:interrupted:api', 'a:queued:startup']);
  });

  it('moves a damaged state file aside and starts empty', async () => {
    await writeFile(path.join(dir, stateFileName), '{"version":1,"runs":[{"id":');
    const store = new StateStore(dir, { logger });
    expect(await store.load()).toEqual({ version: 1, runs: [], volumes: [] });
    expect((await readdir(dir)).sort()).toEqual([`${stateFileName}.damaged`]);
  });

  it('refuses a state directory it cannot write, naming it', async () => {
    await writeFile(path.join(dir, 'file'), '');
    const store = new StateStore(path.join(dir, 'file', 'sub'));
    await expect(store.load()).rejects.toThrow(/state directory .*file\/sub cannot be written/);
  });
});

describe('scheduler', () => {
  const t0 = Date.parse('2025-01-01T00:00:00Z');
  const opts = { firstSeenAt: t0, failureRetryMs: 300_000 };
  const state = (fields: Record<string, unknown>) => ({ identity: 'i', namespace: 'n', pod: 'p', volume: 'v', consecutiveFailures: 0, ...fields });

  it('intervals: due at once when never backed up, then interval after the last success ENDED', () => {
    expect(nextDue({ intervalMs: 3_600_000 }, undefined, opts)).toBe(t0);
    const ended = t0 + 50 * 60_000;
    expect(nextDue({ intervalMs: 3_600_000 }, state({ lastSuccessAt: new Date(ended).toISOString(), lastEndedAt: new Date(ended).toISOString(), lastOutcome: 'succeeded' }), opts)).toBe(ended + 3_600_000);
    // After a failure: retried, but not in a loop (failureRetryMs, or the interval if shorter).
    const failed = state({ lastSuccessAt: new Date(t0).toISOString(), lastEndedAt: new Date(ended).toISOString(), lastOutcome: 'failed' });
    expect(nextDue({ intervalMs: 3_600_000 }, failed, opts)).toBe(t0 + 3_600_000);
    expect(nextDue({ intervalMs: 60_000 }, failed, opts)).toBe(ended + 60_000);
    // Cancelled on purpose: a full interval later.
    expect(nextDue({ intervalMs: 60_000 }, { ...failed, lastOutcome: 'cancelled' }, opts)).toBe(ended + 60_000);
    // No schedule: on demand only.
    expect(nextDue({}, undefined, opts)).toBeUndefined();
  });

  it('cron: 5 fields, UTC, the first occurrence after the last run was queued', () => {
    expect(scheduleProblem({ cron: '*/15 * * * *' })).toBeUndefined();
    expect(scheduleProblem({ cron: '0 */15 * * * *' })).toMatch(/5 fields/);
    expect(scheduleProblem({ cron: '61 * * * *' })).toMatch(/not valid/);
    expect(scheduleProblem({ intervalMs: 10 })).toMatch(/at least 1 s/);
    expect(nextCron('0 2 * * *', t0)).toBe(t0 + 2 * 3_600_000);
    expect(nextDue({ cron: '0 2 * * *' }, undefined, opts)).toBe(t0 + 2 * 3_600_000);
    // Queued yesterday at 02:00, the agent was down at today's 02:00: due (catch-up) now.
    const last = state({ lastQueuedAt: new Date(t0 - 22 * 3_600_000).toISOString(), lastSuccessAt: new Date(t0 - 21 * 3_600_000).toISOString(), lastOutcome: 'succeeded', lastEndedAt: new Date(t0 - 21 * 3_600_000).toISOString() });
    expect(nextDue({ cron: '0 2 * * *' }, last, { ...opts, firstSeenAt: t0 + 5 * 3_600_000 })).toBe(t0 + 2 * 3_600_000);
  });

  it('queues due volumes once, skips active ones, and sets the timer for the next', () => {
    let now = t0;
    const queued: string[] = [];
    const active = new Set<string>();
    const states = new Map<string, ReturnType<typeof state>>();
    const volumes = [
      { ...vol('a', '1'), schedule: { intervalMs: 60_000 } },
      { ...vol('b', '1'), schedule: {} },
      { ...vol('c', '1'), schedule: { cron: 'bad' } },
    ];
    const scheduler = new Scheduler({
      volumes: () => volumes,
      state: (id) => states.get(id),
      isActive: (id) => active.has(id),
      enqueue: (v) => {
        queued.push(v.pod);
        active.add(v.identity);
      },
      logger,
      now: () => now,
    });
    scheduler.start();
    expect(queued).toEqual(['a']);
    scheduler.refresh();
    expect(queued).toEqual(['a']);
    // It ran and ended at t0+10s: next due at t0+70s.
    active.clear();
    const end = new Date(t0 + 10_000).toISOString();
    states.set(vol('a', '1').identity, state({ lastSuccessAt: end, lastEndedAt: end, lastOutcome: 'succeeded' }));
    now = t0 + 69_000;
    scheduler.refresh();
    expect(queued).toEqual(['a']);
    expect(scheduler.dueTimes().get(vol('a', '1').identity)).toBe(t0 + 70_000);
    now = t0 + 70_000;
    scheduler.refresh();
    expect(queued).toEqual(['a', 'a']);
    scheduler.stop();
  });
});
