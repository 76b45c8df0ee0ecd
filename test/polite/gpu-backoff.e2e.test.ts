import type { ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorLine, runTender, startTender, tenderOk, writeRandomFile } from '../helpers/cli.js';
import { type NvmlStub, buildNvmlStub } from '../helpers/gpu-stubs.js';

// `tender backup --gpu-backoff` as a real process, its GPU read through NVML from the stub
// libnvidia-ml (test/fixtures/nvml-stub.c) that the test scripts while the backup runs. The
// governor's changes and notes come out as --json lines: the test follows them.

const MiB = 1 << 20;
const dataBytes = 24 * MiB;

let dir: string;
let repo: string;
let data: string;
let stub: NvmlStub;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tender-gpu-e2e-'));
  repo = path.join(dir, 'repo');
  data = path.join(dir, 'data');
  await mkdir(data);
  for (let i = 0; i < 6; i++) await writeRandomFile(path.join(data, `shard-${i}.bin`), dataBytes / 6);
  stub = await buildNvmlStub(dir);
  await tenderOk(['--repo', repo, 'init']);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Line = Record<string, unknown>;

/** The --json lines of a running tender, and a way to wait for the next one that matches. */
class JsonLines {
  readonly seen: Array<{ at: number; line: Line }> = [];
  private waiters: Array<{ match: (l: Line) => boolean; resolve: (e: { at: number; line: Line }) => void }> = [];
  private cursor = 0;

  constructor(child: ChildProcess) {
    createInterface({ input: child.stdout! }).on('line', (text) => {
      const entry = { at: performance.now(), line: JSON.parse(text) as Line };
      this.seen.push(entry);
      this.waiters = this.waiters.filter((w) => !(w.match(entry.line) && (w.resolve(entry), true)));
    });
  }

  /** The first line after the previous match that matches (lines already seen count). */
  next(match: (l: Line) => boolean): Promise<{ at: number; line: Line }> {
    const found = this.seen.slice(this.cursor).findIndex((e) => match(e.line));
    if (found >= 0) {
      this.cursor += found + 1;
      return Promise.resolve(this.seen[this.cursor - 1]!);
    }
    return new Promise((resolve) => {
      this.waiters.push({
        match,
        resolve: (e) => {
          this.cursor = this.seen.indexOf(e) + 1;
          resolve(e);
        },
      });
    });
  }
}

function run(extra: string[], source = `nvml=${stub.library}`): { child: ChildProcess; lines: JsonLines; exited: Promise<{ code: number | null; stderr: string }> } {
  const child = startTender(['--repo', repo, '--json', 'backup', data, '--force', '--gpu-source', source, ...extra]);
  child.stdin!.end();
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const lines = new JsonLines(child);
  const exited = new Promise<{ code: number | null; stderr: string }>((resolve) => child.once('close', (code) => resolve({ code, stderr })));
  return { child, lines, exited };
}

const isNote = (state: string) => (l: Line) => l.message_type === 'note' && l.state === state;
const isStatus = (l: Line) => l.message_type === 'status' && typeof l.bytesDone === 'number' && l.bytesDone > 0;

describe('tender backup --gpu-backoff (stub NVML)', () => {
  it('a GPU going busy pauses reading; after it stays idle for --gpu-hold, reading resumes and the backup finishes', async () => {
    await stub.script(['count 2', 'util 0 3', 'util 1 0']);
    // A read limit stretches the backup to several seconds, so the GPU can change under it.
    const { lines, exited } = run(['--gpu-backoff', '80', '--gpu-hold', '1', '--read-limit', '4MiB']);
    const found = await lines.next((l) => l.message_type === 'note' && typeof l.message === 'string' && l.message.startsWith('GPU utilisation from NVML'));
    expect(found.line.message).toContain('2 GPUs');
    await lines.next(isStatus);

    await stub.script(['count 2', 'util 0 3', 'util 1 97']);
    const busyAt = performance.now();
    const paused = await lines.next(isNote('paused'));
    const pauseLatencyMs = paused.at - busyAt;
    expect(String(paused.line.reason)).toMatch(/GPU/);

    // Paused: no summary, and the bytes read stand still (status lines keep coming at most once a second).
    const before = lines.seen.filter((e) => e.line.message_type === 'status').at(-1)?.line.bytesDone as number;
    await stub.script(['count 2', 'util 0 3', 'util 1 10']);
    const idleAt = performance.now();
    const resumed = await lines.next((l) => l.message_type === 'note' && (l.state === 'full' || l.state === 'throttled'));
    const resumeAfterMs = resumed.at - idleAt;
    const { code, stderr } = await exited;
    expect(code, stderr).toBe(0);
    const summary = lines.seen.find((e) => e.line.message_type === 'summary')!;
    expect(summary.line.bytesRead).toBe(dataBytes);
    expect(summary.at).toBeGreaterThan(resumed.at);
    const pausedStatus = lines.seen.filter((e) => e.line.message_type === 'status' && e.at > paused.at + 1500 && e.at < resumed.at);
    for (const e of pausedStatus) expect(e.line.bytesDone).toBe(before);
    console.log(`GPU busy → paused: ${pauseLatencyMs.toFixed(0)} ms; GPU idle → resumed: ${resumeAfterMs.toFixed(0)} ms (--gpu-hold 1)`);
  });

  it('an NVML call that hangs while reading is paused: the backup still finishes and the process exits', async () => {
    await stub.script(['count 1', 'util 0 99']);
    // The read limit keeps the backup from finishing (its data is deduplicated by now) before the pause.
    const { lines, exited } = run(['--gpu-backoff', '80', '--gpu-hold', '1', '--read-limit', '4MiB']);
    await lines.next(isNote('paused'));
    await stub.script(['count 1', 'hang nvmlDeviceGetUtilizationRates']);
    await stub.waitForHang('nvmlDeviceGetUtilizationRates');
    const failed = await lines.next((l) => l.message_type === 'note' && typeof l.message === 'string' && /GPU source failed/.test(l.message));
    expect(failed.line.message).toMatch(/hung in the driver/);
    const { code, stderr } = await exited;
    expect(code, stderr).toBe(0);
    expect(lines.seen.find((e) => e.line.message_type === 'summary')?.line.bytesRead).toBe(dataBytes);
  });

  it('no GPU source: says so once and backs up at full speed', async () => {
    const { lines, exited } = run(['--gpu-backoff', '80'], `nvml=${path.join(dir, 'none', 'libnvidia-ml.so.1')}`);
    const { code, stderr } = await exited;
    expect(code, stderr).toBe(0);
    const notes = lines.seen.filter((e) => e.line.message_type === 'note').map((e) => String(e.line.message));
    expect(notes.filter((m) => /GPU/.test(m))).toEqual([expect.stringMatching(/^no GPU found \(NVML: cannot load .*\): GPU backoff is off$/)]);
    expect(lines.seen.find((e) => e.line.message_type === 'summary')?.line.bytesRead).toBe(dataBytes);
  });

  it('a bad --gpu-source, or one without --gpu-backoff, is a usage error', async () => {
    const bad = await runTender(['--repo', repo, 'backup', data, '--gpu-backoff', '80', '--gpu-source', 'rocm']);
    expect(bad.code).toBe(2);
    expect(errorLine(bad)).toEqual({
      message: 'tender: --gpu-source: "rocm" is not a GPU source (expected nvml[=LIBRARY], nvidia-smi[=PATH] or dcgm=URL)',
      hint: 'hint: e.g. --gpu-source nvml, --gpu-source nvidia-smi=/usr/bin/nvidia-smi or --gpu-source dcgm=http://127.0.0.1:9400/metrics',
    });
    const alone = await runTender(['--repo', repo, 'backup', data, '--gpu-source', 'nvml']);
    expect(alone.code).toBe(2);
    expect(errorLine(alone)).toEqual({ message: 'tender: --gpu-source needs --gpu-backoff', hint: 'hint: add --gpu-backoff PERCENT, e.g. --gpu-backoff 80' });
  });
});
