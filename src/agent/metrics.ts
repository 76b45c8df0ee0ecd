/**
 * The agent's Prometheus metrics (prom-client, on a registry of its own, with the default
 * process metrics: CPU, RSS, heap, event loop lag, open fds).
 *
 * Label sets are bounded: per-volume series exist only for the volumes currently protected on
 * this node (they are rebuilt at each scrape), so a churn of pods does not grow the registry.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BoxSizing, CgroupBox } from '../polite/cgroup.js';
import type { Decision, PolitePolicy, ThrottleCause, ThrottleChange, ThrottleState } from '../polite/governor.js';
import type { GpuSourceKind } from '../polite/gpu-source.js';
import type { RunRecord } from './state.js';

export interface MetricsVolume {
  namespace: string;
  pod: string;
  volume: string;
  identity: string;
  /** Why it cannot be backed up now (not mounted, PVC unbound, ...). */
  problem?: string;
}

export interface MetricsSources {
  queueDepth: () => number;
  running: () => number;
  volumes: () => MetricsVolume[];
  /** Last success of a volume identity (ms since the epoch). */
  lastSuccess: (identity: string) => number | undefined;
  repositoryReady: () => boolean;
  /** The governor's state and policy (see src/polite/governor.ts). */
  politeness?: () => { decision: Decision; policy: PolitePolicy };
  /** The cgroup found at startup and how the agent sized itself to it. */
  box?: { box: CgroupBox; sizing: BoxSizing };
  /** The GPU source found at start (null: none; gpus undefined: a reader handed in, count unknown). */
  gpuSource?: { source: GpuSourceKind; gpus: number | undefined } | null;
}

const throttleStates: readonly ThrottleState[] = ['full', 'throttled', 'paused'];
const throttleCauses: readonly ThrottleCause[] = ['none', 'limit', 'pressure', 'cpu', 'recovering', 'gpu', 'trainer-stall', 'checkpoint'];

/** Failure kinds outside runs: `auth` (missing or wrong token), `state_write`, `repository_open`, `discovery`, `volume`. */
export type ErrorKind = 'auth' | 'state_write' | 'repository_open' | 'discovery' | 'volume';

/** Why a run failed, for the `reason` label (bounded set). */
export type FailureReason = 'volume_unavailable' | 'pod_deleted' | 'repository' | 'storage' | 'io' | 'other';

/** The `reason` label of a failed run, from its error code. */
export function failureReason(run: Pick<RunRecord, 'errorCode'>): FailureReason {
  const code = run.errorCode ?? '';
  if (code === 'POD_DELETED') return 'pod_deleted';
  if (code === 'VOLUME_UNAVAILABLE' || code === 'TENDER_USAGE') return 'volume_unavailable';
  if (code === 'TENDER_IO') return 'io';
  if (code.startsWith('TENDER_STORAGE')) return 'storage';
  if (['TENDER_REPO_NOT_FOUND', 'TENDER_REPO_VERSION', 'TENDER_WRONG_PASSWORD', 'TENDER_CORRUPT', 'TENDER_NO_PASSWORD'].includes(code)) return 'repository';
  return 'other';
}

export class AgentMetrics {
  readonly registry = new Registry();
  private readonly bytesRead: Counter;
  private readonly bytesNew: Counter;
  private readonly bytesStored: Counter;
  private readonly filesFailed: Counter;
  private readonly throughput: Gauge;
  private readonly duration: Histogram<'outcome'>;
  private readonly runs: Counter<'trigger' | 'outcome'>;
  private readonly failures: Counter<'reason'>;
  private readonly errors: Counter<'kind'>;
  private readonly throttleChanges: Counter<'state' | 'cause'>;
  private readonly checkpointLatency: Histogram;

  constructor(sources: MetricsSources, options: { defaultMetrics?: boolean } = {}) {
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    this.bytesRead = new Counter({ name: 'tender_backup_bytes_read_total', help: 'Bytes read from volumes by finished backups', registers });
    this.bytesNew = new Counter({ name: 'tender_backup_bytes_new_total', help: 'Bytes of new (not deduplicated) chunks added by finished backups, before compression', registers });
    this.bytesStored = new Counter({ name: 'tender_backup_bytes_stored_total', help: 'Bytes stored in the repository by finished backups (compressed, encrypted)', registers });
    this.filesFailed = new Counter({ name: 'tender_backup_unreadable_files_total', help: 'Files and directories left out of snapshots because they could not be read', registers });
    this.throughput = new Gauge({ name: 'tender_backup_throughput_bytes_per_second', help: 'Read throughput of the last successful backup', registers });
    this.duration = new Histogram({
      name: 'tender_run_duration_seconds',
      help: 'Duration of backup runs, by outcome',
      labelNames: ['outcome'],
      buckets: [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600],
      registers,
    });
    this.checkpointLatency = new Histogram({
      name: 'tender_checkpoint_to_stored_seconds',
      help: 'Time from a checkpoint becoming complete (its newest file written) to the end of the backup run that stored it (volumes with the checkpoint trigger)',
      buckets: [1, 2, 5, 10, 30, 60, 120, 300, 900, 3600],
      registers,
    });
    this.runs = new Counter({ name: 'tender_runs_total', help: 'Backup runs finished, by trigger and outcome', labelNames: ['trigger', 'outcome'], registers });
    this.failures = new Counter({ name: 'tender_run_failures_total', help: 'Backup runs that failed, by reason', labelNames: ['reason'], registers });
    this.errors = new Counter({
      name: 'tender_agent_errors_total',
      help: 'Errors outside backup runs: auth (missing or wrong API token), state_write, repository_open, discovery, volume',
      labelNames: ['kind'],
      registers,
    });
    new Gauge({
      name: 'tender_run_queue_depth',
      help: 'Backup runs waiting to start',
      registers,
      collect() {
        this.set(sources.queueDepth());
      },
    });
    new Gauge({
      name: 'tender_runs_running',
      help: 'Backup runs in progress',
      registers,
      collect() {
        this.set(sources.running());
      },
    });
    new Gauge({
      name: 'tender_protected_volumes',
      help: 'Volumes this agent protects on its node',
      registers,
      collect() {
        this.set(sources.volumes().length);
      },
    });
    new Gauge({
      name: 'tender_volumes_unavailable',
      help: 'Protected volumes that cannot be backed up now (not mounted, claim unbound, unreadable; see the agent log)',
      registers,
      collect() {
        this.set(sources.volumes().filter((v) => v.problem !== undefined).length);
      },
    });
    new Gauge({
      name: 'tender_repository_ready',
      help: '1 when the repository is open, 0 while the agent waits for it',
      registers,
      collect() {
        this.set(sources.repositoryReady() ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tender_volume_last_success_timestamp_seconds',
      help: 'End time of the last successful backup of each protected volume (unix seconds)',
      labelNames: ['namespace', 'pod', 'volume'],
      registers,
      collect() {
        this.reset();
        for (const v of sources.volumes()) {
          const t = sources.lastSuccess(v.identity);
          if (t !== undefined) this.set({ namespace: v.namespace, pod: v.pod, volume: v.volume }, t / 1000);
        }
      },
    });
    for (const kind of ['auth', 'state_write', 'repository_open', 'discovery', 'volume'] as const) this.errors.inc({ kind }, 0);
    this.throttleChanges = new Counter({
      name: 'tender_read_throttle_changes_total',
      help: 'Changes of the read rate by the politeness governor, by the state and cause they led to (each is logged with its reason)',
      labelNames: ['state', 'cause'],
      registers,
    });
    const politeness = sources.politeness;
    if (politeness) this.registerPoliteness(politeness, registers);
    if (sources.box) this.registerBox(sources.box, registers);
    if (sources.gpuSource !== undefined) this.registerGpuSource(sources.gpuSource, registers);
  }

  private registerPoliteness(politeness: NonNullable<MetricsSources['politeness']>, registers: Registry[]): void {
    /** Bytes per second; +Inf for no limit. */
    const rate = (r: number | undefined) => r ?? Infinity;
    new Gauge({
      name: 'tender_read_rate_limit_bytes_per_second',
      help: 'The read rate in force now, shared by all runs: the configured limit or the backoff below it (0 paused, +Inf unlimited)',
      registers,
      collect() {
        this.set(rate(politeness().decision.rate));
      },
    });
    new Gauge({
      name: 'tender_read_limit_bytes_per_second',
      help: 'The configured read limit (+Inf: none)',
      registers,
      collect() {
        this.set(rate(politeness().policy.readLimit));
      },
    });
    new Gauge({
      name: 'tender_upload_limit_bytes_per_second',
      help: 'The configured upload limit, shared by all runs (+Inf: none)',
      registers,
      collect() {
        this.set(rate(politeness().policy.uploadLimit));
      },
    });
    new Gauge({
      name: 'tender_read_throttle_state',
      help: 'Reading now: 1 for the state in force (full, throttled, paused)',
      labelNames: ['state'],
      registers,
      collect() {
        const now = politeness().decision.state;
        for (const state of throttleStates) this.set({ state }, state === now ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tender_read_throttle_cause',
      help: 'What binds the read rate now: 1 for the cause in force (none, limit, pressure, cpu, recovering, gpu, trainer-stall, checkpoint)',
      labelNames: ['cause'],
      registers,
      collect() {
        const now = politeness().decision.cause;
        for (const cause of throttleCauses) this.set({ cause }, cause === now ? 1 : 0);
      },
    });
  }

  private registerGpuSource(found: NonNullable<MetricsSources['gpuSource']> | null, registers: Registry[]): void {
    new Gauge({ name: 'tender_gpu_source_info', help: 'Where GPU backoff reads utilisation (found at startup): nvml, nvidia-smi, dcgm or none', labelNames: ['source'], registers }).set(
      { source: found?.source ?? 'none' },
      1,
    );
    if (found?.gpus !== undefined) new Gauge({ name: 'tender_gpus', help: 'GPUs the GPU source saw at startup', registers }).set(found.gpus);
  }

  private registerBox({ box, sizing }: NonNullable<MetricsSources['box']>, registers: Registry[]): void {
    new Gauge({ name: 'tender_cgroup_info', help: 'The cgroup the agent runs in (found at startup)', labelNames: ['version', 'path'], registers }).set({ version: String(box.version), path: box.path }, 1);
    new Gauge({ name: 'tender_cgroup_cpus', help: 'CPUs the agent may use: its cgroup CPU quota in cores, else the CPUs allowed', registers }).set(box.cpuQuotaCores ?? box.cpusAllowed);
    if (box.memoryLimitBytes !== undefined) new Gauge({ name: 'tender_cgroup_memory_limit_bytes', help: "The agent cgroup's memory limit", registers }).set(box.memoryLimitBytes);
    const io = new Gauge({ name: 'tender_cgroup_io_read_limit_bytes_per_second', help: "The agent cgroup's read limit per disk (io.max, blkio throttle)", labelNames: ['device'], registers });
    for (const d of box.io) if (d.readBytesPerSecond !== undefined) io.set({ device: d.device }, d.readBytesPerSecond);
    new Gauge({ name: 'tender_workers', help: 'Worker threads for sealing, sized to the CPU quota', registers }).set(sizing.workers);
  }

  throttleChanged(change: ThrottleChange): void {
    this.throttleChanges.inc({ state: change.state, cause: change.cause });
  }

  runFinished(run: RunRecord): void {
    const outcome = run.state;
    this.runs.inc({ trigger: run.trigger, outcome });
    if (run.startedAt && run.endedAt) this.duration.observe({ outcome }, Math.max(0, Date.parse(run.endedAt) - Date.parse(run.startedAt)) / 1000);
    if (outcome === 'failed') this.failures.inc({ reason: failureReason(run) });
    const s = run.summary;
    if (outcome === 'succeeded' && s) {
      this.bytesRead.inc(s.bytesRead);
      this.bytesNew.inc(s.bytesAdded);
      this.bytesStored.inc(s.bytesStored);
      this.filesFailed.inc(s.errors);
      if (s.durationMs > 0) this.throughput.set((s.bytesRead * 1000) / s.durationMs);
    }
  }

  checkpointStored(seconds: number): void {
    this.checkpointLatency.observe(seconds);
  }

  error(kind: ErrorKind): void {
    this.errors.inc({ kind });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
