/**
 * Running the real CLI (`node bin/tender.js`, which runs dist/: build first) from tests.
 *
 *   const r = await runTender(['--repo', url, 'backup', dir, '--json']);
 *   expect(r.code).toBe(0);
 *
 * No shell is involved: arguments go to spawn as they are. The child gets process.env (so the
 * AWS_* settings of the test MinIO reach it) plus a fixed TENDER_PASSWORD; `env` overrides single
 * variables, and a value of `undefined` removes one.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SnapshotSummary } from '../../src/repo/snapshot/snapshot.js';

export * from './tree.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const tenderBin = path.join(repoRoot, 'bin', 'tender.js');

/** The password every test repository is created with. */
export const testPassword = 'correct horse battery staple';

export interface RunOptions {
  env?: Record<string, string | undefined>;
  /** Written to the child's stdin, which is then closed. */
  input?: string | Buffer;
  cwd?: string;
  /** A command to run node under, e.g. ['setpriv', '--bounding-set=-dac_override', '--']. */
  wrap?: string[];
  /** Kill the child (SIGKILL) after this many ms; the result then has code null. */
  timeoutMs?: number;
}

export interface RunResult {
  /** Exit code, or null when the process died from a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function tenderEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  // Nothing from the developer's own tender setup may leak in.
  delete env.TENDER_REPOSITORY;
  delete env.TENDER_PASSWORD_FILE;
  delete env.TENDER_NEW_PASSWORD;
  delete env.TENDER_NEW_PASSWORD_FILE;
  env.TENDER_PASSWORD = testPassword;
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** Starts `tender ARGS` and returns the child (for tests that kill it). stdout/stderr are piped. */
export function startTender(args: string[], options: RunOptions = {}): ChildProcess {
  const argv = [tenderBin, ...args];
  const [cmd, ...cmdArgs] = options.wrap?.length ? [...options.wrap, process.execPath, ...argv] : [process.execPath, ...argv];
  return spawn(cmd!, cmdArgs, {
    cwd: options.cwd ?? repoRoot,
    env: tenderEnv(options.env),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
}

export async function runTender(args: string[], options: RunOptions = {}): Promise<RunResult> {
  const child = startTender(args, options);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on('data', (b: Buffer) => out.push(b));
  child.stderr!.on('data', (b: Buffer) => err.push(b));
  child.stdin!.on('error', () => undefined);
  child.stdin!.end(options.input ?? '');
  const timer = options.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), options.timeoutMs) : undefined;
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c, s) => resolve([c, s]));
  });
  if (timer) clearTimeout(timer);
  return { code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}

/** A short description of a run for assertion messages. */
export function describeRun(args: string[], r: RunResult): string {
  return `tender ${args.join(' ')} -> code ${r.code}${r.signal ? ` (${r.signal})` : ''}\n--- stdout\n${r.stdout.slice(-4000)}\n--- stderr\n${r.stderr.slice(-4000)}`;
}

/** Runs tender and throws (with its output) unless it exits with `expectCode` (default 0). */
export async function tenderOk(args: string[], options: RunOptions = {}, expectCode = 0): Promise<RunResult> {
  const r = await runTender(args, options);
  if (r.code !== expectCode) throw new Error(`expected exit ${expectCode}: ${describeRun(args, r)}`);
  return r;
}

/** Every JSON line of a --json output (non-JSON lines are an error: --json promises JSON lines). */
export function jsonLines(stdout: string): Array<Record<string, unknown>> {
  return stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        throw new Error(`not a JSON line in --json output: ${JSON.stringify(l)}`);
      }
    });
}

/** The `summary` line of `backup --json`: the snapshot summary plus its ID. */
export interface BackupSummary extends SnapshotSummary {
  message_type: 'summary';
  snapshot_id: string;
}

/** The `summary` line of `backup --json` (exactly one must be there). */
export function backupSummary(stdout: string): BackupSummary {
  const summaries = jsonLines(stdout).filter((l) => l.message_type === 'summary');
  if (summaries.length !== 1) throw new Error(`expected one summary line, got ${summaries.length}:\n${stdout}`);
  return summaries[0] as unknown as BackupSummary;
}

/** `tender --repo URL backup PATHS... --json EXTRA...`; returns the summary (expects exit 0). */
export async function backupJson(repo: string, paths: string[], extra: string[] = [], options: RunOptions = {}): Promise<BackupSummary> {
  const r = await tenderOk(['--repo', repo, '--json', 'backup', ...paths, ...extra], options);
  return backupSummary(r.stdout);
}

/**
 * The error report of a failed command, checked for shape: exactly one `tender: ...` line (no
 * stack trace, no "internal error") and a `hint: ...` line. Returns the message line.
 */
export function errorLine(r: RunResult): { message: string; hint: string | undefined } {
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  const messages = lines.filter((l) => l.startsWith('tender: '));
  if (messages.length !== 1) throw new Error(`expected one "tender: " error line, got ${messages.length}:\n${r.stderr}`);
  if (/internal error/.test(r.stderr) || /^\s+at /m.test(r.stderr)) throw new Error(`error output has a stack trace:\n${r.stderr}`);
  const hint = lines.find((l) => l.startsWith('hint: '));
  return { message: messages[0]!, hint };
}
