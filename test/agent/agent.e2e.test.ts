/**
 * The real `node bin/tender.js agent` process against the real API server (test/setup/kube.ts)
 * and the real MinIO (test/setup/minio.ts), with a fake kubelet pods directory in a temp dir.
 *
 * One repository and one state directory for the whole file; the agent is started four times:
 *   1. on demand and by interval; another node's pod ignored; a pod recreated under a new name
 *      continues its volume's chain; restore by tags is byte-identical; SIGTERM stops it cleanly
 *   2. (storage held after one pack) DELETE cancels a running run; `tender check` is clean
 *   3. (storage held after one pack) SIGKILL mid-run
 *   4. reports the interrupted run, runs it again and stores only what was missing
 * Runs are followed through GET /v1/runs/{id}, and held runs through the storage hold's marker
 * file (TENDER_TEST_HOLD_*, see src/storage/stack.ts): nothing waits on a fixed sleep.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { RunRecord } from '../../src/agent/state.js';
import { assertSameTree, errorLine, jsonLines, makeTree, runTender, startTender, tenderOk, writeRandomFile } from '../helpers/cli.js';
import { createNamespace, createPod, deletePod, emptyDir, ownerRef, randomName, testKubeConfig, volumeDir } from '../helpers/kube.js';
import { s3TestUrl } from '../helpers/s3.js';
import { freePort } from '../setup/minio.js';

const token = 'e2e-token-0123456789';

class AgentProcess {
  readonly output: string[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly child: ChildProcess,
    readonly base: string,
  ) {
    const keep = (b: Buffer) => {
      this.output.push(b.toString('utf8'));
      if (this.output.length > 2000) this.output.splice(0, this.output.length - 2000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    child.stdin!.end();
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  log(): string {
    return this.output.join('').slice(-20_000);
  }

  async call(method: string, url: string, body?: unknown): Promise<{ status: number; json: any }> {
    const res = await fetch(this.base + url, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : undefined };
  }

  /** Polls `check` until it returns something truthy (a bound on failure, not a wait for success). */
  async until<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await check().catch(() => undefined);
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n--- agent output\n${this.log()}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  async run(id: string): Promise<RunRecord> {
    const r = await this.call('GET', `/v1/runs/${id}`);
    if (r.status !== 200) throw new Error(`GET /v1/runs/${id}: ${r.status} ${JSON.stringify(r.json)}`);
    return r.json as RunRecord;
  }

  /** Waits until the run has finished; returns its record. */
  async finished(id: string, timeoutMs = 60_000): Promise<RunRecord> {
    return this.until(`run ${id} to finish`, async () => {
      const run = await this.run(id);
      return ['succeeded', 'failed', 'cancelled', 'interrupted'].includes(run.state) && run;
    }, timeoutMs);
  }

  async post(namespace: string, pod: string, volume: string): Promise<string> {
    const r = await this.call('POST', '/v1/runs', { namespace, pod, volume });
    if (r.status !== 202) throw new Error(`POST /v1/runs: ${r.status} ${JSON.stringify(r.json)}\n${this.log()}`);
    return r.json.id as string;
  }

  async volume(namespace: string, pod: string, volume: string): Promise<any> {
    const r = await this.call('GET', '/v1/volumes');
    return (r.json.volumes as any[]).find((v) => v.namespace === namespace && v.pod === pod && v.volume === volume);
  }

  kill(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }
}

let kc: KubeConfig;
let ns: string;
let node: string;
let repo: string;
let work: string;
let podsDir: string;
let stateDir: string;
let configFile: string;
let tokenFile: string;
const agents: AgentProcess[] = [];

async function startAgent(env: Record<string, string> = {}, options: { repo?: string; ready?: boolean } = {}): Promise<AgentProcess> {
  const port = await freePort();
  const child = startTender(
    [
      '--repo', options.repo ?? repo,
      'agent',
      '--node-name', node,
      '--pods-dir', podsDir,
      '--kubeconfig', inject('kubeconfig'),
      '--listen', `127.0.0.1:${port}`,
      '--config', configFile,
      '--state-dir', stateDir,
      '--token-file', tokenFile,
    ],
    { env: { TENDER_LOG_LEVEL: 'info', ...env } },
  );
  const agent = new AgentProcess(child, `http://127.0.0.1:${port}`);
  agents.push(agent);
  if (options.ready === false) await agent.until('the agent to serve', async () => (await agent.call('GET', '/healthz')).status === 200);
  else await agent.until('the agent to be ready', async () => (await agent.call('GET', '/readyz')).status === 200);
  return agent;
}

/** Touch a pod (a label) so the agent evaluates it again now (its volume directory was created after it). */
async function touchPod(name: string): Promise<void> {
  const core = kc.makeApiClient(CoreV1Api);
  for (let attempt = 0; ; attempt++) {
    const pod = await core.readNamespacedPod({ name, namespace: ns });
    pod.metadata!.labels = { ...pod.metadata!.labels, touched: String(Date.now()) };
    try {
      await core.replaceNamespacedPod({ name, namespace: ns, body: pod });
      return;
    } catch (err) {
      if (attempt > 5) throw err;
    }
  }
}

/** A pod on `nodeName` with an emptyDir `ckpt` the agent should back up; returns it and the volume's directory. */
async function podWithVolume(name: string, options: { nodeName?: string; annotations?: Record<string, string>; job?: string; fill?: (dir: string) => Promise<void> } = {}): Promise<{ pod: V1Pod; dir: string }> {
  const pod = await createPod(kc, ns, {
    name,
    nodeName: options.nodeName ?? node,
    volumes: [emptyDir('ckpt'), emptyDir('scratch')],
    annotations: { 'tender.io/backup-volumes': 'ckpt', ...options.annotations },
    ...(options.job ? { ownerReferences: [ownerRef('Job', options.job, 'batch/v1')] } : {}),
  });
  const dir = await volumeDir(podsDir, pod, 'kubernetes.io~empty-dir/ckpt');
  await options.fill?.(dir);
  await touchPod(name);
  return { pod, dir };
}

async function snapshotsJson(...filter: string[]): Promise<Array<Record<string, any>>> {
  const r = await tenderOk(['--repo', repo, '--json', 'snapshots', ...filter]);
  const lines = jsonLines(r.stdout);
  // Either one JSON array or one object per line.
  return (lines.length === 1 && Array.isArray(lines[0]) ? lines[0] : lines) as Array<Record<string, any>>;
}

beforeAll(async () => {
  kc = testKubeConfig();
  ns = await createNamespace(kc);
  node = randomName('node');
  repo = s3TestUrl('agent');
  work = await mkdtemp(path.join(os.tmpdir(), 'tender-agent-e2e-'));
  podsDir = path.join(work, 'pods');
  stateDir = path.join(work, 'state');
  configFile = path.join(work, 'policy.yaml');
  tokenFile = path.join(work, 'token');
  await writeFile(tokenFile, `${token}\n`);
  // Only this namespace; volumes without an annotation schedule wait for 1 January (on demand only here).
  await writeFile(configFile, `namespaces: [${ns}]\nschedule: "0 0 1 1 *"\n`);
  await tenderOk(['--repo', repo, 'init']);
});

afterAll(async () => {
  for (const a of agents) if (a.child.exitCode === null && a.child.signalCode === null) a.kill('SIGKILL');
  await Promise.all(agents.map((a) => a.exited));
  if (work) await rm(work, { recursive: true, force: true });
});

describe('tender agent (real API server, real MinIO)', () => {
  let agent: AgentProcess;
  let ckptDir: string;
  let firstSnapshot: string;
  const identity = () => `${ns}/Job/ft/ckpt`;

  it('backs up an annotated volume of its node on demand, and ignores another node', async () => {
    agent = await startAgent();
    ({ dir: ckptDir } = await podWithVolume('ft-1', {
      job: 'ft',
      fill: (dir) =>
        makeTree(dir, {
          'model.bin': { type: 'file', random: 3 << 20 },
          'optimizer.bin': { type: 'file', random: 2 << 20 },
          'step.txt': '1200\n',
          logs: { type: 'dir', children: { 'a.log': 'hello\n', 'b.log': { type: 'file', pattern: 'x', size: 100_000 } } },
        }),
    }));
    await podWithVolume('elsewhere', { nodeName: randomName('other-node'), fill: (dir) => makeTree(dir, { f: 'x' }) });
    const v = await agent.until('ft-1/ckpt to be protected with a path', async () => {
      const v = await agent.volume(ns, 'ft-1', 'ckpt');
      return v?.path && v;
    });
    expect(v).toMatchObject({ identity: identity(), path: ckptDir });
    expect(v.tags).toEqual(expect.arrayContaining([`k8s.namespace=${ns}`, 'k8s.pod=ft-1', 'k8s.volume=ckpt', `k8s.node=${node}`]));
    // Only the annotated volume, only of this node.
    const all = (await agent.call('GET', '/v1/volumes')).json.volumes as any[];
    expect(all.map((x) => `${x.pod}/${x.volume}`)).toEqual(['ft-1/ckpt']);
    const other = await agent.call('POST', '/v1/runs', { namespace: ns, pod: 'elsewhere', volume: 'ckpt' });
    expect(other.status).toBe(404);
    expect(other.json.error).toBe(`no protected volume ckpt of pod ${ns}/elsewhere on node ${node}`);
    // A wrong token: refused, counted, nothing queued.
    const wrong = await fetch(`${agent.base}/v1/runs`, { method: 'POST', headers: { authorization: 'Bearer nope' }, body: '{}' });
    expect(wrong.status).toBe(403);

    const id = await agent.post(ns, 'ft-1', 'ckpt');
    const run = await agent.finished(id);
    expect(run, agent.log()).toMatchObject({ state: 'succeeded', trigger: 'api', namespace: ns, pod: 'ft-1', volume: 'ckpt', identity: identity() });
    expect(run.summary!.bytesAdded).toBeGreaterThan(5 << 20);
    expect(run.progress.bytesDone).toBe(run.summary!.totalBytes);
    firstSnapshot = run.snapshotId!;
    const snaps = await snapshotsJson('--host', identity());
    expect(snaps.map((s) => s.id ?? s.snapshot_id)).toEqual([firstSnapshot]);

    const metrics = await (await fetch(`${agent.base}/metrics`)).text();
    expect(metrics).toMatch(new RegExp(`^tender_volume_last_success_timestamp_seconds\\{namespace="${ns}",pod="ft-1",volume="ckpt"\\} \\d`, 'm'));
    expect(metrics).toMatch(/^tender_runs_total\{trigger="api",outcome="succeeded"\} 1$/m);
    expect(metrics).toMatch(/^tender_agent_errors_total\{kind="auth"\} 1$/m);
  });

  it('backs up on an interval', async () => {
    await podWithVolume('ticker', { annotations: { 'tender.io/interval': '2s' }, fill: (dir) => makeTree(dir, { 'a.txt': 'tick\n' }) });
    const runs = await agent.until(
      'two scheduled runs of ticker',
      async () => {
        const r = await agent.call('GET', '/v1/runs?pod=ticker&state=succeeded');
        return r.json.runs.length >= 2 && (r.json.runs as RunRecord[]);
      },
      40_000,
    );
    expect(runs.every((r) => r.trigger === 'schedule')).toBe(true);
    // The next started at least the interval after the previous ENDED.
    const [newer, older] = runs;
    expect(Date.parse(newer!.startedAt!) - Date.parse(older!.endedAt!)).toBeGreaterThanOrEqual(1900);
    await deletePod(kc, ns, 'ticker');
    await agent.until('ticker to be gone', async () => (await agent.volume(ns, 'ticker', 'ckpt')) === undefined);
  });

  it('continues the chain of a pod recreated under a new name (stores ~nothing new); restore by tags is identical', async () => {
    await deletePod(kc, ns, 'ft-1');
    await agent.until('ft-1 to be gone', async () => (await agent.volume(ns, 'ft-1', 'ckpt')) === undefined);
    const { dir } = await podWithVolume('ft-2', { job: 'ft', fill: (d) => cp(ckptDir, d, { recursive: true, preserveTimestamps: true }) });
    await agent.until('ft-2/ckpt to be protected', async () => (await agent.volume(ns, 'ft-2', 'ckpt'))?.path);
    const run = await agent.finished(await agent.post(ns, 'ft-2', 'ckpt'));
    expect(run, agent.log()).toMatchObject({ state: 'succeeded', identity: identity(), pod: 'ft-2' });
    // New inodes, so every file is read again, but every chunk is already stored: only trees are new.
    expect(run.summary!.bytesRead).toBeGreaterThan(5 << 20);
    expect(run.summary!.bytesAdded).toBeLessThan(64 << 10);
    const snaps = await snapshotsJson('--host', identity());
    expect(snaps).toHaveLength(2);
    const second = snaps.find((s) => (s.id ?? s.snapshot_id) === run.snapshotId)!;
    expect(second.parent).toBe(firstSnapshot);
    expect(second.tags).toEqual(expect.arrayContaining(['k8s.pod=ft-2', `k8s.namespace=${ns}`]));

    const target = path.join(work, 'restored');
    await tenderOk(['--repo', repo, 'restore', 'latest:ckpt', '--tag', `k8s.namespace=${ns}`, '--tag', 'k8s.pod=ft-2', '--tag', 'k8s.volume=ckpt', '--target', target]);
    await assertSameTree(dir, target, { ignore: (rel) => rel === '' || rel === '.' });
  });

  it('stops on SIGTERM and exits 143', async () => {
    agent.kill('SIGTERM');
    const { code } = await agent.exited;
    expect(code, agent.log()).toBe(143);
    expect(agent.log()).toMatch(/tender agent stopped/);
  });

  it('cancels a running run on DELETE, and the repository checks clean', async () => {
    const gate = path.join(work, 'gate-cancel');
    agent = await startAgent({ TENDER_TEST_HOLD_AFTER_PUTS: '1', TENDER_TEST_HOLD_GATE: gate });
    await podWithVolume('big', { fill: (dir) => writeRandomFile(path.join(dir, 'weights.bin'), 40 << 20) });
    await agent.until('big/ckpt to be protected', async () => (await agent.volume(ns, 'big', 'ckpt'))?.path);
    const id = await agent.post(ns, 'big', 'ckpt');
    // Running, some bytes read and one pack stored; the next upload is held.
    await agent.until('the backup to be held mid-way', async () => existsSync(`${gate}.held`));
    const running = await agent.until('progress of the run', async () => {
      const r = await agent.run(id);
      return r.state === 'running' && r.progress.bytesDone > 0 && r;
    });
    expect(running.progress.totalBytes).toBe(40 << 20);
    const del = await agent.call('DELETE', `/v1/runs/${id}`);
    expect(del.status).toBe(202);
    await writeFile(gate, '');
    const run = await agent.finished(id);
    expect(run, agent.log()).toMatchObject({ state: 'cancelled', error: `cancelled by DELETE /v1/runs/${id}` });
    expect(run.snapshotId).toBeUndefined();
    await tenderOk(['--repo', repo, 'check']);
    agent.kill('SIGTERM');
    expect((await agent.exited).code).toBe(143);
  });

  it('after SIGKILL mid-run, a restarted agent reports the run interrupted and completes the next storing only what is missing', async () => {
    const gate = path.join(work, 'gate-kill');
    agent = await startAgent({ TENDER_TEST_HOLD_AFTER_PUTS: '1', TENDER_TEST_HOLD_GATE: gate });
    await podWithVolume('big2', { fill: (dir) => writeRandomFile(path.join(dir, 'weights.bin'), 40 << 20) });
    await agent.until('big2/ckpt to be protected', async () => (await agent.volume(ns, 'big2', 'ckpt'))?.path);
    const id = await agent.post(ns, 'big2', 'ckpt');
    await agent.until('the backup to be held mid-way', async () => existsSync(`${gate}.held`));
    await agent.until('the run to be running with progress (persisted)', async () => {
      const r = await agent.run(id);
      return r.state === 'running' && r.progress.bytesDone > 0;
    });
    agent.kill('SIGKILL');
    expect((await agent.exited).signal).toBe('SIGKILL');

    agent = await startAgent();
    const interrupted = await agent.run(id);
    expect(interrupted).toMatchObject({ state: 'interrupted', pod: 'big2' });
    expect(interrupted.error).toMatch(/agent stopped during this run/);
    const again = await agent.until('the volume to run again and succeed', async () => {
      const r = await agent.call('GET', `/v1/runs?pod=big2&state=succeeded`);
      return r.json.runs[0] as RunRecord | undefined;
    }, 60_000);
    expect(again.trigger).toBe('startup');
    // The pack stored before the kill (16 MiB of the 40) is not stored again.
    expect(again.summary!.bytesRead).toBe(40 << 20);
    expect(again.summary!.bytesAdded).toBeLessThan((40 << 20) - (8 << 20));
    const metrics = await (await fetch(`${agent.base}/metrics`)).text();
    expect(metrics).toMatch(/^tender_runs_total\{trigger="api",outcome="interrupted"\} 1$/m);
    agent.kill('SIGTERM');
    expect((await agent.exited).code).toBe(143);
  });
});

describe('tender agent: bad input', () => {
  it('refuses to start without a node name, saying how to give one', async () => {
    const r = await runTender(['--repo', repo, 'agent', '--kubeconfig', inject('kubeconfig'), '--state-dir', stateDir], { env: { NODE_NAME: undefined } });
    expect(r.code).toBe(2);
    const { message, hint } = errorLine(r);
    expect(message).toBe('tender: the agent needs the name of its node');
    expect(hint).toMatch(/--node-name or set NODE_NAME/);
  });

  it('waits for an uninitialised repository (not ready, says why), then fails runs of vanished volumes and deleted pods without stopping', async () => {
    const fresh = s3TestUrl('agent-uninit');
    const gate = path.join(work, 'gate-deleted');
    const agent = await startAgent({ TENDER_TEST_HOLD_AFTER_PUTS: '1', TENDER_TEST_HOLD_GATE: gate }, { repo: fresh, ready: false });
    const notReady = await agent.until('the repository problem to be reported', async () => {
      const r = await agent.call('GET', '/readyz');
      return r.status === 503 && /^repository /.test(r.json.reasons[0]) && !/being opened/.test(r.json.reasons[0]) && r.json;
    });
    expect(notReady.reasons[0]).toMatch(/^repository s3:.*: there is no repository at .*create one with `tender init`/);
    // The log line reaches this process through a pipe, possibly after the HTTP answer.
    await agent.until('the open failure to be logged', async () => /cannot open the repository/.test(agent.log()));
    await tenderOk(['--repo', fresh, 'init']);
    await agent.until('the agent to be ready once the repository exists', async () => (await agent.call('GET', '/readyz')).status === 200, 30_000);

    // A volume whose directory vanished after discovery saw it: the run fails naming it.
    const { dir } = await podWithVolume('vanishing', { fill: (d) => makeTree(d, { f: 'x' }) });
    await agent.until('vanishing/ckpt to be protected', async () => (await agent.volume(ns, 'vanishing', 'ckpt'))?.path);
    await rm(dir, { recursive: true });
    // Discovery may or may not have looked again since: either the API refuses it (409), or the
    // run fails; both name the pod and the volume.
    const posted = await agent.call('POST', '/v1/runs', { namespace: ns, pod: 'vanishing', volume: 'ckpt' });
    if (posted.status === 409) {
      expect(posted.json.error).toMatch(new RegExp(`^volume ckpt of pod ${ns}/vanishing cannot be backed up: .*ckpt does not exist`));
    } else {
      expect(posted.status).toBe(202);
      const vanished = await agent.finished(posted.json.id);
      expect(vanished).toMatchObject({ state: 'failed', errorCode: 'VOLUME_UNAVAILABLE' });
      expect(vanished.error).toMatch(new RegExp(`volume ckpt of pod ${ns}/vanishing: cannot read .*ckpt`));
    }

    // A pod deleted during its backup: the run stops, failed, POD_DELETED.
    await podWithVolume('doomed', { fill: (d) => writeRandomFile(path.join(d, 'w.bin'), 40 << 20) });
    await agent.until('doomed/ckpt to be protected', async () => (await agent.volume(ns, 'doomed', 'ckpt'))?.path);
    const id = await agent.post(ns, 'doomed', 'ckpt');
    await agent.until('the backup to be held mid-way', async () => existsSync(`${gate}.held`));
    await deletePod(kc, ns, 'doomed');
    await agent.until('the run to be told', async () => /went away during run/.test(agent.log()));
    await writeFile(gate, '');
    const deleted = await agent.finished(id);
    expect(deleted).toMatchObject({ state: 'failed', errorCode: 'POD_DELETED' });
    expect(deleted.error).toBe(`pod ${ns}/doomed was deleted (or stopped being protected) during the backup`);

    expect((await agent.call('GET', '/healthz')).status).toBe(200);
    const metrics = await (await fetch(`${agent.base}/metrics`)).text();
    expect(metrics).toMatch(/^tender_agent_errors_total\{kind="volume"\} 1$/m);
    expect(metrics).toMatch(/^tender_run_failures_total\{reason="pod_deleted"\} 1$/m);
    expect(metrics).toMatch(/^tender_agent_errors_total\{kind="repository_open"\} [1-9]/m);
    await tenderOk(['--repo', fresh, 'check']);
    agent.kill('SIGTERM');
    expect((await agent.exited).code).toBe(143);
  });
});
