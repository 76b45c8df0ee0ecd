/**
 * When each protected volume is due: from its schedule (an interval or a 5-field cron
 * expression, in UTC) and what the run records say about it. No jitter.
 *
 * - interval: after a success, the next run is due `interval` after that run ENDED (a backup
 *   that takes longer than the interval does not start the next one at once); a volume never
 *   backed up is due as soon as it is seen.
 * - cron: the first occurrence after the last run was queued (so one occurrence missed while
 *   the agent was down is caught up at startup); a volume never backed up waits for the first
 *   occurrence after it was seen.
 * - after a failure or an interruption: retried `failureRetryMs` after it ended, unless the
 *   schedule comes sooner.
 */
import { CronExpressionParser } from 'cron-parser';
import type { Logger } from 'pino';
import type { VolumeState } from './state.js';

export interface Schedule {
  intervalMs?: number;
  cron?: string;
}

export interface SchedulerVolume {
  namespace: string;
  pod: string;
  volume: string;
  identity: string;
  schedule: Schedule;
  path?: string;
  problem?: string;
}

/** Why a schedule is unusable, or undefined when it is fine (or absent: on demand only). */
export function scheduleProblem(schedule: Schedule): string | undefined {
  if (schedule.intervalMs !== undefined && (!Number.isFinite(schedule.intervalMs) || schedule.intervalMs < 1000)) {
    return `interval ${schedule.intervalMs} ms is not a duration of at least 1 s`;
  }
  if (schedule.cron !== undefined) {
    const expr = schedule.cron.trim();
    if (!expr.startsWith('@') && expr.split(/\s+/).length !== 5) {
      return `cron schedule ${JSON.stringify(schedule.cron)} must have 5 fields (minute hour day-of-month month day-of-week)`;
    }
    try {
      CronExpressionParser.parse(expr, { tz: 'UTC' });
    } catch (err) {
      return `cron schedule ${JSON.stringify(schedule.cron)} is not valid: ${(err as Error).message}`;
    }
  }
  return undefined;
}

/** The first cron occurrence strictly after `after` (ms), in UTC. */
export function nextCron(expr: string, after: number): number {
  return CronExpressionParser.parse(expr.trim(), { tz: 'UTC', currentDate: new Date(after) }).next().getTime();
}

export interface DueOptions {
  /** When this agent first saw the volume (ms). */
  firstSeenAt: number;
  failureRetryMs: number;
}

/** When the volume is next due (ms since the epoch), or undefined when it has no schedule. */
export function nextDue(schedule: Schedule, state: VolumeState | undefined, options: DueOptions): number | undefined {
  if (scheduleProblem(schedule) !== undefined) return undefined;
  const t = (iso: string | undefined) => (iso === undefined ? undefined : Date.parse(iso));
  const lastEnded = t(state?.lastEndedAt);
  const lastSuccess = t(state?.lastSuccessAt);
  const outcome = lastEnded === undefined ? undefined : state?.lastOutcome;
  const failedLast = outcome === 'failed' || outcome === 'interrupted';
  let due: number | undefined;
  if (schedule.intervalMs !== undefined) {
    const interval = schedule.intervalMs;
    const base = lastSuccess !== undefined ? lastSuccess + interval : options.firstSeenAt;
    if (failedLast) due = Math.max(base, lastEnded! + Math.min(interval, options.failureRetryMs));
    // Cancelled on purpose: not again at once.
    else if (outcome === 'cancelled') due = Math.max(base, lastEnded! + interval);
    else due = base;
  }
  if (schedule.cron !== undefined) {
    const anchor = t(state?.lastQueuedAt) ?? options.firstSeenAt;
    let c = nextCron(schedule.cron, anchor);
    if (failedLast) c = Math.min(c, lastEnded! + options.failureRetryMs);
    due = due === undefined ? c : Math.min(due, c);
  }
  return due;
}

export interface SchedulerOptions {
  volumes: () => SchedulerVolume[];
  state: (identity: string) => VolumeState | undefined;
  /** Queued or running already: not queued again. */
  isActive: (identity: string) => boolean;
  enqueue: (volume: SchedulerVolume) => void;
  logger: Logger;
  now?: () => number;
  failureRetryMs?: number;
  /** Look again at least this often (clock changes, missed events). */
  maxSleepMs?: number;
}

/**
 * Queues scheduled runs when due. `refresh()` after anything that changes due times (volumes
 * found or gone, a run finished); it also runs on a timer set for the earliest due time.
 */
export class Scheduler {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private readonly firstSeen = new Map<string, number>();
  private readonly reportedProblems = new Map<string, string>();
  private readonly now: () => number;

  constructor(private readonly options: SchedulerOptions) {
    this.now = options.now ?? Date.now;
  }

  start(): void {
    this.running = true;
    this.refresh();
  }

  stop(): void {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** When each current volume is next due (undefined: no schedule). */
  dueTimes(): Map<string, number | undefined> {
    const out = new Map<string, number | undefined>();
    const now = this.now();
    for (const v of this.options.volumes()) out.set(v.identity, this.dueOf(v, now));
    return out;
  }

  dueOf(v: SchedulerVolume, now = this.now()): number | undefined {
    let seen = this.firstSeen.get(v.identity);
    if (seen === undefined) {
      seen = now;
      this.firstSeen.set(v.identity, seen);
    }
    return nextDue(v.schedule, this.options.state(v.identity), { firstSeenAt: seen, failureRetryMs: this.options.failureRetryMs ?? 5 * 60_000 });
  }

  /** Queues what is due now and sets the timer for the next. */
  refresh(): void {
    if (!this.running) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const now = this.now();
    const volumes = this.options.volumes();
    const present = new Set(volumes.map((v) => v.identity));
    for (const id of this.firstSeen.keys()) if (!present.has(id)) this.firstSeen.delete(id);
    for (const id of this.reportedProblems.keys()) if (!present.has(id)) this.reportedProblems.delete(id);
    let earliest = Infinity;
    for (const v of volumes) {
      const problem = scheduleProblem(v.schedule);
      if (problem) {
        if (this.reportedProblems.get(v.identity) !== problem) {
          this.options.logger.error({ namespace: v.namespace, pod: v.pod, volume: v.volume }, `volume ${v.volume} of pod ${v.namespace}/${v.pod} is not scheduled: ${problem}`);
          this.reportedProblems.set(v.identity, problem);
        }
        continue;
      }
      if (this.options.isActive(v.identity)) continue;
      const due = this.dueOf(v, now);
      if (due === undefined) continue;
      if (due <= now) {
        this.options.enqueue(v);
        continue;
      }
      earliest = Math.min(earliest, due);
    }
    const sleep = Math.min(Math.max(earliest - now, 0), this.options.maxSleepMs ?? 60_000);
    this.timer = setTimeout(() => this.refresh(), sleep);
    this.timer.unref();
  }
}
