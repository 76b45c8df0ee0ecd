/** Which pods a Velero Backup covers (src/velero/backup-scope.ts): Velero's rules for pods. */
import { describe, expect, it } from 'vitest';
import { selectorMatches } from '../../src/util/label-selector.js';
import { type VeleroBackup, backupCoversPod } from '../../src/velero/backup-scope.js';

const pod = (namespace: string, labels: Record<string, string> = {}) => ({ namespace, labels });
const covers = (spec: VeleroBackup['spec'], p = pod('ml', { app: 'trainer', tier: 'gpu' })) => backupCoversPod({ spec }, p);

describe('backupCoversPod', () => {
  it('namespaces: empty or * is all, globs, exclusions win', () => {
    expect(covers({})).toBe(true);
    expect(covers({ includedNamespaces: ['*'] })).toBe(true);
    expect(covers({ includedNamespaces: ['ml'] })).toBe(true);
    expect(covers({ includedNamespaces: ['team-*'] }, pod('team-a'))).toBe(true);
    expect(covers({ includedNamespaces: ['team-*'] }, pod('ml'))).toBe(false);
    expect(covers({ includedNamespaces: ['other'] })).toBe(false);
    expect(covers({ includedNamespaces: ['*'], excludedNamespaces: ['ml'] })).toBe(false);
    expect(covers({ excludedNamespaces: ['m?'] })).toBe(false);
  });

  it('resources: pods must be backed up', () => {
    expect(covers({ includedResources: ['deployments'] })).toBe(false);
    expect(covers({ includedResources: ['deployments', 'pods'] })).toBe(true);
    expect(covers({ includedNamespaceScopedResources: ['po'] })).toBe(true);
    expect(covers({ includedResources: ['*'] })).toBe(true);
    expect(covers({ excludedResources: ['pods'] })).toBe(false);
    expect(covers({ excludedNamespaceScopedResources: ['Pods'] })).toBe(false);
  });

  it('labelSelector, and orLabelSelectors (any one)', () => {
    expect(covers({ labelSelector: { matchLabels: { app: 'trainer' } } })).toBe(true);
    expect(covers({ labelSelector: { matchLabels: { app: 'trainer', tier: 'cpu' } } })).toBe(false);
    expect(covers({ orLabelSelectors: [{ matchLabels: { app: 'x' } }, { matchLabels: { tier: 'gpu' } }] })).toBe(true);
    expect(covers({ orLabelSelectors: [{ matchLabels: { app: 'x' } }] })).toBe(false);
  });
});

describe('selectorMatches', () => {
  const labels = { app: 'trainer', tier: 'gpu' };
  it.each([
    [{ key: 'app', operator: 'In', values: ['trainer', 'x'] }, true],
    [{ key: 'app', operator: 'In', values: ['x'] }, false],
    [{ key: 'missing', operator: 'In', values: ['x'] }, false],
    [{ key: 'app', operator: 'NotIn', values: ['x'] }, true],
    [{ key: 'app', operator: 'NotIn', values: ['trainer'] }, false],
    [{ key: 'missing', operator: 'NotIn', values: ['x'] }, true],
    [{ key: 'tier', operator: 'Exists' }, true],
    [{ key: 'missing', operator: 'Exists' }, false],
    [{ key: 'missing', operator: 'DoesNotExist' }, true],
    [{ key: 'tier', operator: 'DoesNotExist' }, false],
    [{ key: 'tier', operator: 'Gt', values: ['1'] }, false],
  ])('%j → %s', (expr, want) => {
    expect(selectorMatches({ matchExpressions: [expr] }, labels)).toBe(want);
  });
  it('an empty selector selects everything', () => {
    expect(selectorMatches({}, {})).toBe(true);
  });
});
