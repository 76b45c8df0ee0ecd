/**
 * An agent that dies (SIGKILL) in the middle of moving data: a DataUpload whose backup is held
 * after one pack, a DataDownload whose restore is held at its first read. The agent runs in a
 * process of its own (agent-process.mjs, built code); the next agent on the same node finds the
 * object it had accepted without its run, fails it with a message that says so, and deletes the
 * intermediate objects. The busy agent (maxJobs 1) leaves a second DataUpload to others; the next
 * agent completes it, and a DataDownload run again afterwards restores it byte-identical.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Agent, type DataMoverSettings } from '../../src/agent/agent.js';
import { Repository } from '../../src/repo/repository.js';
import { listSnapshots } from '../../src/snapshots/select.js';
import { openStorage } from '../../src/storage/open.js';
import { assertSameTree, makeTree, testPassword } from '../helpers/cli.js';
import { createNamespace, memoryLogger, randomName, testKubeConfig } from '../helpers/kube.js';
import {
  FakeNodes,
  applyVeleroCrds,
  createBackup,
  createDataDownload,
  createDataUpload,
  createRestoreTarget,
  createSnapshot,
  expectNothingLeft,
  follow,
  veleroApi,
} from '../helpers/velero.js';

const child = path.join(path.dirname(fileURLToPath(import.meta.url)), 'agent-process.mjs');

let kc: KubeConfig;
let veleroNs: string;
let appNs: string;
let work: string;
let repoUrl: string;
let podsDir: string;
let nodes: FakeNodes;
const node = randomName('node');
let inProcess: { agent: Agent; lines: Array<Record<string, unknown>> } | undefined;
const children: ChildProcess[] = [];
let childOutput = '';

const settings = (): DataMoverSettings => ({ namespace: veleroNs, image: 'tender:test', prepareTimeoutMs: 20_000, pollMs: 50, progressIntervalMs: 100, resyncMs: 1000 });
const context = (): string => `--- agent process\n${childOutput.slice(-8000)}\n--- agent\n${(inProcess?.lines ?? []).map((l) => `${l.level} ${l.msg}`).join('\n')}`;

/** An agent process whose storage holds the first `op` on data/ after `after` of them; resolves once it is held. */
async function heldAgent(hold: { op: 'put' | 'get'; after: number }): Promise<{ proc: ChildProcess; held: Promise<void> }> {
  const marker = path.join(work, `${randomName('held')}`);
  const proc = spawn(
    process.execPath,
    // One job at a time: a second DataUpload is left for another agent while the first is held.
    [child, JSON.stringify({ kubeconfig: inject('kubeconfig'), repo: repoUrl, password: testPassword, nodeName: node, podsDir, stateDir: path.join(work, 'state'), dataMover: { ...settings(), maxJobs: 1 }, hold: { ...hold, marker } })],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.push(proc);
  const keep = (b: Buffer): void => {
    childOutput = (childOutput + b.toString('utf8')).slice(-200_000);
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const held = (async () => {
    for (let i = 0; !existsSync(marker); i++) {
      if (proc.exitCode !== null || i > 1200) throw new Error(`the agent process never reached its hold\n${context()}`);
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 50))]);
    }
  })();
  return { proc, held };
}

async function kill(proc: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  proc.kill('SIGKILL');
  await exited;
}

async function startInProcess(): Promise<void> {
  const { logger, lines } = memoryLogger();
  const agent = new Agent({
    nodeName: node,
    podsDir,
    kubeConfig: kc,
    listen: '127.0.0.1:0',
    stateDir: path.join(work, 'state'),
    repository: { url: repoUrl, password: async () => testPassword, workers: 1 },
    logger,
    discovery: { checkMounts: false },
    dataMover: settings(),
  });
  inProcess = { agent, lines };
  await agent.start();
}

async function stopInProcess(): Promise<void> {
  await inProcess?.agent.stop();
  inProcess = undefined;
}

async function snapshotsOf(uid: string): Promise<string[]> {
  const repo = await Repository.open(await openStorage(repoUrl), testPassword, { workers: 0 });
  try {
    return (await listSnapshots(repo, { tags: [`velero.io/backup-uid=${uid}`] })).map((s) => s.id);
  } finally {
    await repo.close();
  }
}

beforeAll(async () => {
  kc = testKubeConfig();
  await applyVeleroCrds(kc);
  veleroNs = await createNamespace(kc);
  appNs = await createNamespace(kc);
  work = await mkdtemp(path.join(os.tmpdir(), 'tender-datamover-restart-'));
  podsDir = path.join(work, 'pods');
  await mkdir(podsDir, { recursive: true });
  repoUrl = path.join(work, 'repo');
  const repo = await Repository.init(await openStorage(repoUrl), testPassword, { kdf: { N: 1024, r: 8, p: 1 }, packSize: 1024 * 1024, workers: 0 });
  await repo.close();
  nodes = new FakeNodes({ kc, namespace: veleroNs, podsDirs: { [node]: podsDir }, storage: path.join(work, 'storage') });
  nodes.start();
});

afterAll(async () => {
  for (const proc of children) if (proc.exitCode === null && proc.signalCode === null) await kill(proc);
  await stopInProcess();
  await nodes?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('an agent restart in the middle of moving data', () => {
  let source: string;
  let snapshotID: string;

  it('fails the DataUpload the dead agent had InProgress, with cleanup; the next backup completes', async () => {
    source = path.join(work, 'source');
    await makeTree(source, { 'model.bin': { type: 'file', random: 5 * 1024 * 1024 }, 'cfg.json': '{"lr":0.1}\n' });
    const first = await createBackup(kc, veleroNs);
    const snap = await createSnapshot(kc, nodes, appNs, 'model', source);
    const { proc, held } = await heldAgent({ op: 'put', after: 1 });
    const { obj: du, history } = await follow(kc, veleroNs, veleroApi.dataUpload, () => createDataUpload(kc, veleroNs, { backup: first, sourceNamespace: appNs, sourcePVC: 'model', volumeSnapshot: snap.vs, datamover: 'tender' }), context);
    await held;
    await history.until('InProgress with progress', (o) => o.status?.phase === 'InProgress' && o.status.progress?.bytesDone > 0);
    // Velero's next backup of the volume arrives meanwhile: the busy agent (maxJobs 1) leaves it.
    const second = await createBackup(kc, veleroNs);
    const again = await createSnapshot(kc, nodes, appNs, 'model', source);
    const retry = await follow(kc, veleroNs, veleroApi.dataUpload, () => createDataUpload(kc, veleroNs, { backup: second, sourceNamespace: appNs, sourcePVC: 'model', volumeSnapshot: again.vs, datamover: 'tender' }), context);
    for (let i = 0; !childOutput.includes(`DataUpload ${veleroNs}/${retry.obj.metadata.name} left to another agent: 1 DataUploads/DataDownloads in hand already`); i++) {
      if (i > 600) throw new Error(`the busy agent did not leave ${retry.obj.metadata.name}\n${context()}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(retry.history.phases()).toEqual(['New']);
    await kill(proc);

    await startInProcess();
    const done = await history.ended();
    history.stop();
    expect(done.status.phase).toBe('Failed');
    expect(done.status.message).toBe(`the tender agent on node ${node} restarted while this DataUpload was InProgress; the backup of this volume did not finish (run it again)`);
    expect(history.phases()).toEqual(['New', 'Accepted', 'Prepared', 'InProgress', 'Failed']);
    expect(done.status.snapshotID ?? '').toBe('');
    await expectNothingLeft(kc, veleroNs, du.metadata.name, du.metadata.uid);
    expect(await snapshotsOf(first.uid)).toEqual([]);

    // The next agent takes the waiting one: a new snapshot, moved completely.
    const completed = await retry.history.ended();
    retry.history.stop();
    expect(completed.status.phase, completed.status.message).toBe('Completed');
    snapshotID = completed.status.snapshotID;
    expect(await snapshotsOf(second.uid)).toEqual([snapshotID.split(':')[1]]);
    await stopInProcess();
  });

  it('fails the DataDownload the dead agent had InProgress: nothing bound, nothing left; a new one restores byte-identical', async () => {
    await createRestoreTarget(kc, appNs, 'model-restored');
    const { proc, held } = await heldAgent({ op: 'get', after: 0 });
    const { obj: dd, history } = await follow(kc, veleroNs, veleroApi.dataDownload, () => createDataDownload(kc, veleroNs, { restore: randomName('restore'), targetNamespace: appNs, targetPVC: 'model-restored', snapshotID, sourceNamespace: appNs }), context);
    await held;
    await history.until('InProgress', (o) => o.status?.phase === 'InProgress');
    await kill(proc);

    await startInProcess();
    const done = await history.ended();
    history.stop();
    expect(done.status.phase).toBe('Failed');
    expect(done.status.message).toBe(`the tender agent on node ${node} restarted while this DataDownload was InProgress; the restore of this volume did not finish (run it again)`);
    await expectNothingLeft(kc, veleroNs, dd.metadata.name, dd.metadata.uid);
    const core = kc.makeApiClient(CoreV1Api);
    expect((await core.readNamespacedPersistentVolumeClaim({ namespace: appNs, name: 'model-restored' })).spec?.volumeName ?? '').toBe('');

    // Velero's next restore of it.
    await createRestoreTarget(kc, appNs, 'model-restored-2');
    const retry = await follow(kc, veleroNs, veleroApi.dataDownload, () => createDataDownload(kc, veleroNs, { restore: randomName('restore'), targetNamespace: appNs, targetPVC: 'model-restored-2', snapshotID, sourceNamespace: appNs }), context);
    const completed = await retry.history.ended();
    retry.history.stop();
    expect(completed.status.phase, completed.status.message).toBe('Completed');
    const pvName = (await core.readNamespacedPersistentVolumeClaim({ namespace: appNs, name: 'model-restored-2' })).spec!.volumeName!;
    await assertSameTree(source, nodes.pvData(pvName), { owners: false, ignore: (rel) => rel === '' });
  });
});
