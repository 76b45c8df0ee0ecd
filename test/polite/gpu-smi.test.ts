import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nvidiaSmiArgs, nvidiaSmiReader, parseNvidiaSmi } from '../../src/polite/gpu-smi.js';
import { type FakeNvidiaSmi, fakeNvidiaSmi, waitFor } from '../helpers/gpu-stubs.js';

const timeoutMs = 1500;

let dir: string;
let smi: FakeNvidiaSmi;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tender-smi-'));
  smi = await fakeNvidiaSmi(dir);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('nvidia-smi reader (fake nvidia-smi)', () => {
  it('asks for index, uuid and utilization.gpu as CSV and reads each GPU', async () => {
    await smi.script(`printf '0, GPU-aaaa-1, 37\\n1, GPU-bbbb-2, 80\\n'\n`);
    const r = nvidiaSmiReader({ command: smi.command, timeoutMs });
    expect(r.source).toBe('nvidia-smi');
    expect(await r.read()).toEqual([
      { index: 0, uuid: 'GPU-aaaa-1', utilisation: 37 },
      { index: 1, uuid: 'GPU-bbbb-2', utilisation: 80 },
    ]);
    expect(await smi.lastArgs()).toEqual([...nvidiaSmiArgs]);
    await smi.script(`printf '0, GPU-aaaa-1, 3\\r\\n1, GPU-bbbb-2, 0\\r\\n'\n`);
    expect((await r.read()).map((s) => s.utilisation)).toEqual([3, 0]);
  });

  it('garbage names the line', async () => {
    const r = nvidiaSmiReader({ command: smi.command, timeoutMs });
    await smi.script(`printf '0, GPU-aaaa-1, 37\\n1, GPU-bbbb-2, [N/A]\\n'\n`);
    await expect(r.read()).rejects.toThrow(
      `${smi.command} output line 2 has no utilisation percentage: "1, GPU-bbbb-2, [N/A]" (expected "index, uuid, utilization.gpu")`,
    );
    await smi.script(`echo 'index, uuid, utilization.gpu [%]'\n`);
    await expect(r.read()).rejects.toThrow(/output line 1 has no GPU index: "index, uuid, utilization.gpu \[%\]"/);
    await smi.script(`echo '0, GPU-a'\n`);
    await expect(r.read()).rejects.toThrow(/output line 1 has 2 fields/);
    await smi.script(`echo '0, GPU-a, 250'\n`);
    await expect(r.read()).rejects.toThrow(/reports utilisation 250 for GPU 0 \(not a percentage 0\.\.100\)/);
    await smi.script(`echo '0, GPU-a, 5'; echo '0, GPU-b, 6'\n`);
    await expect(r.read()).rejects.toThrow(/lists GPU 0 twice/);
    await smi.script('exit 0\n');
    await expect(r.read()).rejects.toThrow(`${smi.command} lists no GPU`);
    await smi.script(`head -c 2000000 /dev/zero | tr '\\0' x\n`);
    await expect(r.read()).rejects.toThrow(/wrote more than 1048576 bytes/);
  });

  it('a failing nvidia-smi is reported with what it said', async () => {
    const r = nvidiaSmiReader({ command: smi.command, timeoutMs });
    await smi.script(
      `echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running."\nexit 9\n`,
    );
    await expect(r.read()).rejects.toThrow(`${smi.command} exited with code 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.`);
    await smi.script('kill -SEGV $$\n');
    await expect(r.read()).rejects.toThrow(`${smi.command} was killed by SIGSEGV`);
    await expect(nvidiaSmiReader({ command: 'tender-no-such-nvidia-smi', timeoutMs }).read()).rejects.toThrow(
      'tender-no-such-nvidia-smi not found on PATH',
    );
    await expect(nvidiaSmiReader({ command: path.join(dir, 'none', 'nvidia-smi'), timeoutMs }).read()).rejects.toThrow(
      `${path.join(dir, 'none', 'nvidia-smi')} not found`,
    );
  });

  it('a hung nvidia-smi is killed with what it started, and the reading rejects at the timeout', async () => {
    const r = nvidiaSmiReader({ command: smi.command, timeoutMs });
    // The body's shell waits on a sleep that holds stdout: killing only the shell would leave it.
    await smi.script('sleep 1000 & echo $! > "$MARK"; wait\n');
    const reading = r.read();
    const sleeper = Number(await waitFor(async () => (await smi.marker()).trim() || undefined, 'the fake to start'));
    expect(alive(sleeper)).toBe(true);
    await expect(reading).rejects.toThrow(`${smi.command} did not answer within ${timeoutMs} ms (killed)`);
    await waitFor(async () => (alive(sleeper) ? undefined : true), 'the sleep to die');
    await smi.script(`echo '0, GPU-a, 7'\n`);
    await waitFor(async () => (await r.read().then((s) => s, () => undefined)), 'the reader to run again');
  });

  it('output held open by a leftover child after nvidia-smi exits still settles at the timeout', async () => {
    const r = nvidiaSmiReader({ command: smi.command, timeoutMs });
    await smi.script(`echo '0, GPU-a, 7'; (sleep 1000; true) & echo $! > "$MARK"; exit 0\n`);
    await expect(r.read()).rejects.toThrow(/did not answer within 1500 ms \(killed\)/);
    const leftover = Number((await smi.marker()).trim());
    await waitFor(async () => (alive(leftover) ? undefined : true), 'the leftover child to die');
  });

  it('an aborted reading rejects with the reason and kills the run', async () => {
    const r = nvidiaSmiReader({ command: smi.command, timeoutMs: 60_000 });
    await smi.script('echo $$ > "$MARK"; sleep 1000\n');
    const abort = new AbortController();
    const reading = r.read(abort.signal);
    const shell = Number(await waitFor(async () => (await smi.marker()).trim() || undefined, 'the fake to start'));
    abort.abort(new Error('backup finished'));
    await expect(reading).rejects.toThrow('backup finished');
    await waitFor(async () => (alive(shell) ? undefined : true), 'the fake to die');
  });
});

describe('parseNvidiaSmi', () => {
  it('takes blank lines and spaces as nvidia-smi writes them, nothing else', () => {
    expect(parseNvidiaSmi('\n0, GPU-x, 0\n\n 1 ,GPU-y,100 \n')).toEqual([
      { index: 0, uuid: 'GPU-x', utilisation: 0 },
      { index: 1, uuid: 'GPU-y', utilisation: 100 },
    ]);
    expect(() => parseNvidiaSmi('0, GPU x, 1')).toThrow(/line 1 has no UUID/);
    expect(() => parseNvidiaSmi('0, GPU-x, 1.5')).toThrow(/line 1 has no utilisation percentage/);
    expect(() => parseNvidiaSmi('0, GPU-x, -1')).toThrow(/line 1 has no utilisation percentage/);
    expect(() => parseNvidiaSmi('0, GPU-x, [Not Supported]')).toThrow(/line 1 has no utilisation percentage/);
  });
});
