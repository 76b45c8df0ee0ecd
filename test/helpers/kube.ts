/**
 * The test API server that test/setup/kube.ts started, as seen from a test file, and what tests
 * build on it.
 *
 *   const kc = testKubeConfig();
 *   const ns = await createNamespace(kc);                 // t-<random>: never reuse a name here
 *   const pod = await createPod(kc, ns, { name: 'p', nodeName: 'node-a', volumes: [emptyDir('ckpt')] });
 *   const { pvc, pv } = await createBoundClaim(kc, ns, { claim: 'data', source: { csi: { driver: 'x', volumeHandle: 'h' } } });
 *   await volumeDir(podsDir, pod, 'kubernetes.io~empty-dir/ckpt');
 *   await deletePod(kc, ns, 'p');                         // gracePeriodSeconds 0: no kubelet here
 *
 * Pods stay Pending (no scheduler, no kubelet) and deleted namespaces never finish deleting.
 */
import { randomBytes } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  CoreV1Api,
  KubeConfig,
  type V1OwnerReference,
  type V1PersistentVolume,
  type V1PersistentVolumeClaim,
  type V1PersistentVolumeSpec,
  type V1Pod,
  type V1Volume,
} from '@kubernetes/client-node';
import pino, { type Logger } from 'pino';
import { inject } from 'vitest';
// Brings in the typed ProvidedContext key that inject() reads below.
import type {} from '../setup/kube.js';

/** A KubeConfig for the test API server (or the kubeconfig file given). */
export function testKubeConfig(file: string = inject('kubeconfig')): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromFile(file);
  return kc;
}

export function randomName(prefix: string): string {
  return `${prefix}-${randomBytes(5).toString('hex')}`;
}

/** Create a fresh namespace `t-<random>` (with labels, if given); returns its name. */
export async function createNamespace(kc: KubeConfig, labels?: Record<string, string>): Promise<string> {
  const name = randomName('t');
  await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name, ...(labels ? { labels } : {}) } } });
  return name;
}

export function emptyDir(name: string): V1Volume {
  return { name, emptyDir: {} };
}

export function pvcVolume(name: string, claimName: string): V1Volume {
  return { name, persistentVolumeClaim: { claimName } };
}

export interface PodSpecLite {
  name: string;
  nodeName: string;
  volumes?: V1Volume[];
  annotations?: Record<string, string>;
  labels?: Record<string, string>;
  ownerReferences?: V1OwnerReference[];
}

/** Create a pod bound to a node (it stays Pending: there is no kubelet). */
export async function createPod(kc: KubeConfig, namespace: string, spec: PodSpecLite): Promise<V1Pod> {
  const volumes = spec.volumes ?? [];
  return kc.makeApiClient(CoreV1Api).createNamespacedPod({
    namespace,
    body: {
      metadata: {
        name: spec.name,
        ...(spec.annotations ? { annotations: spec.annotations } : {}),
        ...(spec.labels ? { labels: spec.labels } : {}),
        ...(spec.ownerReferences ? { ownerReferences: spec.ownerReferences } : {}),
      },
      spec: {
        nodeName: spec.nodeName,
        containers: [
          {
            name: 'main',
            image: 'busybox',
            volumeMounts: volumes.map((v) => ({ name: v.name, mountPath: `/mnt/${v.name}` })),
          },
        ],
        volumes,
      },
    },
  });
}

/** Delete a pod at once (gracePeriodSeconds 0: no kubelet will confirm a graceful stop). */
export async function deletePod(kc: KubeConfig, namespace: string, name: string): Promise<void> {
  await kc.makeApiClient(CoreV1Api).deleteNamespacedPod({ name, namespace, gracePeriodSeconds: 0 });
}

/** An owner reference to any kind (the API server does not check that the owner exists). */
export function ownerRef(kind: string, name: string, apiVersion = 'v1', uid?: string): V1OwnerReference {
  return { apiVersion, kind, name, uid: uid ?? `00000000-0000-4000-8000-${randomBytes(6).toString('hex')}`, controller: true };
}

export interface ClaimSpec {
  claim: string;
  /** PV name; default pv-<random> (PVs are cluster-wide). */
  pv?: string;
  /** The PV's volume source, e.g. { csi: { driver, volumeHandle } } or { nfs: { server, path } }. */
  source?: Partial<V1PersistentVolumeSpec>;
  volumeMode?: 'Filesystem' | 'Block';
  pvAnnotations?: Record<string, string>;
}

/**
 * A PVC bound to a PV, as the PV controller would leave them (claimRef, volumeName, both Bound);
 * no controller runs here, so the statuses are written by hand.
 */
export async function createBoundClaim(
  kc: KubeConfig,
  namespace: string,
  spec: ClaimSpec,
): Promise<{ pvc: V1PersistentVolumeClaim; pv: V1PersistentVolume }> {
  const core = kc.makeApiClient(CoreV1Api);
  const pvName = spec.pv ?? randomName('pv');
  const source = spec.source ?? { csi: { driver: 'test.csi.example.com', volumeHandle: pvName } };
  const pvc = await core.createNamespacedPersistentVolumeClaim({
    namespace,
    body: {
      metadata: { name: spec.claim },
      spec: {
        accessModes: ['ReadWriteOnce'],
        resources: { requests: { storage: '1Gi' } },
        volumeName: pvName,
        storageClassName: '',
        ...(spec.volumeMode ? { volumeMode: spec.volumeMode } : {}),
      },
    },
  });
  const pv = await core.createPersistentVolume({
    body: {
      metadata: { name: pvName, ...(spec.pvAnnotations ? { annotations: spec.pvAnnotations } : {}) },
      spec: {
        accessModes: ['ReadWriteOnce'],
        capacity: { storage: '1Gi' },
        persistentVolumeReclaimPolicy: 'Retain',
        storageClassName: '',
        claimRef: { kind: 'PersistentVolumeClaim', namespace, name: spec.claim, uid: pvc.metadata!.uid! },
        ...(spec.volumeMode ? { volumeMode: spec.volumeMode } : {}),
        ...source,
      },
    },
  });
  const boundPv = await core.replacePersistentVolumeStatus({
    name: pvName,
    body: { ...pv, status: { phase: 'Bound' } },
  });
  const boundPvc = await core.replaceNamespacedPersistentVolumeClaimStatus({
    name: spec.claim,
    namespace,
    body: { ...pvc, status: { phase: 'Bound', accessModes: ['ReadWriteOnce'], capacity: { storage: '1Gi' } } },
  });
  return { pvc: boundPvc, pv: boundPv };
}

/** Create `<podsDir>/<pod uid>/volumes/<rel>` (e.g. `kubernetes.io~empty-dir/ckpt`); returns it. */
export async function volumeDir(podsDir: string, pod: V1Pod | string, rel: string): Promise<string> {
  const uid = typeof pod === 'string' ? pod : pod.metadata!.uid!;
  const dir = path.join(podsDir, uid, 'volumes', rel);
  await mkdir(dir, { recursive: true });
  return dir;
}

/** A pino logger that keeps its records (parsed) in `lines`. */
export function memoryLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: 'debug' },
    {
      write(line: string) {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      },
    },
  );
  return { logger, lines };
}

/**
 * Resolve with check()'s first truthy result, checking now and after each `event` on `emitter`;
 * reject after timeoutMs (a bound on a failure, not a wait for success).
 */
export function waitFor<T>(
  emitter: EventEmitter,
  event: string,
  check: () => T | undefined | null | false,
  what: string,
  timeoutMs = 30_000,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const cleanup = (): void => {
      clearTimeout(timer);
      emitter.off(event, onEvent);
    };
    const onEvent = (): void => {
      try {
        const v = check();
        if (v) {
          cleanup();
          resolve(v);
        }
      } catch (err) {
        cleanup();
        reject(err as Error);
      }
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs);
    emitter.on(event, onEvent);
    onEvent();
  });
}
