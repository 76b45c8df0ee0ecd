/**
 * Politeness in the node agent (in-process Agent, real API server, a local repository): the
 * config's politeness section, GET/PUT /v1/limits, the /metrics gauges, a config change taking
 * over from API overrides, and pressure backoff on the PSI of the pod being read, found by its
 * UID under a cgroup root laid out as the kubelet's systemd driver makes it (the test writes the
 * pod's io.pressure, so the trainer's stall is under its control).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStorage } from '../../src/storage/fs.js';
import { writeRandomFile } from '../helpers/cli.js';
import { createNamespace, createPod, emptyDir, memoryLogger, randomName, testKubeConfig, volumeDir } from '../helpers/kube.js';

const MiB = 2 ** 20;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'tender-polite-agent-'));
let kc: KubeConfig;
let ns: string;
let agent: Agent;
let base: string;
const configFile = path.join(tmp, 'policy.yaml');
const cgroupRoot = path.join(tmp, 'cgroup');
const procPressure = path.join(tmp, 'proc-pressure');
const { logger, lines } = memoryLogger();
const nodeName = randomName('node');

const pressure = (total: number) => `some avg10=0.00 avg60=0.00 avg300=0.00 total=${total}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n`;

async function call(method: string, url: string, body?: unknown): Promise<{ status: number; json: any; text: string }> {
  const res = await fetch(base + url, { method, ...(body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {}) });
  const text = await res.text();
  return { status: res.status, text, json: res.headers.get('content-type')?.includes('json') ? JSON.parse(text) : undefined };
}

/** Polls `check` until truthy (a bound on failure, not a wait for success). */
async function until<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  kc = testKubeConfig();
  ns = await createNamespace(kc);
  mkdirSync(procPressure);
  for (const r of ['io', 'cpu', 'memory']) writeFileSync(path.join(procPressure, r), pressure(0));
  writeFileSync(configFile, `namespaces: [${ns}]\nschedule: "0 0 1 1 *"\npoliteness:\n  readLimit: 4MiB\n  uploadLimit: 64MiB\n  pressureBackoff: io=20\n  readFloor: 256KiB\n`);
  const repoDir = path.join(tmp, 'repo');
  await (await Repository.init(new FsStorage(repoDir), 'pw')).close();
  agent = new Agent({
    nodeName,
    podsDir: path.join(tmp, 'pods'),
    kubeConfig: kc,
    listen: '127.0.0.1:0',
    configFile,
    stateDir: path.join(tmp, 'state'),
    repository: { url: repoDir, password: async () => 'pw' },
    logger,
    cgroupRoot,
    procPressure,
  });
  const { port } = await agent.start();
  base = `http://127.0.0.1:${port}`;
});

afterAll(async () => {
  await agent?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe('agent politeness', () => {
  it('GET /v1/limits: the config in force, what reading does, the box; /metrics has the gauges', async () => {
    const r = await call('GET', '/v1/limits');
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({
      read: { limit: 4 * MiB, rate: 4 * MiB, state: 'full', cause: 'limit', reason: 'read limit' },
      upload: { limit: 64 * MiB },
      pressureBackoff: { io: 20 },
      readFloor: 256 * 1024,
      overrides: {},
      box: { version: expect.any(Number), workers: expect.any(Number), cpusAllowed: os.availableParallelism() },
    });
    const m = (await call('GET', '/metrics')).text;
    expect(m).toContain(`tender_read_limit_bytes_per_second ${4 * MiB}`);
    expect(m).toContain(`tender_read_rate_limit_bytes_per_second ${4 * MiB}`);
    expect(m).toContain(`tender_upload_limit_bytes_per_second ${64 * MiB}`);
    expect(m).toContain('tender_read_throttle_state{state="full"} 1');
    expect(m).toContain('tender_read_throttle_state{state="paused"} 0');
    expect(m).toContain('tender_read_throttle_cause{cause="limit"} 1');
    expect(m).toMatch(/tender_cgroup_info\{version="\d",path="[^"]*"\} 1/);
    expect(m).toMatch(/tender_workers \d+/);
    expect(lines.some((l) => typeof l.msg === 'string' && l.msg.startsWith('box: '))).toBe(true);
  });

  it('PUT /v1/limits changes the shared budgets at once; bad input is a 400 naming the field', async () => {
    const ok = await call('PUT', '/v1/limits', { readLimit: '8MiB', uploadLimit: null });
    expect(ok.status).toBe(200);
    expect(ok.json).toMatchObject({ read: { limit: 8 * MiB, rate: 8 * MiB, state: 'full' }, upload: { limit: null }, overrides: { readLimit: 8 * MiB } });
    expect((await call('GET', '/metrics')).text).toContain('tender_upload_limit_bytes_per_second +Inf');
    const cases: Array<[unknown, number, string]> = [
      [{ readLimit: 'fast' }, 400, 'field "readLimit": "fast" is not a size'],
      [{ readLimit: -3 }, 400, 'field "readLimit" must be a size such as "200MiB"'],
      [{ speed: 1 }, 400, 'unknown field "speed"'],
      [{}, 400, 'nothing to change'],
    ];
    for (const [body, status, error] of cases) {
      const r = await call('PUT', '/v1/limits', body);
      expect(r.status, JSON.stringify(body)).toBe(status);
      expect(r.json.error).toContain(error);
      expect(r.json.hint).toContain('200MiB');
    }
    expect((await call('DELETE', '/v1/limits')).status).toBe(405);
  });

  it('the pressure of the pod being read (its own cgroup) throttles the run, and every change is logged and counted', async () => {
    const pod = await createPod(kc, ns, { name: 'trainer', nodeName, volumes: [emptyDir('ckpt')], annotations: { 'tender.io/backup-volumes': 'ckpt' } });
    const uid = pod.metadata!.uid!;
    const podCgroup = path.join(cgroupRoot, 'kubepods.slice', 'kubepods-burstable.slice', `kubepods-burstable-pod${uid.replace(/-/g, '_')}.slice`);
    mkdirSync(podCgroup, { recursive: true });
    let total = 0;
    writeFileSync(path.join(podCgroup, 'io.pressure'), pressure(total));
    const dir = await volumeDir(path.join(tmp, 'pods'), pod, 'kubernetes.io~empty-dir/ckpt');
    await writeRandomFile(path.join(dir, 'weights.bin'), 64 * MiB);
    // The volume's directory came after the pod: touch the pod so discovery looks at it again.
    const core = kc.makeApiClient(CoreV1Api);
    const current = await core.readNamespacedPod({ name: 'trainer', namespace: ns });
    current.metadata!.labels = { touched: 'yes' };
    await core.replaceNamespacedPod({ name: 'trainer', namespace: ns, body: current });
    const post = await until('the volume to be protected', async () => {
      const r = await call('POST', '/v1/runs', { namespace: ns, pod: 'trainer', volume: 'ckpt' });
      return r.status === 202 && r;
    });
    const id = post.json.id as string;
    await until('the run to read', async () => (await call('GET', `/v1/runs/${id}`)).json.state === 'running');
    // The trainer stalls on I/O all the time from now on (its stall time grows as fast as the clock).
    let last = performance.now();
    const stalling = setInterval(() => {
      const now = performance.now();
      total += Math.round((now - last) * 1000);
      last = now;
      writeFileSync(path.join(podCgroup, 'io.pressure'), pressure(total));
    }, 50);
    const limits = await until('reading to be throttled', async () => {
      const r = await call('GET', '/v1/limits');
      return r.json.read.state !== 'full' && r.json;
    }, 10_000).finally(() => clearInterval(stalling));
    expect(limits.read.cause).toBe('pressure');
    expect(limits.read.reason).toMatch(/^io pressure \d+(\.\d)?% > 20%$/);
    expect(limits.read.rate).toBeLessThan(8 * MiB);
    const m = (await call('GET', '/metrics')).text;
    expect(m).toMatch(/tender_read_throttle_changes_total\{state="throttled",cause="pressure"\} [1-9]/);
    expect(m).toContain('tender_read_throttle_cause{cause="pressure"} 1');
    expect(lines.some((l) => l.component === 'polite' && l.cause === 'pressure' && String(l.msg).startsWith('reading throttled to'))).toBe(true);
    expect((await call('DELETE', `/v1/runs/${id}`)).status).toBe(202);
    await until('the run to end', async () => ['cancelled', 'failed', 'succeeded'].includes((await call('GET', `/v1/runs/${id}`)).json.state));
  });

  it("a change of the config's politeness section takes over from API overrides", async () => {
    writeFileSync(configFile, `namespaces: [${ns}]\nschedule: "0 0 1 1 *"\npoliteness:\n  readLimit: 2MiB\n  gpuBackoff: 80\n`);
    const limits = await until('the new config', async () => {
      const r = await call('GET', '/v1/limits');
      return r.json.read.limit === 2 * MiB && r.json;
    });
    expect(limits).toMatchObject({ upload: { limit: null }, overrides: {}, gpu: { busyPercent: 80, holdLowMs: 30_000, mode: 'pause' } });
    expect(limits.pressureBackoff).toBeUndefined();
    // No GPU source on this node: said once.
    await until('the no-GPU note', async () => lines.some((l) => l.msg === 'GPU backoff is on but there is no GPU source on this node: it does nothing'));
  });
});
