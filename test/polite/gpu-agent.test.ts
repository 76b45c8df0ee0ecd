/**
 * GPU backoff in the node agent (in-process Agent, real API server, a local repository): the
 * config's gpuSource names the stub libnvidia-ml (test/fixtures/nvml-stub.c), which the agent opens
 * at start; the stub's scripted utilisation pauses and resumes reading, seen through GET /v1/limits.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { parsePolicy } from '../../src/agent/policy.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStorage } from '../../src/storage/fs.js';
import { type NvmlStub, buildNvmlStub, waitFor } from '../helpers/gpu-stubs.js';
import { createNamespace, memoryLogger, randomName, testKubeConfig } from '../helpers/kube.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'tender-gpu-agent-'));
const { logger, lines } = memoryLogger();
let agent: Agent;
let base: string;
let stub: NvmlStub;

async function get(url: string): Promise<{ json: any; text: string }> {
  const res = await fetch(base + url);
  const text = await res.text();
  return { text, json: res.headers.get('content-type')?.includes('json') ? JSON.parse(text) : undefined };
}

beforeAll(async () => {
  const kc = testKubeConfig();
  const ns = await createNamespace(kc);
  stub = await buildNvmlStub(tmp);
  await stub.script(['count 2', 'util 0 5', 'util 1 0']);
  const configFile = path.join(tmp, 'policy.yaml');
  writeFileSync(configFile, `namespaces: [${ns}]\nschedule: "0 0 1 1 *"\ngpuSource: nvml=${stub.library}\npoliteness:\n  gpuBackoff: 80\n  gpuHold: 1s\n`);
  const procPressure = path.join(tmp, 'proc-pressure');
  mkdirSync(procPressure);
  const repoDir = path.join(tmp, 'repo');
  await (await Repository.init(new FsStorage(repoDir), 'pw')).close();
  agent = new Agent({
    nodeName: randomName('node'),
    podsDir: path.join(tmp, 'pods'),
    kubeConfig: kc,
    listen: '127.0.0.1:0',
    configFile,
    stateDir: path.join(tmp, 'state'),
    repository: { url: repoDir, password: async () => 'pw' },
    logger,
    cgroupRoot: path.join(tmp, 'cgroup'),
    procPressure,
  });
  const { port } = await agent.start();
  base = `http://127.0.0.1:${port}`;
});

afterAll(async () => {
  await agent?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe('agent GPU backoff (stub NVML)', () => {
  it('opens the gpuSource of the config at start: one log line, and /metrics says which source', async () => {
    const found = lines.filter((l) => typeof l.msg === 'string' && /^(GPU utilisation from NVML|no GPU found)/.test(l.msg));
    expect(found.map((l) => l.msg)).toEqual([`GPU utilisation from NVML (${stub.library}): 2 GPUs (GPU-00000000-0000-0000-0000-000000000000 5%, GPU-00000000-0000-0000-0000-000000000001 0%)`]);
    const metrics = (await get('/metrics')).text;
    expect(metrics).toContain('tender_gpu_source_info{source="nvml"} 1');
    expect(metrics).toContain('tender_gpus 2');
  });

  it('a busy GPU pauses reading for every run; once idle for gpuHold, reading goes back to full speed', async () => {
    await stub.script(['count 2', 'util 0 5', 'util 1 93']);
    const paused = await waitFor(async () => {
      const { json } = await get('/v1/limits');
      return json.read.state === 'paused' ? json.read : undefined;
    }, 'reading to pause');
    expect(paused).toMatchObject({ cause: 'gpu', reason: expect.stringMatching(/GPU 1 busy 93%/) });
    await stub.script(['count 2', 'util 0 5', 'util 1 1']);
    await waitFor(async () => ((await get('/v1/limits')).json.read.state === 'full' ? true : undefined), 'reading to resume');
  });

  it('a hung NVML call turns GPU backoff off with one log line; the agent keeps serving', async () => {
    await stub.script(['count 2', 'hang nvmlDeviceGetUtilizationRates']);
    await stub.waitForHang('nvmlDeviceGetUtilizationRates');
    const failed = await waitFor(
      async () => lines.find((l) => typeof l.msg === 'string' && l.msg.startsWith('the nvml GPU source failed')),
      'the failure to be logged',
    );
    expect(failed.msg).toMatch(/did not answer a reading within 1500 ms: a call is hung in the driver/);
    expect((await get('/v1/limits')).json.read.state).toBe('full');
  });
});

describe('gpuSource in the agent config', () => {
  it('is one source with its library, command or URL; anything else is rejected naming the key', () => {
    expect(parsePolicy('gpuSource: dcgm=http://127.0.0.1:9400/metrics').gpuSource).toEqual({ sources: ['dcgm'], dcgmUrl: 'http://127.0.0.1:9400/metrics' });
    expect(parsePolicy('gpuSource: nvidia-smi').gpuSource).toEqual({ sources: ['nvidia-smi'] });
    expect(parsePolicy('cacheNeutral: true').gpuSource).toBeUndefined();
    expect(() => parsePolicy('gpuSource: rocm')).toThrow('config: gpuSource: "rocm" is not a GPU source (expected nvml[=LIBRARY], nvidia-smi[=PATH] or dcgm=URL)');
    expect(() => parsePolicy('gpuSource: 5')).toThrow('config: gpuSource must be a string: nvml[=LIBRARY], nvidia-smi[=PATH] or dcgm=URL');
  });
});
