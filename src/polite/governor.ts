/**
 * The politeness governor of a process: the read and upload budgets every operation shares, and
 * the loop that turns the read rate by the control law (law.ts) from what it observes each tick:
 * pressure (PSI) of the watched cgroups or the node, tender's own CPU use, the GPUs' utilisation,
 * a trainer writing a checkpoint.
 *
 * Every change of state or rate is emitted as a 'change' event (ThrottleChange), which the CLI's
 * progress line, the agent's log and its /metrics consume.
 *
 * PSI is sampled by reading the pressure files' `total` each tick (see psi.ts), not by kernel
 * triggers: a trigger's window is at least 500 ms (2 s without CAP_SYS_RESOURCE, which a
 * container rarely has), Node cannot poll(2) for POLLPRI, and a tick of 250 ms already reacts
 * within a second at the cost of a few small reads of procfs per second.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { type Clock, realClock } from '../util/token-bucket.js';
import { type Rate, RateBudget } from './budget.js';
import type { GpuReader, GpuSample } from './gpu-reader.js';
import { ControlLaw, type Decision, type GpuPolicy, type LawSettings, type Observation, type ThrottleCause, type ThrottleState, defaultLawSettings, fullSpeed } from './law.js';
import { PRESSURE_RESOURCES, type PressureResource, type PressureThresholds } from './parse.js';
import { PressureProbe, cgroupPressureFile, nodePressureFile } from './psi.js';

/** What may change while the process runs (the agent's config and API). */
export interface PolitePolicy {
  /** The read ceiling, bytes/s (undefined: none). */
  readLimit?: Rate;
  uploadLimit?: Rate;
  /** Back off while the stall share of a resource is above its threshold (percent). */
  pressure?: PressureThresholds;
  /** Cores of CPU tender may use on average. */
  cpuShareCores?: number;
  /** The lowest rate the law cuts to before it pauses (default 1 MiB/s). */
  readFloor?: number;
  /** GPU backoff (needs gpuReader to do anything). */
  gpu?: GpuPolicy;
}

export interface GovernorOptions extends PolitePolicy {
  /** Where GPU utilisation comes from (NVML, nvidia-smi, DCGM: src/polite/gpu-*.ts). */
  gpuReader?: GpuReader;
  /** How often the GPUs are read (default 1 s), and how long a read may take (default 2 × that, at least 2 s). */
  gpuPollMs?: number;
  gpuTimeoutMs?: number;
  /** The GPUs that count (indices or UUIDs, e.g. those of the pods being read); undefined: all. */
  gpus?: () => readonly string[] | undefined;
  /** cgroup v2 directories whose PSI and writes to watch (the trainers); none: the node's PSI. */
  watch?: () => readonly string[];
  /** A watched cgroup writing faster than this (bytes/s) is writing a checkpoint (default 20 MiB/s). */
  checkpointBytesPerSecond?: number;
  /** Override parts of the law (tests, benchmarks). */
  law?: Partial<Omit<LawSettings, 'pressure' | 'cpuShareCores' | 'floor' | 'gpu'>>;
  tickMs?: number;
  /** Where the node's pressure files are (default /proc/pressure). */
  procPressure?: string;
  clock?: Clock;
  logger?: Logger;
}

const rateWindowMs = 1000;

export interface ThrottleChange extends Decision {
  /** Milliseconds since the epoch. */
  at: number;
  previous: Decision;
}

export interface GovernorEvents {
  change: [ThrottleChange];
  /** Something to tell the user once (a GPU source that is missing, failing or back). */
  note: [string];
}

export class Governor extends EventEmitter<GovernorEvents> {
  readonly readBudget: RateBudget;
  readonly uploadBudget: RateBudget;
  private law: ControlLaw | undefined;
  private policy: PolitePolicy;
  private started = false;
  private decision: Decision;
  private readonly clock: Clock;
  private readonly tickMs: number;
  private readonly stop = new AbortController();
  private loop: Promise<void> | undefined;
  private readonly probes = new Map<string, PressureProbe>();
  private readonly writes = new Map<string, { at: number; bytes: number }>();
  private last: { at: number; cpuUs: number } | undefined;
  /** Bytes granted at recent ticks: the read rate is measured over about a second (reads come in pieces of up to 1 MiB). */
  private readonly grants: Array<{ at: number; granted: number }> = [];
  private gpuSeen: Observation['gpu'];
  private gpuLoop: Promise<void> | undefined;
  private gpuNote: string | undefined;

  constructor(private readonly options: GovernorOptions = {}) {
    super();
    this.clock = options.clock ?? realClock;
    this.tickMs = options.tickMs ?? 250;
    this.readBudget = new RateBudget(options.readLimit, this.clock);
    this.uploadBudget = new RateBudget(options.uploadLimit, this.clock);
    this.policy = pickPolicy(options);
    this.law = this.lawFor(this.policy);
    this.decision = fullSpeed(options.readLimit);
  }

  /** The control law a policy asks for; undefined when nothing adapts (limits alone). */
  private lawFor(p: PolitePolicy): ControlLaw | undefined {
    const pressure = p.pressure ?? {};
    if (Object.keys(pressure).length === 0 && p.cpuShareCores === undefined && p.gpu === undefined) return undefined;
    const settings: LawSettings = {
      ...defaultLawSettings,
      ...this.options.law,
      pressure,
      floor: p.readFloor ?? defaultLawSettings.floor,
      ...(p.cpuShareCores !== undefined ? { cpuShareCores: p.cpuShareCores } : {}),
      ...(p.gpu ? { gpu: p.gpu } : {}),
    };
    return new ControlLaw(settings, p.readLimit);
  }

  /** The policy in force. */
  get settings(): Readonly<PolitePolicy> {
    return this.policy;
  }

  /** The state in force. */
  get current(): Decision {
    return this.decision;
  }

  /** Whether reads must go through the read budget: a read limit or backoff is configured (a process whose policy cannot change may read without it otherwise). */
  get pacesReads(): boolean {
    return this.policy.readLimit !== undefined || this.law !== undefined;
  }

  /** For BackupHooks.beforeRead: pays for `bytes` from the read budget. */
  readonly beforeRead = (bytes: number, signal?: AbortSignal): Promise<void> => this.readBudget.take(bytes, signal);

  /** Starts watching (nothing to watch without pressure, CPU or GPU settings: until reconfigured). */
  start(): void {
    this.started = true;
    if (this.stop.signal.aborted || !this.law) return;
    this.loop ??= this.run();
    if (!this.policy.gpu) return;
    if (this.options.gpuReader) this.gpuLoop ??= this.pollGpus(this.options.gpuReader);
    else this.noteGpu('GPU backoff is on but there is no GPU source on this node: it does nothing');
  }

  async close(): Promise<void> {
    this.stop.abort();
    await Promise.allSettled([this.loop, this.gpuLoop]);
    await this.options.gpuReader?.close().catch(() => undefined);
  }

  /**
   * A new policy at run time. Limits bind at once; a changed law (thresholds, share, floor, GPU
   * policy) starts from the rate in force, keeping a pause until its own signals release it.
   */
  reconfigure(policy: PolitePolicy): void {
    const before = this.policy;
    this.policy = pickPolicy(policy);
    this.uploadBudget.setRate(this.policy.uploadLimit);
    const lawChanged = JSON.stringify({ ...before, readLimit: 0, uploadLimit: 0 }) !== JSON.stringify({ ...this.policy, readLimit: 0, uploadLimit: 0 });
    if (lawChanged) this.law = this.lawFor(this.policy);
    else if (this.law) this.law.ceiling = this.policy.readLimit;
    if (!this.law) this.apply(fullSpeed(this.policy.readLimit));
    else this.apply(this.clampToCeiling(this.policy.readLimit));
    if (this.started) this.start();
  }

  /** Changes the read ceiling at run time (undefined: none). */
  setReadLimit(rate: Rate): void {
    this.reconfigure({ ...this.policy, readLimit: rate });
  }

  setUploadLimit(rate: Rate): void {
    this.reconfigure({ ...this.policy, uploadLimit: rate });
  }

  /** A new ceiling binds at once; the law takes it from there at the next tick. */
  private clampToCeiling(rate: Rate): Decision {
    const d = this.decision;
    if (d.state === 'paused') return d;
    if (rate === undefined) return d.state === 'full' ? fullSpeed(undefined) : d;
    if (d.rate === undefined || d.rate >= rate || d.state === 'full') return fullSpeed(rate);
    return d;
  }

  private async run(): Promise<void> {
    const signal = this.stop.signal;
    this.observe(); // the first reading of every counter
    while (!signal.aborted) {
      try {
        await this.clock.sleep(this.tickMs, signal);
      } catch {
        return;
      }
      this.tick();
    }
  }

  /** One step: observe, decide, apply. */
  private tick(): void {
    const seen = this.observe();
    if (!seen || !this.law) return;
    this.apply(this.law.step(this.clock.now(), seen));
  }

  private observe(): Observation | undefined {
    const at = this.clock.now();
    const granted = this.readBudget.granted;
    const cpu = process.cpuUsage();
    const cpuUs = cpu.user + cpu.system;
    const pressure = this.samplePressure();
    const checkpointWriting = this.sampleWrites(at);
    const before = this.last;
    this.last = { at, cpuUs };
    this.grants.push({ at, granted });
    while (this.grants.length > 2 && at - this.grants[1]!.at >= rateWindowMs) this.grants.shift();
    if (!before || at <= before.at) return undefined;
    const oldest = this.grants[0]!;
    return {
      readRate: ((granted - oldest.granted) * 1000) / Math.max(1, at - oldest.at),
      pressure,
      cpuCores: (cpuUs - before.cpuUs) / 1e3 / (at - before.at),
      ...(this.gpuSeen !== undefined ? { gpu: this.gpuSeen } : {}),
      checkpointWriting,
    };
  }

  /** The highest stall share per resource over the watched cgroups, or the node's when none is readable. */
  private samplePressure(): Partial<Record<PressureResource, number>> {
    const dirs = this.options.watch?.() ?? [];
    const files = new Map<PressureResource, string[]>();
    for (const resource of PRESSURE_RESOURCES) files.set(resource, dirs.map((d) => cgroupPressureFile(d, resource)));
    const out: Partial<Record<PressureResource, number>> = {};
    const wanted = new Set<string>();
    for (const resource of PRESSURE_RESOURCES) {
      let highest: number | undefined;
      for (const file of files.get(resource)!) {
        wanted.add(file);
        const share = this.probe(file).sample();
        if (share !== undefined) highest = Math.max(highest ?? 0, share.some);
      }
      if (highest === undefined) {
        const file = nodePressureFile(resource, this.options.procPressure);
        wanted.add(file);
        highest = this.probe(file).sample()?.some;
      }
      if (highest !== undefined) out[resource] = highest;
    }
    for (const file of this.probes.keys()) if (!wanted.has(file)) this.probes.delete(file);
    return out;
  }

  private probe(file: string): PressureProbe {
    let p = this.probes.get(file);
    if (!p) this.probes.set(file, (p = new PressureProbe(file, () => this.clock.now() * 1000)));
    return p;
  }

  /** Whether a watched cgroup writes faster than the checkpoint rate (cgroup v2 io.stat). */
  private sampleWrites(at: number): boolean {
    const limit = this.options.checkpointBytesPerSecond ?? 20 * 2 ** 20;
    let writing = false;
    const seen = new Set<string>();
    for (const dir of this.options.watch?.() ?? []) {
      seen.add(dir);
      const bytes = cgroupWrittenBytes(dir);
      const before = this.writes.get(dir);
      if (bytes === undefined) {
        this.writes.delete(dir);
        continue;
      }
      this.writes.set(dir, { at, bytes });
      if (before && at > before.at && ((bytes - before.bytes) * 1000) / (at - before.at) > limit) writing = true;
    }
    for (const dir of this.writes.keys()) if (!seen.has(dir)) this.writes.delete(dir);
    return writing;
  }

  /**
   * Reads the GPUs every pollMs. A read that fails, hangs past its timeout or returns garbage
   * makes the GPU state 'unknown' (logged once per change), never stalls or ends the governor.
   */
  private async pollGpus(reader: GpuReader): Promise<void> {
    const pollMs = this.options.gpuPollMs ?? 1000;
    const timeoutMs = this.options.gpuTimeoutMs ?? Math.max(2000, 2 * pollMs);
    const signal = this.stop.signal;
    while (!signal.aborted) {
      let samples: GpuSample[] | undefined;
      let failure: string | undefined;
      try {
        samples = await withTimeout((s) => reader.read(s), timeoutMs, signal);
      } catch (err) {
        if (signal.aborted) return;
        failure = err instanceof Error ? err.message : String(err);
      }
      this.gpuSeen = failure !== undefined ? 'unknown' : this.busiest(samples);
      if (failure !== undefined) this.noteGpu(`the ${reader.source} GPU source failed (${failure}): GPU backoff is off until it answers again`);
      else if (this.gpuSeen === 'unknown') this.noteGpu(`the ${reader.source} GPU source returned samples that are not GPU utilisations: GPU backoff is off until it answers properly`);
      else if (this.gpuSeen === undefined) this.noteGpu(`the ${reader.source} GPU source shows no GPUs${this.options.gpus?.() ? ' of the pods being read' : ''}: GPU backoff does nothing`);
      else this.noteGpu(`GPU utilisation from ${reader.source}`);
      try {
        await this.clock.sleep(pollMs, signal);
      } catch {
        return;
      }
    }
  }

  /** The busiest watched GPU; undefined without any (or when the samples are not GPU samples). */
  private busiest(samples: unknown): { index: number; utilisation: number } | 'unknown' | undefined {
    if (!Array.isArray(samples)) return 'unknown';
    const wanted = this.options.gpus?.();
    let top: { index: number; utilisation: number } | undefined;
    for (const s of samples as GpuSample[]) {
      if (typeof s?.utilisation !== 'number' || !Number.isFinite(s.utilisation) || typeof s.index !== 'number') return 'unknown';
      if (wanted && !wanted.includes(String(s.index)) && !(s.uuid && wanted.includes(s.uuid))) continue;
      if (!top || s.utilisation > top.utilisation) top = { index: s.index, utilisation: Math.min(100, Math.max(0, s.utilisation)) };
    }
    return top;
  }

  /** Logs a GPU source's state once per change. */
  private noteGpu(message: string): void {
    if (message === this.gpuNote) return;
    this.gpuNote = message;
    this.options.logger?.info({ gpu: message }, message);
    this.emit('note', message);
  }

  private apply(next: Decision): void {
    const previous = this.decision;
    if (next.state === previous.state && next.rate === previous.rate && next.reason === previous.reason) return;
    this.decision = next;
    this.readBudget.setRate(next.rate);
    const change: ThrottleChange = { ...next, at: Date.now(), previous };
    this.options.logger?.info({ state: next.state, rate: next.rate ?? null, reason: next.reason, cause: next.cause, previousState: previous.state, previousRate: previous.rate ?? null }, describeChange(change));
    this.emit('change', change);
  }
}

/** "throttled to 12.5 MiB/s: io pressure 34% > 20%", "paused: GPU 0 busy 93% ≥ 80%", "full speed (read limit 200 MiB/s)". */
export function describeChange(d: Decision): string {
  if (d.state === 'paused') return `reading paused: ${d.reason}`;
  if (d.state === 'throttled') return `reading throttled to ${formatRate(d.rate!)}: ${d.reason}`;
  return d.rate === undefined ? 'reading at full speed' : `reading at full speed (read limit ${formatRate(d.rate)})`;
}

export function formatRate(bytesPerSecond: number): string {
  return `${(bytesPerSecond / 2 ** 20).toFixed(1)} MiB/s`;
}

/** Bytes the cgroup's tasks wrote (cgroup v2 io.stat, all devices); undefined when unreadable. */
function cgroupWrittenBytes(dir: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(`${dir}/io.stat`, 'utf8');
  } catch {
    return undefined;
  }
  let total = 0;
  for (const m of text.matchAll(/\bwbytes=(\d+)/g)) total += Number(m[1]);
  return total;
}

/** Runs `fn` with a signal that fires after `ms` or with `outer`; rejects at the timeout even if `fn` ignores its signal. */
async function withTimeout<T>(fn: (signal: AbortSignal) => Promise<T>, ms: number, outer: AbortSignal): Promise<T> {
  const controller = new AbortController();
  const onAbort = () => controller.abort(outer.reason);
  outer.addEventListener('abort', onAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      Promise.resolve().then(() => fn(controller.signal)),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          const err = new Error(`no answer within ${ms} ms`);
          controller.abort(err);
          reject(err);
        }, ms);
        timer.unref();
      }),
    ]);
  } finally {
    clearTimeout(timer);
    outer.removeEventListener('abort', onAbort);
  }
}

function pickPolicy(p: PolitePolicy): PolitePolicy {
  const { readLimit, uploadLimit, pressure, cpuShareCores, readFloor, gpu } = p;
  return Object.fromEntries(Object.entries({ readLimit, uploadLimit, pressure, cpuShareCores, readFloor, gpu }).filter(([, v]) => v !== undefined)) as PolitePolicy;
}

export type { Decision, GpuPolicy, ThrottleCause, ThrottleState };
