/**
 * Which pods a Velero Backup covers, as Velero decides it for pods (pkg/backup/item_collector.go,
 * pkg/util/collections/includes_excludes.go): the pod's namespace is included (an empty list or
 * `*` includes all; names may be globs) and not excluded, pods are among the backed-up resources,
 * and the pod's labels match spec.labelSelector, or one of spec.orLabelSelectors.
 */
import { minimatch } from 'minimatch';
import { type LabelSelector, selectorMatches } from '../util/label-selector.js';

/** The fields of a velero.io/v1 Backup read here. */
export interface VeleroBackup {
  metadata?: { name?: string; namespace?: string; uid?: string };
  spec?: {
    includedNamespaces?: string[];
    excludedNamespaces?: string[];
    includedResources?: string[];
    excludedResources?: string[];
    includedNamespaceScopedResources?: string[];
    excludedNamespaceScopedResources?: string[];
    labelSelector?: LabelSelector;
    orLabelSelectors?: LabelSelector[];
  };
  status?: { phase?: string };
}

const POD_NAMES = new Set(['*', 'pods', 'pod', 'po', 'pods.', 'pods.v1']);

function nameMatches(patterns: string[], name: string): boolean {
  return patterns.some((p) => p === '*' || p === name || (/[*?[]/.test(p) && minimatch(name, p)));
}

/** Whether the Backup backs up the pod `namespace` with `labels`. */
export function backupCoversPod(backup: VeleroBackup, pod: { namespace: string; labels: Record<string, string> }): boolean {
  const spec = backup.spec ?? {};
  const included = spec.includedNamespaces ?? [];
  if (included.length > 0 && !nameMatches(included, pod.namespace)) return false;
  if (nameMatches(spec.excludedNamespaces ?? [], pod.namespace)) return false;
  const resources = [...(spec.includedResources ?? []), ...(spec.includedNamespaceScopedResources ?? [])];
  if (resources.length > 0 && !resources.some((r) => POD_NAMES.has(r.toLowerCase()))) return false;
  const excluded = [...(spec.excludedResources ?? []), ...(spec.excludedNamespaceScopedResources ?? [])];
  if (excluded.some((r) => POD_NAMES.has(r.toLowerCase()))) return false;
  if (spec.labelSelector && !selectorMatches(spec.labelSelector, pod.labels)) return false;
  if (spec.orLabelSelectors?.length && !spec.orLabelSelectors.some((s) => selectorMatches(s, pod.labels))) return false;
  return true;
}
