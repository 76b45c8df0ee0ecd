/**
 * What the agent backs up, and when.
 *
 * Pod annotations (each pod opts in or out on its own):
 *   tender.io/backup-volumes: ckpt,data     back up these volumes (replaces defaultVolumes)
 *   tender.io/exclude-volumes: scratch      never these
 *   tender.io/schedule: "0 * * * *"         5-field cron, in UTC (or @hourly, @daily, @weekly, @monthly, @yearly)
 *   tender.io/interval: 10m                 every 10 minutes (d, h, m, s: 1h30m, 90s)
 *   tender.io/trigger: checkpoint           also back up as soon as a new checkpoint is complete
 *
 * Quiesce annotations (docs/design.md, "Quiesce"; for every backed-up volume of the pod):
 *   tender.io/pre-hook: http://:8080/quiesce   POST before the read (empty host: the pod's IP), or
 *                                              file:.tender-quiesce (a marker the trainer acknowledges)
 *   tender.io/post-hook: http://:8080/resume   after the read, also after an error or a cancel
 *   tender.io/hook-timeout: 30s                limit of each hook (ms, s, m, h)
 *   tender.io/hook-on-error: fail              fail the run, or continue and record "not quiesced"
 *   tender.io/fsfreeze: "true"                 freeze the volume's filesystem while it is read
 *   tender.io/freeze-timeout: 10s              the longest it stays frozen (the guard thaws then)
 *
 * The config file (YAML, mounted from a ConfigMap; PolicyWatcher reloads it on change):
 *   defaultVolumes: none            # none | emptyDir | all: the volumes of a pod without
 *                                   #   tender.io/backup-volumes (all = emptyDir volumes and PVCs)
 *   interval: 1h                    # the default schedule, or
 *   schedule: "0 3 * * *"           #   a cron (not both)
 *   namespaces: [ml-*, research]    # only these namespaces (globs); default all
 *   excludeNamespaces: [kube-system]
 *   namespaceSelector: { matchLabels: { backup: "on" } }   # labels of the Namespace object
 *   podSelector: { matchExpressions: [{ key: team, operator: In, values: [llm] }] }
 *   maxConcurrentRuns: 1            # backups running at once on this node
 *   cacheNeutral: true              # read files without filling the node's page cache
 *   gpuSource: nvml                 # where GPU backoff reads utilisation: nvml[=LIBRARY],
 *                                   #   nvidia-smi[=PATH] or dcgm=URL (default: NVML, else
 *                                   #   nvidia-smi); read once, when the agent starts
 *   politeness:                     # stay out of the trainers' way (src/polite/); each key optional
 *     readLimit: 200MiB             #   bytes/s read from volumes, shared by all runs
 *     uploadLimit: 100MiB           #   bytes/s uploaded, shared by all runs
 *     pressureBackoff: io=20        #   slow down while PSI (% of time stalled) is above these
 *     cpuShare: 1.5                 #   cores tender may use on average
 *     readFloor: 1MiB               #   the lowest rate backoff cuts to before it pauses
 *     gpuBackoff: 80                #   pause while a GPU is busier than this (%)
 *     gpuHold: 30s                  #   full speed only after the GPUs stayed below it this long
 *     gpuMode: pause                #   pause | cap (at readFloor) while GPUs are busy
 *   trigger: schedule               # schedule | checkpoint: also back up each new complete checkpoint
 *
 * Selectors choose the pods the agent looks at at all; in those pods the annotation picks the
 * volumes, or defaultVolumes where there is none. A malformed annotation is an error naming the
 * pod, the annotation and what is wrong; the rest of the pod's policy still applies. A malformed
 * config file is rejected whole and the last good one stays in force.
 */
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import { CronExpressionParser } from 'cron-parser';
import { minimatch } from 'minimatch';
import type { Logger } from 'pino';
import { parseDocument } from 'yaml';
import { type HookSpec, parseHookSpec } from '../quiesce/hooks.js';
import { DEFAULT_FREEZE_TIMEOUT_MS, DEFAULT_HOOK_TIMEOUT_MS, parseOnError, parseTimeout } from '../quiesce/quiesce.js';
import type { PolitePolicy } from '../polite/governor.js';
import { type GpuSourceChoice, parseGpuSource } from '../polite/gpu-source.js';
import { parseByteSize, parsePercent, parsePressureThresholds } from '../polite/parse.js';
import { selectorMatches } from '../util/label-selector.js';
import { neverReason, volumeClass } from './volumes.js';

export const ANNOTATION_BACKUP = 'tender.io/backup-volumes';
export const ANNOTATION_EXCLUDE = 'tender.io/exclude-volumes';
export const ANNOTATION_SCHEDULE = 'tender.io/schedule';
export const ANNOTATION_INTERVAL = 'tender.io/interval';
export const ANNOTATION_PRE_HOOK = 'tender.io/pre-hook';
export const ANNOTATION_POST_HOOK = 'tender.io/post-hook';
export const ANNOTATION_HOOK_TIMEOUT = 'tender.io/hook-timeout';
export const ANNOTATION_HOOK_ON_ERROR = 'tender.io/hook-on-error';
export const ANNOTATION_FSFREEZE = 'tender.io/fsfreeze';
export const ANNOTATION_FREEZE_TIMEOUT = 'tender.io/freeze-timeout';
export const ANNOTATION_TRIGGER = 'tender.io/trigger';

export type DefaultVolumes = 'none' | 'emptyDir' | 'all';

export interface Schedule {
  intervalMs?: number;
  /** 5-field cron, UTC. */
  cron?: string;
}

export interface LabelSelectorRequirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  values?: string[];
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

export interface AgentPolicy {
  defaultVolumes: DefaultVolumes;
  /** The schedule of volumes whose pod has no tender.io/schedule or tender.io/interval. */
  schedule: Schedule;
  /** Namespace name globs to look at; undefined: all. */
  namespaces?: string[];
  excludeNamespaces: string[];
  /** Labels the Namespace object must have (needs `get` on namespaces). */
  namespaceSelector?: LabelSelector;
  podSelector?: LabelSelector;
  maxConcurrentRuns: number;
  cacheNeutral: boolean;
  /** Budgets and backoff (empty: none); the API may change the limits at run time. */
  politeness: PolitePolicy;
  /** The GPU source for GPU backoff; undefined: NVML, else nvidia-smi. Used at agent start. */
  gpuSource?: GpuSourceChoice;
  /** Back up a volume as soon as a new checkpoint in it is complete, besides its schedule (config `trigger: checkpoint`). */
  triggerOnCheckpoint?: boolean;
}

export const DEFAULT_POLICY: Readonly<AgentPolicy> = Object.freeze({
  defaultVolumes: 'none',
  schedule: Object.freeze({ intervalMs: 3_600_000 }),
  excludeNamespaces: Object.freeze([]) as unknown as string[],
  maxConcurrentRuns: 1,
  cacheNeutral: true,
  politeness: Object.freeze({}),
}) as AgentPolicy;

// ---------------------------------------------------------------------------------------------
// Durations and cron

const UNIT_MS: Record<string, number> = { d: 86_400_000, h: 3_600_000, m: 60_000, s: 1000 };

/** `10m`, `1h30m`, `90s`, `1d` → milliseconds; throws with what is wrong. */
export function parseInterval(text: string): number {
  const s = text.trim();
  const m = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(s);
  if (!s || !m) {
    throw new Error(`"${text}" is not an interval: use a number with a unit, largest first, e.g. 10m, 1h30m, 90s`);
  }
  const ms =
    Number(m[1] ?? 0) * UNIT_MS.d! +
    Number(m[2] ?? 0) * UNIT_MS.h! +
    Number(m[3] ?? 0) * UNIT_MS.m! +
    Number(m[4] ?? 0) * UNIT_MS.s!;
  if (ms <= 0) throw new Error(`"${text}" is not an interval: it must be longer than 0s`);
  if (!Number.isSafeInteger(ms)) throw new Error(`"${text}" is too long an interval`);
  return ms;
}

const CRON_MACROS = new Set(['@hourly', '@daily', '@weekly', '@monthly', '@yearly', '@annually']);

/** A 5-field cron expression (or a macro), normalised; throws with what is wrong. */
export function parseCron(text: string): string {
  const expr = text.trim().split(/\s+/).join(' ');
  if (!CRON_MACROS.has(expr)) {
    const fields = expr ? expr.split(' ').length : 0;
    if (fields !== 5) {
      throw new Error(
        `"${text}" has ${fields} field${fields === 1 ? '' : 's'}; a schedule is 5 fields: minute hour day-of-month month day-of-week`,
      );
    }
  }
  try {
    CronExpressionParser.parse(expr, { tz: 'UTC' });
  } catch (err) {
    throw new Error(`"${text}" is not a valid cron expression: ${(err as Error).message}`);
  }
  return expr;
}

/** The next time (ms since the epoch) a schedule fires after `afterMs`. */
export function nextRunAt(schedule: Schedule, afterMs: number): number {
  if (schedule.cron) {
    return CronExpressionParser.parse(schedule.cron, { tz: 'UTC', currentDate: new Date(afterMs) })
      .next()
      .getTime();
  }
  return afterMs + (schedule.intervalMs ?? DEFAULT_POLICY.schedule.intervalMs!);
}

// ---------------------------------------------------------------------------------------------
// Selectors

export function matchesSelector(labels: Record<string, string> | undefined, selector: LabelSelector | undefined): boolean {
  return !selector || selectorMatches(selector, labels ?? {});
}

/** Whether the namespace's name passes `namespaces` / `excludeNamespaces` (labels are checked apart). */
export function namespaceNameInScope(namespace: string, policy: AgentPolicy): boolean {
  if (policy.excludeNamespaces.some((g) => minimatch(namespace, g))) return false;
  return policy.namespaces === undefined || policy.namespaces.some((g) => minimatch(namespace, g));
}

/**
 * Whether the agent looks at this pod: namespace name and labels (pass the Namespace's labels
 * when policy.namespaceSelector is set), pod labels.
 */
export function podInScope(pod: V1Pod, policy: AgentPolicy, namespaceLabels?: Record<string, string>): boolean {
  const ns = pod.metadata?.namespace ?? '';
  if (!namespaceNameInScope(ns, policy)) return false;
  if (policy.namespaceSelector && !matchesSelector(namespaceLabels, policy.namespaceSelector)) return false;
  return matchesSelector(pod.metadata?.labels, policy.podSelector);
}

// ---------------------------------------------------------------------------------------------
// Pod annotations

export interface SelectedVolume {
  name: string;
  /** Set when the volume was asked for but cannot be backed up (a secret, a hostPath, ...). */
  problem?: string;
}

/** The quiesce protocol a pod's annotations ask for (http hooks may have an empty host: the pod's IP). */
export interface PodQuiesce {
  preHook?: HookSpec;
  postHook?: HookSpec;
  hookTimeoutMs: number;
  onError: 'fail' | 'continue';
  fsfreeze: boolean;
  freezeTimeoutMs: number;
  /** Malformed quiesce annotations: a run fails with them rather than back up unquiesced. */
  problems?: string[];
}

export interface PodPolicy {
  /** The volumes to protect, in the pod's order. */
  volumes: SelectedVolume[];
  schedule: Schedule;
  /** Absent when the pod has no quiesce annotation. */
  quiesce?: PodQuiesce;
  /** tender.io/trigger (else the policy's trigger): also run on each new complete checkpoint. */
  onCheckpoint: boolean;
  /** Problems with the pod's annotations, each naming the pod, the annotation and what is wrong. */
  errors: string[];
}

const VOLUME_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/**
 * The volumes of a pod (already in scope, see podInScope) to protect and their schedule. Never
 * throws: bad annotations are reported in `errors` and the rest applies.
 */
export function podPolicy(pod: V1Pod, policy: AgentPolicy): PodPolicy {
  const ns = pod.metadata?.namespace ?? '';
  const podRef = `pod ${ns}/${pod.metadata?.name ?? ''}`;
  const annotations = pod.metadata?.annotations ?? {};
  const errors: string[] = [];
  const podVolumes = pod.spec?.volumes ?? [];
  const byName = new Map(podVolumes.map((v) => [v.name, v]));

  const names = (key: string): Set<string> | undefined => {
    const raw = annotations[key];
    if (raw === undefined) return undefined;
    const out = new Set<string>();
    for (const part of raw.split(',')) {
      const name = part.trim();
      if (!name) continue;
      if (!VOLUME_NAME.test(name) || name.length > 63) {
        errors.push(`${podRef}: annotation ${key}: "${name}" is not a volume name (a comma-separated list like "ckpt,data")`);
      } else if (!byName.has(name)) {
        errors.push(
          `${podRef}: annotation ${key}: the pod has no volume "${name}" (its volumes: ${[...byName.keys()].join(', ') || 'none'})`,
        );
      } else {
        out.add(name);
      }
    }
    return out;
  };

  const wanted = names(ANNOTATION_BACKUP);
  const excluded = names(ANNOTATION_EXCLUDE) ?? new Set<string>();
  const volumes: SelectedVolume[] = [];
  for (const vol of podVolumes) {
    if (excluded.has(vol.name)) continue;
    if (wanted) {
      if (!wanted.has(vol.name)) continue;
      const problem = neverReason(vol);
      volumes.push(problem ? { name: vol.name, problem } : { name: vol.name });
      continue;
    }
    const cls = volumeClass(vol);
    if (
      (policy.defaultVolumes === 'emptyDir' && cls === 'emptyDir') ||
      (policy.defaultVolumes === 'all' && (cls === 'emptyDir' || cls === 'claim'))
    ) {
      volumes.push({ name: vol.name });
    }
  }

  let schedule: Schedule = policy.schedule;
  const cron = annotations[ANNOTATION_SCHEDULE];
  const interval = annotations[ANNOTATION_INTERVAL];
  if (cron !== undefined && interval !== undefined) {
    errors.push(
      `${podRef}: annotations ${ANNOTATION_SCHEDULE} and ${ANNOTATION_INTERVAL} are both set; ${ANNOTATION_SCHEDULE} is used`,
    );
  }
  if (cron !== undefined) {
    try {
      schedule = { cron: parseCron(cron) };
    } catch (err) {
      errors.push(`${podRef}: annotation ${ANNOTATION_SCHEDULE}: ${(err as Error).message}; the default schedule is used`);
    }
  } else if (interval !== undefined) {
    try {
      schedule = { intervalMs: parseInterval(interval) };
    } catch (err) {
      errors.push(`${podRef}: annotation ${ANNOTATION_INTERVAL}: ${(err as Error).message}; the default schedule is used`);
    }
  }
  let onCheckpoint = policy.triggerOnCheckpoint === true;
  const trigger = annotations[ANNOTATION_TRIGGER];
  if (trigger !== undefined) {
    const value = trigger.trim();
    if (value === 'checkpoint' || value === 'schedule') onCheckpoint = value === 'checkpoint';
    else errors.push(`${podRef}: annotation ${ANNOTATION_TRIGGER}: "${trigger}" is not checkpoint or schedule; the policy's trigger is used`);
  }
  const quiesce = podQuiesce(annotations, podRef);
  errors.push(...(quiesce?.problems ?? []));
  return { volumes, schedule, onCheckpoint, errors, ...(quiesce ? { quiesce } : {}) };
}

function podQuiesce(annotations: Record<string, string>, podRef: string): PodQuiesce | undefined {
  const keys = [ANNOTATION_PRE_HOOK, ANNOTATION_POST_HOOK, ANNOTATION_HOOK_TIMEOUT, ANNOTATION_HOOK_ON_ERROR, ANNOTATION_FSFREEZE, ANNOTATION_FREEZE_TIMEOUT];
  if (!keys.some((k) => annotations[k] !== undefined)) return undefined;
  const problems: string[] = [];
  const parse = <T>(key: string, fn: (text: string, where: string) => T): T | undefined => {
    const text = annotations[key];
    if (text === undefined) return undefined;
    try {
      return fn(text, `${podRef}: annotation ${key}`);
    } catch (err) {
      problems.push((err as Error).message);
      return undefined;
    }
  };
  // Commands are refused: an annotation must not run commands in the agent's privileged container.
  const hook = (text: string, where: string) => parseHookSpec(text, where, { allowCommand: false });
  const preHook = parse(ANNOTATION_PRE_HOOK, hook);
  const postHook = parse(ANNOTATION_POST_HOOK, hook);
  const fsfreeze = parse(ANNOTATION_FSFREEZE, (text, where) => {
    if (text.trim() !== 'true' && text.trim() !== 'false') throw new Error(`${where}: ${JSON.stringify(text)} is neither "true" nor "false"`);
    return text.trim() === 'true';
  });
  return {
    ...(preHook ? { preHook } : {}),
    ...(postHook ? { postHook } : {}),
    hookTimeoutMs: parse(ANNOTATION_HOOK_TIMEOUT, parseTimeout) ?? DEFAULT_HOOK_TIMEOUT_MS,
    onError: parse(ANNOTATION_HOOK_ON_ERROR, parseOnError) ?? 'fail',
    fsfreeze: fsfreeze ?? false,
    freezeTimeoutMs: parse(ANNOTATION_FREEZE_TIMEOUT, parseTimeout) ?? DEFAULT_FREEZE_TIMEOUT_MS,
    ...(problems.length > 0 ? { problems } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// The config file

const CONFIG_KEYS = new Set([
  'defaultVolumes',
  'interval',
  'schedule',
  'namespaces',
  'excludeNamespaces',
  'namespaceSelector',
  'podSelector',
  'maxConcurrentRuns',
  'cacheNeutral',
  'politeness',
  'gpuSource',
  'trigger',
]);

const POLITENESS_KEYS = ['readLimit', 'uploadLimit', 'pressureBackoff', 'cpuShare', 'readFloor', 'gpuBackoff', 'gpuHold', 'gpuMode'];

/** The `politeness` map (see the top of this file); throws naming the key and what is wrong. */
export function parsePoliteness(v: unknown): PolitePolicy {
  if (!isRecord(v)) throw new Error(`politeness must be a map of ${POLITENESS_KEYS.join(', ')}`);
  const unknown = Object.keys(v).filter((k) => !POLITENESS_KEYS.includes(k));
  if (unknown.length > 0) throw new Error(`politeness: unknown key${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (known: ${POLITENESS_KEYS.join(', ')})`);
  const text = (key: string) => {
    const x = v[key];
    if (typeof x !== 'string' && typeof x !== 'number') throw new Error(`politeness.${key} must be a string or a number, not ${JSON.stringify(x)}`);
    return String(x);
  };
  const out: PolitePolicy = {};
  const size = (key: string) => setting(`politeness.${key}`, () => parseByteSize(text(key)));
  if (v.readLimit !== undefined && v.readLimit !== null) out.readLimit = size('readLimit');
  if (v.uploadLimit !== undefined && v.uploadLimit !== null) out.uploadLimit = size('uploadLimit');
  if (v.readFloor !== undefined) out.readFloor = size('readFloor');
  if (v.pressureBackoff !== undefined) out.pressure = setting('politeness.pressureBackoff', () => parsePressureThresholds(text('pressureBackoff')));
  if (v.cpuShare !== undefined) {
    if (typeof v.cpuShare !== 'number' || !(v.cpuShare > 0) || !Number.isFinite(v.cpuShare)) throw new Error(`politeness.cpuShare must be a positive number of cores, not ${JSON.stringify(v.cpuShare)}`);
    out.cpuShareCores = v.cpuShare;
  }
  if (v.gpuBackoff !== undefined) {
    const mode = v.gpuMode ?? 'pause';
    if (mode !== 'pause' && mode !== 'cap') throw new Error(`politeness.gpuMode must be pause or cap, not ${JSON.stringify(mode)}`);
    out.gpu = {
      busyPercent: setting('politeness.gpuBackoff', () => parsePercent(text('gpuBackoff'))),
      holdLowMs: v.gpuHold === undefined ? 30_000 : setting('politeness.gpuHold', () => parseInterval(text('gpuHold'))),
      mode,
    };
  } else if (v.gpuHold !== undefined || v.gpuMode !== undefined) {
    throw new Error('politeness.gpuHold and gpuMode need gpuBackoff (the busy threshold, e.g. 80)');
  }
  return out;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function stringList(v: unknown, where: string): string[] {
  if (!Array.isArray(v) || v.some((s) => typeof s !== 'string' || s === '')) {
    throw new Error(`${where} must be a list of non-empty strings`);
  }
  return v as string[];
}

function parseSelector(v: unknown, where: string): LabelSelector {
  if (!isRecord(v)) throw new Error(`${where} must be a map with matchLabels and/or matchExpressions`);
  const out: LabelSelector = {};
  for (const key of Object.keys(v)) {
    if (key !== 'matchLabels' && key !== 'matchExpressions') {
      throw new Error(`${where}: unknown key "${key}" (expected matchLabels, matchExpressions)`);
    }
  }
  if (v.matchLabels !== undefined && v.matchLabels !== null) {
    if (!isRecord(v.matchLabels) || Object.values(v.matchLabels).some((x) => typeof x !== 'string')) {
      throw new Error(`${where}.matchLabels must map label names to strings (quote values like "true")`);
    }
    out.matchLabels = v.matchLabels as Record<string, string>;
  }
  if (v.matchExpressions !== undefined && v.matchExpressions !== null) {
    if (!Array.isArray(v.matchExpressions)) throw new Error(`${where}.matchExpressions must be a list`);
    out.matchExpressions = v.matchExpressions.map((e, i) => {
      const w = `${where}.matchExpressions[${i}]`;
      if (!isRecord(e) || typeof e.key !== 'string' || !e.key) throw new Error(`${w} needs a key`);
      const op = e.operator;
      if (op !== 'In' && op !== 'NotIn' && op !== 'Exists' && op !== 'DoesNotExist') {
        throw new Error(`${w}.operator must be In, NotIn, Exists or DoesNotExist, not ${JSON.stringify(op)}`);
      }
      if (op === 'In' || op === 'NotIn') {
        const values = stringList(e.values, `${w}.values`);
        if (values.length === 0) throw new Error(`${w}.values must not be empty for ${op}`);
        return { key: e.key, operator: op, values };
      }
      if (e.values !== undefined && (!Array.isArray(e.values) || e.values.length > 0)) {
        throw new Error(`${w}.values must be empty for ${op}`);
      }
      return { key: e.key, operator: op };
    });
  }
  return out;
}

/** Run a parser, naming the setting in its error. */
function setting<T>(key: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    throw new Error(`${key}: ${(err as Error).message}`);
  }
}

/** Parse a config file's text; throws an Error saying what is wrong (and where). */
export function parsePolicy(text: string, source = 'config'): AgentPolicy {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new Error(`${source}: not valid YAML: ${doc.errors[0]!.message}`);
  }
  const data: unknown = doc.toJS();
  if (data === null || data === undefined) return { ...DEFAULT_POLICY };
  if (!isRecord(data)) throw new Error(`${source}: must be a YAML map of settings`);
  const unknown = Object.keys(data).filter((k) => !CONFIG_KEYS.has(k));
  if (unknown.length > 0) {
    throw new Error(`${source}: unknown setting${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (known: ${[...CONFIG_KEYS].join(', ')})`);
  }
  const policy: AgentPolicy = { ...DEFAULT_POLICY, excludeNamespaces: [] };
  try {
    if (data.defaultVolumes !== undefined) {
      const d = data.defaultVolumes;
      if (d !== 'none' && d !== 'emptyDir' && d !== 'all') {
        throw new Error(`defaultVolumes must be none, emptyDir or all, not ${JSON.stringify(d)}`);
      }
      policy.defaultVolumes = d;
    }
    if (data.interval !== undefined && data.schedule !== undefined) {
      throw new Error('set either interval or schedule, not both');
    }
    if (data.interval !== undefined) {
      if (typeof data.interval !== 'string') throw new Error('interval must be a string such as 1h or 30m');
      policy.schedule = { intervalMs: setting('interval', () => parseInterval(data.interval as string)) };
    }
    if (data.schedule !== undefined) {
      if (typeof data.schedule !== 'string') throw new Error('schedule must be a cron string such as "0 * * * *"');
      policy.schedule = { cron: setting('schedule', () => parseCron(data.schedule as string)) };
    }
    if (data.namespaces !== undefined && data.namespaces !== null) {
      policy.namespaces = stringList(data.namespaces, 'namespaces');
    }
    if (data.excludeNamespaces !== undefined && data.excludeNamespaces !== null) {
      policy.excludeNamespaces = stringList(data.excludeNamespaces, 'excludeNamespaces');
    }
    if (data.namespaceSelector !== undefined && data.namespaceSelector !== null) {
      policy.namespaceSelector = parseSelector(data.namespaceSelector, 'namespaceSelector');
    }
    if (data.podSelector !== undefined && data.podSelector !== null) {
      policy.podSelector = parseSelector(data.podSelector, 'podSelector');
    }
    if (data.maxConcurrentRuns !== undefined) {
      const n = data.maxConcurrentRuns;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 64) {
        throw new Error(`maxConcurrentRuns must be a whole number from 1 to 64, not ${JSON.stringify(n)}`);
      }
      policy.maxConcurrentRuns = n;
    }
    if (data.cacheNeutral !== undefined) {
      if (typeof data.cacheNeutral !== 'boolean') throw new Error('cacheNeutral must be true or false');
      policy.cacheNeutral = data.cacheNeutral;
    }
    if (data.politeness !== undefined && data.politeness !== null) policy.politeness = parsePoliteness(data.politeness);
    if (data.gpuSource !== undefined && data.gpuSource !== null) {
      if (typeof data.gpuSource !== 'string') throw new Error('gpuSource must be a string: nvml[=LIBRARY], nvidia-smi[=PATH] or dcgm=URL');
      policy.gpuSource = setting('gpuSource', () => parseGpuSource(data.gpuSource as string));
    }
    if (data.trigger !== undefined) {
      if (data.trigger !== 'schedule' && data.trigger !== 'checkpoint') throw new Error(`trigger must be schedule or checkpoint, not ${JSON.stringify(data.trigger)}`);
      policy.triggerOnCheckpoint = data.trigger === 'checkpoint';
    }
  } catch (err) {
    throw new Error(`${source}: ${(err as Error).message}`);
  }
  return policy;
}

// ---------------------------------------------------------------------------------------------
// PolicyWatcher

export interface PolicyWatcherOptions {
  /** The config file; undefined: the defaults, and nothing to watch. */
  file?: string;
  logger: Logger;
  /** How often the file is read again in case a change event was missed. Default 10 s. */
  pollMs?: number;
}

/**
 * The config file, reloaded when it changes. A ConfigMap volume updates by swapping the `..data`
 * symlink in the file's directory, so the directory is watched (fs.watch), with polling as a
 * fallback (fs.watch can miss events, or fail, e.g. on some network file systems).
 *
 * A file that is missing or malformed keeps the last good policy (the defaults, at start) in
 * force; the error is logged, counted and kept in `error` until a good version loads.
 *
 * Events: 'change' (policy: AgentPolicy) after a new, valid config loads; 'invalid' (message)
 * when a load fails. (No 'error' event, so nothing throws for want of a listener.)
 */
export class PolicyWatcher extends EventEmitter {
  #policy: AgentPolicy = { ...DEFAULT_POLICY, excludeNamespaces: [] };
  #error: string | undefined;
  #lastText: string | undefined;
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #loading: Promise<void> = Promise.resolve();
  #stopped = false;
  readonly stats = { loads: 0, errors: 0 };

  constructor(private readonly opts: PolicyWatcherOptions) {
    super();
  }

  /** The policy in force. */
  get policy(): AgentPolicy {
    return this.#policy;
  }

  /** Why the last load failed, while the file stays bad. */
  get error(): string | undefined {
    return this.#error;
  }

  /** Load the file once and start watching it. Never throws. */
  async start(): Promise<void> {
    this.#stopped = false;
    if (!this.opts.file) return;
    await this.reload();
    this.#watch();
    const pollMs = this.opts.pollMs ?? 10_000;
    this.#timer = setInterval(() => {
      if (!this.#watcher) this.#watch();
      void this.reload();
    }, pollMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    if (this.#debounce) clearTimeout(this.#debounce);
    this.#timer = this.#debounce = undefined;
    this.#watcher?.close();
    this.#watcher = undefined;
    await this.#loading;
  }

  /** Read the file again now (loads are serialised); resolves when done. */
  reload(): Promise<void> {
    this.#loading = this.#loading.then(() => this.#load());
    return this.#loading;
  }

  #watch(): void {
    const file = this.opts.file!;
    try {
      const w = watch(path.dirname(file), { persistent: false });
      w.on('change', () => {
        if (this.#debounce) clearTimeout(this.#debounce);
        // A ConfigMap update is a burst of events (new dir, ..data_tmp, rename); read once after it.
        this.#debounce = setTimeout(() => void this.reload(), 50);
        this.#debounce.unref();
      });
      w.on('error', (err) => {
        this.opts.logger.warn({ err, file }, 'watching the config directory failed; polling only');
        w.close();
        if (this.#watcher === w) this.#watcher = undefined;
      });
      this.#watcher = w;
    } catch (err) {
      this.opts.logger.debug({ err, file }, 'cannot watch the config directory; polling only');
    }
  }

  async #load(): Promise<void> {
    if (this.#stopped) return;
    const file = this.opts.file!;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      this.#fail(
        code === 'ENOENT'
          ? `config file ${file} does not exist`
          : `cannot read config file ${file}: ${(err as Error).message}`,
      );
      // Whatever comes back is read afresh.
      this.#lastText = undefined;
      return;
    }
    if (text === this.#lastText) return;
    this.#lastText = text;
    let policy: AgentPolicy;
    try {
      policy = parsePolicy(text, file);
    } catch (err) {
      this.#fail((err as Error).message);
      return;
    }
    this.#policy = policy;
    this.#error = undefined;
    this.stats.loads++;
    this.opts.logger.info({ file, policy }, 'config loaded');
    this.emit('change', policy);
  }

  /** Report a failed load once per distinct problem (a poll of the same bad file is quiet). */
  #fail(message: string): void {
    if (this.#error === message) return;
    this.#error = message;
    this.stats.errors++;
    this.opts.logger.error({ file: this.opts.file, error: message }, 'config not loaded; the last good config stays in force');
    this.emit('invalid', message);
  }
}
