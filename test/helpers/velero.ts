/**
 * Velero on the test API server, for the data-mover tests: Velero's real CRDs (and the CSI
 * snapshot CRDs) from pinned releases (scripts/velero-crds.sh), objects made as Velero makes them,
 * and `FakeNodes`, which plays the parts of a cluster the test API server lacks for the objects in
 * Velero's namespace: the scheduler (binds a pod to the node its node affinity names), the CSI
 * driver and PV controller (provisions a PV for a pending PVC, fills a clone from its snapshot's
 * data, binds a PV whose claimRef names a PVC, releases or deletes PVs of deleted PVCs), the
 * kubelet (mounts the volume under the node's pods directory, sets the pod Running, finishes
 * deleting pods), and the protection controllers (finalizers of deleted PVCs and PVs).
 *
 * A PV's data lives in `storage/<pv>` while no pod mounts it and is moved into the pod's volume
 * directory while one does (and back when the pod goes), so data follows the PV as on a node.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  ApiextensionsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type V1CustomResourceDefinition,
  type V1PersistentVolume,
  type V1PersistentVolumeClaim,
  type V1Pod,
  Watch,
} from '@kubernetes/client-node';
import { expect } from 'vitest';
import { parse } from 'yaml';
import { repoRoot } from './cli.js';
import { randomName } from './kube.js';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `cp -a`: times (of directories too), modes and symlinks as they are. */
async function copyTree(from: string, to: string): Promise<void> {
  await run('cp', ['-a', from, to]);
}

export const DRIVER = 'test.csi.tender.example';
export const NODE_NAME_TERM = 'metadata.name';

let crdsApplied: Promise<void> | undefined;

/**
 * Applies the CRDs once per test file (concurrent files: a create that finds the CRD there is
 * fine) and waits until each resource answers a list.
 */
export function applyVeleroCrds(kc: KubeConfig): Promise<void> {
  crdsApplied ??= (async () => {
    const { stdout } = await run('bash', [path.join(repoRoot, 'scripts/velero-crds.sh'), 'fetch'], { timeout: 10 * 60_000 });
    const dir = stdout.trim().split('\n').pop()!;
    const ext = kc.makeApiClient(ApiextensionsV1Api);
    const custom = kc.makeApiClient(CustomObjectsApi);
    const files = (await readdir(dir)).filter((f) => f.endsWith('.yaml'));
    const crds = await Promise.all(files.map(async (f) => parse(await readFile(path.join(dir, f), 'utf8')) as V1CustomResourceDefinition));
    for (const crd of crds) {
      await ext.createCustomResourceDefinition({ body: crd }).catch((err: { code?: number }) => {
        if (err.code !== 409) throw err;
      });
    }
    await Promise.all(
      crds.map(async (crd) => {
        const version = crd.spec.versions.find((v) => v.storage)!.name;
        for (let i = 0; ; i++) {
          try {
            await custom.listClusterCustomObject({ group: crd.spec.group, version, plural: crd.spec.names.plural });
            // For about a second after a CRD is established its watches get 429 (see
            // shared/tools/kube-test-cluster.md): a watch that the server ends itself is served.
            await probeWatch(kc, `/apis/${crd.spec.group}/${version}/${crd.spec.names.plural}`);
            break;
          } catch (err) {
            if (i > 300) throw err;
            await sleep(100);
          }
        }
      }),
    );
  })();
  return crdsApplied;
}

/** Resolves when a 1 s watch of `path` ends without an error; rejects with the error. */
function probeWatch(kc: KubeConfig, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    void new Watch(kc)
      .watch(path, { allowWatchBookmarks: true, timeoutSeconds: 1 }, () => undefined, (err: unknown) => (err ? reject(err as Error) : resolve()))
      .catch(reject);
  });
}

export const veleroApi = {
  dataUpload: { group: 'velero.io', version: 'v2alpha1', plural: 'datauploads' },
  dataDownload: { group: 'velero.io', version: 'v2alpha1', plural: 'datadownloads' },
  deleteBackupRequest: { group: 'velero.io', version: 'v1', plural: 'deletebackuprequests' },
  backup: { group: 'velero.io', version: 'v1', plural: 'backups' },
  volumeSnapshot: { group: 'snapshot.storage.k8s.io', version: 'v1', plural: 'volumesnapshots' },
  volumeSnapshotContent: { group: 'snapshot.storage.k8s.io', version: 'v1', plural: 'volumesnapshotcontents' },
} as const;

/** A Backup as `velero backup create --snapshot-move-data --data-mover tender` leaves it (only what the data mover reads). */
export async function createBackup(kc: KubeConfig, veleroNs: string, name = randomName('backup')): Promise<{ name: string; uid: string }> {
  const b = (await kc.makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
    ...veleroApi.backup,
    namespace: veleroNs,
    body: { apiVersion: 'velero.io/v1', kind: 'Backup', metadata: { name }, spec: { snapshotMoveData: true, dataMover: 'tender' } },
  })) as { metadata: { uid: string } };
  return { name, uid: b.metadata.uid };
}

/**
 * A source volume's CSI snapshot as the snapshot controller leaves it: a VolumeSnapshot in the
 * application namespace, ready, bound to a VolumeSnapshotContent whose snapshot handle the fake
 * CSI driver knows (its data is a copy of `data`).
 */
export async function createSnapshot(kc: KubeConfig, nodes: FakeNodes, ns: string, pvc: string, data: string): Promise<{ vs: string; vsc: string; handle: string }> {
  const custom = kc.makeApiClient(CustomObjectsApi);
  const vs = randomName('vs');
  const vsc = randomName('snapcontent');
  const handle = randomName('snap-handle');
  await nodes.registerSnapshot(handle, data);
  const content = await custom.createClusterCustomObject({
    ...veleroApi.volumeSnapshotContent,
    body: {
      apiVersion: 'snapshot.storage.k8s.io/v1',
      kind: 'VolumeSnapshotContent',
      metadata: { name: vsc },
      spec: { deletionPolicy: 'Delete', driver: DRIVER, source: { volumeHandle: `vol-${pvc}` }, volumeSnapshotRef: { kind: 'VolumeSnapshot', name: vs, namespace: ns }, volumeSnapshotClassName: 'csi-snapclass' },
    },
  });
  await custom.replaceClusterCustomObjectStatus({ ...veleroApi.volumeSnapshotContent, name: vsc, body: { ...content, status: { snapshotHandle: handle, readyToUse: true, restoreSize: 1 << 30 } } });
  const snap = await custom.createNamespacedCustomObject({
    ...veleroApi.volumeSnapshot,
    namespace: ns,
    body: { apiVersion: 'snapshot.storage.k8s.io/v1', kind: 'VolumeSnapshot', metadata: { name: vs, namespace: ns }, spec: { source: { persistentVolumeClaimName: pvc }, volumeSnapshotClassName: 'csi-snapclass' } },
  });
  await custom.replaceNamespacedCustomObjectStatus({
    ...veleroApi.volumeSnapshot,
    namespace: ns,
    name: vs,
    body: { ...snap, status: { boundVolumeSnapshotContentName: vsc, readyToUse: true, restoreSize: '1Gi' } },
  });
  return { vs, vsc, handle };
}

/** A DataUpload as Velero's CSI PVC backup action creates it (pkg/backup/actions/csi/pvc_action.go). */
export async function createDataUpload(
  kc: KubeConfig,
  veleroNs: string,
  o: { backup: { name: string; uid: string }; sourceNamespace: string; sourcePVC: string; volumeSnapshot: string; datamover?: string },
): Promise<any> {
  return kc.makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
    ...veleroApi.dataUpload,
    namespace: veleroNs,
    body: {
      apiVersion: 'velero.io/v2alpha1',
      kind: 'DataUpload',
      metadata: {
        generateName: `${o.backup.name}-`,
        ownerReferences: [{ apiVersion: 'velero.io/v1', kind: 'Backup', name: o.backup.name, uid: o.backup.uid, controller: true }],
        labels: {
          'velero.io/backup-name': o.backup.name,
          'velero.io/backup-uid': o.backup.uid,
          'velero.io/pvc-uid': '00000000-0000-4000-8000-000000000001',
          'velero.io/async-operation-id': `du-${o.backup.uid}.${o.sourcePVC}`,
        },
      },
      spec: {
        snapshotType: 'CSI',
        csiSnapshot: { volumeSnapshot: o.volumeSnapshot, storageClass: 'csi-sc', snapshotClass: 'csi-snapclass', driver: DRIVER },
        sourcePVC: o.sourcePVC,
        ...(o.datamover !== undefined ? { datamover: o.datamover } : {}),
        backupStorageLocation: 'default',
        sourceNamespace: o.sourceNamespace,
        operationTimeout: '10m0s',
      },
    },
  });
}

/** The target PVC and DataDownload as Velero's CSI PVC restore action creates them (pkg/restore/actions/csi/pvc_action.go). */
export async function createRestoreTarget(kc: KubeConfig, ns: string, pvc: string): Promise<string> {
  const label = `${ns}.${pvc}.${randomName('r').slice(2, 9)}`;
  await kc.makeApiClient(CoreV1Api).createNamespacedPersistentVolumeClaim({
    namespace: ns,
    body: {
      metadata: { name: pvc, namespace: ns },
      spec: {
        accessModes: ['ReadWriteOnce'],
        resources: { requests: { storage: '1Gi' } },
        storageClassName: 'csi-sc',
        selector: { matchLabels: { 'velero.io/dynamic-pv-restore': label } },
      },
    },
  });
  return label;
}

export async function createDataDownload(
  kc: KubeConfig,
  veleroNs: string,
  o: { restore: string; targetNamespace: string; targetPVC: string; snapshotID: string; sourceNamespace: string; datamover?: string },
): Promise<any> {
  return kc.makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
    ...veleroApi.dataDownload,
    namespace: veleroNs,
    body: {
      apiVersion: 'velero.io/v2alpha1',
      kind: 'DataDownload',
      metadata: {
        generateName: `${o.restore}-`,
        ownerReferences: [{ apiVersion: 'velero.io/v1', kind: 'Restore', name: o.restore, uid: '00000000-0000-4000-8000-0000000000a1', controller: true }],
        labels: { 'velero.io/restore-name': o.restore, 'velero.io/restore-uid': '00000000-0000-4000-8000-0000000000a1', 'velero.io/async-operation-id': `dd-${o.targetPVC}` },
      },
      spec: {
        targetVolume: { pvc: o.targetPVC, pv: '', namespace: o.targetNamespace },
        backupStorageLocation: 'default',
        datamover: o.datamover ?? 'tender',
        snapshotID: o.snapshotID,
        sourceNamespace: o.sourceNamespace,
        operationTimeout: '10m0s',
      },
    },
  });
}

export interface FakeNodesOptions {
  kc: KubeConfig;
  /** Velero's namespace: the pods and PVCs here are served. */
  namespace: string;
  /** Node name → its pods directory. */
  podsDirs: Record<string, string>;
  /** Where PV data lives while no pod mounts it. */
  storage: string;
  /** PVCs in Velero's namespace whose name starts with one of these are never bound (a provisioner that fails). */
  neverBind?: Set<string>;
}

export class FakeNodes {
  private readonly core: CoreV1Api;
  private readonly custom: CustomObjectsApi;
  private readonly snapshots = new Map<string, string>();
  private stopped = false;
  private loop: Promise<void> | undefined;
  /** Pods seen mounted: uid → { node, pv, dir }. */
  private readonly mounted = new Map<string, { dir: string; pv: string }>();
  /** The PVs this fake provisioned (others on the shared API server are not ours to touch). */
  private readonly pvs = new Set<string>();
  readonly errors: string[] = [];

  constructor(readonly o: FakeNodesOptions) {
    this.core = o.kc.makeApiClient(CoreV1Api);
    this.custom = o.kc.makeApiClient(CustomObjectsApi);
  }

  async registerSnapshot(handle: string, data: string): Promise<void> {
    const copy = path.join(this.o.storage, 'snapshots', handle);
    await mkdir(path.dirname(copy), { recursive: true });
    await copyTree(data, copy);
    this.snapshots.set(handle, copy);
  }

  /** Where a PV's data is while no pod mounts it. */
  pvData(pv: string): string {
    return path.join(this.o.storage, 'pvs', pv);
  }

  start(): void {
    this.loop = (async () => {
      while (!this.stopped) {
        try {
          await this.pass();
        } catch (err) {
          this.errors.push(String((err as Error)?.message ?? err));
        }
        await sleep(50);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }

  private async pass(): Promise<void> {
    const ns = this.o.namespace;
    const pvcs = (await this.core.listNamespacedPersistentVolumeClaim({ namespace: ns })).items;
    for (const pvc of pvcs) await this.serveClaim(pvc);
    const pvs = (await this.core.listPersistentVolume()).items;
    for (const pv of pvs) await this.servePv(pv);
    const pods = (await this.core.listNamespacedPod({ namespace: ns })).items;
    for (const pod of pods) await this.servePod(pod);
  }

  private async serveClaim(pvc: V1PersistentVolumeClaim): Promise<void> {
    const name = pvc.metadata!.name!;
    const ns = pvc.metadata!.namespace!;
    if (pvc.metadata!.deletionTimestamp) {
      if (pvc.metadata!.finalizers?.length) await this.core.replaceNamespacedPersistentVolumeClaim({ name, namespace: ns, body: { ...pvc, metadata: { ...pvc.metadata, finalizers: [] } } });
      return;
    }
    if (pvc.spec?.volumeName || [...(this.o.neverBind ?? [])].some((prefix) => name.startsWith(prefix))) return;
    // The CSI provisioner: a new volume, filled from the snapshot for a clone.
    const pvName = `pvc-${pvc.metadata!.uid}`;
    const data = this.pvData(pvName);
    await mkdir(path.dirname(data), { recursive: true });
    const source = pvc.spec?.dataSource;
    if (source?.kind === 'VolumeSnapshot') {
      const vs = (await this.custom.getNamespacedCustomObject({ ...veleroApi.volumeSnapshot, namespace: ns, name: source.name })) as any;
      const vsc = (await this.custom.getClusterCustomObject({ ...veleroApi.volumeSnapshotContent, name: vs.spec.source.volumeSnapshotContentName })) as any;
      const from = this.snapshots.get(vsc.spec.source.snapshotHandle);
      if (!from) throw new Error(`unknown snapshot handle ${vsc.spec.source.snapshotHandle}`);
      await copyTree(from, data);
    } else {
      await mkdir(data, { recursive: true });
    }
    this.pvs.add(pvName);
    const pv = await this.core.createPersistentVolume({
      body: {
        metadata: { name: pvName, finalizers: ['kubernetes.io/pv-protection'] },
        spec: {
          accessModes: pvc.spec?.accessModes ?? ['ReadWriteOnce'],
          capacity: { storage: String(pvc.spec?.resources?.requests?.storage ?? '1Gi') },
          persistentVolumeReclaimPolicy: 'Delete',
          storageClassName: pvc.spec?.storageClassName ?? '',
          volumeMode: 'Filesystem',
          claimRef: { kind: 'PersistentVolumeClaim', namespace: ns, name, uid: pvc.metadata!.uid! },
          csi: { driver: DRIVER, volumeHandle: pvName },
        },
      },
    });
    await this.core.replacePersistentVolumeStatus({ name: pvName, body: { ...pv, status: { phase: 'Bound' } } });
    const bound = await this.core.replaceNamespacedPersistentVolumeClaim({ name, namespace: ns, body: { ...pvc, spec: { ...pvc.spec, volumeName: pvName } } });
    await this.core.replaceNamespacedPersistentVolumeClaimStatus({
      name,
      namespace: ns,
      body: { ...bound, status: { phase: 'Bound', accessModes: pvc.spec?.accessModes ?? ['ReadWriteOnce'], capacity: { storage: '1Gi' } } },
    });
  }

  private async servePv(pv: V1PersistentVolume): Promise<void> {
    const name = pv.metadata!.name!;
    if (!this.pvs.has(name)) return;
    if (pv.metadata!.deletionTimestamp) {
      if (pv.metadata!.finalizers?.length) await this.core.replacePersistentVolume({ name, body: { ...pv, metadata: { ...pv.metadata, finalizers: [] } } });
      await rm(this.pvData(name), { recursive: true, force: true });
      this.pvs.delete(name);
      return;
    }
    const ref = pv.spec?.claimRef;
    if (!ref?.name || !ref.namespace) return;
    const claim = await this.core.readNamespacedPersistentVolumeClaim({ name: ref.name, namespace: ref.namespace }).catch(() => undefined);
    if (ref.uid && (!claim || claim.metadata!.uid !== ref.uid)) {
      // Its claim is gone: reclaim.
      if (pv.spec?.persistentVolumeReclaimPolicy === 'Delete') await this.core.deletePersistentVolume({ name });
      else if (pv.status?.phase !== 'Released') await this.core.replacePersistentVolumeStatus({ name, body: { ...pv, status: { phase: 'Released' } } });
      return;
    }
    if (!ref.uid && claim && claim.spec?.volumeName === name) {
      // A claimRef without a UID names the claim that asked for this PV: bind them.
      const selector = claim.spec?.selector?.matchLabels ?? {};
      if (!Object.entries(selector).every(([k, v]) => pv.metadata?.labels?.[k] === v)) return;
      const updated = await this.core.replacePersistentVolume({ name, body: { ...pv, spec: { ...pv.spec, claimRef: { ...ref, uid: claim.metadata!.uid! } } } });
      await this.core.replacePersistentVolumeStatus({ name, body: { ...updated, status: { phase: 'Bound' } } });
      await this.core.replaceNamespacedPersistentVolumeClaimStatus({
        name: ref.name,
        namespace: ref.namespace,
        body: { ...claim, status: { phase: 'Bound', accessModes: pv.spec?.accessModes ?? [], capacity: pv.spec?.capacity ?? {} } },
      });
    }
  }

  private async servePod(pod: V1Pod): Promise<void> {
    const name = pod.metadata!.name!;
    const ns = pod.metadata!.namespace!;
    const uid = pod.metadata!.uid!;
    if (pod.metadata!.deletionTimestamp) {
      // The kubelet: unmount (the data goes back to the PV), then confirm the deletion.
      const m = this.mounted.get(uid);
      if (m) {
        if (existsSync(m.dir)) await rename(m.dir, this.pvData(m.pv));
        this.mounted.delete(uid);
      }
      await this.core.deleteNamespacedPod({ name, namespace: ns, gracePeriodSeconds: 0 }).catch(() => undefined);
      return;
    }
    if (!pod.spec?.nodeName) {
      const node = pod.spec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms?.[0]?.matchFields?.find((f) => f.key === NODE_NAME_TERM)?.values?.[0];
      if (!node || !(node in this.o.podsDirs)) return;
      await this.core.createNamespacedPodBinding({ name, namespace: ns, body: { metadata: { name }, target: { kind: 'Node', name: node } } });
      return;
    }
    if (pod.status?.phase === 'Running' || this.mounted.has(uid)) return;
    const podsDir = this.o.podsDirs[pod.spec.nodeName];
    const claimName = pod.spec.volumes?.[0]?.persistentVolumeClaim?.claimName;
    if (!podsDir || !claimName) return;
    const claim = await this.core.readNamespacedPersistentVolumeClaim({ name: claimName, namespace: ns }).catch(() => undefined);
    const pvName = claim?.spec?.volumeName;
    if (!pvName || claim?.status?.phase !== 'Bound') return;
    const dir = path.join(podsDir, uid, 'volumes', 'kubernetes.io~csi', pvName, 'mount');
    await mkdir(path.dirname(dir), { recursive: true });
    await rename(this.pvData(pvName), dir);
    this.mounted.set(uid, { dir, pv: pvName });
    await this.core.replaceNamespacedPodStatus({ name, namespace: ns, body: { ...pod, status: { phase: 'Running' } } });
  }
}

type Api = { group: string; version: string; plural: string };
export type Obj = { metadata: { name: string; uid: string; resourceVersion: string }; spec: any; status?: any };

/**
 * Every version of one object the API server reports from the start on (a watch from the list's
 * resourceVersion), so tests see each phase, not only the last one.
 */
export class History {
  readonly versions: Obj[] = [];
  private abort: AbortController | undefined;
  private readonly waiters = new Set<() => void>();
  name: string | undefined;

  constructor(
    private readonly kc: KubeConfig,
    private readonly namespace: string,
    private readonly api: Api,
    /** Appended to a timeout's message (e.g. the agents' logs). */
    private readonly context: () => string = () => '',
  ) {}

  async start(): Promise<void> {
    const custom = this.kc.makeApiClient(CustomObjectsApi);
    const list = (await custom.listNamespacedCustomObject({ ...this.api, namespace: this.namespace })) as { metadata: { resourceVersion: string } };
    this.abort = await new Watch(this.kc).watch(
      `/apis/${this.api.group}/${this.api.version}/namespaces/${this.namespace}/${this.api.plural}`,
      { resourceVersion: list.metadata.resourceVersion },
      (_type, obj: Obj) => {
        if (obj.metadata.name !== this.name) return;
        this.versions.push(obj);
        for (const w of this.waiters) w();
      },
      () => undefined,
    );
  }

  stop(): void {
    this.abort?.abort();
  }

  phases(): string[] {
    const out: string[] = [];
    for (const v of this.versions) {
      const p = v.status?.phase || 'New';
      if (out.at(-1) !== p) out.push(p);
    }
    return out;
  }

  /** The first version for which `check` holds (seen already or later). */
  until(what: string, check: (o: Obj) => boolean, timeoutMs = 60_000): Promise<Obj> {
    return new Promise((resolve, reject) => {
      const look = (): boolean => {
        const hit = this.versions.find(check);
        if (!hit) return false;
        cleanup();
        resolve(hit);
        return true;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out waiting for ${what}; phases ${this.phases().join(' → ')}; last status ${JSON.stringify(this.versions.at(-1)?.status)}\n${this.context()}`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.waiters.delete(look);
      };
      if (!look()) this.waiters.add(look);
    });
  }

  ended(timeoutMs?: number): Promise<Obj> {
    return this.until('a final phase', (o) => ['Completed', 'Failed', 'Canceled'].includes(o.status?.phase), timeoutMs);
  }
}

/** Creates the object and follows it from its creation on. */
export async function follow(kc: KubeConfig, namespace: string, api: Api, create: () => Promise<unknown>, context?: () => string): Promise<{ obj: Obj; history: History }> {
  const history = new History(kc, namespace, api, context);
  await history.start();
  const obj = (await create()) as Obj;
  history.name = obj.metadata.name;
  history.versions.unshift(obj);
  return { obj, history };
}

/** `velero backup delete` of a running backup: spec.cancel (again on a conflict). */
export async function cancelObject(kc: KubeConfig, namespace: string, api: Api, name: string): Promise<void> {
  const custom = kc.makeApiClient(CustomObjectsApi);
  for (;;) {
    const obj = (await custom.getNamespacedCustomObject({ ...api, namespace, name })) as Obj;
    obj.spec.cancel = true;
    try {
      await custom.replaceNamespacedCustomObject({ ...api, namespace, name, body: obj });
      return;
    } catch (err) {
      if ((err as { code?: number }).code !== 409) throw err;
    }
  }
}

/** The intermediate objects tender made for the DataUpload/DataDownload `name` that still exist. */
export async function leftovers(kc: KubeConfig, namespace: string, name: string, uid: string): Promise<string[]> {
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const found: string[] = [];
  for (const p of (await core.listNamespacedPod({ namespace })).items) if (p.metadata!.name === name) found.push(`pod ${name}`);
  for (const p of (await core.listNamespacedPersistentVolumeClaim({ namespace })).items) if (p.metadata!.name === name) found.push(`pvc ${name}`);
  const vss = (await custom.listNamespacedCustomObject({ ...veleroApi.volumeSnapshot, namespace })) as { items: Obj[] };
  for (const v of vss.items) if (v.metadata.name === name) found.push(`volumesnapshot ${name}`);
  const vscs = (await custom.listClusterCustomObject({ ...veleroApi.volumeSnapshotContent })) as { items: Obj[] };
  for (const v of vscs.items) if (v.metadata.name === `tender-${uid}`) found.push(`volumesnapshotcontent tender-${uid}`);
  return found;
}

/** Waits until nothing is left (the fake kubelet finishes a pod's deletion a moment later); fails if something stays. */
export async function expectNothingLeft(kc: KubeConfig, namespace: string, name: string, uid: string): Promise<void> {
  let left: string[] = [];
  for (let i = 0; i < 200; i++) {
    left = await leftovers(kc, namespace, name, uid);
    if (left.length === 0) return;
    await sleep(50);
  }
  expect(left, 'intermediate objects left behind').toEqual([]);
}
