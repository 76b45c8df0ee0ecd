/**
 * Stable volume identities and tags (src/agent/identity.ts), with owners looked up on the real
 * test API server: the identity must survive a pod restart (new name, new UID, other node).
 */
import { AppsV1Api, type V1Pod } from '@kubernetes/client-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { directOwner, OwnerResolver, replicaOf, volumeIdentity, volumeTags } from '../../src/agent/identity.js';
import {
  createNamespace,
  createPod,
  deletePod,
  emptyDir,
  memoryLogger,
  ownerRef,
  pvcVolume,
  testKubeConfig,
} from '../helpers/kube.js';

const kc = testKubeConfig();
const apps = kc.makeApiClient(AppsV1Api);
let ns: string;

beforeAll(async () => {
  ns = await createNamespace(kc);
});

function resolver(): OwnerResolver {
  return new OwnerResolver({ kubeConfig: kc, logger: memoryLogger().logger });
}

async function identityOf(pod: V1Pod, volume: string): Promise<string> {
  const vol = pod.spec!.volumes!.find((v) => v.name === volume)!;
  return volumeIdentity(pod, vol, await resolver().owner(pod));
}

/** A Deployment and a ReplicaSet it owns (no controller makes one here). */
async function deploymentWithReplicaSet(name: string, hash: string): Promise<string> {
  const labels = { app: name };
  const template = { metadata: { labels }, spec: { containers: [{ name: 'main', image: 'busybox' }] } };
  const dep = await apps.createNamespacedDeployment({
    namespace: ns,
    body: { metadata: { name }, spec: { selector: { matchLabels: labels }, template } },
  }).catch(async () => apps.readNamespacedDeployment({ name, namespace: ns }));
  const rsName = `${name}-${hash}`;
  await apps.createNamespacedReplicaSet({
    namespace: ns,
    body: {
      metadata: {
        name: rsName,
        labels: { ...labels, 'pod-template-hash': hash },
        ownerReferences: [ownerRef('Deployment', name, 'apps/v1', dep.metadata!.uid!)],
      },
      spec: {
        selector: { matchLabels: { ...labels, 'pod-template-hash': hash } },
        template: { ...template, metadata: { labels: { ...labels, 'pod-template-hash': hash } } },
      },
    },
  });
  return rsName;
}

describe('volume identity', () => {
  it('names a bare pod\'s emptyDir by the pod, and tags every snapshot', async () => {
    const pod = await createPod(kc, ns, { name: 'solo', nodeName: 'node-a', volumes: [emptyDir('ckpt')] });
    expect(await identityOf(pod, 'ckpt')).toBe(`${ns}/Pod/solo/ckpt`);
    expect(volumeTags(pod, pod.spec!.volumes![0]!, directOwner(pod), 'node-a')).toEqual([
      `k8s.namespace=${ns}`,
      'k8s.pod=solo',
      'k8s.volume=ckpt',
      'k8s.owner=Pod/solo',
      'k8s.node=node-a',
    ]);
  });

  it('names a PVC-backed volume by its claim, whatever the pod', async () => {
    const pod = await createPod(kc, ns, {
      name: 'db-7f9c-x2',
      nodeName: 'node-a',
      volumes: [pvcVolume('data', 'pg-data')],
      ownerReferences: [ownerRef('ReplicaSet', 'db-7f9c', 'apps/v1')],
      labels: { 'pod-template-hash': '7f9c' },
    });
    expect(await identityOf(pod, 'data')).toBe(`pvc:${ns}/pg-data`);
    const tags = volumeTags(pod, pod.spec!.volumes![0]!, { kind: 'Deployment', name: 'db' }, 'node-b');
    expect(tags).toContain('k8s.pvc=pg-data');
    expect(tags).toContain('k8s.owner=Deployment/db');
    expect(tags).toContain('k8s.node=node-b');
  });

  it('follows a ReplicaSet to its Deployment, so a rollout (new ReplicaSet, new pod) keeps the identity', async () => {
    const rs1 = await deploymentWithReplicaSet('web', '5d8f7b6c9');
    const p1 = await createPod(kc, ns, {
      name: `${rs1}-abcde`,
      nodeName: 'node-a',
      volumes: [emptyDir('cache')],
      labels: { app: 'web', 'pod-template-hash': '5d8f7b6c9' },
      ownerReferences: [ownerRef('ReplicaSet', rs1, 'apps/v1')],
    });
    expect(await resolver().owner(p1)).toEqual({ kind: 'Deployment', name: 'web' });
    const id1 = await identityOf(p1, 'cache');
    expect(id1).toBe(`${ns}/Deployment/web/cache`);

    const rs2 = await deploymentWithReplicaSet('web', '66b9c4d7f');
    await deletePod(kc, ns, p1.metadata!.name!);
    const p2 = await createPod(kc, ns, {
      name: `${rs2}-zyxwv`,
      nodeName: 'node-b',
      volumes: [emptyDir('cache')],
      labels: { app: 'web', 'pod-template-hash': '66b9c4d7f' },
      ownerReferences: [ownerRef('ReplicaSet', rs2, 'apps/v1')],
    });
    expect(p2.metadata!.uid).not.toBe(p1.metadata!.uid);
    expect(await identityOf(p2, 'cache')).toBe(id1);
  });

  it('falls back to the pod-template-hash naming when the ReplicaSet cannot be read', async () => {
    const { logger, lines } = memoryLogger();
    const errors: unknown[] = [];
    const r = new OwnerResolver({ kubeConfig: kc, logger, onApiError: (e) => errors.push(e) });
    const pod = await createPod(kc, ns, {
      name: 'api-84d5f9-q1',
      nodeName: 'node-a',
      volumes: [emptyDir('tmp')],
      labels: { 'pod-template-hash': '84d5f9' },
      ownerReferences: [ownerRef('ReplicaSet', 'api-84d5f9', 'apps/v1')],
    });
    expect(await r.owner(pod)).toEqual({ kind: 'Deployment', name: 'api' });
    expect(errors).toHaveLength(1);
    expect(lines.find((l) => l.replicaSet === 'api-84d5f9')?.err).toMatch(/HTTP 404/);
    // A ReplicaSet without that naming stays a ReplicaSet.
    const odd = { ...pod, metadata: { ...pod.metadata, labels: {}, ownerReferences: [ownerRef('ReplicaSet', 'hand-made', 'apps/v1')] } };
    expect(await r.owner(odd)).toEqual({ kind: 'ReplicaSet', name: 'hand-made' });
  });

  it('uses a PyTorchJob owner as it is, with the Kubeflow replica, across a restart under a new name and UID', async () => {
    const owner = ownerRef('PyTorchJob', 'llama-ft', 'kubeflow.org/v1');
    const labels = (i: string) => ({ 'training.kubeflow.org/replica-type': 'Worker', 'training.kubeflow.org/replica-index': i });
    const w1 = await createPod(kc, ns, { name: 'llama-ft-worker-1', nodeName: 'gpu-1', volumes: [emptyDir('ckpt')], labels: labels('1'), ownerReferences: [owner] });
    const m0 = await createPod(kc, ns, {
      name: 'llama-ft-master-0',
      nodeName: 'gpu-0',
      volumes: [emptyDir('ckpt')],
      labels: { 'training.kubeflow.org/replica-type': 'Master', 'training.kubeflow.org/replica-index': '0' },
      ownerReferences: [owner],
    });
    expect(await identityOf(w1, 'ckpt')).toBe(`${ns}/PyTorchJob/llama-ft/worker-1/ckpt`);
    expect(await identityOf(m0, 'ckpt')).toBe(`${ns}/PyTorchJob/llama-ft/master-0/ckpt`);
    expect(volumeTags(w1, w1.spec!.volumes![0]!, directOwner(w1), 'gpu-1')).toContain('k8s.owner=PyTorchJob/llama-ft');

    await deletePod(kc, ns, 'llama-ft-worker-1');
    const again = await createPod(kc, ns, { name: 'llama-ft-worker-1-retry', nodeName: 'gpu-7', volumes: [emptyDir('ckpt')], labels: labels('1'), ownerReferences: [owner] });
    expect(again.metadata!.uid).not.toBe(w1.metadata!.uid);
    expect(await identityOf(again, 'ckpt')).toBe(`${ns}/PyTorchJob/llama-ft/worker-1/ckpt`);
  });

  it('names StatefulSet volumes by PVC, or by StatefulSet and ordinal', async () => {
    const pod = await createPod(kc, ns, {
      name: 'kv-2',
      nodeName: 'node-a',
      volumes: [pvcVolume('data', 'data-kv-2'), emptyDir('wal')],
      ownerReferences: [ownerRef('StatefulSet', 'kv', 'apps/v1')],
    });
    expect(await identityOf(pod, 'data')).toBe(`pvc:${ns}/data-kv-2`);
    expect(await identityOf(pod, 'wal')).toBe(`${ns}/StatefulSet/kv/2/wal`);
    expect(replicaOf({ metadata: { name: 'kv-x', labels: { 'apps.kubernetes.io/pod-index': '4' } } }, { kind: 'StatefulSet', name: 'kv' })).toBe('4');
  });

  it('uses a Job owner as it is, with the completion index of an Indexed Job', async () => {
    const plain = await createPod(kc, ns, { name: 'etl-x7k2p', nodeName: 'node-a', volumes: [emptyDir('out')], ownerReferences: [ownerRef('Job', 'etl', 'batch/v1')] });
    expect(await identityOf(plain, 'out')).toBe(`${ns}/Job/etl/out`);
    const indexed = await createPod(kc, ns, {
      name: 'shard-3-abcde',
      nodeName: 'node-a',
      volumes: [emptyDir('scratch')],
      labels: { 'batch.kubernetes.io/job-completion-index': '3' },
      ownerReferences: [ownerRef('Job', 'shard', 'batch/v1')],
    });
    expect(await identityOf(indexed, 'scratch')).toBe(`${ns}/Job/shard/3/scratch`);
  });

  it('tags a generic ephemeral volume with its PVC but identifies it like an emptyDir', () => {
    const vol = { name: 'scratch', ephemeral: { volumeClaimTemplate: { spec: {} } } };
    const pod: V1Pod = { metadata: { name: 'p-0', namespace: 'ml', ownerReferences: [ownerRef('StatefulSet', 'p', 'apps/v1')] }, spec: { containers: [], volumes: [vol] } };
    const owner = directOwner(pod);
    expect(volumeIdentity(pod, vol, owner)).toBe('ml/StatefulSet/p/0/scratch');
    expect(volumeTags(pod, vol, owner, 'n')).toContain('k8s.pvc=p-0-scratch');
  });
});
