/**
 * What `tender preflight` reads from the target cluster: which resources it serves, its CRDs,
 * the workloads that may be operators, StorageClasses, VolumeSnapshotClasses, Velero's
 * change-storage-class ConfigMap, and the nodes' allocatable GPUs. Read-only: lists and gets.
 */
import {
  ApiextensionsV1Api,
  ApisApi,
  AppsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  StorageV1Api,
  type V1PodTemplateSpec,
} from '@kubernetes/client-node';
import { TenderError } from '../errors/errors.js';
import { SNAPSHOT_GROUP } from './contract.js';

export interface Workload {
  kind: 'Deployment' | 'StatefulSet' | 'DaemonSet';
  namespace: string;
  name: string;
  labels: Record<string, string>;
  /** Container images of its pod template. */
  images: string[];
  ready: number;
  desired: number;
}

export interface TargetNode {
  name: string;
  /** Allocatable amount of the GPU resource (0 when the node has none). */
  gpus: number;
  unschedulable: boolean;
}

export interface ClusterFacts {
  server: string;
  /** Group ('' for core) → the resources it serves, in any version. */
  served: Map<string, Set<string>>;
  /** CRD name (`plural.group`) → its kind. */
  crds: Map<string, { kind: string }>;
  workloads: Workload[];
  /** StorageClass name → provisioner and whether it is the default. */
  storageClasses: Map<string, { provisioner: string; isDefault: boolean }>;
  /** VolumeSnapshotClass name → driver; undefined when snapshot.storage.k8s.io is not served. */
  snapshotClasses: Map<string, string> | undefined;
  /** Velero's change-storage-class ConfigMap in the Velero namespace, if there is one. */
  storageClassConfigMap?: { name: string; data: Record<string, string> };
  nodes: TargetNode[];
}

export interface InspectOptions {
  /** The API groups to look up (those of the backup's resources). */
  groups: Iterable<string>;
  veleroNamespace: string;
  gpuResource: string;
  /** Count only the nodes with these labels (a label selector, e.g. `pool=gpu`). */
  nodeSelector?: string;
}

const DEFAULT_CLASS = 'storageclass.kubernetes.io/is-default-class';

/** Reads the facts; an unreachable or refusing API server is a TenderError naming it. */
export async function inspectCluster(kc: KubeConfig, options: InspectOptions): Promise<ClusterFacts> {
  const server = kc.getCurrentCluster()?.server ?? '(unknown server)';
  try {
    return await inspect(kc, server, options);
  } catch (err) {
    if (err instanceof TenderError) throw err;
    const code = (err as { code?: number }).code;
    throw new TenderError('TENDER_USAGE', `cannot read the target cluster ${server}: ${describeApiError(err)}`, {
      hint:
        code === 401 || code === 403
          ? 'the kubeconfig user needs to list nodes, CRDs, StorageClasses, VolumeSnapshotClasses, Deployments, StatefulSets and DaemonSets, and read ConfigMaps in the Velero namespace'
          : 'check --kubeconfig (or KUBECONFIG) and that the API server is reachable',
      cause: err,
    });
  }
}

async function inspect(kc: KubeConfig, server: string, options: InspectOptions): Promise<ClusterFacts> {
  const core = kc.makeApiClient(CoreV1Api);
  const apps = kc.makeApiClient(AppsV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);

  const served = new Map<string, Set<string>>();
  served.set('', new Set((await core.getAPIResources()).resources.map((r) => r.name).filter((n) => !n.includes('/'))));
  const wanted = new Set(options.groups);
  wanted.add(SNAPSHOT_GROUP);
  const preferred = new Map<string, string>();
  for (const group of (await kc.makeApiClient(ApisApi).getAPIVersions()).groups) {
    if (!wanted.has(group.name)) continue;
    if (group.preferredVersion) preferred.set(group.name, group.preferredVersion.version);
    const names = new Set<string>();
    for (const v of group.versions) {
      for (const r of (await custom.getAPIResources({ group: group.name, version: v.version })).resources) if (!r.name.includes('/')) names.add(r.name);
    }
    served.set(group.name, names);
  }

  const crds = new Map<string, { kind: string }>();
  for (const crd of (await kc.makeApiClient(ApiextensionsV1Api).listCustomResourceDefinition()).items) {
    crds.set(crd.metadata?.name ?? '', { kind: crd.spec.names.kind });
  }

  const workloads: Workload[] = [];
  const images = (t: V1PodTemplateSpec | undefined): string[] => [...(t?.spec?.containers ?? []), ...(t?.spec?.initContainers ?? [])].map((c) => c.image ?? '');
  for (const d of (await apps.listDeploymentForAllNamespaces()).items) {
    workloads.push({
      kind: 'Deployment',
      namespace: d.metadata?.namespace ?? '',
      name: d.metadata?.name ?? '',
      labels: { ...d.spec?.template?.metadata?.labels, ...d.metadata?.labels },
      images: images(d.spec?.template),
      ready: d.status?.readyReplicas ?? 0,
      desired: d.spec?.replicas ?? 1,
    });
  }
  for (const s of (await apps.listStatefulSetForAllNamespaces()).items) {
    workloads.push({
      kind: 'StatefulSet',
      namespace: s.metadata?.namespace ?? '',
      name: s.metadata?.name ?? '',
      labels: { ...s.spec?.template?.metadata?.labels, ...s.metadata?.labels },
      images: images(s.spec?.template),
      ready: s.status?.readyReplicas ?? 0,
      desired: s.spec?.replicas ?? 1,
    });
  }
  for (const d of (await apps.listDaemonSetForAllNamespaces()).items) {
    workloads.push({
      kind: 'DaemonSet',
      namespace: d.metadata?.namespace ?? '',
      name: d.metadata?.name ?? '',
      labels: { ...d.spec?.template?.metadata?.labels, ...d.metadata?.labels },
      images: images(d.spec?.template),
      ready: d.status?.numberReady ?? 0,
      desired: d.status?.desiredNumberScheduled ?? 0,
    });
  }

  const storageClasses = new Map<string, { provisioner: string; isDefault: boolean }>();
  for (const sc of (await kc.makeApiClient(StorageV1Api).listStorageClass()).items) {
    storageClasses.set(sc.metadata?.name ?? '', { provisioner: sc.provisioner, isDefault: sc.metadata?.annotations?.[DEFAULT_CLASS] === 'true' });
  }

  let snapshotClasses: Map<string, string> | undefined;
  if (served.get(SNAPSHOT_GROUP)?.has('volumesnapshotclasses')) {
    snapshotClasses = new Map();
    const version = preferred.get(SNAPSHOT_GROUP) ?? 'v1';
    const list = (await custom.listClusterCustomObject({ group: SNAPSHOT_GROUP, version, plural: 'volumesnapshotclasses' })) as {
      items?: Array<{ metadata?: { name?: string }; driver?: string }>;
    };
    for (const vsc of list.items ?? []) snapshotClasses.set(vsc.metadata?.name ?? '', vsc.driver ?? '');
  }

  // Velero's plugin-config ConfigMap for change-storage-class (pkg/plugin/framework/common/plugin_config.go).
  const configMaps = await core.listNamespacedConfigMap({
    namespace: options.veleroNamespace,
    labelSelector: 'velero.io/plugin-config,velero.io/change-storage-class=RestoreItemAction',
  });
  const cm = configMaps.items[0];

  const nodes: TargetNode[] = (await core.listNode(options.nodeSelector ? { labelSelector: options.nodeSelector } : {})).items.map((n) => ({
    name: n.metadata?.name ?? '',
    gpus: Number(n.status?.allocatable?.[options.gpuResource] ?? 0) || 0,
    unschedulable: n.spec?.unschedulable === true,
  }));

  return {
    server,
    served,
    crds,
    workloads,
    storageClasses,
    snapshotClasses,
    ...(cm ? { storageClassConfigMap: { name: cm.metadata?.name ?? '', data: cm.data ?? {} } } : {}),
    nodes,
  };
}

/** The API server's message for a failed call (client-node's ApiException carries the Status body). */
export function describeApiError(err: unknown): string {
  const e = err as { code?: number; body?: unknown; message?: string };
  if (typeof e.code === 'number') {
    let message: string | undefined;
    try {
      message = (typeof e.body === 'string' ? (JSON.parse(e.body) as { message?: string }) : (e.body as { message?: string } | undefined))?.message;
    } catch {
      message = undefined;
    }
    return `HTTP ${e.code}${message ? `: ${message}` : ''}`;
  }
  return e.message ?? String(err);
}
