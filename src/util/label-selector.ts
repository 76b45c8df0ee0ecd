/** A Kubernetes label selector (metav1.LabelSelector), as pod policies and Velero Backups carry it. */
export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: ReadonlyArray<{ key: string; operator: string; values?: string[] }>;
}

/** Kubernetes label selector semantics: every matchLabels pair AND every matchExpression. */
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
