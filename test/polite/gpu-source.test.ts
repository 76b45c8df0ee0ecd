import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { type Logger, pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openGpuReader, parseGpuSource } from '../../src/polite/gpu-source.js';
import {
  type FakeDcgmExporter,
  type FakeNvidiaSmi,
  type NvmlStub,
  buildNvmlStub,
  dcgmText,
  fakeDcgmExporter,
  fakeNvidiaSmi,
} from '../helpers/gpu-stubs.js';

const timeoutMs = 1500;

let dir: string;
let nvml: NvmlStub;
let smi: FakeNvidiaSmi;
let dcgm: FakeDcgmExporter;
let missingLibrary: string;
let missingSmi: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tender-gpu-source-'));
  nvml = await buildNvmlStub(dir);
  smi = await fakeNvidiaSmi(dir);
  dcgm = await fakeDcgmExporter();
  missingLibrary = path.join(dir, 'missing', 'libnvidia-ml.so.1');
  missingSmi = path.join(dir, 'missing', 'nvidia-smi');
});

afterAll(async () => {
  await dcgm.close();
  await rm(dir, { recursive: true, force: true });
});

/** A pino logger whose lines the test reads. */
function capturingLogger(): { logger: Logger; lines: Array<{ level: number; msg: string; gpuSource?: string | null }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as { level: number; msg: string });
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), lines };
}

async function flushed(): Promise<void> {
  await new Promise((r) => setImmediate(r));
}

describe('openGpuReader', () => {
  it('takes NVML when it works, and describes what it found', async () => {
    await nvml.script(['count 2', 'util 0 10', 'util 1 20']);
    const { logger, lines } = capturingLogger();
    const reader = await openGpuReader({ nvmlLibrary: nvml.library, nvidiaSmi: smi.command, timeoutMs, logger });
    try {
      expect(reader?.source).toBe('nvml');
      expect(reader?.description).toBe(
        `NVML (${nvml.library}): 2 GPUs (GPU-00000000-0000-0000-0000-000000000000 10%, GPU-00000000-0000-0000-0000-000000000001 20%)`,
      );
      expect((await reader!.read()).map((s) => s.utilisation)).toEqual([10, 20]);
    } finally {
      await reader?.close();
    }
    await flushed();
    expect(lines.map((l) => l.msg)).toEqual([`GPU utilisation from ${reader!.description}`]);
  });

  it('falls back from a missing NVML to nvidia-smi, then to DCGM, then to none, saying once why', async () => {
    await smi.script(`echo '0, GPU-s, 55'\n`);
    dcgm.serve(dcgmText([66]));
    const base = { nvmlLibrary: missingLibrary, dcgmUrl: dcgm.url, timeoutMs };

    let log = capturingLogger();
    const fromSmi = await openGpuReader({ ...base, nvidiaSmi: smi.command, logger: log.logger });
    expect(fromSmi?.source).toBe('nvidia-smi');
    expect(await fromSmi!.read()).toEqual([{ index: 0, uuid: 'GPU-s', utilisation: 55 }]);
    await flushed();
    expect(log.lines).toHaveLength(1);
    expect(log.lines[0]!.msg).toMatch(
      new RegExp(`^GPU utilisation from nvidia-smi \\(${smi.command}\\): 1 GPU \\(GPU-s 55%\\) \\(NVML: cannot load ${missingLibrary}: .*\\)$`),
    );

    log = capturingLogger();
    const fromDcgm = await openGpuReader({ ...base, nvidiaSmi: missingSmi, logger: log.logger });
    expect(fromDcgm?.source).toBe('dcgm');
    expect(fromDcgm?.description).toBe(`DCGM (${dcgm.url}): 1 GPU (GPU-d0 66%)`);
    await flushed();
    expect(log.lines.map((l) => l.msg)).toEqual([
      expect.stringMatching(new RegExp(`\\(NVML: cannot load .*; nvidia-smi: ${missingSmi} not found\\)$`)),
    ]);

    dcgm.serve({ status: 404, body: 'not found' });
    log = capturingLogger();
    expect(await openGpuReader({ ...base, nvidiaSmi: missingSmi, logger: log.logger })).toBeNull();
    await flushed();
    expect(log.lines).toHaveLength(1);
    expect(log.lines[0]).toMatchObject({ level: 30, gpuSource: null });
    expect(log.lines[0]!.msg).toMatch(
      new RegExp(
        `^no GPU found \\(NVML: cannot load ${missingLibrary}: .*; nvidia-smi: ${missingSmi} not found; DCGM: GET ${dcgm.url} answered HTTP 404 Not Found\\): GPU backoff is off$`,
      ),
    );
  });

  it('without a DCGM URL, DCGM is not tried; a broken source is passed over like a missing one', async () => {
    await nvml.script(['rc nvmlInit_v2 9']);
    await smi.script(`echo 'garbage'\n`);
    const { logger, lines } = capturingLogger();
    expect(await openGpuReader({ nvmlLibrary: nvml.library, nvidiaSmi: smi.command, timeoutMs, logger })).toBeNull();
    await flushed();
    expect(lines.map((l) => l.msg)).toEqual([
      `no GPU found (NVML: nvmlInit_v2 failed: the NVIDIA driver is not loaded (NVML_ERROR_DRIVER_NOT_LOADED; NVML says "stub error 9"); ` +
        `nvidia-smi: ${smi.command} output line 1 has 1 fields: "garbage" (expected "index, uuid, utilization.gpu")): GPU backoff is off`,
    ]);
  });

  it('an NVML that hangs costs the timeout, then nvidia-smi is used', async () => {
    await nvml.script(['count 1', 'hang nvmlDeviceGetUtilizationRates']);
    await smi.script(`echo '0, GPU-s, 1'\n`);
    const { logger } = capturingLogger();
    const reader = await openGpuReader({ nvmlLibrary: nvml.library, nvidiaSmi: smi.command, timeoutMs, logger });
    expect(reader?.source).toBe('nvidia-smi');
    expect(await nvml.hung()).toContain('nvmlDeviceGetUtilizationRates');
  });

  it('only the chosen sources are tried', async () => {
    await nvml.script(['count 1', 'util 0 9']);
    dcgm.serve({ status: 404, body: 'not found' });
    const { logger, lines } = capturingLogger();
    const reader = await openGpuReader({ sources: ['dcgm'], nvmlLibrary: nvml.library, dcgmUrl: dcgm.url, timeoutMs, logger });
    expect(reader).toBeNull();
    await flushed();
    expect(lines.map((l) => l.msg)).toEqual([`no GPU found (DCGM: GET ${dcgm.url} answered HTTP 404 Not Found): GPU backoff is off`]);
  });
});

describe('parseGpuSource', () => {
  it('names one source, with its library, command or URL', () => {
    expect(parseGpuSource('nvml')).toEqual({ sources: ['nvml'] });
    expect(parseGpuSource('nvml=/opt/nvidia/libnvidia-ml.so.1')).toEqual({ sources: ['nvml'], nvmlLibrary: '/opt/nvidia/libnvidia-ml.so.1' });
    expect(parseGpuSource('nvidia-smi')).toEqual({ sources: ['nvidia-smi'] });
    expect(parseGpuSource('nvidia-smi=/usr/bin/nvidia-smi')).toEqual({ sources: ['nvidia-smi'], nvidiaSmi: '/usr/bin/nvidia-smi' });
    expect(parseGpuSource('dcgm=http://10.0.0.5:9400/metrics')).toEqual({ sources: ['dcgm'], dcgmUrl: 'http://10.0.0.5:9400/metrics' });
    expect(() => parseGpuSource('dcgm')).toThrow("dcgm needs the exporter's URL, e.g. dcgm=http://127.0.0.1:9400/metrics");
    expect(() => parseGpuSource('dcgm=10.0.0.5:9400')).toThrow('"10.0.0.5:9400" is not an http(s) URL of a DCGM exporter');
    expect(() => parseGpuSource('nvml=')).toThrow('"nvml=" names nothing after "=" (expected nvml[=LIBRARY], nvidia-smi[=PATH] or dcgm=URL)');
    expect(() => parseGpuSource('rocm')).toThrow('"rocm" is not a GPU source (expected nvml[=LIBRARY], nvidia-smi[=PATH] or dcgm=URL)');
  });
});
