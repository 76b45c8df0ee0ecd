/**
 * The control law, driven by sequences of observations at chosen times (no clock, no files):
 * cut fast, floor, pause, the hysteresis band, slow recovery, the ceiling; the GPU gates and the
 * trap of an idle GPU waiting for I/O.
 */
import { describe, expect, it } from 'vitest';
import { ControlLaw, type Decision, type LawSettings, type Observation, defaultLawSettings } from '../../src/polite/law.js';

const MiB = 2 ** 20;

function law(settings: Partial<LawSettings> = {}, ceiling?: number): ControlLaw {
  return new ControlLaw({ ...defaultLawSettings, pressure: { io: 20 }, ...settings }, ceiling);
}

const seen = (io: number | undefined, readRate = 100 * MiB, more: Partial<Observation> = {}): Observation => ({ readRate, pressure: io === undefined ? {} : { io }, ...more });

/** Steps every `every` ms from `from`, `count` times, with the same observation; returns the decisions. */
function run(l: ControlLaw, from: number, count: number, every: number, o: Observation | ((d: Decision | undefined) => Observation)): Decision[] {
  const out: Decision[] = [];
  for (let i = 0; i < count; i++) out.push(l.step(from + i * every, typeof o === 'function' ? o(out.at(-1)) : o));
  return out;
}

describe('ControlLaw: pressure', () => {
  it('does nothing while pressure stays below the threshold', () => {
    const l = law();
    for (const d of run(l, 0, 40, 250, seen(15))) expect(d).toEqual({ state: 'full', rate: undefined, reason: 'no limit', cause: 'none' });
  });

  it('cuts at once from the rate actually read, halving per step down to the floor, then pauses after pauseAfterMs', () => {
    const l = law({ floor: 4 * MiB, pauseAfterMs: 1000 });
    const d = run(l, 0, 10, 250, seen(60, 64 * MiB));
    expect(d[0]).toMatchObject({ state: 'throttled', rate: 32 * MiB });
    expect(d[0]!.reason).toBe('io pressure 60% > 20%');
    expect(d.slice(1, 4).map((x) => x.rate)).toEqual([16 * MiB, 8 * MiB, 4 * MiB]);
    // At the floor from t=750 ms: paused once it has been there 1000 ms.
    expect(d[6]).toMatchObject({ state: 'throttled', rate: 4 * MiB });
    expect(d[7]).toMatchObject({ state: 'paused', rate: 0 });
    expect(d[9]!.state).toBe('paused');
  });

  it('holds in the hysteresis band (between lowFraction×threshold and the threshold)', () => {
    const l = law();
    const cut = l.step(0, seen(50, 80 * MiB));
    const held = run(l, 250, 100, 250, seen(15, 40 * MiB));
    expect(new Set(held.map((d) => d.rate))).toEqual(new Set([cut.rate]));
  });

  it('recovers only after pressure stayed low for holdMs, by ×increase once per recoverEveryMs, and lets go once its limit no longer binds', () => {
    const l = law({ holdMs: 5000, recoverEveryMs: 1000, increase: 1.25, floor: MiB });
    l.step(0, seen(90, 16 * MiB)); // → 8 MiB/s
    // Low (below 10%) but not quiet (above 2.5%): the slow increase.
    const low = run(l, 250, 80, 250, (prev) => seen(5, Math.min(prev?.rate ?? 8 * MiB, 10 * MiB)));
    const rates = low.map((d) => d.rate);
    // Nothing changes before 5 s of low pressure (t = 250 + 5000).
    expect(new Set(rates.slice(0, 20))).toEqual(new Set([8 * MiB]));
    expect(rates[20]).toBe(10 * MiB);
    // One step per second: unchanged in between.
    expect(rates.slice(21, 24)).toEqual([10 * MiB, 10 * MiB, 10 * MiB]);
    expect(rates[24]).toBe(12.5 * MiB);
    // Reading only 10 MiB/s (bound elsewhere): 15.6, 19.5, 24.4; a limit of 24.4 ≥ 2 × 10 no longer binds.
    expect(rates[28]).toBe(15.625 * MiB);
    expect(rates[32]).toBe(19.53125 * MiB);
    expect(rates[36]).toBe(24.4140625 * MiB);
    expect(low[40]).toEqual({ state: 'full', rate: undefined, reason: 'no limit', cause: 'none' });
  });

  it('a rise during recovery cuts again and restarts the hold', () => {
    const l = law({ holdMs: 1000, recoverEveryMs: 250 });
    l.step(0, seen(90, 16 * MiB));
    const d = run(l, 250, 8, 250, (prev) => seen(5, prev?.rate ?? 8 * MiB));
    expect(d.at(-1)!.rate).toBeGreaterThan(8 * MiB);
    const cut = l.step(2500, seen(50, d.at(-1)!.rate!));
    expect(cut.rate).toBe(d.at(-1)!.rate! / 2);
    const after = run(l, 2750, 3, 250, seen(0, cut.rate!));
    expect(new Set(after.map((x) => x.rate))).toEqual(new Set([cut.rate]));
  });

  it('a paused law comes back at the floor after the hold, never straight to full speed', () => {
    const l = law({ floor: 2 * MiB, pauseAfterMs: 0, holdMs: 1000, recoverEveryMs: 500 });
    run(l, 0, 3, 250, seen(80, 4 * MiB));
    expect(l.step(750, seen(80, 0)).state).toBe('paused');
    const back = run(l, 1000, 6, 250, seen(1, 0));
    expect(back[4]).toMatchObject({ state: 'throttled', rate: 2 * MiB });
    expect(back.slice(0, 4).every((d) => d.state === 'paused')).toBe(true);
  });

  it('with nothing competing (every signal below a quarter of low) recovery doubles; from a pause it starts at a quarter of the rate read before the first cut', () => {
    const l = law({ holdMs: 1000, recoverEveryMs: 1000, pauseAfterMs: 0, floor: MiB });
    // Reading 64 MiB/s when the pressure comes: 32, 16, ..., the floor, then a pause.
    const cut = run(l, 0, 8, 250, (prev) => seen(60, prev?.rate ?? 64 * MiB));
    expect(cut.at(-1)!.state).toBe('paused');
    const quiet = run(l, 2000, 12, 500, (prev) => seen(0, prev?.rate ?? 0));
    const rates = quiet.map((d) => d.rate);
    // After the 1 s hold: 16 MiB/s (64 / 4), then ×2 per second, reading what the limit allows.
    expect(rates[2]).toBe(16 * MiB);
    expect(rates[4]).toBe(32 * MiB);
    expect(rates[6]).toBe(64 * MiB);
    expect(rates[8]).toBe(128 * MiB);
  });

  it('never goes above the ceiling (the read limit), and reports full speed at it', () => {
    const l = law({ holdMs: 0, recoverEveryMs: 0, increase: 2 }, 50 * MiB);
    expect(l.step(0, seen(5, 50 * MiB))).toEqual({ state: 'full', rate: 50 * MiB, reason: 'read limit', cause: 'limit' });
    expect(l.step(1, seen(30, 50 * MiB)).rate).toBe(25 * MiB);
    expect(l.step(2, seen(0, 25 * MiB))).toEqual({ state: 'full', rate: 50 * MiB, reason: 'read limit', cause: 'limit' });
  });

  it('unknown pressure neither cuts nor recovers', () => {
    const l = law({ holdMs: 0, recoverEveryMs: 0 });
    const cut = l.step(0, seen(40, 10 * MiB));
    expect(run(l, 1, 5, 1, seen(undefined, 5 * MiB)).map((d) => d.rate)).toEqual(Array(5).fill(cut.rate));
  });

  it('CPU above the share cuts in proportion to the overshoot', () => {
    const l = new ControlLaw({ ...defaultLawSettings, pressure: {}, cpuShareCores: 1 }, undefined);
    const d = l.step(0, { readRate: 90 * MiB, pressure: {}, cpuCores: 1.5 });
    expect(d.rate).toBeCloseTo((90 * MiB) / 1.5, 0);
    expect(d.reason).toBe('CPU 1.5 cores > share 1');
    // In the band (0.5..1 cores): held.
    expect(l.step(250, { readRate: 60 * MiB, pressure: {}, cpuCores: 0.9 }).rate).toBe(d.rate);
  });
});

describe('ControlLaw: GPU gates', () => {
  const gpuLaw = (mode: 'pause' | 'cap' = 'pause') =>
    new ControlLaw({ ...defaultLawSettings, pressure: { io: 20 }, gpu: { busyPercent: 80, holdLowMs: 3000, mode } }, undefined);
  const gpu = (utilisation: number, io = 0, more: Partial<Observation> = {}): Observation => ({ readRate: 50 * MiB, pressure: { io }, gpu: { index: 1, utilisation }, ...more });

  it('pauses while a GPU is busy; caps at the floor until it stayed idle for holdLowMs; then full speed', () => {
    const l = gpuLaw();
    expect(l.step(0, gpu(95))).toEqual({ state: 'paused', rate: 0, reason: 'GPU 1 busy 95% ≥ 80%', cause: 'gpu' });
    const idle = run(l, 1000, 5, 1000, gpu(10));
    expect(idle[0]).toMatchObject({ state: 'throttled', rate: defaultLawSettings.floor });
    expect(idle[0]!.reason).toBe('GPUs idle for 0 s of 3 s');
    expect(idle[2]!.state).toBe('throttled');
    expect(idle[3]).toEqual({ state: 'full', rate: undefined, reason: 'no limit', cause: 'none' });
    // Busy again: paused at once, and the hold starts over.
    expect(l.step(6000, gpu(85)).state).toBe('paused');
    expect(l.step(7000, gpu(0)).state).toBe('throttled');
  });

  it('cap mode caps instead of pausing', () => {
    const l = gpuLaw('cap');
    expect(l.step(0, gpu(99))).toMatchObject({ state: 'throttled', rate: defaultLawSettings.floor });
  });

  it('the trap: idle GPUs with the trainer stalled on I/O count as busy (no speed-up), and so does a checkpoint being written', () => {
    const l = gpuLaw();
    run(l, 0, 4, 1000, gpu(5));
    expect(l.step(4000, gpu(5)).state).toBe('full');
    // Trainer stalled: GPU utilisation falls because it waits for data; tender must not speed up.
    const stalled = l.step(5000, gpu(3, 45));
    expect(stalled.state).toBe('paused');
    expect(stalled.reason).toContain('the trainer is stalled on I/O 45%');
    run(l, 6000, 10, 1000, gpu(3, 0));
    expect(l.step(20_000, gpu(3, 0, { checkpointWriting: true }))).toMatchObject({ state: 'paused', reason: 'a checkpoint is being written' });
  });

  it('an unknown GPU state (source failing) leaves the pressure law alone in charge and restarts the hold', () => {
    const l = gpuLaw();
    l.step(0, gpu(90));
    expect(l.step(1000, { readRate: 0, pressure: { io: 0 }, gpu: 'unknown' })).toEqual({ state: 'full', rate: undefined, reason: 'no limit', cause: 'none' });
    expect(l.step(2000, gpu(10)).state).toBe('throttled');
  });
});
