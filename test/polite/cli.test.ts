/**
 * The politeness flags of the real CLI (`node bin/tender.js`, from dist/): sizes and thresholds
 * parsed with clear errors, --read-limit binding a real backup, the progress output's line saying
 * when and why reading is throttled (driven through --pressure-cgroup by a pressure file the
 * test writes), and --gpu-backoff without a GPU source saying once that it does nothing.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupSummary, errorLine, jsonLines, runTender, startTender, tenderOk, writeRandomFile } from '../helpers/cli.js';

const MiB = 2 ** 20;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'tender-polite-cli-'));
const repo = path.join(tmp, 'repo');
const data = path.join(tmp, 'data');
const large = path.join(tmp, 'large');
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

beforeAll(async () => {
  mkdirSync(data);
  await writeRandomFile(path.join(data, 'weights.bin'), 6 * MiB);
  mkdirSync(large);
  await writeRandomFile(path.join(large, 'weights.bin'), 24 * MiB);
  await tenderOk(['--repo', repo, 'init']);
});

describe('tender backup: politeness flags', () => {
  it('bad values are usage errors naming the flag', async () => {
    const cases: Array<[string[], string]> = [
      [['--read-limit', '20X'], '--read-limit: "20X" is not a size'],
      [['--upload-limit', '0'], '--upload-limit: "0" is not a size: it must be more than 0 bytes'],
      [['--pressure-backoff', 'io=20,gpu=3'], '--pressure-backoff: unknown resource "gpu"'],
      [['--gpu-backoff', '180'], '--gpu-backoff: "180": the percentage must be a number above 0 and at most 100'],
      [['--cpu-share', 'lots'], '--cpu-share: "lots" is not a positive number of cores'],
      [['--pressure-backoff', 'io=10', '--pressure-cgroup', path.join(tmp, 'nowhere')], `--pressure-cgroup ${path.join(tmp, 'nowhere')}: no io.pressure there`],
      [['--pressure-cgroup', tmp], '--pressure-cgroup needs --pressure-backoff'],
    ];
    for (const [flags, message] of cases) {
      const r = await runTender(['--repo', repo, 'backup', ...flags, data]);
      expect(r.code, r.stderr).toBe(2);
      expect(errorLine(r).message).toContain(message);
    }
  });

  it('--read-limit binds a real backup; --upload-limit is accepted', async () => {
    const started = performance.now();
    const r = await tenderOk(['--repo', repo, '--json', 'backup', '--force', '--read-limit', '4MiB', '--upload-limit', '1G', data]);
    const seconds = (performance.now() - started) / 1000;
    expect(backupSummary(r.stdout).bytesRead).toBe(6 * MiB);
    // 6 MiB at 4 MiB/s after a burst of 1 MiB: at least 1.25 s (a limit cannot be beaten, only missed).
    expect(seconds).toBeGreaterThan(1.25);
  });

  it('a line in the progress output says when and why reading is throttled, and when it is back', async () => {
    const trainer = path.join(tmp, 'trainer-cgroup');
    mkdirSync(trainer);
    let total = 0;
    const writePressure = () => writeFileSync(path.join(trainer, 'io.pressure'), `some avg10=0.00 avg60=0.00 avg300=0.00 total=${total}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n`);
    writePressure();
    const child = startTender(['--repo', repo, '--json', 'backup', '--force', '--read-limit', '1MiB', '--read-floor', '64KiB', '--pressure-backoff', 'io=20', '--pressure-cgroup', trainer, large]);
    const lines: Array<Record<string, unknown>> = [];
    let buffered = '';
    const seen = (match: (l: Record<string, unknown>) => boolean) =>
      new Promise<Record<string, unknown>>((resolve, reject) => {
        const check = () => {
          const l = lines.find(match);
          if (l) resolve(l);
          return !!l;
        };
        if (check()) return;
        const on = () => {
          if (check()) child.stdout!.off('data', on);
        };
        child.stdout!.on('data', on);
        child.once('exit', () => (check() ? undefined : reject(new Error(`exited without the line; got ${JSON.stringify(lines)}`))));
      });
    child.stdout!.on('data', (b: Buffer) => {
      buffered += b.toString('utf8');
      const parts = buffered.split('\n');
      buffered = parts.pop()!;
      for (const p of parts) if (p.trim()) lines.push(JSON.parse(p) as Record<string, unknown>);
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await seen((l) => l.message_type === 'status');
      // The trainer stalls: 10 s of stall time appear at once (100% of any window).
      total += 10_000_000;
      writePressure();
      const throttled = await seen((l) => l.message_type === 'note' && l.state === 'throttled');
      expect(throttled.message).toMatch(/^reading throttled to 0\.\d MiB\/s: io pressure 100% > 20%$/);
      expect(throttled.reason).toBe('io pressure 100% > 20%');
      // No more stall: after the hold (5 s) it recovers step by step up to the read limit.
      const full = await seen((l) => l.message_type === 'note' && l.state === 'full' && lines.indexOf(l) > lines.indexOf(throttled));
      expect(full.message).toBe('reading at full speed (read limit 1.0 MiB/s)');
    } finally {
      child.kill('SIGTERM');
    }
    await exited;
  }, 60_000);

  it('--gpu-backoff without a GPU source: says once that it does nothing, and backs up at full speed', async () => {
    const r = await tenderOk(['--repo', repo, '--json', 'backup', '--force', '--gpu-backoff', '80', data]);
    const notes = jsonLines(r.stdout).filter((l) => l.message_type === 'note');
    // The GPU sources tried (src/polite/gpu-source.ts) and why each failed, in one line.
    expect(notes).toEqual([
      { message_type: 'note', action: 'backup', message: expect.stringMatching(/^no GPU found \(NVML: cannot load libnvidia-ml\.so\.1: .*; nvidia-smi: nvidia-smi not found on PATH\): GPU backoff is off$/) },
    ]);
    expect(backupSummary(r.stdout).bytesRead).toBe(6 * MiB);
  });

  it('tender box reports the cgroup and the worker count', async () => {
    const r = await tenderOk(['--json', 'box']);
    const box = jsonLines(r.stdout)[0]!;
    expect(box).toMatchObject({ message_type: 'box', version: expect.any(Number), workers: expect.any(Number), cpusAllowed: os.availableParallelism() });
    const text = await tenderOk(['box']);
    expect(text.stdout).toMatch(/→ \d+ workers/);
  });
});
