/**
 * The control law of the read rate, apart from any clock or file so it can be driven step by
 * step (informed by RocksDB's auto-tuned rate limiter and Facebook's Senpai):
 *
 * - Pressure (PSI share of any watched resource above its threshold) or CPU use above the CPU
 *   share: cut at once, multiplicatively, from the rate actually read (a limit that does not
 *   bind would not be felt): ×0.5 for pressure, ×share/used for CPU; never below the floor.
 * - At the floor and still over for `pauseAfterMs`: pause.
 * - Recovery only after every signal stayed below `lowFraction` of its threshold for `holdMs`:
 *   then ×`increase` once per `recoverEveryMs`, ×`quietIncrease` while every signal is below a
 *   quarter of that (nothing competes: an idle trainer). A paused law comes back at a quarter of
 *   the rate read before the episode's first cut (at least the floor). Past the ceiling, or, without
 *   one, when its limit no longer binds (less than half of it is read), the law lets go.
 * - Between `lowFraction` × threshold and the threshold nothing changes: the hysteresis band
 *   that keeps the rate from oscillating around one level.
 *
 * GPU gates on top (when a GPU source is given): GPUs busy → pause (or cap); idle for less than
 * `holdLowMs` → cap; the trap of an idle GPU that only waits for I/O is closed by gating on the
 * trainer's own I/O pressure, and on a checkpoint being written: either one pauses as a busy GPU.
 */
import type { Rate } from './budget.js';
import type { PressureResource, PressureThresholds } from './parse.js';

export type ThrottleState = 'full' | 'throttled' | 'paused';

/** What binds, as a bounded set (metrics labels): the configured limit, a signal, or the recovery after one. */
export type ThrottleCause = 'none' | 'limit' | 'pressure' | 'cpu' | 'recovering' | 'gpu' | 'trainer-stall' | 'checkpoint';

export interface Decision {
  state: ThrottleState;
  /** The read rate in force: undefined unlimited, 0 paused. */
  rate: Rate;
  /** Why, one line ("io pressure 34% > 20%", "GPU 0 busy 93% ≥ 80%", "read limit"). */
  reason: string;
  cause: ThrottleCause;
}

export interface GpuPolicy {
  /** A GPU at or above this utilisation (percent) is busy. */
  busyPercent: number;
  /** Full speed only after every watched GPU stayed below busyPercent this long. */
  holdLowMs: number;
  /** While busy: 'pause' reading, or 'cap' it at capRate. */
  mode: 'pause' | 'cap';
  /** The rate while GPUs are busy in cap mode, and while they have not been idle for holdLowMs (default: the floor). */
  capRate?: number;
  /** Percent of time the trainer's tasks stalled on I/O above which an idle GPU counts as waiting for data (default: the io pressure threshold, else 10). */
  trainerIoStallPercent?: number;
}

export interface LawSettings {
  pressure: PressureThresholds;
  /** Cores of CPU tender may use on average; undefined: no CPU share. */
  cpuShareCores?: number;
  floor: number;
  lowFraction: number;
  holdMs: number;
  recoverEveryMs: number;
  increase: number;
  quietIncrease: number;
  pauseAfterMs: number;
  gpu?: GpuPolicy;
}

export const defaultLawSettings: Omit<LawSettings, 'pressure'> = {
  floor: 1 << 20,
  lowFraction: 0.5,
  holdMs: 5000,
  recoverEveryMs: 1000,
  increase: 1.25,
  quietIncrease: 2,
  pauseAfterMs: 1000,
};

/** What one tick saw. */
export interface Observation {
  /** Bytes per second read over the last second or so. */
  readRate: number;
  /** Stall share (percent, `some`) per resource: the highest over the watched sources; absent when unknown. */
  pressure: Partial<Record<PressureResource, number>>;
  /** Cores tender's process used since the previous tick. */
  cpuCores?: number;
  /** The highest utilisation of the watched GPUs, with its index; 'unknown' when the source failed; undefined without a source or GPUs. */
  gpu?: { index: number; utilisation: number } | 'unknown';
  /** A watched trainer writes a checkpoint (its write rate is above the checkpoint rate). */
  checkpointWriting?: boolean;
}

export class ControlLaw {
  /** The pressure law's own limit (undefined: it does not limit); 0 while it pauses. */
  private lawRate: Rate;
  private lowSince: number | undefined;
  private lastRecover = -Infinity;
  private atFloorSince: number | undefined;
  private gpuIdleSince: number | undefined;
  /** The rate read when this episode's first cut came (where recovery from a pause starts). */
  private beforeCut: number | undefined;
  /** The ceiling: the configured read limit (undefined: none). */
  ceiling: Rate;

  constructor(
    readonly settings: LawSettings,
    ceiling: Rate,
  ) {
    this.ceiling = ceiling;
  }

  /** One step at time `now` (ms): the rate and state to be in from now on. */
  step(now: number, seen: Observation): Decision {
    const over = this.overReasons(seen);
    const s = this.settings;
    if (over.length > 0) {
      this.lowSince = undefined;
      const factor = Math.min(...over.map((o) => o.factor));
      if (this.lawRate === undefined) this.beforeCut = seen.readRate;
      const base = Math.min(this.lawRate === undefined || this.lawRate === 0 ? Infinity : this.lawRate, this.ceiling ?? Infinity, Math.max(seen.readRate, s.floor));
      if (this.lawRate === 0) {
        // Paused already: stay.
      } else if (base <= s.floor * 1.0001) {
        this.atFloorSince ??= now;
        this.lawRate = now - this.atFloorSince >= s.pauseAfterMs ? 0 : s.floor;
      } else {
        this.lawRate = Math.max(s.floor, base * factor);
        if (this.lawRate === s.floor) this.atFloorSince ??= now;
      }
      this.lawReason = over.map((o) => o.reason).join(', ');
      this.lawCause = over[0]!.cause;
    } else if (this.isLow(seen)) {
      this.lowSince ??= now;
      if (this.lawRate !== undefined && now - this.lowSince >= s.holdMs && now - this.lastRecover >= s.recoverEveryMs) {
        this.lastRecover = now;
        this.atFloorSince = undefined;
        const next = this.lawRate === 0 ? Math.max(s.floor, (this.beforeCut ?? 0) / 4) : this.lawRate * (this.isLow(seen, 0.25) ? s.quietIncrease : s.increase);
        const unbound = this.ceiling !== undefined ? next >= this.ceiling : this.lawRate > 0 && this.lawRate >= 2 * seen.readRate;
        this.lawRate = unbound ? undefined : next;
        if (unbound) this.beforeCut = undefined;
        this.lawReason = unbound ? '' : `recovering after low pressure for ${Math.round((now - this.lowSince) / 1000)} s`;
        this.lawCause = 'recovering';
      }
    } else {
      // The hysteresis band: hold.
      this.lowSince = undefined;
    }
    return this.decide(now, seen);
  }

  private lawReason = '';
  private lawCause: ThrottleCause = 'none';

  /** The GPU gates, then the law, then the ceiling: the lowest wins. */
  private decide(now: number, seen: Observation): Decision {
    const gate = this.gpuGate(now, seen);
    const limits: Limit[] = [];
    if (this.lawRate !== undefined) limits.push({ rate: this.lawRate, reason: this.lawReason, cause: this.lawCause });
    if (gate) limits.push(gate);
    if (this.ceiling !== undefined) limits.push({ rate: this.ceiling, reason: 'read limit', cause: 'limit' });
    if (limits.length === 0) return fullSpeed(undefined);
    const lowest = limits.reduce((a, b) => (b.rate < a.rate ? b : a));
    if (lowest.rate === 0) return { state: 'paused', ...lowest };
    if (this.ceiling !== undefined && lowest.rate >= this.ceiling) return fullSpeed(this.ceiling);
    return { state: 'throttled', ...lowest };
  }

  private gpuGate(now: number, seen: Observation): Limit | undefined {
    const policy = this.settings.gpu;
    if (!policy || seen.gpu === undefined || seen.gpu === 'unknown') {
      // No source, no GPUs, or the source failed: the pressure law alone decides; readings that
      // come back must show idle GPUs for the whole hold time again.
      this.gpuIdleSince = undefined;
      return undefined;
    }
    const capRate = policy.capRate ?? this.settings.floor;
    const busyRate = policy.mode === 'pause' ? 0 : capRate;
    const { index, utilisation } = seen.gpu;
    if (utilisation >= policy.busyPercent) {
      this.gpuIdleSince = undefined;
      return { rate: busyRate, reason: `GPU ${index} busy ${round(utilisation)}% ≥ ${policy.busyPercent}%`, cause: 'gpu' };
    }
    const stallLimit = policy.trainerIoStallPercent ?? this.settings.pressure.io ?? 10;
    const stall = seen.pressure.io;
    if (stall !== undefined && stall >= stallLimit) {
      this.gpuIdleSince = undefined;
      return { rate: busyRate, reason: `GPUs idle at ${round(utilisation)}% but the trainer is stalled on I/O ${round(stall)}% ≥ ${stallLimit}%`, cause: 'trainer-stall' };
    }
    if (seen.checkpointWriting) {
      this.gpuIdleSince = undefined;
      return { rate: busyRate, reason: 'a checkpoint is being written', cause: 'checkpoint' };
    }
    this.gpuIdleSince ??= now;
    const idleFor = now - this.gpuIdleSince;
    if (idleFor < policy.holdLowMs) return { rate: capRate, reason: `GPUs idle for ${round(idleFor / 1000)} s of ${round(policy.holdLowMs / 1000)} s`, cause: 'gpu' };
    return undefined;
  }

  private overReasons(seen: Observation): Array<{ factor: number; reason: string; cause: ThrottleCause }> {
    const out: Array<{ factor: number; reason: string; cause: ThrottleCause }> = [];
    for (const [resource, threshold] of Object.entries(this.settings.pressure) as Array<[PressureResource, number]>) {
      const p = seen.pressure[resource];
      if (p !== undefined && p > threshold) out.push({ factor: 0.5, reason: `${resource} pressure ${round(p)}% > ${threshold}%`, cause: 'pressure' });
    }
    const share = this.settings.cpuShareCores;
    if (share !== undefined && seen.cpuCores !== undefined && seen.cpuCores > share) {
      out.push({ factor: Math.max(0.5, share / seen.cpuCores), reason: `CPU ${round(seen.cpuCores)} cores > share ${share}`, cause: 'cpu' });
    }
    return out;
  }

  /** Every signal below `scale` × lowFraction of its threshold. */
  private isLow(seen: Observation, scale = 1): boolean {
    const f = this.settings.lowFraction * scale;
    for (const [resource, threshold] of Object.entries(this.settings.pressure) as Array<[PressureResource, number]>) {
      const p = seen.pressure[resource];
      if (p === undefined || p >= threshold * f) return false;
    }
    const share = this.settings.cpuShareCores;
    return share === undefined || seen.cpuCores === undefined || seen.cpuCores < share * f;
  }
}

interface Limit {
  rate: number;
  reason: string;
  cause: ThrottleCause;
}

/** Reading unthrottled: at the read limit, or without any. */
export function fullSpeed(readLimit: Rate): Decision {
  return readLimit === undefined ? { state: 'full', rate: undefined, reason: 'no limit', cause: 'none' } : { state: 'full', rate: readLimit, reason: 'read limit', cause: 'limit' };
}

const round = (n: number) => Math.round(n * 10) / 10;
