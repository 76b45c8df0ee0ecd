/**
 * emptyDir volumes with Velero, end to end without Velero itself: the real `tender agent --velero-
 * namespace` process against the real test API server, with Velero's Backup objects created by
 * the test (the phases Velero's backup controller sets), a fake kubelet pods directory, and a
 * local repository. Then the restore side: the init container of docs/examples/velero-emptydir-
 * restore.yaml, its downward-API environment resolved from the restored pod object as the kubelet
 * would, run as a real process into the restored pod's fresh emptyDir directory.
 *
 * "Not backed up" is checked by order, not by waiting: the agent handles Backup events in the
 * order the watch delivers them, so once a later Backup's run has finished, an earlier Backup
 * that queued nothing never will.
 */
import { type ChildProcess, execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CoreV1Api, CustomObjectsApi, type KubeConfig, type V1Pod, setHeaderOptions } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import YAML from 'yaml';
import type { RunRecord } from '../../src/agent/state.js';
import { assertSameTree, jsonLines, makeTree, repoRoot, runTender, startTender, tenderOk, writeRandomFile } from '../helpers/cli.js';
import { createNamespace, createPod, deletePod, emptyDir, randomName, testKubeConfig, volumeDir } from '../helpers/kube.js';
import { ensureVeleroCrds } from '../helpers/velero-tarball.js';
import { freePort } from '../setup/minio.js';

let kc: KubeConfig;
let veleroNs: string;
let ns: string;
let otherNs: string;
let node: string;
let work: string;
let repo: string;
let podsDir: string;
let stateDir: string;
let configFile: string;
let agent: { child: ChildProcess; base: string; output: string[]; exited: Promise<unknown> };
/** The content of p0's ckpt when each Backup was taken. */
const expected = new Map<string, string>();

async function startAgent(): Promise<void> {
  const port = await freePort();
  const child = startTender(
    [
      '--repo', repo, 'agent',
      '--node-name', node,
      '--pods-dir', podsDir,
      '--kubeconfig', inject('kubeconfig'),
      '--listen', `127.0.0.1:${port}`,
      '--config', configFile,
      '--state-dir', stateDir,
      '--velero-backups',
      '--velero-namespace', veleroNs,
    ],
    { env: { TENDER_LOG_LEVEL: 'info' } },
  );
  const output: string[] = [];
  child.stdout!.on('data', (b: Buffer) => output.push(b.toString()));
  child.stderr!.on('data', (b: Buffer) => output.push(b.toString()));
  child.stdin!.end();
  agent = { child, base: `http://127.0.0.1:${port}`, output, exited: new Promise((resolve) => child.once('exit', resolve)) };
  await until('the agent to be ready', async () => (await fetch(`${agent.base}/readyz`)).status === 200);
}

async function stopAgent(): Promise<void> {
  agent.child.kill('SIGTERM');
  await agent.exited;
}

/** A copy with every time and mode kept (directories too), to compare a restore with. */
async function copyTree(from: string, to: string): Promise<void> {
  await promisify(execFile)('cp', ['-a', from, to]);
}

/** Polls `check` (a bound on failure, not a wait for success). */
async function until<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n--- agent output\n${agent?.output.join('').slice(-20_000)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function runs(): Promise<RunRecord[]> {
  return ((await (await fetch(`${agent.base}/v1/runs`)).json()) as { runs: RunRecord[] }).runs;
}

/** Waits until `count` runs tagged with the Velero backup have finished; they must have succeeded. */
async function veleroRunsDone(backup: string, count: number): Promise<RunRecord[]> {
  const tag = `velero.io/backup-name=${backup}`;
  const done = await until(`${count} finished runs of Velero backup ${backup}`, async () => {
    const mine = (await runs()).filter((r) => r.tags?.includes(tag) && ['succeeded', 'failed', 'cancelled', 'interrupted'].includes(r.state));
    return mine.length >= count && mine;
  });
  for (const r of done) expect(r.state, JSON.stringify(r)).toBe('succeeded');
  return done;
}

async function snapshots(backup: string): Promise<Array<{ id: string; tags: string[]; hostname: string }>> {
  const r = await tenderOk(['--repo', repo, '--json', 'snapshots', '--tag', `velero.io/backup-name=${backup}`]);
  return jsonLines(r.stdout)[0] as unknown as Array<{ id: string; tags: string[]; hostname: string }>;
}

/** A Backup as Velero's backup controller leaves it while it runs (Backups have no status subresource). */
async function createBackup(name: string, spec: Record<string, unknown>, phase = 'InProgress'): Promise<string> {
  const created = (await kc.makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
    group: 'velero.io',
    version: 'v1',
    namespace: veleroNs,
    plural: 'backups',
    body: { apiVersion: 'velero.io/v1', kind: 'Backup', metadata: { name }, spec, status: { phase } },
  })) as { metadata: { uid: string } };
  return created.metadata.uid;
}

/** A pod on `nodeName` with an opted-in emptyDir `ckpt` (and `scratch`, not opted in), its directories filled. */
async function trainerPod(namespace: string, name: string, labels: Record<string, string>, nodeName = node): Promise<{ pod: V1Pod; dir: string }> {
  // The directories are made before the pod is seen: discovery evaluates it once, at its creation.
  const pod = await createPod(kc, namespace, {
    name,
    nodeName,
    labels,
    annotations: { 'tender.io/backup-volumes': 'ckpt' },
    volumes: [emptyDir('ckpt'), emptyDir('scratch')],
  });
  const dir = await volumeDir(podsDir, pod, 'kubernetes.io~empty-dir/ckpt');
  await makeTree(dir, { 'step-100': { type: 'dir', children: { 'model.pt': { type: 'file', random: 300_000 }, 'meta.json': '{"step":100}' } } });
  await makeTree(await volumeDir(podsDir, pod, 'kubernetes.io~empty-dir/scratch'), { 'tmp.bin': { type: 'file', random: 1000 } });
  // Touch it, so the agent evaluates it again now that the directories are there.
  await kc.makeApiClient(CoreV1Api).patchNamespacedPod(
    { name, namespace, body: [{ op: 'add', path: '/metadata/annotations/touched', value: String(Date.now()) }] },
    jsonPatch,
  );
  await until(`the agent to see ${namespace}/${name}`, async () => {
    const vols = ((await (await fetch(`${agent.base}/v1/volumes`)).json()) as { volumes: Array<{ namespace: string; pod: string; volume: string; path?: string }> }).volumes;
    return nodeName !== node || vols.some((v) => v.namespace === namespace && v.pod === name && v.volume === 'ckpt' && v.path === dir);
  });
  return { pod, dir };
}

let p0: { pod: V1Pod; dir: string };
const jsonPatch = setHeaderOptions('Content-Type', 'application/json-patch+json');

beforeAll(async () => {
  kc = testKubeConfig();
  await ensureVeleroCrds(kc);
  veleroNs = await createNamespace(kc);
  ns = await createNamespace(kc);
  otherNs = await createNamespace(kc);
  node = randomName('node');
  work = await mkdtemp(path.join(os.tmpdir(), 'tender-velero-emptydir-'));
  repo = path.join(work, 'repo');
  podsDir = path.join(work, 'pods');
  stateDir = path.join(work, 'state');
  configFile = path.join(work, 'policy.yaml');
  // No scheduled runs here (1 January): every run comes from a Velero Backup.
  await writeFile(configFile, `namespaces: [${ns}, ${otherNs}]\nschedule: "0 0 1 1 *"\n`);
  await tenderOk(['--repo', repo, 'init']);
  await startAgent();
  p0 = await trainerPod(ns, 'p0', { app: 'trainer' });
  await trainerPod(ns, 'p1', { app: 'trainer' }, randomName('another-node'));
  await trainerPod(otherNs, 'p2', { app: 'other' });
});

afterAll(async () => {
  if (agent && agent.child.exitCode === null && agent.child.signalCode === null) agent.child.kill('SIGKILL');
  await agent?.exited;
  if (work) await rm(work, { recursive: true, force: true });
});

describe('emptyDir volumes with Velero backups', () => {
  it('backs up the opted-in emptyDir volumes a Backup covers on this node, tagged with the Backup, once per UID', async () => {
    const uid1 = await createBackup('b1', { includedNamespaces: [ns] });
    await veleroRunsDone('b1', 1);
    const s1 = await snapshots('b1');
    expect(s1).toHaveLength(1);
    expect(s1[0]!.tags).toEqual(expect.arrayContaining([`k8s.namespace=${ns}`, 'k8s.pod=p0', 'k8s.volume=ckpt', 'velero.io/backup-name=b1', `velero.io/backup-uid=${uid1}`]));
    expected.set('b1', path.join(work, 'expected-b1'));
    await copyTree(p0.dir, expected.get('b1')!);

    // The checkpoint moves on; b1 progresses (an update, still InProgress) and b2 starts.
    await writeRandomFile(path.join(p0.dir, 'step-100', 'model.pt'), 200_000);
    await makeTree(path.join(p0.dir, 'step-200'), { 'model.pt': { type: 'file', random: 100_000 } });
    const custom = kc.makeApiClient(CustomObjectsApi);
    await custom.patchNamespacedCustomObject(
      { group: 'velero.io', version: 'v1', namespace: veleroNs, plural: 'backups', name: 'b1', body: [{ op: 'add', path: '/status/progress', value: { itemsBackedUp: 3 } }] },
      jsonPatch,
    );
    await createBackup('b2', { includedNamespaces: ['*'], excludedNamespaces: [otherNs] });
    await veleroRunsDone('b2', 1);
    expect(await snapshots('b1')).toHaveLength(1);
    const s2 = await snapshots('b2');
    expect(s2.map((s) => s.tags.find((t) => t.startsWith('k8s.pod=')))).toEqual(['k8s.pod=p0']);
    expected.set('b2', path.join(work, 'expected-b2'));
    await copyTree(p0.dir, expected.get('b2')!);
  });

  it('follows the Backup scope: label selectors, or-selectors, namespaces; ignores Backups not in progress', async () => {
    await createBackup('b3', { includedNamespaces: [ns], labelSelector: { matchLabels: { app: 'other' } } });
    await createBackup('b5', { includedNamespaces: [ns] }, 'Completed');
    await createBackup('b4', {
      includedNamespaces: [ns, otherNs],
      orLabelSelectors: [{ matchLabels: { app: 'trainer' } }, { matchExpressions: [{ key: 'app', operator: 'In', values: ['other'] }] }],
    });
    await veleroRunsDone('b4', 2);
    const pods = (await snapshots('b4')).map((s) => `${s.tags.find((t) => t.startsWith('k8s.namespace='))} ${s.tags.find((t) => t.startsWith('k8s.pod='))}`);
    expect(pods.sort()).toEqual([`k8s.namespace=${ns} k8s.pod=p0`, `k8s.namespace=${otherNs} k8s.pod=p2`].sort());
    expect(await snapshots('b3')).toHaveLength(0);
    expect(await snapshots('b5')).toHaveLength(0);
    // Never the volume the pod did not opt in, nor the pod on another node.
    for (const b of ['b1', 'b2', 'b4']) for (const s of await snapshots(b)) expect(s.tags).not.toContain('k8s.volume=scratch');
  });

  it('after a restart, a Backup still in progress is not backed up again', async () => {
    await stopAgent();
    const restartedAt = new Date().toISOString();
    await startAgent();
    await createBackup('b6', { includedNamespaces: [ns] });
    await veleroRunsDone('b6', 1);
    expect(await snapshots('b1')).toHaveLength(1);
    expect(await snapshots('b2')).toHaveLength(1);
    expect(await snapshots('b4')).toHaveLength(2);
    // The only run since the restart is b6's.
    const since = (await runs()).filter((r) => r.queuedAt >= restartedAt);
    expect(since.map((r) => r.tags?.find((t) => t.startsWith('velero.io/backup-name=')))).toEqual(['velero.io/backup-name=b6']);
  });

  it("restores a Velero-restored pod's emptyDir with the documented init container, byte for byte", async () => {
    const doc = YAML.parse(await readFile(path.join(repoRoot, 'docs/examples/velero-emptydir-restore.yaml'), 'utf8')) as {
      spec: { initContainers: Array<{ args: string[]; env: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>; volumeMounts: Array<{ name: string; mountPath: string }> }> };
    };
    const init = doc.spec.initContainers[0]!;
    const mount = init.volumeMounts.find((m) => m.name === 'ckpt')!.mountPath;

    // The kubelet's part: the downward API from the pod object, then $(VAR) in args, and the mount.
    const initArgs = async (pod: V1Pod) => {
      const target = await volumeDir(podsDir, pod, 'kubernetes.io~empty-dir/ckpt');
      const env: Record<string, string> = {};
      for (const e of init.env) {
        const field = e.valueFrom?.fieldRef?.fieldPath;
        if (field === 'metadata.namespace') env[e.name] = pod.metadata!.namespace!;
        else if (field === 'metadata.name') env[e.name] = pod.metadata!.name!;
        else if (field) env[e.name] = pod.metadata!.labels?.[/^metadata\.labels\['(.+)'\]$/.exec(field)![1]!] ?? '';
      }
      return { target, args: init.args.map((a) => a.replace(/\$\((\w+)\)/g, (_, v: string) => env[v] ?? `$(${v})`).replace(mount, target)) };
    };
    const runInit = async (pod: V1Pod) => {
      const { target, args } = await initArgs(pod);
      return { target, result: await runTender(args, { env: { TENDER_REPOSITORY: repo } }) };
    };
    const startInit = async (pod: V1Pod) => {
      const { target, args } = await initArgs(pod);
      const child = startTender(args, { env: { TENDER_REPOSITORY: repo } });
      const err: string[] = [];
      child.stderr!.on('data', (b: Buffer) => err.push(b.toString()));
      child.stdout!.resume();
      child.stdin!.end();
      return { target, stderr: () => err.join(''), exit: new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code))) };
    };

    // A restore that starts before the agent has written the snapshot waits for it (--wait).
    const early = { metadata: { namespace: ns, name: 'p0', uid: randomName('restored'), labels: { 'velero.io/backup-name': 'b7' } } } as V1Pod;
    const waiting = await startInit(early);
    await until('the init container to wait for its snapshot', async () => waiting.stderr().includes('waiting up to 300 s'));
    await createBackup('b7', { includedNamespaces: [ns] });
    await veleroRunsDone('b7', 1);
    expect(await waiting.exit, waiting.stderr()).toBe(0);
    await assertSameTree(p0.dir, waiting.target, { ignore: (rel) => rel === '' });

    // Velero recreates the pod from the backup, labelled with the backup's name; its emptyDir is new.
    await deletePod(kc, ns, 'p0');
    for (const backup of ['b1', 'b2']) {
      const name = `p0`;
      const pod = await createPod(kc, ns, {
        name,
        nodeName: node,
        labels: { app: 'trainer', 'velero.io/backup-name': backup, 'velero.io/restore-name': `${backup}-restore` },
        annotations: { 'tender.io/backup-volumes': 'ckpt' },
        volumes: [emptyDir('ckpt'), emptyDir('scratch')],
      });
      const { target, result } = await runInit(pod);
      expect(result.code, result.stderr).toBe(0);
      await assertSameTree(expected.get(backup)!, target, { ignore: (rel) => rel === '' });
      await deletePod(kc, ns, name);
    }

    // A pod Velero did not restore has no label: the init container restores nothing and succeeds.
    const fresh = await createPod(kc, ns, { name: 'p0', nodeName: node, labels: { app: 'trainer' }, volumes: [emptyDir('ckpt')] });
    const { target, result } = await runInit(fresh);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('nothing to restore');
    expect(await readdir(target)).toEqual([]);
  });

  it('velero-inject adds that init container to pod templates by their annotation: the example is its output', async () => {
    const examplePath = path.join(repoRoot, 'docs/examples/velero-emptydir-restore.yaml');
    const example = YAML.parse(await readFile(examplePath, 'utf8')) as { spec: { initContainers?: unknown[]; volumes: Array<{ name: string }> } };
    const bare = structuredClone(example);
    delete bare.spec.initContainers;
    bare.spec.volumes = bare.spec.volumes.filter((v) => v.name !== 'tender-password');
    const template = (annotations: Record<string, string>) => ({
      metadata: { labels: { app: 'trainer' }, annotations },
      spec: {
        containers: [{ name: 'trainer', image: 'trainer' }],
        volumes: [{ name: 'ckpt', emptyDir: {} }, { name: 'logs', emptyDir: {} }, { name: 'data', persistentVolumeClaim: { claimName: 'data' } }],
      },
    });
    const deployment = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'trainer' },
      spec: { selector: { matchLabels: { app: 'trainer' } }, template: template({ 'tender.io/backup-volumes': 'ckpt,data' }) },
    };
    const job = {
      apiVersion: 'kubeflow.org/v1',
      kind: 'PyTorchJob',
      metadata: { name: 'llama' },
      spec: { pytorchReplicaSpecs: { Master: { replicas: 1, template: template({ 'tender.io/backup-volumes': 'ckpt, logs' }) }, Worker: { replicas: 3, template: template({}) } } },
    };
    const input = [bare, deployment, job].map((d) => YAML.stringify(d)).join('---\n');
    const args = ['velero-inject', '--image', 'REGISTRY/tender:0.1.0'];
    const r = await tenderOk(args, { input });
    expect(r.stderr.split('\n').filter(Boolean)).toEqual(['Pod trainer-0: restores ckpt', 'Deployment trainer: restores ckpt', 'PyTorchJob llama: restores ckpt, logs']);
    const [pod, dep, pj] = YAML.parseAllDocuments(r.stdout).map((d) => d.toJS()) as any[];
    expect(pod).toEqual(example);
    // A PVC named in the annotation is the data mover's; a template without the annotation is left alone.
    expect(dep.spec.template.spec.initContainers.map((c: { name: string }) => c.name)).toEqual(['tender-restore-ckpt']);
    expect(pj.spec.pytorchReplicaSpecs.Master.template.spec.initContainers.map((c: { name: string }) => c.name)).toEqual(['tender-restore-ckpt', 'tender-restore-logs']);
    expect(pj.spec.pytorchReplicaSpecs.Worker.template.spec.initContainers).toBeUndefined();
    // Idempotent.
    const again = await tenderOk(args, { input: r.stdout });
    expect(again.stdout).toBe(r.stdout);
    // The API server takes the injected pod as it is.
    const created = await kc.makeApiClient(CoreV1Api).createNamespacedPod({ namespace: ns, body: { ...pod, metadata: { ...pod.metadata, name: 'injected' } } });
    expect(created.spec!.initContainers!.map((c) => c.name)).toEqual(['tender-restore-ckpt']);
  });
});
