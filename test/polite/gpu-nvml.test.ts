import { spawn } from 'node:child_process';
import { pbkdf2 } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuReader } from '../../src/polite/gpu-reader.js';
import { openNvmlReader } from '../../src/polite/gpu-nvml.js';
import { repoRoot } from '../helpers/cli.js';
import { type NvmlStub, buildNvmlStub } from '../helpers/gpu-stubs.js';

// NVML through the native addon (native/src/nvml.cc) against a stub libnvidia-ml.so.1 built here
// with gcc. The addon must be built: a missing addon fails these tests.

/** Long enough never to fire on a busy machine when the stub answers; short enough for the hang tests. */
const timeoutMs = 1500;

let dir: string;
let stub: NvmlStub;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tender-nvml-'));
  stub = await buildNvmlStub(dir);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function reader(): Promise<GpuReader> {
  return openNvmlReader({ library: stub.library, timeoutMs });
}

/**
 * While `pending` stays unsettled (a call hung in the stub): the event loop keeps turning and
 * libuv's pool takes work. Returns the loop's worst delay meanwhile (ms).
 */
async function responsiveWhile(pending: Promise<unknown>): Promise<number> {
  let settled = false;
  pending.then(
    () => (settled = true),
    () => (settled = true),
  );
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  // Five pool jobs: more than the pool's 4 threads, so a pool thread stuck in NVML would show.
  await Promise.all([
    readFile(path.join(repoRoot, 'package.json')),
    ...Array.from({ length: 4 }, () => promisify(pbkdf2)('x', 'y', 1000, 32, 'sha256')),
  ]);
  for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 1));
  delay.disable();
  expect(settled).toBe(false);
  return delay.max / 1e6;
}

describe('NVML reader (stub libnvidia-ml)', () => {
  it('reads what the library reports, per GPU, every time it is asked', async () => {
    await stub.script(['count 2', 'util 0 37', 'util 1 80', 'uuid 1 GPU-b0b0b0b0-1111-2222-3333-444455556666']);
    const r = await reader();
    try {
      expect(r.source).toBe('nvml');
      expect(await r.read()).toEqual([
        { index: 0, uuid: 'GPU-00000000-0000-0000-0000-000000000000', utilisation: 37 },
        { index: 1, uuid: 'GPU-b0b0b0b0-1111-2222-3333-444455556666', utilisation: 80 },
      ]);
      await stub.script(['count 2', 'util 0 0', 'util 1 100']);
      expect((await r.read()).map((s) => s.utilisation)).toEqual([0, 100]);
    } finally {
      await r.close();
    }
    await expect(r.read()).rejects.toThrow(/the reader is closed/);
  });

  it('a missing library, a library that is not NVML, and a driver that is not loaded are told apart', async () => {
    await expect(openNvmlReader({ library: path.join(dir, 'no-such-libnvidia-ml.so.1'), timeoutMs })).rejects.toMatchObject({
      code: 'NVML_LIBRARY_MISSING',
      message: expect.stringMatching(/^cannot load .*no-such-libnvidia-ml\.so\.1: .*No such file/),
    });
    await expect(openNvmlReader({ library: 'libc.so.6', timeoutMs })).rejects.toMatchObject({
      code: 'NVML_SYMBOL_MISSING',
      message: 'libc.so.6 has no nvmlInit_v2 (not NVML, or a driver too old for it)',
    });
    await stub.script(['rc nvmlInit_v2 9']);
    await expect(reader()).rejects.toMatchObject({
      code: 'NVML_ERROR_DRIVER_NOT_LOADED',
      message: 'nvmlInit_v2 failed: the NVIDIA driver is not loaded (NVML_ERROR_DRIVER_NOT_LOADED; NVML says "stub error 9")',
    });
    await stub.script(['rc nvmlInit_v2 18']);
    await expect(reader()).rejects.toThrow(/libnvidia-ml and the loaded kernel driver are different versions/);
    await stub.script(['rc nvmlInit_v2 12345']);
    await expect(reader()).rejects.toMatchObject({ code: 'NVML_ERROR_12345', message: expect.stringMatching(/^nvmlInit_v2 failed: NVML error 12345/) });
  });

  it('a failing call names the call and the GPU; the reader keeps working when the fault goes away', async () => {
    await stub.script(['count 2', 'util 0 5', 'util 1 6']);
    const r = await reader();
    try {
      await stub.script(['count 2', 'rc nvmlDeviceGetUtilizationRates 15']);
      await expect(r.read()).rejects.toMatchObject({
        code: 'NVML_ERROR_GPU_IS_LOST',
        message: expect.stringMatching(/^nvmlDeviceGetUtilizationRates\(GPU 0\) failed: a GPU has fallen off the bus/),
      });
      await stub.script(['count 2', 'rc nvmlDeviceGetCount_v2 3']);
      await expect(r.read()).rejects.toThrow(/^nvmlDeviceGetCount_v2 failed: the GPU does not support this query/);
      await stub.script(['count 2', 'util 0 5', 'util 1 6']);
      expect((await r.read()).map((s) => s.utilisation)).toEqual([5, 6]);
    } finally {
      await r.close();
    }
  });

  it('garbage from the library is an error, not a reading', async () => {
    await stub.script(['count 1']);
    const r = await reader();
    try {
      await stub.script(['count 1000000']);
      await expect(r.read()).rejects.toMatchObject({
        code: 'NVML_GARBAGE',
        message: "nvmlDeviceGetCount_v2 reported 1000000 GPUs (more than 256): the library's answer is garbage",
      });
      await stub.script(['count 1', 'util 0 4000000000']);
      await expect(r.read()).rejects.toThrow('NVML (' + stub.library + ') reports utilisation 4000000000 for GPU 0 (not a percentage 0..100)');
      await stub.script(['count 1', 'unterminated-uuid']);
      await expect(r.read()).rejects.toThrow('nvmlDeviceGetUUID(GPU 0) returned an unterminated string');
      await stub.script(['count 0']);
      await expect(r.read()).rejects.toThrow(`NVML (${stub.library}) lists no GPU`);
    } finally {
      await r.close();
    }
  });

  it('a reading that hangs in the driver rejects at the timeout without stalling the event loop or the libuv pool; the reader then fails fast', async () => {
    await stub.script(['count 1', 'util 0 50']);
    const r = await reader();
    await stub.script(['count 1', 'hang nvmlDeviceGetUtilizationRates']);
    const started = performance.now();
    const reading = r.read();
    await stub.waitForHang('nvmlDeviceGetUtilizationRates');
    const worstDelay = await responsiveWhile(reading);
    await expect(reading).rejects.toThrow(
      `NVML (${stub.library}) did not answer a reading within ${timeoutMs} ms: a call is hung in the driver, so NVML is no longer read`,
    );
    const waited = performance.now() - started;
    // Safety nets only: the order of events above is the test.
    expect(worstDelay).toBeLessThan(timeoutMs);
    expect(waited).toBeGreaterThanOrEqual(timeoutMs - 5);
    // Broken for good: the next reading fails at once and does not queue behind the hung call.
    await stub.script(['count 1', 'util 0 50']);
    await expect(r.read()).rejects.toThrow(/is hung in the driver/);
    await r.close();
    expect(await stub.hung()).toEqual(['nvmlDeviceGetUtilizationRates']);
  });

  it('a hang in nvmlInit_v2 fails the open at the timeout; four hung sessions leave libuv pool work flowing', async () => {
    await stub.script(['hang nvmlInit_v2']);
    const opens = Array.from({ length: 4 }, () => reader());
    await stub.waitForHang('nvmlInit_v2');
    // Each session has its own thread: all four are stuck in nvmlInit_v2 at once.
    await expect.poll(async () => (await stub.hung()).filter((fn) => fn === 'nvmlInit_v2').length, { timeout: 30_000 }).toBe(4);
    await responsiveWhile(Promise.any(opens));
    for (const open of opens) await expect(open).rejects.toThrow(/did not answer nvmlInit_v2 within 1500 ms/);
  });

  it('close() returns at the timeout when nvmlShutdown hangs', async () => {
    await stub.script(['count 1']);
    const r = await reader();
    await stub.script(['hang nvmlShutdown']);
    await r.close();
    expect(await stub.hung()).toContain('nvmlShutdown');
  });

  it('without the native addon, NVML says why it cannot be read', async () => {
    const saved = process.env.TENDER_NATIVE;
    process.env.TENDER_NATIVE = '0';
    try {
      await expect(reader()).rejects.toThrow("NVML is read through tender's native addon, which is unavailable: disabled by TENDER_NATIVE=0");
    } finally {
      if (saved === undefined) delete process.env.TENDER_NATIVE;
      else process.env.TENDER_NATIVE = saved;
    }
  });

  it('a process whose NVML call hangs for good still exits by itself', async () => {
    // dist/ is what bin/tender.js runs (npm run build); the child is a plain node process.
    const script = `
      const { openNvmlReader } = await import(${JSON.stringify(path.join(repoRoot, 'dist/polite/gpu-nvml.js'))});
      const r = await openNvmlReader({ library: ${JSON.stringify(stub.library)}, timeoutMs: 300 });
      await r.read().catch((err) => console.log(err.message));
      await r.close();`;
    await stub.script(['count 1', 'hang nvmlDeviceGetUtilizationRates']);
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const safety = setTimeout(() => child.kill('SIGKILL'), 30_000);
    const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.once('close', (c, s) => resolve([c, s])));
    clearTimeout(safety);
    expect({ code, signal, out }).toEqual({ code: 0, signal: null, out: expect.stringMatching(/did not answer a reading within 300 ms/) });
  });
});
