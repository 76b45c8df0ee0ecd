/**
 * Helpers for the lifecycle suites (forget/prune, concurrent writers, crashes, hostile snapshots).
 *
 * Every tender process started from here gets TENDER_HEARTBEAT_MS=1000, so prune's `--grace 5s`
 * is allowed (it must exceed twice the heartbeat). Repository objects are looked at through the
 * storage layer itself (src/storage), so the same code lists and hashes a local directory and an
 * S3 prefix on the test MinIO.
 */
import { type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'vitest';
import { Repository } from '../../src/repo/repository.js';
import { openStorage } from '../../src/storage/open.js';
import type { Storage } from '../../src/storage/storage.js';
import {
  type BackupSummary,
  type RunOptions,
  type RunResult,
  type TreeDigest,
  backupSummary,
  describeRun,
  jsonLines,
  runTender,
  startTender,
  testPassword,
  treeDigest,
} from '../helpers/cli.js';
import { s3TestOptions } from '../helpers/s3.js';
import type { PruneReport } from '../../src/prune/prune.js';

export const heartbeatMs = 1000;
/** Prune's grace period in these tests: more than twice the heartbeat. */
export const grace = '5s';
export const graceMs = 5000;
export const MiB = 1 << 20;
export const packSize = 16 * MiB;

function withHeartbeat(options: RunOptions = {}): RunOptions {
  return { ...options, env: { TENDER_HEARTBEAT_MS: String(heartbeatMs), ...options.env } };
}

/** `tender ARGS` with the short heartbeat. */
export function tender(args: string[], options: RunOptions = {}): Promise<RunResult> {
  return runTender(args, withHeartbeat(options));
}

/** Starts `tender ARGS` (short heartbeat) and returns the child. */
export function startTenderProcess(args: string[], options: RunOptions = {}): ChildProcess {
  return startTender(args, withHeartbeat(options));
}

/** Runs tender and throws (with its output) unless it exits with `expectCode` (default 0). */
export async function tenderExpect(args: string[], expectCode = 0, options: RunOptions = {}): Promise<RunResult> {
  const r = await tender(args, options);
  if (r.code !== expectCode) throw new Error(`expected exit ${expectCode}: ${describeRun(args, r)}`);
  return r;
}

export async function initRepo(repo: string): Promise<void> {
  await tenderExpect(['--repo', repo, '--quiet', 'init']);
}

/** `backup --json` (short heartbeat); returns the summary line. */
export async function backup(repo: string, paths: string[], extra: string[] = [], options: RunOptions = {}): Promise<BackupSummary> {
  const r = await tenderExpect(['--repo', repo, '--json', 'backup', ...paths, ...extra], 0, options);
  return backupSummary(r.stdout);
}

/** The `prune` JSON line carries the library's report. */
export type PruneReportJson = PruneReport;

/** The `prune` line of a `--json` prune or `forget --prune` output. */
export function pruneReport(stdout: string): PruneReportJson {
  const lines = jsonLines(stdout).filter((l) => l.message_type === 'prune');
  if (lines.length !== 1) throw new Error(`expected one prune line, got ${lines.length}:\n${stdout}`);
  return lines[0] as unknown as PruneReportJson;
}

/** `tender prune --grace 5s --json EXTRA`; returns the report (expects exit 0). */
export async function pruneJson(repo: string, extra: string[] = []): Promise<PruneReportJson> {
  const r = await tenderExpect(['--repo', repo, '--json', 'prune', '--grace', grace, ...extra]);
  return pruneReport(r.stdout);
}

export interface SnapshotInfo {
  id: string;
  time: string;
  hostname: string;
  paths: string[];
  tags: string[];
  tree: string;
}

export async function listSnapshotsJson(repo: string): Promise<SnapshotInfo[]> {
  const r = await tenderExpect(['--repo', repo, '--json', 'snapshots']);
  const lines = jsonLines(r.stdout);
  return lines[0] as unknown as SnapshotInfo[];
}

export async function snapshotIds(repo: string): Promise<string[]> {
  return (await listSnapshotsJson(repo)).map((s) => s.id).sort();
}

export interface CheckJson {
  problems: Array<{ object: string; problem: string; affects?: string[] }>;
  warnings: string[];
  snapshots: number;
  packs: number;
  blobs: number;
}

/** `tender check [--read-data] --json`; returns the exit code and the report. */
export async function checkRepo(repo: string, readData: boolean): Promise<{ code: number | null; report: CheckJson | undefined; run: RunResult }> {
  const args = ['--repo', repo, '--json', 'check', ...(readData ? ['--read-data'] : [])];
  const r = await tender(args);
  const line = r.stdout.trim() === '' ? undefined : jsonLines(r.stdout).find((l) => l.message_type === 'check');
  return { code: r.code, report: line as unknown as CheckJson | undefined, run: r };
}

/** Asserts that `check` (optionally with --read-data) exits 0 and reports no problems. */
export async function expectCheckClean(repo: string, readData: boolean, what = ''): Promise<CheckJson> {
  const { code, report, run } = await checkRepo(repo, readData);
  expect(report?.problems ?? [], `check problems ${what}\n${run.stderr.slice(-2000)}`).toEqual([]);
  expect(code, `check exit code ${what}\n${run.stdout.slice(-2000)}\n${run.stderr.slice(-2000)}`).toBe(0);
  return report!;
}

// ---- repository objects ------------------------------------------------------------------

export async function openRepoStorage(url: string): Promise<Storage> {
  return url.startsWith('s3:') ? openStorage(url, s3TestOptions()) : openStorage(url);
}

/** Opens the repository in this process (library API) with the test password. */
export async function openRepository(url: string): Promise<Repository> {
  const storage = await openRepoStorage(url);
  return Repository.open(storage, testPassword);
}

/** key → size of every object under `prefix` (all objects for ''). */
export async function objectSizes(url: string, prefix = ''): Promise<Map<string, number>> {
  const storage = await openRepoStorage(url);
  try {
    const out = new Map<string, number>();
    for await (const { key, size } of storage.list(prefix)) out.set(key, size);
    return out;
  } finally {
    await storage.close();
  }
}

/** key → sha256 of every object in the repository. */
export async function objectDigests(url: string): Promise<Map<string, string>> {
  const storage = await openRepoStorage(url);
  try {
    const out = new Map<string, string>();
    const keys: string[] = [];
    for await (const { key } of storage.list('')) keys.push(key);
    for (const key of keys.sort()) out.set(key, createHash('sha256').update(await storage.get(key)).digest('hex'));
    return out;
  } finally {
    await storage.close();
  }
}

export function sumSizes(sizes: Map<string, number>, filter: (key: string) => boolean = () => true): number {
  let n = 0;
  for (const [k, v] of sizes) if (filter(k)) n += v;
  return n;
}

/** Total bytes stored in packs (data/). */
export async function packBytes(url: string): Promise<number> {
  return sumSizes(await objectSizes(url, 'data/'));
}

// ---- restore and compare ---------------------------------------------------------------------

/** Only the entries (not allocation) of a tree digest: what "byte-identical" compares. */
export function entriesOf(d: TreeDigest): TreeDigest['entries'] {
  return d.entries;
}

/**
 * Restores snapshot `id` into `target` (must not exist) and asserts that `target/<rootName>`
 * matches the digest taken of the source tree when the snapshot was made. Removes `target` after.
 */
export async function expectRestoresTo(repo: string, id: string, expected: TreeDigest, target: string, rootName: string): Promise<void> {
  const args = ['--repo', repo, '--quiet', 'restore', id, '--target', target];
  const r = await tender(args);
  try {
    expect(r.code, describeRun(args, r)).toBe(0);
    const got = await treeDigest(path.join(target, rootName));
    expect(entriesOf(got), `snapshot ${id.slice(0, 8)} restores byte-identical`).toEqual(entriesOf(expected));
  } finally {
    await rm(target, { recursive: true, force: true });
  }
}

// ---- processes -------------------------------------------------------------------------------

export interface Exited {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Collects a started child's output and resolves when it has exited. */
export function collect(child: ChildProcess): { done: Promise<Exited>; exited: () => boolean } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let finished = false;
  child.stdout!.on('data', (b: Buffer) => out.push(b));
  child.stderr!.on('data', (b: Buffer) => err.push(b));
  child.stdin!.on('error', () => undefined);
  child.stdin!.end();
  const done = new Promise<Exited>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      finished = true;
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
  child.once('exit', () => {
    finished = true;
  });
  return { done, exited: () => finished || child.exitCode !== null || child.signalCode !== null };
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Slows a child down without burning CPU: it runs `runMs`, is stopped (SIGSTOP) for `stopMs`,
 * and so on, until the returned function is called (which leaves it running). With the default
 * 150/250 ms its heartbeat (1 s) keeps beating well within twice the heartbeat.
 */
export function throttle(child: ChildProcess, runMs = 150, stopMs = 250): () => void {
  let active = true;
  let timer: NodeJS.Timeout | undefined;
  const alive = () => child.exitCode === null && child.signalCode === null;
  const cycle = () => {
    if (!active || !alive()) return;
    child.kill('SIGSTOP');
    timer = setTimeout(() => {
      if (alive()) child.kill('SIGCONT');
      if (active) timer = setTimeout(cycle, runMs);
    }, stopMs);
  };
  timer = setTimeout(cycle, runMs);
  return () => {
    active = false;
    if (timer) clearTimeout(timer);
    if (alive()) child.kill('SIGCONT');
  };
}

/** Polls `condition` every `intervalMs` until it is true; throws after `timeoutMs`. */
export async function waitFor(condition: () => Promise<boolean> | boolean, timeoutMs: number, what: string, intervalMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** Keys under `prefix` right now (a quick listing for watching a repository). */
export async function listKeys(storage: Storage, prefix: string): Promise<Set<string>> {
  const out = new Set<string>();
  for await (const { key } of storage.list(prefix)) out.add(key);
  return out;
}

/** A deterministic pseudo-random generator (mulberry32) for reproducible schedules. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
