/**
 * Which pods a Velero Backup covers, as Velero decides it for pods (pkg/backup/item_collector.go,
 * pkg/util/collections/includes_excludes.go): the pod's namespace is included (an empty list or
 * `*` includes all; names may be globs) and not excluded, pods are among the backed-up resources,
 * and the pod's labels match spec.labelSelector, or one of spec.orLabelSelectors.
 */
import { minimatch } from 'minimatch';

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: Array<{ key: string; operator: string; values?: string[] }>;
}

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

/** Kubernetes label selector semantics (matchLabels AND every matchExpression). */
export function selectorMatches(selector: LabelSelector, labels: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, e.key);
    const values = e.values ?? [];
    switch (e.operator) {
      case 'In':
        if (!has || !values.includes(labels[e.key]!)) return false;
        break;
      case 'NotIn':
        if (has && values.includes(labels[e.key]!)) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
      default:
        return false; // an operator Kubernetes does not know selects nothing
    }
  }
  return true;
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
