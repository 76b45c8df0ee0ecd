/**
 * `tender preflight`: what restoring a Velero backup into a target cluster needs, and whether it is
 * there. Pure evaluation of the backup's contents (backup-archive.ts) against the cluster's facts
 * (cluster-facts.ts) and the tender snapshots tagged with the backup; the CLI prints the report.
 *
 * Severities: `missing` (the restore would lose data or objects: the command exits non-zero),
 * `warning` (it works, with something to look at), `ok`.
 *
 * The operator check is a heuristic: a custom resource's operator is taken to be a Deployment,
 * StatefulSet or DaemonSet whose name, namespace, labels or container images contain a word of the
 * resource's API group (kubeflow.org → `kubeflow`) or its kind (`pytorchjob`); it "runs" when at
 * least one of its replicas is ready. Not finding one is a warning, never `missing`.
 */
import type { Snapshot } from '../repo/snapshot/snapshot.js';
import type { BackedUpPod, Referrers, VeleroBackupContents } from './backup-archive.js';
import type { ClusterFacts, Workload } from './cluster-facts.js';

export type Severity = 'ok' | 'warning' | 'missing';
export type CheckKind = 'resource' | 'operator' | 'storage-class' | 'snapshot-class' | 'gpu' | 'tender-snapshot';

export interface Finding {
  check: CheckKind;
  /** What it is about: a resource, a class, a pod, a volume. */
  subject: string;
  severity: Severity;
  message: string;
  /** What to do, when there is something to do. */
  suggestion?: string;
}

export interface GpuSummary {
  resource: string;
  /** The sum of the requests of the pods Velero would restore. */
  requested: number;
  allocatable: number;
  nodes: Array<{ name: string; gpus: number }>;
  pods: Array<{ pod: string; gpus: number }>;
}

export interface PreflightReport {
  backup: { name: string; uid?: string; source: string; formatVersion?: string; items: number; namespaces: string[] };
  target: string;
  findings: Finding[];
  /** Suggested entries (old → new) for Velero's change-storage-class ConfigMap; empty when none are needed. */
  storageClassMapping: Record<string, string>;
  /** That ConfigMap as a manifest, when a mapping is suggested. */
  storageClassConfigMap?: string;
  gpu: GpuSummary;
  missing: number;
  warnings: number;
}

/** A snapshot of the repository with the tags that matter here. */
export interface TaggedSnapshot {
  id: string;
  snapshot: Pick<Snapshot, 'tags' | 'time'> & { summary?: { totalBytes?: number } };
}

export interface PreflightInput {
  backup: { name: string; uid?: string; source: string };
  contents: VeleroBackupContents;
  facts: ClusterFacts;
  gpuResource: string;
  veleroNamespace: string;
  /** The repository's snapshots tagged with this backup; undefined when no repository was given. */
  snapshots?: TaggedSnapshot[];
}

/** Tags of the snapshots tender takes for a Velero backup. */
export const VELERO_BACKUP_NAME_TAG = 'velero.io/backup-name';
export const VELERO_BACKUP_UID_TAG = 'velero.io/backup-uid';

export function evaluatePreflight(input: PreflightInput): PreflightReport {
  const findings: Finding[] = [];
  findings.push(...checkResources(input.contents, input.facts));
  const classes = checkStorageClasses(input.contents, input.facts, input.veleroNamespace);
  findings.push(...classes.findings);
  findings.push(...checkSnapshotClasses(input.contents, input.facts));
  const gpu = checkGpus(input.contents.pods, input.facts, input.gpuResource);
  findings.push(...gpu.findings);
  findings.push(...checkTenderSnapshots(input.contents.pods, input.snapshots));
  const { contents } = input;
  return {
    backup: {
      ...input.backup,
      ...(contents.formatVersion !== undefined ? { formatVersion: contents.formatVersion } : {}),
      items: contents.items,
      namespaces: contents.namespaces,
    },
    target: input.facts.server,
    findings,
    storageClassMapping: classes.mapping,
    ...(Object.keys(classes.mapping).length > 0 ? { storageClassConfigMap: classes.manifest } : {}),
    gpu: gpu.summary,
    missing: findings.filter((f) => f.severity === 'missing').length,
    warnings: findings.filter((f) => f.severity === 'warning').length,
  };
}

// ---------------------------------------------------------------------------------------------
// Custom resources and their operators

function checkResources(c: VeleroBackupContents, facts: ClusterFacts): Finding[] {
  const out: Finding[] = [];
  for (const r of [...c.resources.values()].sort((a, b) => a.groupResource.localeCompare(b.groupResource))) {
    if (r.items === 0) continue;
    const served = facts.served.get(r.group)?.has(r.resource) ?? false;
    const crdOnTarget = facts.crds.get(r.groupResource);
    const crdInBackup = c.crds.get(r.groupResource);
    const items = `${r.items} item${r.items === 1 ? '' : 's'}`;
    if (served && !crdOnTarget) continue; // a built-in (or aggregated) resource the target serves
    if (served) {
      out.push({ check: 'resource', subject: r.groupResource, severity: 'ok', message: `CRD present (${items} in the backup)` });
    } else if (crdInBackup) {
      out.push({
        check: 'resource',
        subject: r.groupResource,
        severity: 'warning',
        message: `CRD not on the target; its definition is in the backup and Velero restores it before the ${items}`,
        suggestion: `install the operator that owns ${r.groupResource} (its CRD version may differ from the backed-up one)`,
      });
    } else {
      out.push({
        check: 'resource',
        subject: r.groupResource,
        severity: 'missing',
        message: `the target does not serve ${r.groupResource}: the ${items} of the backup cannot be restored`,
        suggestion: r.group ? `install the CRD ${r.groupResource} (with its operator) on the target before restoring` : `the target's Kubernetes version lacks ${r.resource}`,
      });
    }
    if (served || crdInBackup) out.push(operatorFinding(r.groupResource, r.group, crdOnTarget?.kind ?? crdInBackup?.kind ?? '', facts.workloads));
  }
  return out;
}

/** Words too common in API group names to point at one operator. */
const GENERIC_WORDS = new Set(['io', 'org', 'com', 'net', 'dev', 'ai', 'sh', 'co', 'k8s', 'x-k8s', 'kubernetes', 'cloud', 'app', 'apps', 'api', 'www', 'github']);

/** The words an operator of `group`/`kind` is looked for by (see the module comment). */
export function operatorWords(group: string, kind: string): string[] {
  const words = group
    .toLowerCase()
    .split('.')
    .filter((w) => w.length >= 3 && !GENERIC_WORDS.has(w));
  if (kind) words.push(kind.toLowerCase());
  return [...new Set(words)];
}

function operatorFinding(groupResource: string, group: string, kind: string, workloads: Workload[]): Finding {
  const words = operatorWords(group, kind);
  const matches = workloads
    .map((w) => ({ w, word: words.find((word) => workloadText(w).some((t) => t.includes(word))) }))
    .filter((m): m is { w: Workload; word: string } => m.word !== undefined);
  const heuristic = `looked for a Deployment, StatefulSet or DaemonSet whose name, namespace, labels or images contain ${words.map((w) => JSON.stringify(w)).join(' or ')}`;
  const running = matches.find((m) => m.w.ready > 0);
  if (running) {
    const { w, word } = running;
    return {
      check: 'operator',
      subject: groupResource,
      severity: 'ok',
      message: `operator ${w.kind} ${w.namespace}/${w.name} runs (${w.ready}/${w.desired} ready; matched ${JSON.stringify(word)}, a heuristic)`,
    };
  }
  if (matches.length > 0) {
    const { w } = matches[0]!;
    return {
      check: 'operator',
      subject: groupResource,
      severity: 'warning',
      message: `operator ${w.kind} ${w.namespace}/${w.name} found, but none of its replicas is ready`,
      suggestion: `check ${w.kind.toLowerCase()} ${w.name} in namespace ${w.namespace}`,
    };
  }
  return {
    check: 'operator',
    subject: groupResource,
    severity: 'warning',
    message: `no operator found for ${groupResource} (${heuristic})`,
    suggestion: `install the operator that reconciles ${kind || groupResource}, or ignore this if it runs under another name`,
  };
}

function workloadText(w: Workload): string[] {
  return [w.name, w.namespace, ...Object.values(w.labels), ...w.images.map((i) => i.replace(/[:@].*$/, ''))].map((s) => s.toLowerCase());
}

// ---------------------------------------------------------------------------------------------
// StorageClasses and VolumeSnapshotClasses

function checkStorageClasses(
  c: VeleroBackupContents,
  facts: ClusterFacts,
  veleroNamespace: string,
): { findings: Finding[]; mapping: Record<string, string>; manifest: string } {
  const findings: Finding[] = [];
  const mapping: Record<string, string> = {};
  const configured = facts.storageClassConfigMap;
  const defaultClass = [...facts.storageClasses].find(([, sc]) => sc.isDefault)?.[0];
  for (const [name, referrers] of [...c.storageClassRefs].sort(([a], [b]) => a.localeCompare(b))) {
    const usedBy = describeReferrers(referrers);
    if (facts.storageClasses.has(name)) {
      findings.push({ check: 'storage-class', subject: name, severity: 'ok', message: `present (${usedBy})` });
      continue;
    }
    const mapped = configured?.data[name];
    if (mapped !== undefined) {
      const there = facts.storageClasses.has(mapped);
      findings.push({
        check: 'storage-class',
        subject: name,
        severity: there ? 'ok' : 'missing',
        message: there
          ? `not on the target; mapped to ${mapped} by ConfigMap ${veleroNamespace}/${configured!.name} (${usedBy})`
          : `mapped to ${mapped} by ConfigMap ${veleroNamespace}/${configured!.name}, but the target has no StorageClass ${mapped} (${usedBy})`,
        ...(there ? {} : { suggestion: `create StorageClass ${mapped}, or change the mapping in ConfigMap ${veleroNamespace}/${configured!.name}` }),
      });
      continue;
    }
    const provisioner = c.storageClasses.get(name);
    const sameProvisioner = provisioner ? [...facts.storageClasses].find(([, sc]) => sc.provisioner === provisioner)?.[0] : undefined;
    const suggested = sameProvisioner ?? defaultClass;
    if (suggested) mapping[name] = suggested;
    findings.push({
      check: 'storage-class',
      subject: name,
      severity: 'missing',
      message: `the target has no StorageClass ${name} (${usedBy})`,
      suggestion: suggested
        ? `map ${name} to ${suggested} (${sameProvisioner ? `same provisioner ${provisioner}` : 'the default StorageClass of the target'}) in Velero's change-storage-class ConfigMap (below)`
        : `create StorageClass ${name} on the target${provisioner ? ` (provisioner ${provisioner})` : ''}, or map it to one in Velero's change-storage-class ConfigMap`,
    });
  }
  return { findings, mapping, manifest: changeStorageClassConfigMap(mapping, veleroNamespace, configured?.name) };
}

function describeReferrers(r: Referrers): string {
  const more = r.total - r.names.length;
  return `used by ${r.names.join(', ')}${more > 0 ? ` and ${more} more` : ''}`;
}

/** Velero's change-storage-class plugin config (docs: "Restore Reference", "Changing PV/PVC Storage Classes"). */
export function changeStorageClassConfigMap(mapping: Record<string, string>, namespace: string, name = 'change-storage-class-config'): string {
  return [
    'apiVersion: v1',
    'kind: ConfigMap',
    'metadata:',
    `  name: ${name}`,
    `  namespace: ${namespace}`,
    '  labels:',
    '    velero.io/plugin-config: ""',
    '    velero.io/change-storage-class: RestoreItemAction',
    'data:',
    ...Object.entries(mapping).map(([from, to]) => `  ${JSON.stringify(from)}: ${JSON.stringify(to)}`),
    '',
  ].join('\n');
}

function checkSnapshotClasses(c: VeleroBackupContents, facts: ClusterFacts): Finding[] {
  const out: Finding[] = [];
  for (const [name, referrers] of [...c.snapshotClassRefs].sort(([a], [b]) => a.localeCompare(b))) {
    const usedBy = describeReferrers(referrers);
    if (!facts.snapshotClasses) {
      out.push({
        check: 'snapshot-class',
        subject: name,
        severity: 'missing',
        message: `the target does not serve snapshot.storage.k8s.io VolumeSnapshotClasses (${usedBy})`,
        suggestion: 'install the CSI external-snapshotter CRDs and controller, and a VolumeSnapshotClass for the CSI driver',
      });
      continue;
    }
    if (facts.snapshotClasses.has(name)) {
      out.push({ check: 'snapshot-class', subject: name, severity: 'ok', message: `present (${usedBy})` });
      continue;
    }
    const driver = c.snapshotClassDrivers.get(name);
    const sameDriver = driver ? [...facts.snapshotClasses].find(([, d]) => d === driver)?.[0] : undefined;
    out.push({
      check: 'snapshot-class',
      subject: name,
      severity: 'missing',
      message: `the target has no VolumeSnapshotClass ${name} (${usedBy})`,
      suggestion: sameDriver
        ? `VolumeSnapshotClass ${sameDriver} has the same driver ${driver}: create ${name} as a copy of it`
        : `create VolumeSnapshotClass ${name}${driver ? ` for driver ${driver}` : ''} on the target`,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// GPUs

/**
 * Whether the GPU requests of the pods Velero restores (not the Succeeded or Failed ones) fit the
 * allocatable GPUs of the target's schedulable nodes: placed largest first, each on the first node
 * with room (first-fit decreasing). Allocatable, not free: pods already running on the target are
 * not subtracted.
 */
function checkGpus(pods: BackedUpPod[], facts: ClusterFacts, resource: string): { findings: Finding[]; summary: GpuSummary } {
  const wanting = pods
    .filter((p) => !p.completed && (p.extendedRequests[resource] ?? 0) > 0)
    .map((p) => ({ pod: `${p.namespace}/${p.name}`, gpus: p.extendedRequests[resource]! }))
    .sort((a, b) => b.gpus - a.gpus || a.pod.localeCompare(b.pod));
  const nodes = facts.nodes.filter((n) => n.gpus > 0 && !n.unschedulable).map((n) => ({ name: n.name, gpus: n.gpus }));
  const summary: GpuSummary = {
    resource,
    requested: wanting.reduce((s, p) => s + p.gpus, 0),
    allocatable: nodes.reduce((s, n) => s + n.gpus, 0),
    nodes,
    pods: wanting,
  };
  const findings: Finding[] = [];
  if (wanting.length === 0) {
    findings.push({ check: 'gpu', subject: resource, severity: 'ok', message: `no pod of the backup requests ${resource}` });
    return { findings, summary };
  }
  const free = nodes.map((n) => ({ ...n }));
  const largest = Math.max(0, ...nodes.map((n) => n.gpus));
  const unplaced: Finding[] = [];
  for (const p of wanting) {
    const node = free.find((n) => n.gpus >= p.gpus);
    if (node) {
      node.gpus -= p.gpus;
      continue;
    }
    unplaced.push({
      check: 'gpu',
      subject: `pod ${p.pod}`,
      severity: 'missing',
      message:
        p.gpus > largest
          ? `requests ${p.gpus} ${resource}; no schedulable node of the target has that many (the largest has ${largest})`
          : `requests ${p.gpus} ${resource}; the target's nodes have no room left for it once the larger pods are placed`,
      suggestion: `add nodes with ${p.gpus} allocatable ${resource}, or restore fewer pods`,
    });
  }
  const shortfall = summary.requested - summary.allocatable;
  findings.push({
    check: 'gpu',
    subject: resource,
    severity: unplaced.length > 0 ? 'missing' : 'ok',
    message:
      `the backup's pods request ${summary.requested} ${resource}; the target has ${summary.allocatable} allocatable on ${nodes.length} schedulable node${nodes.length === 1 ? '' : 's'}` +
      (shortfall > 0 ? ` (short by ${shortfall})` : unplaced.length > 0 ? ' (enough in total, but not on single nodes)' : ''),
  });
  findings.push(...unplaced);
  return { findings, summary };
}

// ---------------------------------------------------------------------------------------------
// tender snapshots

/**
 * Every emptyDir and PVC volume of the pods Velero restores needs a tender snapshot tagged with
 * the backup (the agent's emptyDir backups, the data mover's PVC backups), found by the tags
 * k8s.namespace + k8s.pod + k8s.volume, or for a claim k8s.namespace + k8s.pvc or
 * velero.io/source-pvc=<ns>/<pvc> (the data mover's). An emptyDir the pod's annotations leave
 * out (tender.io/backup-volumes not naming it, tender.io/exclude-volumes naming it) is a warning:
 * it is restored empty.
 */
function checkTenderSnapshots(pods: BackedUpPod[], snapshots: TaggedSnapshot[] | undefined): Finding[] {
  if (snapshots === undefined) {
    return [
      {
        check: 'tender-snapshot',
        subject: 'repository',
        severity: 'warning',
        message: 'no repository given: the tender snapshots of the volumes were not checked',
        suggestion: 'pass --repo (or set TENDER_REPOSITORY) and the repository password',
      },
    ];
  }
  const byVolume = new Map<string, TaggedSnapshot>();
  const byClaim = new Map<string, TaggedSnapshot>();
  for (const s of snapshots) {
    const tag = (k: string): string | undefined => s.snapshot.tags.find((t) => t.startsWith(`${k}=`))?.slice(k.length + 1);
    const ns = tag('k8s.namespace');
    // The data mover's PVC snapshots (src/velero/datamover.ts) name their claim `<ns>/<pvc>`.
    const sourcePvc = tag('velero.io/source-pvc');
    if (sourcePvc !== undefined) byClaim.set(sourcePvc, s);
    if (ns === undefined) continue;
    const pod = tag('k8s.pod');
    const volume = tag('k8s.volume');
    const pvc = tag('k8s.pvc');
    // Newest wins: the list is oldest first.
    if (pod !== undefined && volume !== undefined) byVolume.set(`${ns}/${pod}/${volume}`, s);
    if (pvc !== undefined) byClaim.set(`${ns}/${pvc}`, s);
  }
  const out: Finding[] = [];
  for (const pod of pods) {
    if (pod.completed) continue;
    for (const v of pod.volumes) {
      if (v.kind === 'other') continue;
      const subject = `${pod.namespace}/${pod.name} volume ${v.name}`;
      const found = byVolume.get(`${pod.namespace}/${pod.name}/${v.name}`) ?? (v.claim ? byClaim.get(`${pod.namespace}/${v.claim}`) : undefined);
      const what = v.kind === 'emptyDir' ? 'emptyDir' : `PVC ${v.claim}`;
      if (found) {
        const bytes = found.snapshot.summary?.totalBytes;
        out.push({
          check: 'tender-snapshot',
          subject,
          severity: 'ok',
          message: `${what}: snapshot ${found.id.slice(0, 8)} of ${found.snapshot.time}${bytes !== undefined ? `, ${bytes} bytes` : ''}`,
        });
        continue;
      }
      // The annotations are the agent's policy, for emptyDirs; a claim's data is the data mover's.
      const leftOut =
        v.kind === 'emptyDir' && ((pod.backupVolumes !== undefined && !pod.backupVolumes.includes(v.name)) || (pod.excludeVolumes?.includes(v.name) ?? false));
      out.push(
        leftOut
          ? {
              check: 'tender-snapshot',
              subject,
              severity: 'warning',
              message: `${what}: not backed up (the pod's tender.io/backup-volumes or tender.io/exclude-volumes leave it out); it is restored empty`,
            }
          : {
              check: 'tender-snapshot',
              subject,
              severity: 'missing',
              message: `${what}: no tender snapshot tagged with this backup`,
              suggestion:
                v.kind === 'emptyDir'
                  ? `list the volume in the pod's tender.io/backup-volumes annotation so the tender agent backs it up with each Velero backup, then take a new backup`
                  : `back the claim up with tender's data mover (Velero --snapshot-move-data), then take a new backup`,
            },
      );
    }
  }
  return out;
}
