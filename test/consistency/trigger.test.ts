/**
 * The checkpoint trigger, end to end in one process: the real Agent against the real API server
 * (test/setup/kube.ts), a pods directory laid out as the kubelet would, and a local repository.
 * The pod's schedule is a day, and the poll a minute: the backup of a new checkpoint can only
 * come from the inotify watch. Runs are followed through the agent's HTTP API.
 */
import { cp, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { V1Pod } from '@kubernetes/client-node';
import { Agent } from '../../src/agent/agent.js';
import { CheckpointWatcher } from '../../src/agent/checkpoint-watch.js';
import { DEFAULT_POLICY, parsePolicy, podPolicy } from '../../src/agent/policy.js';
import type { RunRecord } from '../../src/agent/state.js';
import { findCheckpoints } from '../../src/checkpoint/completeness.js';
import { Repository } from '../../src/repo/repository.js';
import { listSnapshots } from '../../src/snapshots/select.js';
import { openStorage } from '../../src/storage/open.js';
import { repoRoot, testPassword } from '../helpers/cli.js';
import { createNamespace, createPod, emptyDir, memoryLogger, randomName, testKubeConfig, volumeDir } from '../helpers/kube.js';

const fixtures = path.join(repoRoot, 'test/fixtures/checkpoint');

describe('checkpoint trigger', () => {
  let tmp: string;
  let agent: Agent | undefined;
  let base: string;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-trigger-'));
  });

  afterAll(async () => {
    await agent?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  const get = async (url: string) => {
    const res = await fetch(base + url);
    return { status: res.status, text: await res.text() };
  };
  /** Polls the agent until `check` gives something (a bound on a failure, not a wait for success). */
  const until = async <T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await check();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };
  const runs = async (): Promise<RunRecord[]> => JSON.parse((await get('/v1/runs')).text).runs as RunRecord[];

  it('a checkpoint completed in a watched volume is backed up at once, without the schedule; the latency is a metric', async () => {
    const repoDir = path.join(tmp, 'repo');
    const init = await Repository.init(await openStorage(repoDir, {}), testPassword, { kdf: { N: 1024, r: 8, p: 1 }, workers: 1 });
    await init.close();
    const kc = testKubeConfig();
    const ns = await createNamespace(kc);
    const node = randomName('node');
    const podsDir = path.join(tmp, 'pods');
    const pod = await createPod(kc, ns, {
      name: 'trainer',
      nodeName: node,
      volumes: [emptyDir('ckpt')],
      annotations: { 'tender.io/backup-volumes': 'ckpt', 'tender.io/interval': '24h', 'tender.io/trigger': 'checkpoint' },
    });
    const volume = await volumeDir(podsDir, pod, 'kubernetes.io~empty-dir/ckpt');
    const { logger } = memoryLogger();
    agent = new Agent({
      nodeName: node,
      podsDir,
      kubeConfig: kc,
      listen: '127.0.0.1:0',
      stateDir: path.join(tmp, 'state'),
      repository: { url: repoDir, password: async () => testPassword, workers: 1 },
      logger,
      discovery: { checkMounts: false },
      checkpointWatch: { pollMs: 60_000, debounceMs: 100 },
    });
    base = `http://127.0.0.1:${(await agent.start()).port}`;

    // Never backed up: the schedule runs it once at once; after that, not for a day.
    const first = await until('the first scheduled run', async () => (await runs()).find((r) => r.state === 'succeeded'));
    expect(first.trigger).toBe('schedule');

    // A trainer saves a DCP checkpoint: shards, then .metadata by rename (written last).
    const step = path.join(volume, 'step-100');
    await mkdir(step);
    await cp(path.join(fixtures, 'dcp', '__0_0.distcp'), path.join(step, '__0_0.distcp'));
    await cp(path.join(fixtures, 'dcp', '__1_0.distcp'), path.join(step, '__1_0.distcp'));
    await cp(path.join(fixtures, 'dcp', '.metadata'), path.join(step, '.metadata.tmp'));
    await rename(path.join(step, '.metadata.tmp'), path.join(step, '.metadata'));
    expect((await findCheckpoints(volume)).map((c) => c.verdict.complete)).toEqual([true]);

    const triggered = await until('a run triggered by the checkpoint', async () => (await runs()).find((r) => r.trigger === 'checkpoint' && r.state === 'succeeded'));
    expect((await runs()).filter((r) => r.trigger === 'schedule')).toHaveLength(1);

    const metrics = (await get('/metrics')).text;
    const count = /^tender_checkpoint_to_stored_seconds_count (\d+)/m.exec(metrics);
    expect(count?.[1], metrics.split('\n').filter((l) => l.includes('checkpoint')).join('\n')).toBe('1');
    const sum = Number(/^tender_checkpoint_to_stored_seconds_sum (\S+)/m.exec(metrics)![1]);
    expect(sum).toBeGreaterThan(0);
    expect(sum).toBeLessThan((Date.parse(triggered.endedAt!) - Date.parse(first.endedAt!)) / 1000 + 1);

    // The snapshot it made holds the checkpoint, labelled complete.
    const repo = await Repository.open(await openStorage(repoDir, {}), async () => testPassword, { workers: 1 });
    try {
      const snapshot = (await listSnapshots(repo)).find((s) => s.id === triggered.snapshotId)!.snapshot;
      expect(snapshot.checkpoints).toEqual([{ path: '/ckpt/step-100', kind: 'dcp', complete: true }]);
    } finally {
      await repo.close();
    }
  });
});

describe('tender.io/trigger and the trigger setting', () => {
  const pod = (annotations: Record<string, string>): V1Pod => ({
    metadata: { namespace: 'ml', name: 'trainer', annotations: { 'tender.io/backup-volumes': 'ckpt', ...annotations } },
    spec: { containers: [], volumes: [{ name: 'ckpt', emptyDir: {} }] },
  });

  it('the annotation turns the trigger on or off for a pod; a bad value is an error naming it, and the policy applies', () => {
    expect(podPolicy(pod({}), DEFAULT_POLICY).onCheckpoint).toBe(false);
    expect(podPolicy(pod({ 'tender.io/trigger': 'checkpoint' }), DEFAULT_POLICY).onCheckpoint).toBe(true);
    const on = parsePolicy('trigger: checkpoint\n');
    expect(on.triggerOnCheckpoint).toBe(true);
    expect(podPolicy(pod({}), on).onCheckpoint).toBe(true);
    expect(podPolicy(pod({ 'tender.io/trigger': 'schedule' }), on).onCheckpoint).toBe(false);
    const bad = podPolicy(pod({ 'tender.io/trigger': 'often' }), on);
    expect(bad.onCheckpoint).toBe(true);
    expect(bad.errors).toEqual(['pod ml/trainer: annotation tender.io/trigger: "often" is not checkpoint or schedule; the policy\'s trigger is used']);
    expect(() => parsePolicy('trigger: always\n')).toThrow('config: trigger must be schedule or checkpoint, not "always"');
  });
});

describe('CheckpointWatcher', () => {
  it('notices each new complete checkpoint two levels down by inotify alone; a rotation is no new checkpoint', async () => {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-watch-'));
    const volume = path.join(tmp, 'vol');
    await mkdir(path.join(volume, 'run-a'), { recursive: true });
    const enqueued: number[] = [];
    let wake: (() => void) | undefined;
    const watcher = new CheckpointWatcher({
      enqueue: () => {
        enqueued.push(Date.now());
        wake?.();
      },
      lastSuccess: () => undefined,
      logger: memoryLogger().logger,
      pollMs: 3_600_000,
      debounceMs: 50,
    });
    const next = (what: string) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), 30_000);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    /** HF Trainer's save: the weights, then trainer_state.json last. */
    const save = async (step: number) => {
      const dir = path.join(volume, 'run-a', `checkpoint-${step}`);
      await mkdir(dir);
      await cp(path.join(fixtures, 'files', 'model.safetensors'), path.join(dir, 'model.safetensors'));
      await writeFile(path.join(dir, 'trainer_state.json.tmp'), JSON.stringify({ global_step: step }));
      await rename(path.join(dir, 'trainer_state.json.tmp'), path.join(dir, 'trainer_state.json'));
    };
    try {
      watcher.sync([{ key: 'ml/p/vol', namespace: 'ml', pod: 'p', podUid: 'u', volume: 'vol', identity: 'id', tags: [], path: volume, schedule: {}, onCheckpoint: true }]);
      for (const step of [1, 2, 3]) {
        const noticed = next(`checkpoint-${step}`);
        await save(step);
        await noticed;
        expect(enqueued).toHaveLength(step);
      }
      // Rotation: the oldest goes. Then a run that started after all three ends: three latencies.
      await rm(path.join(volume, 'run-a', 'checkpoint-1'), { recursive: true });
      const started = Date.now();
      const latencies = watcher.runFinished({ identity: 'id', state: 'succeeded', startedAt: new Date(started).toISOString(), endedAt: new Date(started + 1000).toISOString() } as RunRecord);
      expect(latencies).toHaveLength(3);
      for (const l of latencies) expect(l).toBeGreaterThanOrEqual(1);
      expect(watcher.runFinished({ identity: 'id', state: 'succeeded', startedAt: new Date().toISOString(), endedAt: new Date().toISOString() } as RunRecord)).toEqual([]);
      // A fourth save after the deletion is noticed; the deletion itself queued nothing.
      const noticed = next('checkpoint-4');
      await save(4);
      await noticed;
      expect(enqueued).toHaveLength(4);
    } finally {
      watcher.stop();
      await rm(tmp, { recursive: true, force: true });
    }
  });
});
