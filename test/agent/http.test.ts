/**
 * The agent's HTTP API on a real server (node:http on a free loopback port) with a real runner
 * whose backups are fakes: status codes, error messages, bearer tokens, and the metrics text.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentHttpServer, type HttpVolume, type Readiness, TokenSource, isLoopback, parseListen } from '../../src/agent/http.js';
import { AgentMetrics } from '../../src/agent/metrics.js';
import { type ExecuteContext, type ExecuteResult, type RunRecord, Runner } from '../../src/agent/runs.js';

const logger = pino({ level: 'silent' });

interface Harness {
  base: string;
  server: AgentHttpServer;
  runner: Runner;
  metrics: AgentMetrics;
  volumes: HttpVolume[];
  readiness: Readiness;
  /** Settle the running fake backup. */
  release: (id: string, result?: ExecuteResult | Error) => void;
  started: (id: string) => Promise<ExecuteContext>;
}

let dir: string;
let harness: Harness | undefined;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tender-http-'));
});
afterEach(async () => {
  if (harness) {
    await harness.runner.stop(100);
    await harness.server.close();
  }
  harness = undefined;
  await rm(dir, { recursive: true, force: true });
});

async function start(options: { listen?: string; token?: TokenSource } = {}): Promise<Harness> {
  const pending = new Map<string, { resolve: (r: ExecuteResult) => void; reject: (e: Error) => void; ctx: ExecuteContext }>();
  const startWaiters = new Map<string, (ctx: ExecuteContext) => void>();
  const runner = new Runner({
    logger,
    execute: (run: Readonly<RunRecord>, ctx: ExecuteContext) =>
      new Promise<ExecuteResult>((resolve, reject) => {
        pending.set(run.id, { resolve, reject, ctx });
        startWaiters.get(run.id)?.(ctx);
        ctx.signal.addEventListener('abort', () => reject(new Error('the operation was cancelled')));
      }),
  });
  const volumes: HttpVolume[] = [
    { namespace: 'ml', pod: 'trainer-0', volume: 'ckpt', identity: 'ml/StatefulSet/trainer/0/ckpt', path: '/host_pods/u1/volumes/kubernetes.io~empty-dir/ckpt' },
    { namespace: 'ml', pod: 'trainer-0', volume: 'data', identity: 'pvc:ml/data', problem: 'the PVC data is not bound' },
  ];
  const h = {} as Harness;
  h.readiness = { ready: true, reasons: [] };
  const metrics = new AgentMetrics({
    queueDepth: () => runner.queueDepth,
    running: () => runner.runningCount,
    volumes: () => volumes,
    lastSuccess: (identity) => {
      const at = runner.volumeState(identity)?.lastSuccessAt;
      return at ? Date.parse(at) : undefined;
    },
    repositoryReady: () => h.readiness.ready,
  });
  runner.on('finished', (run: RunRecord) => metrics.runFinished(run));
  const server = new AgentHttpServer({
    listen: options.listen ?? '127.0.0.1:0',
    runner,
    volumes: {
      find: (ns, pod, volume) => volumes.find((v) => v.namespace === ns && v.pod === pod && v.volume === volume),
      list: () => volumes,
    },
    readiness: () => h.readiness,
    metrics,
    ...(options.token ? { token: options.token } : {}),
    nodeName: 'node-a',
    logger,
  });
  const { port } = await server.start();
  runner.setReady(true);
  Object.assign(h, {
    base: `http://127.0.0.1:${port}`,
    server,
    runner,
    metrics,
    volumes,
    release: (id: string, result: ExecuteResult | Error = { snapshotId: `snap-${id}`, summary: { files: 1, dirs: 1, filesRead: 1, filesUnchanged: 0, bytesRead: 1000, totalBytes: 1000, blobsAdded: 1, bytesAdded: 600, bytesStored: 300, errors: 0, durationMs: 100 } }) => {
      const p = pending.get(id)!;
      if (result instanceof Error) p.reject(result);
      else p.resolve(result);
    },
    started: (id: string) => {
      const p = pending.get(id);
      if (p) return Promise.resolve(p.ctx);
      return new Promise<ExecuteContext>((resolve) => startWaiters.set(id, resolve));
    },
  });
  harness = h;
  return h;
}

async function call(h: Harness, method: string, url: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(h.base + url, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

const ckpt = { namespace: 'ml', pod: 'trainer-0', volume: 'ckpt' };

/** Parses the Prometheus text exposition format strictly enough to catch malformed output. */
function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('# HELP ')) continue;
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type) {
      types.set(type[1]!, type[2]!);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${JSON.stringify(line)}`);
    // Go's ParseFloat (Prometheus) takes NaN and Inf in any case; prom-client writes "Nan".
    const v = m[3]!.toLowerCase();
    const value = v === '+inf' || v === 'inf' ? Infinity : v === '-inf' ? -Infinity : v === 'nan' ? NaN : Number(m[3]);
    if (Number.isNaN(value) && v !== 'nan') throw new Error(`bad value in ${JSON.stringify(line)}`);
    const family = m[1]!.replace(/_(bucket|sum|count|total|created)$/, '');
    if (!types.has(m[1]!) && !types.has(family) && !types.has(m[1]!.replace(/_(bucket|sum|count)$/, ''))) throw new Error(`sample without a TYPE: ${line}`);
    samples.set(m[1]! + (m[2] ?? ''), value);
  }
  return samples;
}

describe('agent HTTP API', () => {
  it('serves health, readiness with reasons, volumes and 404/405 for the rest', async () => {
    const h = await start();
    expect(await call(h, 'GET', '/healthz')).toMatchObject({ status: 200, json: { status: 'ok' } });
    expect(await call(h, 'GET', '/readyz')).toMatchObject({ status: 200, json: { ready: true } });
    h.readiness = { ready: false, reasons: ['repository s3://b/p: no repository at s3://b/p (run `tender init`)'] };
    const r = await call(h, 'GET', '/readyz');
    expect(r.status).toBe(503);
    expect(r.json.reasons[0]).toMatch(/tender init/);
    const v = await call(h, 'GET', '/v1/volumes');
    expect(v.json).toMatchObject({ node: 'node-a', volumes: [{ volume: 'ckpt' }, { volume: 'data' }] });
    const nf = await call(h, 'GET', '/v2/nothing');
    expect(nf.status).toBe(404);
    expect(nf.json.error).toBe('no such endpoint: GET /v2/nothing');
    const na = await call(h, 'PUT', '/v1/runs');
    expect(na.status).toBe(405);
    expect(na.headers.get('allow')).toBe('GET, POST');
    // Not ready: a run is refused with why.
    const nr = await call(h, 'POST', '/v1/runs', ckpt);
    expect(nr.status).toBe(503);
    expect(nr.json.error).toMatch(/not ready: .*tender init/);
  });

  it('queues a run on POST (202 + id), lists it, reports its progress, and cancels it on DELETE', async () => {
    const h = await start();
    const posted = await call(h, 'POST', '/v1/runs', ckpt);
    expect(posted.status).toBe(202);
    const id: string = posted.json.id;
    expect(id).toMatch(/^[0-9a-z]+-[0-9a-f]{8}$/);
    expect(posted.headers.get('location')).toBe(`/v1/runs/${id}`);
    expect(posted.json).toMatchObject({ ...ckpt, identity: 'ml/StatefulSet/trainer/0/ckpt', trigger: 'api' });
    const ctx = await h.started(id);
    ctx.progress({ bytesDone: 5, filesDone: 1, totalBytes: 10 });
    expect((await call(h, 'GET', `/v1/runs/${id}`)).json).toMatchObject({ id, state: 'running', progress: { bytesDone: 5, filesDone: 1, totalBytes: 10 } });
    // A second POST while it runs: a new run, queued; a third: the same queued one.
    const second = await call(h, 'POST', '/v1/runs', ckpt);
    const third = await call(h, 'POST', '/v1/runs', ckpt);
    expect(second.status).toBe(202);
    expect(third.json.id).toBe(second.json.id);
    expect(second.json.state).toBe('queued');
    const list = await call(h, 'GET', '/v1/runs?pod=trainer-0');
    expect(list.json.runs.map((r: RunRecord) => r.state)).toEqual(['running', 'queued']);
    expect((await call(h, 'GET', '/v1/runs?state=bogus')).status).toBe(400);
    // Cancel the queued one: at once (200); the running one: 202, then cancelled.
    const cq = await call(h, 'DELETE', `/v1/runs/${second.json.id}`);
    expect(cq).toMatchObject({ status: 200, json: { state: 'cancelled' } });
    const finished = new Promise<RunRecord>((resolve) => h.runner.once('finished', resolve));
    const cr = await call(h, 'DELETE', `/v1/runs/${id}`);
    expect(cr.status).toBe(202);
    expect((await finished).state).toBe('cancelled');
    const got = await call(h, 'GET', `/v1/runs/${id}`);
    expect(got.json).toMatchObject({ state: 'cancelled', error: `cancelled by DELETE /v1/runs/${id}` });
    const again = await call(h, 'DELETE', `/v1/runs/${id}`);
    expect(again.status).toBe(409);
    expect(again.json.error).toBe(`run ${id} has already finished (cancelled)`);
    const unknown = await call(h, 'GET', '/v1/runs/nope');
    expect(unknown.status).toBe(404);
    expect(unknown.json.error).toBe('no run "nope" on node node-a');
    expect((await call(h, 'DELETE', '/v1/runs/nope')).status).toBe(404);
  });

  it('names the field or the volume that is wrong', async () => {
    const h = await start();
    const cases: Array<[unknown, number, RegExp]> = [
      [{ pod: 'trainer-0', volume: 'ckpt' }, 400, /^field "namespace" is missing$/],
      [{ namespace: 'ml', pod: 7, volume: 'ckpt' }, 400, /^field "pod" must be a non-empty string$/],
      [{ namespace: 'ml', pod: 'trainer-0', volume: '' }, 400, /^field "volume" must be a non-empty string$/],
      ['{"namespace": ', 400, /^the request body is not JSON/],
      ['', 400, /request body is empty/],
      ['[1]', 400, /must be a JSON object/],
      [{ namespace: 'ml', pod: 'trainer-9', volume: 'ckpt' }, 404, /^no protected volume ckpt of pod ml\/trainer-9 on node node-a$/],
      [{ namespace: 'ml', pod: 'trainer-0', volume: 'data' }, 409, /^volume data of pod ml\/trainer-0 cannot be backed up: the PVC data is not bound$/],
    ];
    for (const [body, status, message] of cases) {
      const r = await call(h, 'POST', '/v1/runs', body);
      expect(r.status, JSON.stringify(body)).toBe(status);
      expect(r.json.error, JSON.stringify(body)).toMatch(message);
    }
    const big = await call(h, 'POST', '/v1/runs', JSON.stringify({ namespace: 'x'.repeat(70 * 1024) }));
    expect(big.status).toBe(413);
  });

  it('needs the bearer token for POST and DELETE when one is configured (and follows its rotation)', async () => {
    const tokenFile = path.join(dir, 'token');
    await writeFile(tokenFile, 's3cret\n');
    const token = await TokenSource.open(tokenFile, 0);
    const h = await start({ token });
    const none = await call(h, 'POST', '/v1/runs', ckpt);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(none.json.error).toMatch(/Authorization: Bearer/);
    const wrong = await call(h, 'POST', '/v1/runs', ckpt, { authorization: 'Bearer nope' });
    expect(wrong.status).toBe(403);
    expect(wrong.json.error).toBe('the bearer token is wrong');
    expect((await call(h, 'DELETE', '/v1/runs/x', undefined, { authorization: 'Basic czNjcmV0' })).status).toBe(401);
    const ok = await call(h, 'POST', '/v1/runs', ckpt, { authorization: 'Bearer s3cret' });
    expect(ok.status).toBe(202);
    // Reads need no token.
    expect((await call(h, 'GET', `/v1/runs/${ok.json.id}`)).status).toBe(200);
    // The Secret is rotated: the new token works, the old one no longer does.
    await new Promise((resolve) => setTimeout(resolve, 20));
    await writeFile(tokenFile, 'rotated\n');
    expect((await call(h, 'DELETE', `/v1/runs/${ok.json.id}`, undefined, { authorization: 'Bearer s3cret' })).status).toBe(403);
    expect((await call(h, 'DELETE', `/v1/runs/${ok.json.id}`, undefined, { authorization: 'Bearer rotated' })).status).toBe(202);
    const samples = parseMetrics((await call(h, 'GET', '/metrics')).text);
    expect(samples.get('tender_agent_errors_total{kind="auth"}')).toBe(4);
  });

  it('without a token: mutations on loopback only; beyond loopback they are refused, reads still served', async () => {
    const h = await start({ listen: '0.0.0.0:0' });
    expect(h.server.mutations).toBe('refused');
    const r = await call(h, 'POST', '/v1/runs', ckpt);
    expect(r.status).toBe(403);
    expect(r.json.error).toMatch(/disabled: the agent has no API token and listens on 0\.0\.0\.0:0/);
    expect(r.json.hint).toMatch(/--token-file/);
    expect((await call(h, 'GET', '/healthz')).status).toBe(200);
    expect((await call(h, 'GET', '/v1/runs')).status).toBe(200);
    await h.runner.stop(100);
    await h.server.close();
    const local = await start({ listen: '127.0.0.1:0' });
    expect(local.server.mutations).toBe('loopback');
    expect((await call(local, 'POST', '/v1/runs', ckpt)).status).toBe(202);
  });

  it('exposes Prometheus metrics: runs, bytes, durations, queue, last success per volume, process metrics', async () => {
    const h = await start();
    const posted = await call(h, 'POST', '/v1/runs', ckpt);
    await h.started(posted.json.id);
    let samples = parseMetrics((await call(h, 'GET', '/metrics')).text);
    expect(samples.get('tender_runs_running')).toBe(1);
    expect(samples.get('tender_run_queue_depth')).toBe(0);
    expect(samples.get('tender_protected_volumes')).toBe(2);
    expect(samples.get('tender_volumes_unavailable')).toBe(1);
    expect([...samples.keys()].some((k) => k.startsWith('tender_volume_last_success_timestamp_seconds{'))).toBe(false);
    const finished = new Promise<RunRecord>((resolve) => h.runner.once('finished', resolve));
    h.release(posted.json.id);
    await finished;
    // A failing run is counted by reason.
    const failing = await call(h, 'POST', '/v1/runs', ckpt);
    await h.started(failing.json.id);
    const failed = new Promise<RunRecord>((resolve) => h.runner.once('finished', resolve));
    h.release(failing.json.id, Object.assign(new Error('the volume vanished'), { code: 'VOLUME_UNAVAILABLE' }));
    await failed;
    const res = await call(h, 'GET', '/metrics');
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    samples = parseMetrics(res.text);
    expect(samples.get('tender_runs_total{trigger="api",outcome="succeeded"}')).toBe(1);
    expect(samples.get('tender_runs_total{trigger="api",outcome="failed"}')).toBe(1);
    expect(samples.get('tender_run_failures_total{reason="volume_unavailable"}')).toBe(1);
    expect(samples.get('tender_backup_bytes_read_total')).toBe(1000);
    expect(samples.get('tender_backup_bytes_new_total')).toBe(600);
    expect(samples.get('tender_backup_bytes_stored_total')).toBe(300);
    expect(samples.get('tender_backup_throughput_bytes_per_second')).toBe(10_000);
    expect(samples.get('tender_run_duration_seconds_count{outcome="succeeded"}')).toBe(1);
    const last = samples.get('tender_volume_last_success_timestamp_seconds{namespace="ml",pod="trainer-0",volume="ckpt"}');
    expect(last).toBeGreaterThan(Date.now() / 1000 - 60);
    expect(last).toBeLessThanOrEqual(Date.now() / 1000);
    expect(samples.get('tender_repository_ready')).toBe(1);
    expect(samples.has('process_resident_memory_bytes')).toBe(true);
    expect(samples.has('nodejs_eventloop_lag_seconds')).toBe(true);
    // A volume that went away takes its series with it.
    h.volumes.splice(0, 1);
    samples = parseMetrics((await call(h, 'GET', '/metrics')).text);
    expect([...samples.keys()].some((k) => k.startsWith('tender_volume_last_success_timestamp_seconds{'))).toBe(false);
  });
});

describe('listen addresses', () => {
  it('parses HOST:PORT, :PORT, PORT and [v6]:PORT, and knows loopback', () => {
    expect(parseListen(':8085')).toEqual({ host: undefined, port: 8085 });
    expect(parseListen('8085')).toEqual({ host: undefined, port: 8085 });
    expect(parseListen('127.0.0.1:9')).toEqual({ host: '127.0.0.1', port: 9 });
    expect(parseListen('[::1]:8085')).toEqual({ host: '::1', port: 8085 });
    expect(parseListen('localhost:1')).toEqual({ host: 'localhost', port: 1 });
    expect(() => parseListen('nope')).toThrow(/--listen "nope" is not an address/);
    expect(() => parseListen(':99999')).toThrow(/not an address/);
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', 'localhost']) expect(isLoopback(h), h).toBe(true);
    for (const h of [undefined, '0.0.0.0', '::', '10.0.0.1', 'node-a']) expect(isLoopback(h), String(h)).toBe(false);
  });

  it('refuses an empty or missing token file, naming it', async () => {
    await writeFile(path.join(dir, 'empty'), '\n');
    await expect(TokenSource.open(path.join(dir, 'empty'))).rejects.toThrow(/token file .*empty is empty/);
    await expect(TokenSource.open(path.join(dir, 'missing'))).rejects.toThrow(/cannot read the API token file .*missing/);
  });
});
