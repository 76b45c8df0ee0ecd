/**
 * Exposing a volume to this node, as Velero's exposers do (pkg/exposer/csi_snapshot.go and
 * generic_restore.go), and taking it away again:
 *
 * - backup: the VolumeSnapshot (in the source namespace) is moved into Velero's namespace: a new
 *   VolumeSnapshotContent on the same snapshot handle and a VolumeSnapshot bound to it; the
 *   original content is set to Retain and the original VolumeSnapshot and content are deleted
 *   (a PVC can only be cloned from a VolumeSnapshot in its own namespace). Then a PVC cloned
 *   from the new VolumeSnapshot and a pod that mounts it, pinned to this node.
 * - restore: a PVC shaped like the target PVC (storage class, size, access modes) and a pod that
 *   mounts it, pinned to this node; after the data is in, the PV is handed to the target PVC.
 *
 * Every intermediate object is named after the DataUpload/DataDownload (the content:
 * `tender-<its UID>`), labelled with it and owned by it, so cleanup finds them by name after a
 * restart and the garbage collector removes them if the owner is deleted.
 */
import type { V1ObjectMeta, V1OwnerReference, V1PersistentVolume, V1PersistentVolumeClaim, V1Pod } from '@kubernetes/client-node';
import { setTimeout as delay } from 'node:timers/promises';
import { TenderError } from '../errors/errors.js';
import { type DataDownload, type DataUpload, type MoverObject, DATA_DOWNLOAD_LABEL, DATA_UPLOAD_LABEL, SNAPSHOT_GROUP, describe, resources } from './contract.js';
import { kubeErrorText, statusCode } from '../util/kube-errors.js';
import { type Kube, isNotFound } from './kube.js';

/** The directory of a pod's volume on this node, or why it is not there (yet). */
export type VolumePathFn = (pod: V1Pod, volume: string, pvc: V1PersistentVolumeClaim, pv: V1PersistentVolume) => Promise<{ ok: true; path: string } | { ok: false; reason: string }>;

export interface ExposerOptions {
  kube: Kube;
  /** Velero's namespace: the DataUploads, DataDownloads and the intermediate objects live there. */
  namespace: string;
  nodeName: string;
  /** The image of the pods that hold a volume mounted (it only sleeps). */
  image: string;
  volumePath: VolumePathFn;
  pollMs: number;
}

/** The volume in the pod, as mounted on this node. */
export interface Exposed {
  path: string;
  pvName: string;
}

interface VolumeSnapshot {
  metadata: V1ObjectMeta;
  spec?: { source?: { persistentVolumeClaimName?: string; volumeSnapshotContentName?: string }; volumeSnapshotClassName?: string };
  status?: { readyToUse?: boolean; boundVolumeSnapshotContentName?: string; restoreSize?: string; error?: { message?: string } };
}

interface VolumeSnapshotContent {
  metadata: V1ObjectMeta;
  spec: {
    deletionPolicy: 'Delete' | 'Retain';
    driver: string;
    source: { snapshotHandle?: string; volumeHandle?: string };
    volumeSnapshotRef: { name?: string; namespace?: string; kind?: string; apiVersion?: string; uid?: string };
    volumeSnapshotClassName?: string;
  };
  status?: { snapshotHandle?: string; restoreSize?: number; readyToUse?: boolean };
}

const VOLUME = 'data';
const SNAPSHOT_API_VERSION = `${SNAPSHOT_GROUP}/v1`;

/** Not ready yet; the message says what is missing (the last one ends up in a timeout's message). */
class NotYet extends Error {}

/** A problem that waiting does not fix. */
export function exposeFailure(message: string, hint?: string): TenderError {
  return new TenderError('TENDER_USAGE', message, hint ? { hint } : {});
}

export class Exposer {
  constructor(private readonly o: ExposerOptions) {}

  /** The name of the VolumeSnapshotContent tender creates for a DataUpload (cluster-wide). */
  static contentName(du: DataUpload): string {
    return `tender-${du.metadata.uid}`;
  }

  // ---------------------------------------------------------------------------------------------
  // Backup

  /** Creates what exposes the DataUpload's snapshot on this node; waits (until `deadline`) for the snapshot to be ready. */
  async exposeSnapshot(du: DataUpload, deadline: number, signal: AbortSignal): Promise<void> {
    const { kube, namespace } = this.o;
    const csi = du.spec.csiSnapshot;
    if (du.spec.snapshotType !== 'CSI' || !csi?.volumeSnapshot) {
      throw exposeFailure(`${describe(du)} has snapshotType ${JSON.stringify(du.spec.snapshotType)} and no spec.csiSnapshot.volumeSnapshot; tender moves CSI snapshots only`);
    }
    const name = du.metadata.name;
    const contentName = Exposer.contentName(du);
    const moved = await kube.get<VolumeSnapshot>(resources.volumeSnapshot, namespace, name);
    if (!moved) {
      const where = `VolumeSnapshot ${du.spec.sourceNamespace}/${csi.volumeSnapshot}`;
      const vs = await this.waitFor(deadline, signal, async () => {
        const vs = await kube.get<VolumeSnapshot>(resources.volumeSnapshot, du.spec.sourceNamespace, csi.volumeSnapshot);
        if (!vs) throw exposeFailure(`${where} does not exist`, 'was it deleted before the data was moved? Run the backup again');
        if (vs.status?.error?.message) throw exposeFailure(`${where} failed: ${vs.status.error.message}`);
        if (!vs.status?.readyToUse || !vs.status.boundVolumeSnapshotContentName) throw new NotYet(`${where} is not ready to use yet`);
        return vs;
      });
      const source = await kube.getCluster<VolumeSnapshotContent>(resources.volumeSnapshotContent, vs.status!.boundVolumeSnapshotContentName!);
      const handle = source?.status?.snapshotHandle;
      if (!source || !handle) {
        throw exposeFailure(`VolumeSnapshotContent ${vs.status!.boundVolumeSnapshotContentName} of ${where} ${source ? 'has no status.snapshotHandle' : 'does not exist'}`);
      }
      await kube.createOrKeep(() =>
        kube.custom.createClusterCustomObject({
          ...resources.volumeSnapshotContent,
          body: {
            apiVersion: SNAPSHOT_API_VERSION,
            kind: 'VolumeSnapshotContent',
            metadata: { name: contentName, labels: { [DATA_UPLOAD_LABEL]: name } },
            spec: {
              deletionPolicy: 'Delete',
              driver: source.spec.driver,
              source: { snapshotHandle: handle },
              volumeSnapshotRef: { apiVersion: SNAPSHOT_API_VERSION, kind: 'VolumeSnapshot', name, namespace },
              ...(source.spec.volumeSnapshotClassName ? { volumeSnapshotClassName: source.spec.volumeSnapshotClassName } : {}),
            },
          },
        }),
      );
      await kube.createOrKeep(() =>
        kube.custom.createNamespacedCustomObject({
          ...resources.volumeSnapshot,
          namespace,
          body: {
            apiVersion: SNAPSHOT_API_VERSION,
            kind: 'VolumeSnapshot',
            metadata: { name, namespace, labels: { [DATA_UPLOAD_LABEL]: name }, ownerReferences: [owner(du)] },
            spec: {
              source: { volumeSnapshotContentName: contentName },
              ...(vs.spec?.volumeSnapshotClassName ? { volumeSnapshotClassName: vs.spec.volumeSnapshotClassName } : {}),
            },
          },
        }),
      );
      // The storage snapshot now belongs to the new content: keep it when the original goes.
      await this.retain(source.metadata.name!);
      await kube.deleteIfAny(() => kube.custom.deleteNamespacedCustomObject({ ...resources.volumeSnapshot, namespace: du.spec.sourceNamespace, name: csi.volumeSnapshot }));
      await kube.deleteIfAny(() => kube.custom.deleteClusterCustomObject({ ...resources.volumeSnapshotContent, name: source.metadata.name! }));
      const size = vs.status?.restoreSize ?? (await this.sourceSize(du));
      await this.createClaim(du, DATA_UPLOAD_LABEL, { storageClassName: csi.storageClass, size, dataSource: name });
    }
    await this.createPod(du, DATA_UPLOAD_LABEL, true);
  }

  /** Sets a VolumeSnapshotContent's deletionPolicy to Retain (read, change, replace; again on a conflict). */
  private async retain(contentName: string): Promise<void> {
    const { kube } = this.o;
    for (;;) {
      const c = await kube.getCluster<VolumeSnapshotContent>(resources.volumeSnapshotContent, contentName);
      if (!c || c.spec.deletionPolicy === 'Retain') return;
      c.spec.deletionPolicy = 'Retain';
      try {
        await kube.custom.replaceClusterCustomObject({ ...resources.volumeSnapshotContent, name: contentName, body: c });
        return;
      } catch (err) {
        if (statusCode(err) !== 409) throw exposeFailure(`cannot retain VolumeSnapshotContent ${contentName}: ${kubeErrorText(err)}`);
      }
    }
  }

  private async sourceSize(du: DataUpload): Promise<string> {
    const pvc = await this.o.kube.core.readNamespacedPersistentVolumeClaim({ namespace: du.spec.sourceNamespace, name: du.spec.sourcePVC }).catch(() => undefined);
    const size = pvc?.status?.capacity?.storage ?? pvc?.spec?.resources?.requests?.storage;
    if (!size) throw exposeFailure(`the VolumeSnapshot of ${describe(du)} has no restoreSize and PVC ${du.spec.sourceNamespace}/${du.spec.sourcePVC} gives no size`);
    return String(size);
  }

  // ---------------------------------------------------------------------------------------------
  // Restore

  /** Creates a PVC like the target PVC and a pod on this node that mounts it. */
  async exposeTarget(dd: DataDownload, deadline: number, signal: AbortSignal): Promise<void> {
    const { namespace, pvc } = dd.spec.targetVolume;
    const target = await this.waitFor(deadline, signal, async () => {
      const found = await this.readClaim(namespace, pvc);
      if (!found) throw new NotYet(`the target PersistentVolumeClaim ${namespace}/${pvc} does not exist yet`);
      return found;
    });
    if (target.spec?.volumeMode === 'Block') throw exposeFailure(`the target PersistentVolumeClaim ${namespace}/${pvc} is a raw block volume; tender restores file systems only`);
    const size = target.spec?.resources?.requests?.storage;
    if (!size) throw exposeFailure(`the target PersistentVolumeClaim ${namespace}/${pvc} requests no storage size`);
    await this.createClaim(dd, DATA_DOWNLOAD_LABEL, {
      ...(target.spec?.storageClassName !== undefined ? { storageClassName: target.spec.storageClassName } : {}),
      size: String(size),
      accessModes: target.spec?.accessModes ?? ['ReadWriteOnce'],
    });
    await this.createPod(dd, DATA_DOWNLOAD_LABEL, false);
  }

  /**
   * Hands the restored PV to the target PVC (Velero's RebindVolume): the PV is retained, the
   * pod and PVC that held it are deleted, the target PVC names the PV, the PV's claimRef names
   * the target PVC and it gets the labels the target PVC selects (velero.io/dynamic-pv-restore);
   * once the PV is Bound to the target, its reclaim policy is set back.
   */
  async rebind(dd: DataDownload, pvName: string, deadline: number, signal: AbortSignal): Promise<void> {
    const { kube } = this.o;
    const { namespace, pvc: targetName } = dd.spec.targetVolume;
    const target = await this.readClaim(namespace, targetName);
    if (!target) throw exposeFailure(`the target PersistentVolumeClaim ${namespace}/${targetName} was deleted during the restore`);
    const pv = await kube.core.readPersistentVolume({ name: pvName });
    const originalPolicy = pv.spec?.persistentVolumeReclaimPolicy ?? 'Delete';
    await this.updatePv(pvName, (p) => {
      if (p.spec!.persistentVolumeReclaimPolicy === 'Retain') return false;
      p.spec!.persistentVolumeReclaimPolicy = 'Retain';
      return true;
    });
    try {
      await this.deleteHolders(dd, deadline, signal);
      await this.updateClaim(namespace, targetName, (c) => {
        c.spec!.volumeName = pvName;
        delete c.metadata!.annotations?.['pv.kubernetes.io/bind-completed'];
        delete c.metadata!.annotations?.['pv.kubernetes.io/bound-by-controller'];
        return true;
      });
      const selected = target.spec?.selector?.matchLabels ?? {};
      await this.updatePv(pvName, (p) => {
        p.spec!.claimRef = { kind: 'PersistentVolumeClaim', namespace, name: targetName };
        delete p.metadata!.annotations?.['pv.kubernetes.io/bound-by-controller'];
        p.metadata!.labels = { ...selected, ...p.metadata!.labels };
        return true;
      });
      await this.waitFor(deadline, signal, async () => {
        const p = await kube.core.readPersistentVolume({ name: pvName });
        const ref = p.spec?.claimRef;
        // The UID in the claimRef: the PV controller has bound them (a stale Bound is not enough).
        if (p.status?.phase !== 'Bound' || ref?.name !== targetName || ref.namespace !== namespace || ref.uid !== target.metadata?.uid) {
          throw new NotYet(`PersistentVolume ${pvName} is not bound to ${namespace}/${targetName} yet (phase ${p.status?.phase ?? 'unknown'})`);
        }
        return p;
      });
    } catch (err) {
      // A retained PV that never reached the target would be left behind: delete it.
      await kube.deleteIfAny(() => kube.core.deletePersistentVolume({ name: pvName })).catch(() => undefined);
      throw err;
    }
    await this.updatePv(pvName, (p) => {
      if (p.spec!.persistentVolumeReclaimPolicy === originalPolicy) return false;
      p.spec!.persistentVolumeReclaimPolicy = originalPolicy;
      return true;
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Shared

  /**
   * Waits until the pod runs on this node with the PVC bound and the volume's directory is there;
   * fails on what waiting cannot fix (the pod on another node, failed, or deleted).
   */
  async waitExposed(obj: MoverObject, deadline: number, signal: AbortSignal): Promise<Exposed> {
    const { kube, namespace, nodeName } = this.o;
    const name = obj.metadata.name;
    return this.waitFor(deadline, signal, async () => {
      // The claim first: a pod cannot run before its volume is bound, and the claim says why.
      const claim = await this.readClaim(namespace, name);
      if (!claim) throw exposeFailure(`PersistentVolumeClaim ${namespace}/${name} was deleted`);
      const pvName = claim.spec?.volumeName;
      if (claim.status?.phase !== 'Bound' || !pvName) throw new NotYet(`PersistentVolumeClaim ${namespace}/${name} is not bound yet (phase ${claim.status?.phase ?? 'Pending'})`);
      const pod = await kube.core.readNamespacedPod({ namespace, name }).catch((err: unknown) => {
        if (isNotFound(err)) throw exposeFailure(`pod ${namespace}/${name}, which mounts the volume, was deleted`);
        throw err;
      });
      if (pod.metadata?.deletionTimestamp) throw exposeFailure(`pod ${namespace}/${name}, which mounts the volume, is being deleted`);
      if (pod.spec?.nodeName && pod.spec.nodeName !== nodeName) throw exposeFailure(`pod ${namespace}/${name} was scheduled to node ${pod.spec.nodeName}, not ${nodeName}`);
      const phase = pod.status?.phase;
      if (phase === 'Failed' || phase === 'Succeeded') throw exposeFailure(`pod ${namespace}/${name}, which mounts the volume, ended (${phase}: ${pod.status?.reason ?? pod.status?.message ?? 'no reason given'})`);
      if (phase !== 'Running') throw new NotYet(`pod ${namespace}/${name} is ${phase ?? 'Pending'}${pod.spec?.nodeName ? '' : ' (not scheduled)'}`);
      const pv = await kube.core.readPersistentVolume({ name: pvName });
      const at = await this.o.volumePath(pod, VOLUME, claim, pv);
      if (!at.ok) throw new NotYet(at.reason);
      return { path: at.path, pvName };
    });
  }

  /** Deletes every intermediate object of the DataUpload/DataDownload (those that exist). */
  async cleanUp(obj: MoverObject): Promise<void> {
    const { kube, namespace } = this.o;
    const name = obj.metadata.name;
    await kube.deleteIfAny(() => kube.core.deleteNamespacedPod({ namespace, name }));
    await kube.deleteIfAny(() => kube.core.deleteNamespacedPersistentVolumeClaim({ namespace, name }));
    if (obj.kind === 'DataUpload') {
      await kube.deleteIfAny(() => kube.custom.deleteNamespacedCustomObject({ ...resources.volumeSnapshot, namespace, name }));
      await kube.deleteIfAny(() => kube.custom.deleteClusterCustomObject({ ...resources.volumeSnapshotContent, name: Exposer.contentName(obj) }));
    }
  }

  /** Deletes the pod and the PVC and waits until both are gone (the PV is released). */
  private async deleteHolders(obj: MoverObject, deadline: number, signal: AbortSignal): Promise<void> {
    const { kube, namespace } = this.o;
    const name = obj.metadata.name;
    await kube.deleteIfAny(() => kube.core.deleteNamespacedPod({ namespace, name }));
    await kube.deleteIfAny(() => kube.core.deleteNamespacedPersistentVolumeClaim({ namespace, name }));
    await this.waitFor(deadline, signal, async () => {
      const pod = await kube.core.readNamespacedPod({ namespace, name }).catch((err: unknown) => (isNotFound(err) ? undefined : Promise.reject(err)));
      if (pod) throw new NotYet(`pod ${namespace}/${name} has not gone away yet`);
      if (await this.readClaim(namespace, name)) throw new NotYet(`PersistentVolumeClaim ${namespace}/${name} has not gone away yet`);
      return true;
    });
  }

  private async createClaim(
    obj: MoverObject,
    label: string,
    o: { storageClassName?: string; size: string; dataSource?: string; accessModes?: string[] },
  ): Promise<void> {
    const { kube, namespace } = this.o;
    const name = obj.metadata.name;
    await kube.createOrKeep(() =>
      kube.core.createNamespacedPersistentVolumeClaim({
        namespace,
        body: {
          metadata: { name, namespace, labels: { [label]: name }, ownerReferences: [owner(obj)] },
          spec: {
            accessModes: o.accessModes ?? ['ReadWriteOnce'],
            volumeMode: 'Filesystem',
            resources: { requests: { storage: o.size } },
            ...(o.storageClassName !== undefined ? { storageClassName: o.storageClassName } : {}),
            ...(o.dataSource ? { dataSource: { apiGroup: SNAPSHOT_GROUP, kind: 'VolumeSnapshot', name: o.dataSource } } : {}),
          },
        },
      }),
    );
  }

  /**
   * A pod that only holds the volume mounted, on this node: required node affinity on
   * metadata.name (not spec.nodeName), so the scheduler still runs and a WaitForFirstConsumer
   * storage class provisions the volume where the pod goes.
   */
  private async createPod(obj: MoverObject, label: string, readOnly: boolean): Promise<void> {
    const { kube, namespace, nodeName, image } = this.o;
    const name = obj.metadata.name;
    await kube.createOrKeep(() =>
      kube.core.createNamespacedPod({
        namespace,
        body: {
          metadata: { name, namespace, labels: { [label]: name }, ownerReferences: [owner(obj)] },
          spec: {
            affinity: {
              nodeAffinity: {
                requiredDuringSchedulingIgnoredDuringExecution: {
                  nodeSelectorTerms: [{ matchFields: [{ key: 'metadata.name', operator: 'In', values: [nodeName] }] }],
                },
              },
            },
            // The agent runs on this node whatever its taints; so must the pod it reads through.
            tolerations: [{ operator: 'Exists' }],
            restartPolicy: 'Never',
            automountServiceAccountToken: false,
            terminationGracePeriodSeconds: 1,
            containers: [
              {
                name: 'hold',
                image,
                command: ['sleep', 'infinity'],
                volumeMounts: [{ name: VOLUME, mountPath: '/data', readOnly }],
                resources: { requests: { cpu: '10m', memory: '16Mi' }, limits: { memory: '32Mi' } },
                securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
              },
            ],
            volumes: [{ name: VOLUME, persistentVolumeClaim: { claimName: name, readOnly } }],
          },
        },
      }),
    );
  }

  private async readClaim(namespace: string, name: string): Promise<V1PersistentVolumeClaim | undefined> {
    try {
      return await this.o.kube.core.readNamespacedPersistentVolumeClaim({ namespace, name });
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  private async updatePv(name: string, change: (pv: V1PersistentVolume) => boolean): Promise<void> {
    const core = this.o.kube.core;
    for (;;) {
      const pv = await core.readPersistentVolume({ name });
      if (!change(pv)) return;
      try {
        await core.replacePersistentVolume({ name, body: pv });
        return;
      } catch (err) {
        if (statusCode(err) !== 409) throw err;
      }
    }
  }

  private async updateClaim(namespace: string, name: string, change: (pvc: V1PersistentVolumeClaim) => boolean): Promise<void> {
    const core = this.o.kube.core;
    for (;;) {
      const pvc = await core.readNamespacedPersistentVolumeClaim({ namespace, name });
      if (!change(pvc)) return;
      try {
        await core.replaceNamespacedPersistentVolumeClaim({ namespace, name, body: pvc });
        return;
      } catch (err) {
        if (statusCode(err) !== 409) throw err;
      }
    }
  }

  /** `check` until it returns; a NotYet (or an API error) waits pollMs, until the deadline. */
  private async waitFor<T>(deadline: number, signal: AbortSignal, check: () => Promise<T>): Promise<T> {
    let last = 'nothing checked yet';
    for (;;) {
      signal.throwIfAborted();
      try {
        return await check();
      } catch (err) {
        if (err instanceof TenderError) throw err;
        last = err instanceof NotYet ? err.message : `API error: ${kubeErrorText(err)}`;
      }
      if (Date.now() >= deadline) {
        throw new TenderError('TENDER_INTERRUPTED', `timed out preparing the volume: ${last}`, {
          hint: 'check the CSI driver and the events of the objects named (kubectl describe); the node agent waits --data-mover-prepare-timeout',
        });
      }
      await delay(this.o.pollMs, undefined, { signal }).catch(() => undefined);
    }
  }
}

function owner(obj: MoverObject): V1OwnerReference {
  return { apiVersion: obj.apiVersion, kind: obj.kind, name: obj.metadata.name, uid: obj.metadata.uid, controller: true };
}
