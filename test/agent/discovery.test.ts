/**
 * Discovery (src/agent/discovery.ts) against the real test API server: this node's pods only,
 * volumes mapped into a fake kubelet pods directory, annotations good and bad, deletions, a pod
 * recreated under a new name, policy changes, and an API server that goes away and comes back.
 * Every wait is on Discovery's events (with a timeout only as a bound on failure).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Discovery, type DiscoveryChange, type ProtectedVolume } from '../../src/agent/discovery.js';
import { DEFAULT_POLICY, type AgentPolicy } from '../../src/agent/policy.js';
import {
  createBoundClaim,
  createNamespace,
  createPod,
  deletePod,
  emptyDir,
  memoryLogger,
  ownerRef,
  pvcVolume,
  randomName,
  testKubeConfig,
  volumeDir,
  waitFor,
} from '../helpers/kube.js';
import { startKube, stopKube } from '../setup/kube.js';

const kc = testKubeConfig();
let podsDir: string;
const running: Discovery[] = [];

beforeAll(async () => {
  podsDir = await mkdtemp(path.join(os.tmpdir(), 'tender-discovery-'));
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((d) => d.stop()));
});
afterAll(async () => {
  await rm(podsDir, { recursive: true, force: true });
});

interface Started {
  d: Discovery;
  node: string;
  lines: Array<Record<string, unknown>>;
  policy: { current: AgentPolicy };
  changes: DiscoveryChange[];
}

async function startDiscovery(over: Partial<AgentPolicy> = {}, config: KubeConfig = kc, node = randomName('node')): Promise<Started> {
  const { logger, lines } = memoryLogger();
  const policy = { current: { ...DEFAULT_POLICY, ...over } };
  const d = new Discovery({
    kubeConfig: config,
    nodeName: node,
    podsDir,
    policy: () => policy.current,
    logger,
    checkMounts: false, // the fake pods directory has no mounts
    resyncMs: 600_000, // tests call refresh() rather than wait for a resync
    backoff: { initialMs: 100, maxMs: 1000 },
  });
  const changes: DiscoveryChange[] = [];
  d.on('change', (c: DiscoveryChange) => changes.push(c));
  running.push(d);
  await d.start();
  return { d, node, lines, policy, changes };
}

function seen(d: Discovery, ns: string, pod: string, volume: string, ok: (v: ProtectedVolume) => boolean = () => true) {
  return () => {
    const v = d.find(ns, pod, volume);
    return v && ok(v) ? v : undefined;
  };
}

describe('Discovery', () => {
  it("sees only this node's pods and maps their emptyDir and PVC volumes to the pods directory", async () => {
    const ns = await createNamespace(kc);
    const { d, node } = await startDiscovery();
    expect(d.stats().synced).toBe(true);

    const claim = await createBoundClaim(kc, ns, { claim: 'train-data' });
    const pvName = claim.pv.metadata!.name!;
    const annotations = { 'tender.io/backup-volumes': 'ckpt,data', 'tender.io/interval': '15m' };
    const volumes = [emptyDir('ckpt'), pvcVolume('data', 'train-data'), emptyDir('tmp')];
    const mine = await createPod(kc, ns, { name: 'trainer', nodeName: node, volumes, annotations });
    await createPod(kc, ns, { name: 'elsewhere', nodeName: `${node}-other`, volumes, annotations });
    const ckptDir = await volumeDir(podsDir, mine, 'kubernetes.io~empty-dir/ckpt');
    const dataDir = await volumeDir(podsDir, mine, `kubernetes.io~csi/${pvName}/mount`);

    await waitFor(d, 'change', seen(d, ns, 'trainer', 'data'), 'the PVC volume of the pod');
    await d.refresh(); // the directories may have come after the first look
    const data = d.find(ns, 'trainer', 'data')!;
    const ckpt = d.find(ns, 'trainer', 'ckpt')!;
    expect(ckpt).toEqual({
      key: `${ns}/trainer/ckpt`,
      namespace: ns,
      pod: 'trainer',
      podUid: mine.metadata!.uid,
      volume: 'ckpt',
      identity: `${ns}/Pod/trainer/ckpt`,
      tags: [`k8s.namespace=${ns}`, 'k8s.pod=trainer', 'k8s.volume=ckpt', 'k8s.owner=Pod/trainer', `k8s.node=${node}`],
      path: ckptDir,
      schedule: { intervalMs: 900_000 },
    });
    expect(data).toMatchObject({ identity: `pvc:${ns}/train-data`, path: dataDir });
    expect(data.tags).toContain('k8s.pvc=train-data');
    expect(d.find(ns, 'trainer', 'tmp')).toBeUndefined(); // not asked for
    expect(d.find(ns, 'elsewhere', 'ckpt')).toBeUndefined();
    expect(d.volumes().every((v) => v.pod === 'trainer')).toBe(true);
  });

  it('reports volumes it cannot back up yet, and picks them up once they are there', async () => {
    const ns = await createNamespace(kc);
    const { d, node, lines } = await startDiscovery({ defaultVolumes: 'all' });
    const pod = await createPod(kc, ns, {
      name: 'late',
      nodeName: node,
      volumes: [emptyDir('ckpt'), pvcVolume('data', 'later-claim'), { name: 'cfg', configMap: { name: 'x' } }],
    });
    const ckpt = await waitFor(d, 'change', seen(d, ns, 'late', 'ckpt'), 'the pod');
    expect(ckpt.problem).toMatch(/does not exist: the pod is not \(or no longer\) running on this node/);
    expect(d.find(ns, 'late', 'data')!.problem).toBe(`PersistentVolumeClaim ${ns}/later-claim does not exist`);
    expect(d.find(ns, 'late', 'cfg')).toBeUndefined(); // defaultVolumes: all is emptyDir volumes and claims
    expect(lines.some((l) => l.pod === 'late' && l.volume === 'data' && l.msg === 'volume cannot be backed up')).toBe(true);
    expect(d.stats().volumeProblems).toBe(2);

    const { pv } = await createBoundClaim(kc, ns, { claim: 'later-claim' });
    await volumeDir(podsDir, pod, 'kubernetes.io~empty-dir/ckpt');
    await volumeDir(podsDir, pod, `kubernetes.io~csi/${pv.metadata!.name}/mount`);
    await d.refresh();
    expect(d.find(ns, 'late', 'ckpt')!.path).toBeDefined();
    expect(d.find(ns, 'late', 'data')!.path).toMatch(/mount$/);
    expect(d.stats().volumeProblems).toBe(0);
  });

  it('logs and counts malformed annotations naming pod and annotation; the other volumes still work', async () => {
    const ns = await createNamespace(kc);
    const { d, node, lines } = await startDiscovery();
    const pod = await createPod(kc, ns, {
      name: 'sloppy',
      nodeName: node,
      volumes: [emptyDir('ckpt'), { name: 'tok', secret: { secretName: 's' } }],
      annotations: { 'tender.io/backup-volumes': 'ckpt,chkpt,tok', 'tender.io/schedule': 'every hour' },
    });
    await volumeDir(podsDir, pod, 'kubernetes.io~empty-dir/ckpt');
    await waitFor(d, 'change', seen(d, ns, 'sloppy', 'ckpt'), 'the pod');
    await d.refresh();
    const ckpt = d.find(ns, 'sloppy', 'ckpt')!;
    expect(ckpt.path).toBeDefined();
    expect(ckpt.schedule).toEqual(DEFAULT_POLICY.schedule);
    expect(d.find(ns, 'sloppy', 'tok')!.problem).toMatch(/secret volumes are never backed up/);
    const errors = lines.filter((l) => l.msg === 'malformed pod annotation').map((l) => l.error);
    expect(errors).toEqual([
      expect.stringMatching(new RegExp(`^pod ${ns}/sloppy: annotation tender.io/backup-volumes: the pod has no volume "chkpt"`)),
      expect.stringMatching(new RegExp(`^pod ${ns}/sloppy: annotation tender.io/schedule: "every hour" has 2 fields`)),
    ]);
    expect(d.stats().annotationErrors).toBe(2);
    // Evaluating the same pod again does not report the same errors again.
    await d.refresh();
    expect(d.stats().annotationErrors).toBe(2);
  });

  it('drops the volumes of a deleted pod, and gives a pod recreated under a new name the same identity', async () => {
    const ns = await createNamespace(kc);
    const { d, node, changes } = await startDiscovery({ defaultVolumes: 'emptyDir' });
    const owner = ownerRef('PyTorchJob', 'llama-ft', 'kubeflow.org/v1');
    const labels = { 'training.kubeflow.org/replica-type': 'Worker', 'training.kubeflow.org/replica-index': '0' };
    const first = await createPod(kc, ns, { name: 'llama-ft-worker-0', nodeName: node, volumes: [emptyDir('ckpt')], labels, ownerReferences: [owner] });
    const v1 = await waitFor(d, 'change', seen(d, ns, 'llama-ft-worker-0', 'ckpt'), 'the first pod');
    expect(v1.identity).toBe(`${ns}/PyTorchJob/llama-ft/worker-0/ckpt`);
    expect(v1.tags).toContain('k8s.owner=PyTorchJob/llama-ft');

    await deletePod(kc, ns, 'llama-ft-worker-0');
    await waitFor(d, 'change', () => !d.find(ns, 'llama-ft-worker-0', 'ckpt'), 'the deleted pod to go');
    expect(changes.at(-1)!.removed.map((v) => v.key)).toEqual([`${ns}/llama-ft-worker-0/ckpt`]);

    const second = await createPod(kc, ns, { name: 'llama-ft-worker-0-r1', nodeName: node, volumes: [emptyDir('ckpt')], labels, ownerReferences: [owner] });
    const v2 = await waitFor(d, 'change', seen(d, ns, 'llama-ft-worker-0-r1', 'ckpt'), 'the recreated pod');
    expect(second.metadata!.uid).not.toBe(first.metadata!.uid);
    expect(v2.podUid).toBe(second.metadata!.uid);
    expect(v2.identity).toBe(v1.identity);
  });

  it('applies a new policy on refresh(), including a namespace selector', async () => {
    const on = await createNamespace(kc, { backup: 'on' });
    const off = await createNamespace(kc);
    const { d, node, policy } = await startDiscovery({ defaultVolumes: 'emptyDir' });
    await createPod(kc, on, { name: 'a', nodeName: node, volumes: [emptyDir('ckpt')] });
    await createPod(kc, off, { name: 'b', nodeName: node, volumes: [emptyDir('ckpt')] });
    await waitFor(d, 'change', () => d.volumes().length === 2, 'both pods');
    expect(d.volumes().map((v) => v.namespace).sort()).toEqual([on, off].sort());

    policy.current = { ...policy.current, defaultVolumes: 'none' };
    await d.refresh();
    expect(d.volumes()).toEqual([]);

    policy.current = { ...policy.current, defaultVolumes: 'emptyDir' };
    await d.refresh();
    expect(d.volumes()).toHaveLength(2);

    policy.current = { ...policy.current, namespaceSelector: { matchLabels: { backup: 'on' } } };
    await d.refresh();
    expect(d.volumes().map((v) => v.key)).toEqual([`${on}/a/ckpt`]);
  });

  it('on an API server it cannot reach, starts unsynced and keeps trying without throwing', async () => {
    const bad = new KubeConfig();
    bad.loadFromOptions({
      clusters: [{ name: 'c', server: 'https://127.0.0.1:1', skipTLSVerify: true }],
      users: [{ name: 'u', token: 'x' }],
      contexts: [{ name: 'ctx', cluster: 'c', user: 'u' }],
      currentContext: 'ctx',
    });
    const { d, lines } = await startDiscovery({}, bad);
    expect(d.stats().synced).toBe(false);
    await waitFor(d, 'watch-error', () => d.stats().watchErrors >= 3, 'three failed attempts');
    expect(d.volumes()).toEqual([]);
    expect(lines.some((l) => l.msg?.toString().includes('listing or watching the pods of this node failed') && /ECONNREFUSED/.test(String(l.err)))).toBe(true);
  });
});

describe('Discovery across an API server restart', () => {
  let dir: string;
  let port: number;
  let own: KubeConfig;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'tender-kube-restart-'));
    own = new KubeConfig();
    own.loadFromFile(await startKube(dir));
    port = Number(new URL(own.getCurrentCluster()!.server).port);
  });
  afterAll(async () => {
    await stopKube(dir).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  it('keeps the known volumes while the API server is down, and catches up when it is back', async () => {
    const ns = await createNamespace(own);
    const { d, node, lines } = await startDiscovery({ defaultVolumes: 'emptyDir' }, own);
    const before = await createPod(own, ns, { name: 'before', nodeName: node, volumes: [emptyDir('ckpt')] });
    await volumeDir(podsDir, before, 'kubernetes.io~empty-dir/ckpt');
    await waitFor(d, 'change', seen(d, ns, 'before', 'ckpt'), 'the first pod');
    await d.refresh();
    expect(d.find(ns, 'before', 'ckpt')?.path).toBeDefined();

    await stopKube(dir);
    await waitFor(d, 'watch-error', () => d.stats().watchErrors >= 1, 'the watch to notice');
    expect(d.find(ns, 'before', 'ckpt')?.path).toBeDefined(); // still protected

    await startKube(dir, port);
    // Changes made after the restart (a new pod, a deletion) reach Discovery.
    await createPod(own, ns, { name: 'after', nodeName: node, volumes: [emptyDir('ckpt')] });
    await waitFor(d, 'change', seen(d, ns, 'after', 'ckpt'), 'the pod created after the restart', 60_000);
    await deletePod(own, ns, 'before');
    await waitFor(d, 'change', () => !d.find(ns, 'before', 'ckpt'), 'the deletion after the restart', 60_000);
    expect(d.stats().watchRestarts).toBeGreaterThanOrEqual(1);
    expect(lines.some((l) => l.level === 40 && l.node === node && l.msg?.toString().includes('failed'))).toBe(true);
  });
});

/**
 * A TCP proxy to the API server that can be cut: `blackhole` freezes every connection, open or new, without closing it (a network failure that
 * leaves connections hanging), `heal` forwards new connections again (frozen ones stay frozen).
 */
class CuttableProxy {
  readonly #server = net.createServer((c) => this.#accept(c));
  readonly #sockets = new Set<net.Socket>();
  #frozen = false;
  port = 0;

  constructor(private readonly target: number) {}

  async listen(port = 0): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, '127.0.0.1', () => resolve());
    });
    this.port = (this.#server.address() as net.AddressInfo).port;
  }

  #accept(client: net.Socket): void {
    this.#sockets.add(client);
    client.on('close', () => this.#sockets.delete(client));
    client.on('error', () => undefined);
    if (this.#frozen) return client.pause() as unknown as void;
    const upstream = net.connect(this.target, '127.0.0.1');
    this.#sockets.add(upstream);
    upstream.on('close', () => {
      this.#sockets.delete(upstream);
      if (!this.#frozen) client.destroy();
    });
    upstream.on('error', () => undefined);
    client.on('close', () => {
      if (!this.#frozen) upstream.destroy();
    });
    client.pipe(upstream);
    upstream.pipe(client);
  }

  blackhole(): void {
    this.#frozen = true;
    for (const s of this.#sockets) {
      s.unpipe();
      s.pause();
    }
  }

  heal(): void {
    this.#frozen = false;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

describe('Discovery through a connection that hangs', () => {
  it('starts a silent watch afresh and catches up with what changed meanwhile', async () => {
    const server = new URL(kc.getCurrentCluster()!.server);
    const proxy = new CuttableProxy(Number(server.port));
    await proxy.listen();
    try {
      const viaProxy = new KubeConfig();
      viaProxy.loadFromOptions({
        clusters: kc.getClusters().map((c) => ({ ...c, server: `https://127.0.0.1:${proxy.port}` })),
        users: kc.getUsers(),
        contexts: kc.getContexts(),
        currentContext: kc.getCurrentContext(),
      });
      const ns = await createNamespace(kc);
      const { logger, lines } = memoryLogger();
      const node = randomName('node');
      const d = new Discovery({
        kubeConfig: viaProxy,
        nodeName: node,
        podsDir,
        policy: () => ({ ...DEFAULT_POLICY, defaultVolumes: 'emptyDir' }),
        logger,
        checkMounts: false,
        resyncMs: 600_000,
        watchTimeoutSeconds: 2,
        backoff: { initialMs: 100, maxMs: 500 },
      });
      running.push(d);
      await d.start();
      await createPod(kc, ns, { name: 'gone', nodeName: node, volumes: [emptyDir('ckpt')] });
      await waitFor(d, 'change', seen(d, ns, 'gone', 'ckpt'), 'the first pod');

      proxy.blackhole();
      // Behind Discovery's back: one pod goes, another comes.
      await deletePod(kc, ns, 'gone');
      await createPod(kc, ns, { name: 'new', nodeName: node, volumes: [emptyDir('ckpt')] });
      expect(d.find(ns, 'gone', 'ckpt')).toBeDefined();
      proxy.heal();

      await waitFor(d, 'change', () => !d.find(ns, 'gone', 'ckpt') && d.find(ns, 'new', 'ckpt'), 'the changes made while cut off', 60_000);
      expect(d.stats().watchRestarts).toBeGreaterThanOrEqual(1);
      expect(lines.some((l) => String(l.msg).includes('no word from the API server'))).toBe(true);
    } finally {
      await proxy.close();
    }
  });
});
