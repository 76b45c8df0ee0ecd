import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TenderError } from '../errors/errors.js';

/**
 * A quiesce hook: what tells the trainer to pause (pre), to go on (post), or takes a storage
 * snapshot while the filesystem is frozen (while-frozen).
 *
 *   command   `sh -c COMMAND` on this machine (CLI only): success is exit status 0
 *   http      POST to the URL with {"phase","volume"} as JSON: success is a 2xx answer. In the
 *             agent an empty host (`http://:8080/quiesce`) is the pod's IP.
 *   file      `file:NAME`: a marker file NAME inside the volume. pre writes it (holding a fresh
 *             token) and waits until the trainer writes the token into NAME.ack; post removes
 *             both, and the trainer goes on once NAME is gone.
 */
export type HookSpec = { kind: 'command'; command: string } | { kind: 'http'; url: string } | { kind: 'file'; marker: string };

export type HookPhase = 'pre' | 'post' | 'while-frozen';

/**
 * Parses a hook as written in a flag or an annotation. `where` names it in errors (e.g.
 * "--pre-hook"); commands are refused where they are not allowed (the agent: an annotation must
 * not run commands in the agent's privileged container).
 */
export function parseHookSpec(text: string, where: string, options: { allowCommand: boolean }): HookSpec {
  const trimmed = text.trim();
  if (trimmed === '') throw new TenderError('TENDER_USAGE', `${where}: the hook is empty`, { hint: hookHint(options.allowCommand) });
  if (/^https?:\/\//i.test(trimmed)) {
    // An empty host stands for the pod's IP: check the rest with a placeholder host.
    const probe = trimmed.replace(/^(https?:\/\/)(:)/i, '$1pod$2');
    let url: URL;
    try {
      url = new URL(probe);
    } catch {
      throw new TenderError('TENDER_USAGE', `${where}: ${JSON.stringify(trimmed)} is not a valid URL`, { hint: hookHint(options.allowCommand) });
    }
    if (url.username || url.password) {
      throw new TenderError('TENDER_USAGE', `${where}: ${JSON.stringify(trimmed)} carries credentials; hooks take none`, {
        hint: 'let the trainer accept the call without credentials on the pod network',
      });
    }
    return { kind: 'http', url: trimmed };
  }
  if (trimmed.startsWith('file:')) {
    const marker = trimmed.slice('file:'.length);
    if (marker === '' || path.isAbsolute(marker) || marker.split('/').some((part) => part === '..' || part === '' || part === '.')) {
      throw new TenderError('TENDER_USAGE', `${where}: ${JSON.stringify(trimmed)} must name a file inside the volume, like file:.tender-quiesce`, {
        hint: 'a relative path without "." or ".." components',
      });
    }
    return { kind: 'file', marker };
  }
  if (!options.allowCommand) {
    throw new TenderError('TENDER_USAGE', `${where}: ${JSON.stringify(trimmed)} is neither an http:// URL nor file:NAME`, {
      hint: hookHint(false),
    });
  }
  return { kind: 'command', command: trimmed };
}

function hookHint(allowCommand: boolean): string {
  return `a hook is ${allowCommand ? 'a shell command, ' : ''}http://HOST:PORT/PATH (POST, 2xx = done) or file:NAME (a marker file in the volume)`;
}

/** A hook as shown in messages. */
export function describeHook(spec: HookSpec): string {
  return spec.kind === 'command' ? `\`${spec.command}\`` : spec.kind === 'http' ? `POST ${spec.url}` : `file:${spec.marker}`;
}

/** The URL of an http hook with an empty host filled in (the agent passes the pod's IP). */
export function withHost(spec: HookSpec, host: string | undefined): HookSpec {
  if (spec.kind !== 'http' || !/^https?:\/\/:/i.test(spec.url)) return spec;
  if (!host) {
    throw new TenderError('TENDER_USAGE', `${describeHook(spec)} needs the pod's IP, and the pod has none yet`, {
      hint: 'the pod must be running with an IP, or the hook must name a host',
    });
  }
  const bracketed = host.includes(':') ? `[${host}]` : host;
  return { kind: 'http', url: spec.url.replace(/^(https?:\/\/)/i, `$1${bracketed}`) };
}

export interface HookRun {
  phase: HookPhase;
  /** The volume's directory: the command's TENDER_VOLUME, the marker file's folder. */
  volume: string;
  timeoutMs: number;
  /** Ends the hook early (the operation was cancelled, or the freeze deadline passed). */
  signal: AbortSignal;
}

/** How much of a failing hook's output or answer is kept for the message. */
const OUTPUT_TAIL_BYTES = 2048;
/** How often a file hook looks for the trainer's acknowledgement. */
const ACK_POLL_MS = 50;

/**
 * Runs one hook to its end: resolves when it succeeded, throws an Error saying what went wrong
 * (exit status and output tail, HTTP status and answer, timeout, cancel) otherwise. Never takes
 * longer than `timeoutMs` (plus the time to kill a command's process group).
 */
export async function runHook(spec: HookSpec, run: HookRun): Promise<void> {
  const timeout = AbortSignal.timeout(run.timeoutMs);
  const signal = AbortSignal.any([run.signal, timeout]);
  const ended = () => new Error(timeout.aborted ? `timed out after ${formatMs(run.timeoutMs)}` : `stopped: ${abortReason(run.signal)}`);
  switch (spec.kind) {
    case 'command':
      return runCommand(spec.command, run, signal, ended);
    case 'http':
      return runHttp(spec.url, run, signal, ended);
    case 'file':
      return run.phase === 'post' ? releaseMarker(run.volume, spec.marker) : requestMarker(run.volume, spec.marker, signal, ended);
  }
}

function runCommand(command: string, run: HookRun, signal: AbortSignal, ended: () => Error): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(ended());
    // A process group of its own, so a timeout kills whatever the command started too.
    const child = spawn('/bin/sh', ['-c', command], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TENDER_HOOK: run.phase, TENDER_VOLUME: run.volume },
    });
    let tail = Buffer.alloc(0);
    const keep = (data: Buffer) => {
      tail = Buffer.concat([tail, data]);
      if (tail.length > OUTPUT_TAIL_BYTES) tail = tail.subarray(tail.length - OUTPUT_TAIL_BYTES);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    let stopped = false;
    const stop = () => {
      stopped = true;
      killGroup(child.pid);
    };
    signal.addEventListener('abort', stop, { once: true });
    child.once('error', (err) => {
      signal.removeEventListener('abort', stop);
      reject(new Error(`could not start: ${err.message}`));
    });
    // 'exit', not 'close': a background process of the command may hold its output open.
    child.once('exit', (code, sig) => {
      signal.removeEventListener('abort', stop);
      child.stdout.destroy();
      child.stderr.destroy();
      if (stopped) return reject(ended());
      if (code === 0) return resolve();
      const output = tail.toString('utf8').trim();
      reject(new Error(`${code !== null ? `exited with status ${code}` : `was killed by ${sig}`}${output ? `: ${lastLines(output)}` : ''}`));
    });
  });
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

async function runHttp(url: string, run: HookRun, signal: AbortSignal, ended: () => Error): Promise<void> {
  let response: Response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ phase: run.phase, volume: run.volume }),
      signal,
      redirect: 'error',
    });
  } catch (err) {
    if (signal.aborted) throw ended();
    const cause = (err as Error).cause as Error | undefined;
    throw new Error(`request failed: ${(err as Error).message}${cause?.message ? ` (${cause.message})` : ''}`);
  }
  let body: string;
  try {
    body = await readCapped(response);
  } catch (err) {
    if (signal.aborted) throw ended();
    throw new Error(`answer could not be read: ${(err as Error).message}`);
  }
  if (response.status < 200 || response.status > 299) {
    throw new Error(`answered HTTP ${response.status}${body.trim() ? `: ${lastLines(body.trim())}` : ''}`);
  }
}

/** The first OUTPUT_TAIL_BYTES of an answer; the rest is not read. */
async function readCapped(response: Response): Promise<string> {
  if (!response.body) return '';
  const reader = response.body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < OUTPUT_TAIL_BYTES) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      size += value.length;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  return Buffer.concat(parts).subarray(0, OUTPUT_TAIL_BYTES).toString('utf8');
}

async function requestMarker(volume: string, marker: string, signal: AbortSignal, ended: () => Error): Promise<void> {
  const file = path.join(volume, marker);
  const ack = `${file}.ack`;
  const token = randomBytes(16).toString('hex');
  await rm(ack, { force: true });
  // Written whole, then renamed into place: the trainer never sees a partial token.
  const partial = `${file}.${token}.tmp`;
  await writeFile(partial, `${token}\n`);
  await rename(partial, file);
  while (!signal.aborted) {
    const answer = await readFile(ack, 'utf8').catch(() => '');
    if (answer.trim() === token) return;
    await sleep(ACK_POLL_MS, undefined, { signal }).catch(() => undefined);
  }
  throw ended();
}

async function releaseMarker(volume: string, marker: string): Promise<void> {
  const file = path.join(volume, marker);
  await rm(file, { force: true });
  await rm(`${file}.ack`, { force: true });
}

function lastLines(text: string): string {
  return text.split('\n').slice(-3).join(' | ');
}

function abortReason(signal: AbortSignal): string {
  const reason = signal.reason as { message?: string } | undefined;
  return reason?.message ?? 'cancelled';
}

export function formatMs(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}
