/**
 * Quiesce hooks against real parts: shell commands, a real HTTP trainer endpoint (and endpoints
 * that fail, hang or answer garbage), a marker-file trainer process; then the protocol through
 * `tender backup`: order (pre before the read, post after), the on-error policy, the post-hook
 * after an error and after a cancel, and the snapshot's `quiesce` record.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type HookSpec, parseHookSpec, runHook, withHost } from '../../src/quiesce/hooks.js';
import { parseOnError, parseTimeout } from '../../src/quiesce/quiesce.js';
import { describeRun, jsonLines, runTender, startTender, tenderOk } from '../helpers/cli.js';

let tmp: string;
let repo: string;
let volume: string;
const servers: Array<http.Server | net.Server> = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'tender-hooks-'));
  repo = path.join(tmp, 'repo');
  volume = path.join(tmp, 'ckpt');
  mkdirSync(volume);
  await writeFile(path.join(volume, 'model.bin'), 'weights');
  await tenderOk(['--repo', repo, 'init']);
});

afterEach(() => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
});

afterAll(async () => {
  for (const s of servers) await closeServer(s);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

const never = new AbortController().signal;
const run = (spec: HookSpec, timeoutMs = 5000) => runHook(spec, { phase: 'pre', volume, timeoutMs, signal: never });

/** Closes a server and the connections it still has (kept alive, or never answered). */
function closeServer(server: http.Server | net.Server): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  for (const socket of (server as net.Server & { sockets?: Set<net.Socket> }).sockets ?? []) socket.destroy();
  return closed;
}

/** Tracks a server's sockets, so closeServer can end them. */
function tracked<T extends http.Server | net.Server>(server: T): T {
  const sockets = new Set<net.Socket>();
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  Object.assign(server, { sockets });
  servers.push(server);
  return server;
}

/** A trainer endpoint: answers each call with `answer(phase)`; `calls` records them. */
async function trainer(answer: (phase: string) => number = () => 200): Promise<{ url: string; calls: Array<{ phase: string; volume: string }> }> {
  const calls: Array<{ phase: string; volume: string }> = [];
  const server = tracked(http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const call = JSON.parse(body) as { phase: string; volume: string };
      calls.push(call);
      const status = answer(call.phase);
      res.writeHead(status).end(status === 200 ? 'quiesced' : 'checkpoint in progress, busy');
    });
  }));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/quiesce`, calls };
}

/** A TCP endpoint that does `behave` with every connection (garbage, silence). */
async function rawEndpoint(behave: (socket: net.Socket) => void): Promise<string> {
  const server = tracked(net.createServer(behave));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/quiesce`;
}

function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}

describe('runHook', () => {
  it('http: a 2xx answer is success; the trainer gets the phase and the volume', async () => {
    const t = await trainer();
    await run({ kind: 'http', url: t.url });
    expect(t.calls).toEqual([{ phase: 'pre', volume }]);
  });

  it('http: a 500 fails with the status and the answer', async () => {
    const t = await trainer(() => 500);
    await expect(run({ kind: 'http', url: t.url })).rejects.toThrow('answered HTTP 500: checkpoint in progress, busy');
  });

  it('http: garbage instead of HTTP fails', async () => {
    const url = await rawEndpoint((s) => s.end('garbage that is not HTTP\r\n\r\n'));
    await expect(run({ kind: 'http', url })).rejects.toThrow(/^request failed: /);
  });

  it('http: an endpoint that never answers times out', async () => {
    const url = await rawEndpoint(() => undefined);
    await expect(run({ kind: 'http', url }, 300)).rejects.toThrow('timed out after 300 ms');
  });

  it('http: nobody listening fails', async () => {
    const url = await rawEndpoint(() => undefined);
    await closeServer(servers.pop()!);
    await expect(run({ kind: 'http', url })).rejects.toThrow(/^request failed: .*ECONNREFUSED/);
  });

  it('command: a failure names the status and the output', async () => {
    await expect(run({ kind: 'command', command: 'echo "cannot pause: step 1200 in flight" >&2; exit 3' })).rejects.toThrow(
      'exited with status 3: cannot pause: step 1200 in flight',
    );
  });

  it('command: one that hangs is killed with everything it started', async () => {
    const pids = path.join(tmp, 'hang.pids');
    await expect(run({ kind: 'command', command: `sleep 600 & echo $$ $! > ${pids}; wait` }, 500)).rejects.toThrow('timed out after 500 ms');
    const [shell, sleeper] = readFileSync(pids, 'utf8').trim().split(' ').map(Number);
    while (!gone(shell!) || !gone(sleeper!)) await new Promise((resolve) => setTimeout(resolve, 10));
  });

  it('command: gets TENDER_HOOK and TENDER_VOLUME', async () => {
    const out = path.join(tmp, 'env.out');
    await run({ kind: 'command', command: `echo "$TENDER_HOOK $TENDER_VOLUME" > ${out}` });
    expect(readFileSync(out, 'utf8')).toBe(`pre ${volume}\n`);
  });

  it('file: the trainer acknowledges with the token; post removes the marker', async () => {
    const marker = path.join(volume, '.tender-quiesce');
    // The trainer: a process of its own that answers the marker and waits for it to go.
    const trainerProcess = spawn('/bin/sh', ['-c', `while [ ! -f ${marker} ]; do sleep 0.02; done; cat ${marker} > ${marker}.ack; while [ -f ${marker} ]; do sleep 0.02; done`]);
    children.push(trainerProcess);
    const trainerDone = new Promise((resolve) => trainerProcess.once('exit', resolve));
    await run({ kind: 'file', marker: '.tender-quiesce' });
    await runHook({ kind: 'file', marker: '.tender-quiesce' }, { phase: 'post', volume, timeoutMs: 5000, signal: never });
    expect(await trainerDone).toBe(0);
    expect(existsSync(marker) || existsSync(`${marker}.ack`)).toBe(false);
  });

  it('file: a trainer that never acknowledges (or acknowledged an old request) times out', async () => {
    await writeFile(path.join(volume, '.stale.ack'), 'an old token\n');
    await expect(run({ kind: 'file', marker: '.stale' }, 300)).rejects.toThrow('timed out after 300 ms');
    await runHook({ kind: 'file', marker: '.stale' }, { phase: 'post', volume, timeoutMs: 5000, signal: never });
  });
});

describe('parsing', () => {
  it('hook specs', () => {
    expect(parseHookSpec('http://:8080/quiesce', 'a', { allowCommand: false })).toEqual({ kind: 'http', url: 'http://:8080/quiesce' });
    expect(parseHookSpec('file:.tender-quiesce', 'a', { allowCommand: false })).toEqual({ kind: 'file', marker: '.tender-quiesce' });
    expect(parseHookSpec(' kill -USR1 1 ', 'a', { allowCommand: true })).toEqual({ kind: 'command', command: 'kill -USR1 1' });
    for (const [text, message] of [
      ['', 'x: the hook is empty'],
      ['kill -USR1 1', 'x: "kill -USR1 1" is neither an http:// URL nor file:NAME'],
      ['file:../etc/passwd', 'must name a file inside the volume'],
      ['file:/etc/passwd', 'must name a file inside the volume'],
      ['http://user:pw@host/q', 'carries credentials'],
      ['http://[bad/q', 'is not a valid URL'],
    ] as const) {
      expect(() => parseHookSpec(text, 'x', { allowCommand: false }), text).toThrow(message);
    }
  });

  it('the pod IP fills an empty host', () => {
    expect(withHost({ kind: 'http', url: 'http://:8080/q' }, '10.1.2.3')).toEqual({ kind: 'http', url: 'http://10.1.2.3:8080/q' });
    expect(withHost({ kind: 'http', url: 'http://:8080/q' }, 'fd00::1')).toEqual({ kind: 'http', url: 'http://[fd00::1]:8080/q' });
    expect(withHost({ kind: 'http', url: 'http://trainer:8080/q' }, '10.1.2.3')).toEqual({ kind: 'http', url: 'http://trainer:8080/q' });
    expect(() => withHost({ kind: 'http', url: 'http://:8080/q' }, undefined)).toThrow("needs the pod's IP");
  });

  it('timeouts and the on-error policy', () => {
    expect(parseTimeout('10s', 'x')).toBe(10_000);
    expect(parseTimeout('1m30s', 'x')).toBe(90_000);
    expect(parseTimeout('500ms', 'x')).toBe(500);
    for (const bad of ['10', '0s', '-1s', 'soon', '10s ago', '']) expect(() => parseTimeout(bad, 'x'), bad).toThrow(`x: ${JSON.stringify(bad)} is not a timeout`);
    expect(parseOnError('continue', 'x')).toBe('continue');
    expect(() => parseOnError('ignore', 'x')).toThrow('x: "ignore" is neither "fail" nor "continue"');
  });
});

describe('tender backup with hooks', () => {
  const lastSnapshot = async () => {
    const list = JSON.parse((await tenderOk(['--repo', repo, '--json', 'snapshots', '--path', volume])).stdout) as Array<{ id: string; quiesce?: unknown }>;
    return list.at(-1);
  };

  it('pre-hook before the read, post-hook after it; the snapshot records it quiesced', async () => {
    const log = path.join(tmp, 'order.log');
    const r = await tenderOk(
      [
        '--repo', repo, 'backup', volume,
        '--pre-hook', `echo pre >> ${log}; touch "$TENDER_VOLUME/pre-marker"`,
        '--post-hook', `echo post >> ${log}; touch "$TENDER_VOLUME/post-marker"`,
      ],
    );
    expect(r.stderr).toBe(`${volume}: quiesced\n`);
    expect(readFileSync(log, 'utf8')).toBe('pre\npost\n');
    const listing = (await tenderOk(['--repo', repo, 'ls', 'latest'])).stdout;
    expect(listing).toContain('pre-marker');
    expect(listing).not.toContain('post-marker');
    expect((await lastSnapshot())!.quiesce).toEqual([{ path: volume, quiesced: true }]);
  });

  it('an HTTP trainer is called pre and post', async () => {
    const t = await trainer();
    await tenderOk(['--repo', repo, 'backup', volume, '--pre-hook', t.url, '--post-hook', t.url]);
    expect(t.calls).toEqual([
      { phase: 'pre', volume },
      { phase: 'post', volume },
    ]);
  });

  it('a failing pre-hook ends the backup (policy fail), and the post-hook still runs', async () => {
    const t = await trainer((phase) => (phase === 'pre' ? 500 : 200));
    const before = (await lastSnapshot())!.id;
    const args = ['--repo', repo, 'backup', volume, '--pre-hook', t.url, '--post-hook', t.url];
    const r = await runTender(args);
    expect(r.code, describeRun(args, r)).toBe(1);
    expect(r.stderr).toContain(`tender: cannot quiesce ${volume}: pre-hook: POST ${t.url} answered HTTP 500: checkpoint in progress, busy`);
    expect(r.stderr).toContain('hint: ');
    expect(t.calls.map((c) => c.phase)).toEqual(['pre', 'post']);
    expect((await lastSnapshot())!.id).toBe(before);
  });

  it('with --hook-on-error continue the volume is backed up and recorded as not quiesced', async () => {
    const url = await rawEndpoint((s) => s.end('garbage\r\n\r\n'));
    const r = await tenderOk(['--repo', repo, '--json', 'backup', volume, '--pre-hook', url, '--hook-on-error', 'continue']);
    const line = jsonLines(r.stdout).find((l) => l.message_type === 'quiesce')!;
    expect(line).toMatchObject({ path: volume, quiesced: false });
    expect(line.reasons).toEqual([expect.stringMatching(new RegExp(`^pre-hook: POST ${url} request failed: `))]);
    expect((await lastSnapshot())!.quiesce).toEqual([{ path: volume, quiesced: false, reasons: line.reasons }]);
  });

  it('a pre-hook that hangs is bounded by --hook-timeout', async () => {
    const url = await rawEndpoint(() => undefined);
    const args = ['--repo', repo, 'backup', volume, '--pre-hook', url, '--hook-timeout', '300ms'];
    const r = await runTender(args);
    expect(r.code, describeRun(args, r)).toBe(1);
    expect(r.stderr).toContain(`pre-hook: POST ${url} timed out after 300 ms`);
  });

  it('a failing post-hook keeps the snapshot and says so', async () => {
    const r = await tenderOk(['--repo', repo, '--json', 'backup', volume, '--post-hook', 'echo trainer not found >&2; exit 7']);
    const line = jsonLines(r.stdout).find((l) => l.message_type === 'quiesce')!;
    expect(line).toMatchObject({ quiesced: true, postHookError: '`echo trainer not found >&2; exit 7` exited with status 7: trainer not found' });
    expect((await lastSnapshot())!.quiesce).toEqual([{ path: volume, quiesced: true, postHookError: line.postHookError }]);
  });

  it('a cancel (SIGTERM) during the pre-hook still runs the post-hook (exit 143)', async () => {
    const fifo = path.join(tmp, 'cancel.out');
    spawn('mkfifo', [fifo]);
    while (!existsSync(fifo)) await new Promise((resolve) => setTimeout(resolve, 10));
    const log = path.join(tmp, 'cancel.log');
    const tender = startTender(['--repo', repo, 'backup', volume, '--pre-hook', `echo waiting > ${fifo}; sleep 600`, '--post-hook', `echo post >> ${log}`]);
    children.push(tender);
    tender.stdin!.end();
    let stderr = '';
    tender.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    expect((await readFile(fifo, 'utf8')).trim()).toBe('waiting');
    tender.kill('SIGTERM');
    const code = await new Promise((resolve) => tender.once('exit', resolve));
    expect(code, stderr).toBe(143);
    expect(stderr).toContain(`${volume}: NOT quiesced: pre-hook: \`echo waiting > ${fifo}; sleep 600\` stopped: `);
    expect(stderr).toContain('tender: the operation was cancelled');
    expect(readFileSync(log, 'utf8')).toBe('post\n');
  });
});
