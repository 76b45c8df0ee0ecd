/**
 * tender as Velero's data mover against the real API server (test/setup/kube.ts) with Velero's
 * real CRDs (scripts/velero-crds.sh): DataUploads and DataDownloads made as Velero makes them,
 * node agents in this process (real Agent, real repository in a temp dir), and FakeNodes playing
 * scheduler, kubelet, CSI driver and PV controller for Velero's namespace.
 *
 * The tests run in order and share the repository: backup, restore (byte-identical), objects
 * that are not tender's, bad input (missing snapshot, a clone that never binds, a snapshotID
 * from elsewhere), cancel mid-upload and mid-restore (storage held), two agents racing, the
 * deletion of a backup, and a backup and restore by an agent that has only the RBAC of the
 * manifests. The restart of an agent mid-upload is in datamover-restart.test.ts.
 * Nothing waits on a fixed sleep: waits are for API state, bounded by timeouts.
 */
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, CustomObjectsApi, KubeConfig, RbacAuthorizationV1Api, type V1PolicyRule } from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Agent, type DataMoverSettings } from '../../src/agent/agent.js';
import { Repository } from '../../src/repo/repository.js';
import { listSnapshots } from '../../src/snapshots/select.js';
import { openStorage } from '../../src/storage/open.js';
import type { FaultyStorage } from '../../src/storage/wrap/faults.js';
import { Kube, accept } from '../../src/velero/kube.js';
import { assertSameTree, makeTree, repoRoot, runTender, testPassword } from '../helpers/cli.js';
import { createNamespace, memoryLogger, randomName, testKubeConfig } from '../helpers/kube.js';
import {
  FakeNodes,
  type History,
  type Obj,
  applyVeleroCrds,
  cancelObject,
  expectNothingLeft,
  follow,
  createBackup,
  createDataDownload,
  createDataUpload,
  createRestoreTarget,
  createSnapshot,
  veleroApi,
} from '../helpers/velero.js';

const cheapKdf = { N: 1024, r: 8, p: 1 };

let kc: KubeConfig;
let core: CoreV1Api;
let custom: CustomObjectsApi;
let veleroNs: string;
let appNs: string;
let work: string;
let repoUrl: string;
let nodes: FakeNodes;
const nodeA = randomName('node-a');
const nodeB = randomName('node-b');
const nodeC = randomName('node-c');
const podsDirs: Record<string, string> = {};
const agents = new Map<string, { agent: Agent; lines: Array<Record<string, unknown>> }>();
let faultyA: FaultyStorage | undefined;

const moverSettings = (): DataMoverSettings => ({
  namespace: veleroNs,
  image: 'tender:test',
  prepareTimeoutMs: 12_000,
  pollMs: 50,
  progressIntervalMs: 100,
  resyncMs: 1000,
});

async function startAgent(node: string, faults?: (f: FaultyStorage) => void, kubeConfig: KubeConfig = kc): Promise<Agent> {
  const { logger, lines } = memoryLogger();
  const agent = new Agent({
    nodeName: node,
    podsDir: podsDirs[node]!,
    kubeConfig,
    listen: '127.0.0.1:0',
    stateDir: path.join(work, `state-${node}`),
    repository: { url: repoUrl, password: async () => testPassword, workers: 1, ...(faults ? { storage: { faults } } : {}) },
    logger,
    discovery: { checkMounts: false },
    dataMover: moverSettings(),
  });
  await agent.start();
  agents.set(node, { agent, lines });
  // Ready: the repository is open (the data mover takes nothing before).
  for (let i = 0; !agent.readiness().ready; i++) {
    if (i > 600) throw new Error(`agent ${node} not ready: ${agent.readiness().reasons.join('; ')}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return agent;
}

async function stopAgent(node: string): Promise<void> {
  await agents.get(node)?.agent.stop();
  agents.delete(node);
}

function logOf(node: string): string {
  return (agents.get(node)?.lines ?? []).map((l) => `${l.level} ${l.msg}`).join('\n');
}

const context = (): string => [...agents.keys()].map(logOf).join('\n');

async function upload(o: Parameters<typeof createDataUpload>[2]): Promise<{ du: Obj; history: History }> {
  const { obj, history } = await follow(kc, veleroNs, veleroApi.dataUpload, () => createDataUpload(kc, veleroNs, o), context);
  return { du: obj, history };
}

async function download(o: Parameters<typeof createDataDownload>[2]): Promise<{ dd: Obj; history: History }> {
  const { obj, history } = await follow(kc, veleroNs, veleroApi.dataDownload, () => createDataDownload(kc, veleroNs, o), context);
  return { dd: obj, history };
}

const expectNoLeftovers = (name: string, uid: string): Promise<void> => expectNothingLeft(kc, veleroNs, name, uid);
const setCancel = (name: string, api: { group: string; version: string; plural: string } = veleroApi.dataUpload): Promise<void> => cancelObject(kc, veleroNs, api, name);

async function withRepo<T>(fn: (repo: Repository) => Promise<T>): Promise<T> {
  const repo = await Repository.open(await openStorage(repoUrl), testPassword, { workers: 0 });
  try {
    return await fn(repo);
  } finally {
    await repo.close();
  }
}

async function sourceVolume(name: string, spec: Parameters<typeof makeTree>[1]): Promise<string> {
  const dir = path.join(work, 'sources', name);
  await mkdir(dir, { recursive: true });
  await makeTree(dir, spec);
  return dir;
}

beforeAll(async () => {
  kc = testKubeConfig();
  core = kc.makeApiClient(CoreV1Api);
  custom = kc.makeApiClient(CustomObjectsApi);
  await applyVeleroCrds(kc);
  veleroNs = await createNamespace(kc);
  appNs = await createNamespace(kc);
  work = await mkdtemp(path.join(os.tmpdir(), 'tender-datamover-'));
  for (const node of [nodeA, nodeB, nodeC]) {
    podsDirs[node] = path.join(work, `pods-${node}`);
    await mkdir(podsDirs[node]!, { recursive: true });
  }
  repoUrl = path.join(work, 'repo');
  const repo = await Repository.init(await openStorage(repoUrl), testPassword, { kdf: cheapKdf, packSize: 1024 * 1024, workers: 0 });
  await repo.close();
  nodes = new FakeNodes({ kc, namespace: veleroNs, podsDirs, storage: path.join(work, 'storage'), neverBind: new Set() });
  nodes.start();
  await startAgent(nodeA, (f) => (faultyA = f));
});

afterAll(async () => {
  for (const node of [...agents.keys()]) await stopAgent(node);
  await nodes?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('tender agent --data-mover', () => {
  it('says what to pass when the image of the pods that hold volumes is missing', async () => {
    const r = await runTender(['--repo', repoUrl, 'agent', '--data-mover', '--node-name', nodeA, '--kubeconfig', inject('kubeconfig'), '--state-dir', path.join(work, 'cli-state')], {
      env: { TENDER_IMAGE: undefined },
      timeoutMs: 60_000,
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--data-mover needs the image of the pods that hold exposed volumes');
    expect(r.stderr).toContain('pass --data-mover-image or set TENDER_IMAGE');
  });
});

describe('DataUpload and DataDownload lifecycles', () => {
  let backup: { name: string; uid: string };
  let source: string;
  let snapshotID: string;
  let raced: { name: string; uid: string };

  it('backs up a CSI snapshot: every phase, every field, nothing left behind', async () => {
    source = await sourceVolume('data', {
      'weights.bin': { type: 'file', random: 3 * 1024 * 1024 + 17 },
      ckpt: { type: 'dir', children: { 'step-1.pt': { type: 'file', random: 200_000 }, 'notes.txt': 'epoch 1\n' } },
      empty: { type: 'dir' },
      link: { type: 'symlink', target: 'ckpt/notes.txt' },
    });
    backup = await createBackup(kc, veleroNs);
    const snap = await createSnapshot(kc, nodes, appNs, 'data', source);
    const { du, history } = await upload({ backup, sourceNamespace: appNs, sourcePVC: 'data', volumeSnapshot: snap.vs, datamover: 'tender' });
    const done = await history.ended();
    history.stop();
    expect(done.status.message).toMatch(/^stored as tender snapshot [0-9a-f]{8}: \d+ files, \d+ bytes/);
    expect(done.status.phase).toBe('Completed');
    expect(history.phases()).toEqual(['New', 'Accepted', 'Prepared', 'InProgress', 'Completed']);
    const accepted = history.versions.find((v) => v.status?.phase === 'Accepted')!;
    expect(accepted.status.acceptedByNode).toBe(nodeA);
    expect(Date.parse(accepted.status.acceptedTimestamp)).toBeGreaterThan(0);
    const s = done.status;
    expect(s.node).toBe(nodeA);
    expect(s.snapshotID).toMatch(/^tender-v1:[0-9a-f]{64}:data$/);
    expect(s.nodeOS).toBe('linux');
    expect(s.path).toContain(path.join(podsDirs[nodeA]!, ''));
    expect(s.path).toMatch(/volumes\/kubernetes\.io~csi\/pvc-[^/]+\/mount$/);
    const total = 3 * 1024 * 1024 + 17 + 200_000 + 'epoch 1\n'.length;
    expect(s.progress).toEqual({ totalBytes: total, bytesDone: total });
    expect(Date.parse(s.startTimestamp)).toBeLessThanOrEqual(Date.parse(s.completionTimestamp));
    expect(Date.parse(s.acceptedTimestamp)).toBeLessThanOrEqual(Date.parse(s.startTimestamp));
    snapshotID = s.snapshotID;

    // The snapshot: tagged with the backup's name and UID, holding the volume under its PVC's name.
    const snaps = await withRepo((repo) => listSnapshots(repo, { tags: [`velero.io/backup-name=${backup.name}`, `velero.io/backup-uid=${backup.uid}`] }));
    expect(snaps.map((x) => x.id)).toEqual([snapshotID.split(':')[1]]);
    expect(snaps[0]!.snapshot.hostname).toBe(`velero:${appNs}/data`);

    // Cleanup: the clone, its pod, the moved VolumeSnapshot and content; the original snapshot
    // objects were handed over (Velero's exposer does the same).
    await expectNoLeftovers(du.metadata.name, du.metadata.uid);
    await expect(custom.getNamespacedCustomObject({ ...veleroApi.volumeSnapshot, namespace: appNs, name: snap.vs })).rejects.toMatchObject({ code: 404 });
    await expect(custom.getClusterCustomObject({ ...veleroApi.volumeSnapshotContent, name: snap.vsc })).rejects.toMatchObject({ code: 404 });
  });

  it('restores it into a fresh volume bound to the target PVC, byte-identical', async () => {
    const label = await createRestoreTarget(kc, appNs, 'data-restored');
    const { dd, history } = await download({ restore: randomName('restore'), targetNamespace: appNs, targetPVC: 'data-restored', snapshotID, sourceNamespace: appNs });
    const done = await history.ended();
    history.stop();
    expect(done.status.phase, done.status.message).toBe('Completed');
    expect(history.phases()).toEqual(['New', 'Accepted', 'Prepared', 'InProgress', 'Completed']);
    expect(done.status.acceptedByNode).toBe(nodeA);
    expect(done.status.message).toMatch(/^restored tender snapshot [0-9a-f]{8} \(\d+ bytes\) into PersistentVolume pvc-/);

    let target = await core.readNamespacedPersistentVolumeClaim({ namespace: appNs, name: 'data-restored' });
    const pvName = target.spec!.volumeName!;
    // The PV controller (here the fake) writes the claim's status right after the PV's.
    for (let i = 0; i < 200 && target.status?.phase !== 'Bound'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      target = await core.readNamespacedPersistentVolumeClaim({ namespace: appNs, name: 'data-restored' });
    }
    expect(target.status?.phase).toBe('Bound');
    const pv = await core.readPersistentVolume({ name: pvName });
    expect(pv.spec!.claimRef).toMatchObject({ namespace: appNs, name: 'data-restored', uid: target.metadata!.uid });
    expect(pv.metadata!.labels?.['velero.io/dynamic-pv-restore']).toBe(label);
    expect(pv.status?.phase).toBe('Bound');
    // Retained while it changed hands, then the original policy again.
    expect(pv.spec!.persistentVolumeReclaimPolicy).toBe('Delete');
    await expectNoLeftovers(dd.metadata.name, dd.metadata.uid);
    // The PV's data, now that no pod mounts it.
    await assertSameTree(source, nodes.pvData(pvName), { owners: false, ignore: (rel) => rel === '' });
  });

  it('never touches DataUploads of another data mover', async () => {
    const theirs: Obj[] = [];
    for (const datamover of [undefined, '', 'velero']) {
      theirs.push((await createDataUpload(kc, veleroNs, { backup, sourceNamespace: appNs, sourcePVC: 'data', volumeSnapshot: 'whatever', ...(datamover !== undefined ? { datamover } : {}) })) as Obj);
    }
    // A later object of tender's, canceled before anyone accepts it: once it is Canceled, the
    // agent has seen the others (one watch, in order).
    const { history } = await upload({ backup, sourceNamespace: appNs, sourcePVC: 'data', volumeSnapshot: 'whatever', datamover: 'tender' });
    const name = history.name!;
    await setCancel(name);
    const done = await history.ended();
    history.stop();
    expect(['Canceled', 'Completed', 'Failed']).toContain(done.status.phase);
    for (const t of theirs) {
      const now = (await custom.getNamespacedCustomObject({ ...veleroApi.dataUpload, namespace: veleroNs, name: t.metadata.name })) as Obj;
      expect(now.metadata.resourceVersion, `${t.metadata.name} (datamover ${JSON.stringify(t.spec.datamover)})`).toBe(t.metadata.resourceVersion);
      expect(now.status).toBeUndefined();
    }
  });

  it('fails clearly when the VolumeSnapshot does not exist', async () => {
    const { du, history } = await upload({ backup, sourceNamespace: appNs, sourcePVC: 'data', volumeSnapshot: 'no-such-snapshot', datamover: 'tender' });
    const done = await history.ended();
    history.stop();
    expect(done.status.phase).toBe('Failed');
    expect(done.status.message).toContain(`VolumeSnapshot ${appNs}/no-such-snapshot does not exist`);
    expect(history.phases()).toEqual(['New', 'Accepted', 'Failed']);
    await expectNoLeftovers(du.metadata.name, du.metadata.uid);
  });

  it('fails a clone PVC that never binds after the prepare timeout, and deletes it', async () => {
    const src = await sourceVolume('stuck', { 'a.txt': 'a\n' });
    const stuck = await createBackup(kc, veleroNs, randomName('stuck'));
    const snap = await createSnapshot(kc, nodes, appNs, 'stuck', src);
    nodes.o.neverBind!.add(`${stuck.name}-`);
    const { du, history } = await upload({ backup: stuck, sourceNamespace: appNs, sourcePVC: 'stuck', volumeSnapshot: snap.vs, datamover: 'tender' });
    const done = await history.ended(60_000);
    history.stop();
    expect(done.status.phase).toBe('Failed');
    expect(done.status.message).toContain(`timed out preparing the volume: PersistentVolumeClaim ${veleroNs}/${du.metadata.name} is not bound yet (phase Pending)`);
    expect(history.phases()).toEqual(['New', 'Accepted', 'Failed']);
    await expectNoLeftovers(du.metadata.name, du.metadata.uid);
  });

  it('fails a DataDownload whose snapshotID tender did not write', async () => {
    await createRestoreTarget(kc, appNs, 'foreign');
    const { dd, history } = await download({ restore: randomName('restore'), targetNamespace: appNs, targetPVC: 'foreign', snapshotID: 'k0p1a-snapshot-123', sourceNamespace: appNs });
    const done = await history.ended();
    history.stop();
    expect(done.status.phase).toBe('Failed');
    expect(done.status.message).toContain(`snapshotID "k0p1a-snapshot-123" was not written by tender's data mover`);
    await expectNoLeftovers(dd.metadata.name, dd.metadata.uid);
    const target = await core.readNamespacedPersistentVolumeClaim({ namespace: appNs, name: 'foreign' });
    expect(target.spec?.volumeName ?? '').toBe('');
  });

  it('cancels mid-upload (Canceling, then Canceled), keeps no snapshot and leaves nothing behind', async () => {
    const src = await sourceVolume('big', { 'a.bin': { type: 'file', random: 6 * 1024 * 1024 } });
    const big = await createBackup(kc, veleroNs, randomName('cancel'));
    const snap = await createSnapshot(kc, nodes, appNs, 'big', src);
    const gate = faultyA!.hold({ op: 'put', prefix: 'data/', after: 1 });
    const { du, history } = await upload({ backup: big, sourceNamespace: appNs, sourcePVC: 'big', volumeSnapshot: snap.vs, datamover: 'tender' });
    await gate.reached;
    // Progress is reported while the data moves (the first pack is stored, the second held).
    const moving = await history.until('progress while InProgress', (o) => o.status?.phase === 'InProgress' && o.status.progress?.bytesDone > 0);
    expect(moving.status.progress.totalBytes).toBe(6 * 1024 * 1024);
    await setCancel(du.metadata.name);
    await history.until('Canceling', (o) => o.status?.phase === 'Canceling');
    gate.release();
    const done = await history.ended();
    history.stop();
    expect(done.status.phase).toBe('Canceled');
    expect(done.status.message).toContain('was canceled (spec.cancel)');
    expect(done.status.snapshotID ?? '').toBe('');
    expect(history.phases()).toEqual(['New', 'Accepted', 'Prepared', 'InProgress', 'Canceling', 'Canceled']);
    await expectNoLeftovers(du.metadata.name, du.metadata.uid);
    const snaps = await withRepo((repo) => listSnapshots(repo, { tags: [`velero.io/backup-uid=${big.uid}`] }));
    expect(snaps).toEqual([]);
  });

  it('cancels mid-restore: nothing is bound to the target, the half-written volume is deleted', async () => {
    await createRestoreTarget(kc, appNs, 'data-canceled');
    const gate = faultyA!.hold({ op: 'get', prefix: 'data/', after: 0 });
    const { dd, history } = await download({ restore: randomName('restore'), targetNamespace: appNs, targetPVC: 'data-canceled', snapshotID, sourceNamespace: appNs });
    await gate.reached;
    await history.until('InProgress', (o) => o.status?.phase === 'InProgress');
    const pvName = (await core.readNamespacedPersistentVolumeClaim({ namespace: veleroNs, name: dd.metadata.name })).spec!.volumeName!;
    await setCancel(dd.metadata.name, veleroApi.dataDownload);
    await history.until('Canceling', (o) => o.status?.phase === 'Canceling');
    gate.release();
    const done = await history.ended();
    history.stop();
    expect(done.status.phase).toBe('Canceled');
    expect(history.phases()).toEqual(['New', 'Accepted', 'Prepared', 'InProgress', 'Canceling', 'Canceled']);
    await expectNoLeftovers(dd.metadata.name, dd.metadata.uid);
    const target = await core.readNamespacedPersistentVolumeClaim({ namespace: appNs, name: 'data-canceled' });
    expect(target.spec?.volumeName ?? '').toBe('');
    // Its PVC gone, the PV (reclaim policy Delete) goes too.
    let gone = false;
    for (let i = 0; i < 200 && !gone; i++) {
      gone = await core.readPersistentVolume({ name: pvName }).then(() => false, (err: { code?: number }) => err.code === 404);
      if (!gone) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(gone, `PersistentVolume ${pvName} deleted`).toBe(true);
  });

  it('an agent stopped (SIGTERM) mid-upload fails the DataUpload itself and leaves nothing behind', async () => {
    const src = await sourceVolume('stopped', { 'a.bin': { type: 'file', random: 4 * 1024 * 1024 } });
    const b = await createBackup(kc, veleroNs, randomName('stop'));
    const snap = await createSnapshot(kc, nodes, appNs, 'stopped', src);
    const gate = faultyA!.hold({ op: 'put', prefix: 'data/', after: 1 });
    const { du, history } = await upload({ backup: b, sourceNamespace: appNs, sourcePVC: 'stopped', volumeSnapshot: snap.vs, datamover: 'tender' });
    await gate.reached;
    await history.until('InProgress', (o) => o.status?.phase === 'InProgress');
    const stopping = stopAgent(nodeA);
    gate.release();
    await stopping;
    const done = await history.ended();
    history.stop();
    expect(done.status.phase).toBe('Failed');
    expect(done.status.message).toBe('the agent was shut down during this run');
    expect(history.phases()).toEqual(['New', 'Accepted', 'Prepared', 'InProgress', 'Failed']);
    await expectNoLeftovers(du.metadata.name, du.metadata.uid);
    expect(await withRepo((repo) => listSnapshots(repo, { tags: [`velero.io/backup-uid=${b.uid}`] }))).toEqual([]);
    await startAgent(nodeA, (f) => (faultyA = f));
  });

  it('two agents race for each DataUpload: exactly one accepts it', async () => {
    await startAgent(nodeB);
    // The acceptance itself: two replaces from the same read, one wins (resourceVersion).
    const kube = new Kube(kc);
    raced = await createBackup(kc, veleroNs, randomName('race'));
    const stale = (await createDataUpload(kc, veleroNs, { backup: raced, sourceNamespace: appNs, sourcePVC: 'gone', volumeSnapshot: 'gone', datamover: 'not-yet' })) as any;
    stale.kind = 'DataUpload';
    const wins = await Promise.all([accept(kube, veleroApi.dataUpload, stale, 'x-1', new Date()), accept(kube, veleroApi.dataUpload, stale, 'x-2', new Date())]);
    expect(wins.filter((w) => w !== undefined)).toHaveLength(1);

    // Both agents watching: several DataUploads at once, each taken by one of them and completed.
    const runs = await Promise.all(
      [1, 2, 3, 4].map(async (i) => {
        const src = await sourceVolume(`race-${i}`, { [`f${i}.bin`]: { type: 'file', random: 100_000 + i } });
        const snap = await createSnapshot(kc, nodes, appNs, `race-${i}`, src);
        return { src, ...(await upload({ backup: raced, sourceNamespace: appNs, sourcePVC: `race-${i}`, volumeSnapshot: snap.vs, datamover: 'tender' })) };
      }),
    );
    for (const r of runs) {
      const done = await r.history.ended();
      r.history.stop();
      expect(done.status.phase, done.status.message).toBe('Completed');
      const acceptors = new Set(r.history.versions.map((v) => v.status?.acceptedByNode).filter(Boolean));
      expect(acceptors.size).toBe(1);
      expect([nodeA, nodeB]).toContain([...acceptors][0]);
      expect(r.history.phases()).toEqual(['New', 'Accepted', 'Prepared', 'InProgress', 'Completed']);
      await expectNoLeftovers(r.du.metadata.name, r.du.metadata.uid);
    }
    const accepted = [nodeA, nodeB].flatMap((n) => (agents.get(n)?.lines ?? []).filter((l) => String(l.msg).startsWith('accepted DataUpload') && runs.some((r) => String(l.msg).includes(r.du.metadata.name))));
    expect(accepted).toHaveLength(4);
    await stopAgent(nodeB);
  });

  it('forgets the snapshots of a deleted backup once Velero has deleted it', async () => {
    const tags = [`velero.io/backup-name=${backup.name}`, `velero.io/backup-uid=${backup.uid}`];
    expect(await withRepo((repo) => listSnapshots(repo, { tags }))).toHaveLength(1);
    const deleteRequest = async (b: { name: string; uid: string }): Promise<Obj> =>
      (await custom.createNamespacedCustomObject({
        ...veleroApi.deleteBackupRequest,
        namespace: veleroNs,
        body: {
          apiVersion: 'velero.io/v1',
          kind: 'DeleteBackupRequest',
          metadata: { generateName: `${b.name}-`, labels: { 'velero.io/backup-name': b.name, 'velero.io/backup-uid': b.uid } },
          spec: { backupName: b.name },
        },
      })) as Obj;
    // A request Velero refuses (the Backup stays): its snapshots stay.
    const raceTags = [`velero.io/backup-uid=${raced.uid}`];
    expect(await withRepo((repo) => listSnapshots(repo, { tags: raceTags }))).toHaveLength(4);
    await deleteRequest(raced);
    const dbr = await deleteRequest(backup);
    // Velero deletes the Backup, then marks the request Processed.
    await custom.deleteNamespacedCustomObject({ ...veleroApi.backup, namespace: veleroNs, name: backup.name });
    dbr.status = { phase: 'Processed' };
    await custom.replaceNamespacedCustomObject({ ...veleroApi.deleteBackupRequest, namespace: veleroNs, name: dbr.metadata.name, body: dbr });
    let left = 1;
    for (let i = 0; i < 300 && left > 0; i++) {
      left = (await withRepo((repo) => listSnapshots(repo, { tags }))).length;
      if (left > 0) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(left).toBe(0);
    expect(await withRepo((repo) => listSnapshots(repo, { tags: raceTags }))).toHaveLength(4);
    expect(logOf(nodeA)).toContain(`Velero backup ${backup.name} was deleted: forgot its 1 tender snapshots`);
  });
  it('works with only the RBAC the manifests grant (deploy/rbac.yaml and deploy/datamover/rbac.yaml)', async () => {
    // A ServiceAccount bound to both ClusterRoles (renamed, so tests do not collide), and a
    // kubeconfig with its token: the agent runs as the DaemonSet would.
    const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
    const sa = randomName('tender-agent');
    await core.createNamespacedServiceAccount({ namespace: veleroNs, body: { metadata: { name: sa } } });
    for (const file of ['deploy/rbac.yaml', 'deploy/datamover/rbac.yaml']) {
      const role = parseAllDocuments(await readFile(path.join(repoRoot, file), 'utf8'))
        .map((d) => d.toJS() as { kind: string; rules: V1PolicyRule[] })
        .find((d) => d.kind === 'ClusterRole')!;
      const name = randomName('tender-role');
      await rbac.createClusterRole({ body: { metadata: { name }, rules: role.rules } });
      await rbac.createClusterRoleBinding({
        body: { metadata: { name }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name }, subjects: [{ kind: 'ServiceAccount', name: sa, namespace: veleroNs }] },
      });
    }
    const token = (await core.createNamespacedServiceAccountToken({ name: sa, namespace: veleroNs, body: { spec: { audiences: [], expirationSeconds: 3600 } } })).status!.token;
    const cluster = kc.getCurrentCluster()!;
    const asAgent = new KubeConfig();
    asAgent.loadFromOptions({
      clusters: [{ name: 'test', server: cluster.server, caData: cluster.caData }],
      users: [{ name: sa, token }],
      contexts: [{ name: 'agent', cluster: 'test', user: sa }],
      currentContext: 'agent',
    });
    await stopAgent(nodeA);
    await startAgent(nodeC, undefined, asAgent);

    const src = await sourceVolume('rbac', { 'x.bin': { type: 'file', random: 300_000 }, sub: { type: 'dir', children: { 'y.txt': 'y\n' } } });
    const b = await createBackup(kc, veleroNs, randomName('rbac'));
    const snap = await createSnapshot(kc, nodes, appNs, 'rbac', src);
    const up = await upload({ backup: b, sourceNamespace: appNs, sourcePVC: 'rbac', volumeSnapshot: snap.vs, datamover: 'tender' });
    const uploaded = await up.history.ended();
    up.history.stop();
    expect(uploaded.status.phase, uploaded.status.message).toBe('Completed');
    expect(uploaded.status.acceptedByNode).toBe(nodeC);
    await expectNoLeftovers(up.du.metadata.name, up.du.metadata.uid);

    await createRestoreTarget(kc, appNs, 'rbac-restored');
    const down = await download({ restore: randomName('restore'), targetNamespace: appNs, targetPVC: 'rbac-restored', snapshotID: uploaded.status.snapshotID, sourceNamespace: appNs });
    const restored = await down.history.ended();
    down.history.stop();
    expect(restored.status.phase, restored.status.message).toBe('Completed');
    await expectNoLeftovers(down.dd.metadata.name, down.dd.metadata.uid);
    const pvName = (await core.readNamespacedPersistentVolumeClaim({ namespace: appNs, name: 'rbac-restored' })).spec!.volumeName!;
    await assertSameTree(src, nodes.pvData(pvName), { owners: false, ignore: (rel) => rel === '' });
    expect(logOf(nodeC)).not.toMatch(/HTTP 403|forbidden/i);
  });
});
