/**
 * A volume's stable identity: the snapshot host of its backups, so that the next backup finds its
 * parent whatever the pod is called this time, its UID or its node. Never os.hostname().
 *
 *   a PVC                      pvc:<namespace>/<claim>                the claim outlives its pods
 *   any other volume           <namespace>/<OwnerKind>/<owner>/<volume>, e.g. ml/PyTorchJob/llama-ft/ckpt
 *   ... of a replica with a stable index in its owner:
 *                              <namespace>/<OwnerKind>/<owner>/<replica>/<volume>
 *       StatefulSet ordinal    ml/StatefulSet/web/0/data
 *       Kubeflow replica       ml/PyTorchJob/llama-ft/worker-1/ckpt   (training.kubeflow.org/replica-type, -index)
 *       Indexed Job            ml/Job/shard/3/scratch                  (batch.kubernetes.io/job-completion-index)
 *     (without it, master-0 and worker-1 of one job would share an identity and chain their
 *     snapshots into each other's)
 *   a bare pod                 <namespace>/Pod/<pod>/<volume>
 *
 * The owner is the pod's controller reference, followed one step up where that is what users
 * name: a ReplicaSet's own controller (a Deployment), with one cached get of the ReplicaSet. A
 * Job, a PyTorchJob, a StatefulSet ... are used as they are. A generic ephemeral volume's PVC is
 * created and deleted with each pod, so it is identified like an emptyDir.
 */
import { AppsV1Api, type KubeConfig, type V1OwnerReference, type V1Pod, type V1Volume } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { kubeErrorText, statusCode } from '../util/kube-errors.js';

export interface Owner {
  kind: string;
  name: string;
}

const POD_TEMPLATE_HASH = 'pod-template-hash';
const STS_POD_INDEX = 'apps.kubernetes.io/pod-index';
const JOB_INDEX = 'batch.kubernetes.io/job-completion-index';
const KF_REPLICA_TYPE = 'training.kubeflow.org/replica-type';
const KF_REPLICA_INDEX = 'training.kubeflow.org/replica-index';

function controllerRef(refs: V1OwnerReference[] | undefined): V1OwnerReference | undefined {
  return refs?.find((r) => r.controller === true);
}

/** The owner without any API call: the controller reference, or the pod itself. */
export function directOwner(pod: V1Pod): Owner {
  const ref = controllerRef(pod.metadata?.ownerReferences);
  return ref ? { kind: ref.kind, name: ref.name } : { kind: 'Pod', name: pod.metadata?.name ?? '' };
}

/**
 * The index of a pod among its owner's replicas, when the owner gives it one that survives a
 * restart (StatefulSet ordinal, Kubeflow replica type and index, Indexed Job completion index).
 */
export function replicaOf(pod: V1Pod, owner: Owner): string | undefined {
  const labels = pod.metadata?.labels ?? {};
  const annotations = pod.metadata?.annotations ?? {};
  const name = pod.metadata?.name ?? '';
  if (owner.kind === 'StatefulSet') {
    const idx = labels[STS_POD_INDEX];
    if (idx && /^\d+$/.test(idx)) return idx;
    if (name.startsWith(`${owner.name}-`)) {
      const ord = name.slice(owner.name.length + 1);
      if (/^\d+$/.test(ord)) return ord;
    }
    return undefined;
  }
  const type = labels[KF_REPLICA_TYPE];
  const index = labels[KF_REPLICA_INDEX];
  if (type && index !== undefined && /^\d+$/.test(index)) return `${type.toLowerCase()}-${index}`;
  const completion = labels[JOB_INDEX] ?? annotations[JOB_INDEX];
  if (owner.kind === 'Job' && completion !== undefined && /^\d+$/.test(completion)) return completion;
  return undefined;
}

/** The PVC behind a volume that outlives its pod (not a generic ephemeral volume's). */
function persistentClaim(vol: V1Volume | undefined): string | undefined {
  return vol?.persistentVolumeClaim?.claimName;
}

/** The snapshot host of a volume (see the module comment). */
export function volumeIdentity(pod: V1Pod, vol: V1Volume, owner: Owner): string {
  const ns = pod.metadata?.namespace ?? '';
  const claim = persistentClaim(vol);
  if (claim) return `pvc:${ns}/${claim}`;
  const replica = replicaOf(pod, owner);
  return [ns, owner.kind, owner.name, ...(replica === undefined ? [] : [replica]), vol.name].join('/');
}

/**
 * The tags of every snapshot of a volume: k8s.namespace, k8s.pod, k8s.volume, k8s.pvc (when the
 * volume has a claim, including a generic ephemeral volume's), k8s.owner (Kind/name), k8s.node.
 */
export function volumeTags(pod: V1Pod, vol: V1Volume, owner: Owner, node: string): string[] {
  const claim = persistentClaim(vol) ?? (vol.ephemeral ? `${pod.metadata?.name ?? ''}-${vol.name}` : undefined);
  return [
    `k8s.namespace=${pod.metadata?.namespace ?? ''}`,
    `k8s.pod=${pod.metadata?.name ?? ''}`,
    `k8s.volume=${vol.name}`,
    ...(claim ? [`k8s.pvc=${claim}`] : []),
    `k8s.owner=${owner.kind}/${owner.name}`,
    `k8s.node=${node}`,
  ];
}

export interface OwnerResolverOptions {
  kubeConfig: KubeConfig;
  logger: Logger;
  /** How long a ReplicaSet's owner is remembered. Default 1 h (it never changes in practice). */
  ttlMs?: number;
  /** Called on each failed API call (for a counter). */
  onApiError?: (err: unknown) => void;
}

/**
 * The top owner of pods, with the one lookup that needs the API server (ReplicaSet → its
 * controller) cached. When that get fails, a ReplicaSet named `<name>-<pod-template-hash>` is
 * taken as the Deployment `<name>` (what the Deployment controller names them), so the identity
 * stays the same while the API server is away.
 */
export class OwnerResolver {
  readonly #apps: AppsV1Api;
  readonly #cache = new Map<string, { owner: Owner; at: number }>();
  readonly #ttlMs: number;

  constructor(private readonly opts: OwnerResolverOptions) {
    this.#apps = opts.kubeConfig.makeApiClient(AppsV1Api);
    this.#ttlMs = opts.ttlMs ?? 3_600_000;
  }

  async owner(pod: V1Pod): Promise<Owner> {
    const ref = controllerRef(pod.metadata?.ownerReferences);
    if (!ref) return { kind: 'Pod', name: pod.metadata?.name ?? '' };
    if (ref.kind !== 'ReplicaSet' || !ref.apiVersion.startsWith('apps/')) return { kind: ref.kind, name: ref.name };
    const ns = pod.metadata?.namespace ?? '';
    const key = `${ns}/${ref.name}`;
    const hit = this.#cache.get(key);
    if (hit && Date.now() - hit.at < this.#ttlMs) return hit.owner;
    try {
      const rs = await this.#apps.readNamespacedReplicaSet({ name: ref.name, namespace: ns });
      const top = controllerRef(rs.metadata?.ownerReferences);
      const owner = top ? { kind: top.kind, name: top.name } : { kind: 'ReplicaSet', name: ref.name };
      if (this.#cache.size >= 10_000) this.#cache.clear();
      this.#cache.set(key, { owner, at: Date.now() });
      return owner;
    } catch (err) {
      this.opts.onApiError?.(err);
      const hash = pod.metadata?.labels?.[POD_TEMPLATE_HASH];
      const guess =
        hash && ref.name.endsWith(`-${hash}`)
          ? { kind: 'Deployment', name: ref.name.slice(0, -(hash.length + 1)) }
          : { kind: 'ReplicaSet', name: ref.name };
      this.opts.logger.warn(
        { err: kubeErrorText(err), namespace: ns, pod: pod.metadata?.name, replicaSet: ref.name, owner: guess },
        'could not read the ReplicaSet that owns the pod; its owner is taken from the names',
      );
      // A 404 (the ReplicaSet is gone) is settled; other errors are tried again next time.
      if (statusCode(err) === 404) this.#cache.set(key, { owner: guess, at: Date.now() });
      return guess;
    }
  }
}
