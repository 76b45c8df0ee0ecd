/**
 * Policy (src/agent/policy.ts): pod annotations (read back from the real test API server), the
 * config file, selectors, and PolicyWatcher reloading a ConfigMap-style mount.
 */
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, type V1Pod, type V1Volume } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_POLICY,
  matchesSelector,
  nextRunAt,
  parseCron,
  parseInterval,
  parsePolicy,
  podInScope,
  podPolicy,
  PolicyWatcher,
  type AgentPolicy,
} from '../../src/agent/policy.js';
import { createNamespace, createPod, emptyDir, memoryLogger, pvcVolume, testKubeConfig, waitFor } from '../helpers/kube.js';

const policy = (over: Partial<AgentPolicy> = {}): AgentPolicy => ({ ...DEFAULT_POLICY, ...over });

function pod(volumes: V1Volume[], annotations: Record<string, string> = {}, labels?: Record<string, string>): V1Pod {
  return {
    metadata: { name: 'trainer-0', namespace: 'ml', annotations, ...(labels ? { labels } : {}) },
    spec: { containers: [], volumes },
  };
}

const vols = [
  emptyDir('ckpt'),
  emptyDir('scratch'),
  pvcVolume('data', 'data-claim'),
  { name: 'cfg', configMap: { name: 'cfg' } },
  { name: 'token', secret: { secretName: 'tok' } },
];

describe('intervals and cron', () => {
  it('parses intervals with units, largest first', () => {
    expect(parseInterval('10m')).toBe(600_000);
    expect(parseInterval('1h30m')).toBe(5_400_000);
    expect(parseInterval('90s')).toBe(90_000);
    expect(parseInterval('1d')).toBe(86_400_000);
    for (const bad of ['', '10', 'm', '10x', '30m1h', '0s', '-5m', '1.5h']) {
      expect(() => parseInterval(bad), bad).toThrow(/is not an interval/);
    }
  });

  it('accepts 5-field cron expressions and macros, and rejects the rest saying why', () => {
    expect(parseCron('*/15  * * * *')).toBe('*/15 * * * *');
    expect(parseCron('@daily')).toBe('@daily');
    expect(() => parseCron('0 0 * * * *')).toThrow(/has 6 fields; a schedule is 5 fields/);
    expect(() => parseCron('* * *')).toThrow(/has 3 fields/);
    expect(() => parseCron('61 * * * *')).toThrow(/not a valid cron expression/);
    expect(() => parseCron('')).toThrow(/has 0 fields/);
  });

  it('computes the next run', () => {
    const t = Date.UTC(2026, 0, 1, 10, 7, 0);
    expect(nextRunAt({ cron: '*/15 * * * *' }, t)).toBe(Date.UTC(2026, 0, 1, 10, 15, 0));
    expect(nextRunAt({ intervalMs: 60_000 }, t)).toBe(t + 60_000);
  });
});

describe('podPolicy: annotations', () => {
  it('backs up the volumes named in tender.io/backup-volumes, minus tender.io/exclude-volumes', () => {
    const pp = podPolicy(pod(vols, { 'tender.io/backup-volumes': 'ckpt, data ,scratch', 'tender.io/exclude-volumes': 'scratch' }), policy());
    expect(pp.volumes).toEqual([{ name: 'ckpt' }, { name: 'data' }]);
    expect(pp.errors).toEqual([]);
    expect(pp.schedule).toEqual(DEFAULT_POLICY.schedule);
  });

  it('applies defaultVolumes to pods without the annotation', () => {
    const p = pod(vols);
    expect(podPolicy(p, policy({ defaultVolumes: 'none' })).volumes).toEqual([]);
    expect(podPolicy(p, policy({ defaultVolumes: 'emptyDir' })).volumes.map((v) => v.name)).toEqual(['ckpt', 'scratch']);
    expect(podPolicy(p, policy({ defaultVolumes: 'all' })).volumes.map((v) => v.name)).toEqual(['ckpt', 'scratch', 'data']);
    const ex = podPolicy(pod(vols, { 'tender.io/exclude-volumes': 'scratch' }), policy({ defaultVolumes: 'all' }));
    expect(ex.volumes.map((v) => v.name)).toEqual(['ckpt', 'data']);
  });

  it('reports a malformed or wrong volume list naming pod, annotation and problem; the valid names still apply', () => {
    const pp = podPolicy(pod(vols, { 'tender.io/backup-volumes': 'ckpt,nope,Bad Name,,token' }), policy());
    expect(pp.volumes).toEqual([{ name: 'ckpt' }, { name: 'token', problem: expect.stringMatching(/secret volumes are never backed up/) }]);
    expect(pp.errors).toEqual([
      expect.stringMatching(/^pod ml\/trainer-0: annotation tender.io\/backup-volumes: the pod has no volume "nope" \(its volumes: ckpt, scratch, data, cfg, token\)$/),
      expect.stringMatching(/^pod ml\/trainer-0: annotation tender.io\/backup-volumes: "Bad Name" is not a volume name/),
    ]);
  });

  it('takes the schedule from tender.io/schedule or tender.io/interval; a bad one falls back to the default', () => {
    expect(podPolicy(pod(vols, { 'tender.io/interval': '1h30m' }), policy()).schedule).toEqual({ intervalMs: 5_400_000 });
    expect(podPolicy(pod(vols, { 'tender.io/schedule': '0 */6 * * *' }), policy()).schedule).toEqual({ cron: '0 */6 * * *' });

    const bad = podPolicy(pod(vols, { 'tender.io/backup-volumes': 'ckpt', 'tender.io/interval': 'ten minutes' }), policy());
    expect(bad.volumes).toEqual([{ name: 'ckpt' }]);
    expect(bad.schedule).toEqual(DEFAULT_POLICY.schedule);
    expect(bad.errors).toEqual([
      expect.stringMatching(/^pod ml\/trainer-0: annotation tender.io\/interval: "ten minutes" is not an interval.*; the default schedule is used$/),
    ]);

    const badCron = podPolicy(pod(vols, { 'tender.io/schedule': '0 0 * * * *' }), policy());
    expect(badCron.errors[0]).toMatch(/annotation tender.io\/schedule: "0 0 \* \* \* \*" has 6 fields/);

    const both = podPolicy(pod(vols, { 'tender.io/schedule': '@hourly', 'tender.io/interval': '5m' }), policy());
    expect(both.schedule).toEqual({ cron: '@hourly' });
    expect(both.errors[0]).toMatch(/both set; tender.io\/schedule is used/);
  });

  it('reads the annotations of a pod from the API server', async () => {
    const kc = testKubeConfig();
    const ns = await createNamespace(kc);
    await createPod(kc, ns, {
      name: 'p',
      nodeName: 'node-x',
      volumes: [emptyDir('ckpt'), emptyDir('tmp')],
      annotations: { 'tender.io/backup-volumes': 'ckpt,missing', 'tender.io/interval': '10m' },
    });
    const p = await kc.makeApiClient(CoreV1Api).readNamespacedPod({ name: 'p', namespace: ns });
    const pp = podPolicy(p, policy());
    expect(pp.volumes).toEqual([{ name: 'ckpt' }]);
    expect(pp.schedule).toEqual({ intervalMs: 600_000 });
    expect(pp.errors).toEqual([expect.stringContaining(`pod ${ns}/p: annotation tender.io/backup-volumes: the pod has no volume "missing"`)]);
  });
});

describe('selectors', () => {
  it('matches matchLabels and every matchExpressions operator', () => {
    const labels = { team: 'llm', tier: 'gpu' };
    expect(matchesSelector(labels, undefined)).toBe(true);
    expect(matchesSelector(labels, { matchLabels: { team: 'llm' } })).toBe(true);
    expect(matchesSelector(labels, { matchLabels: { team: 'cv' } })).toBe(false);
    expect(matchesSelector(labels, { matchExpressions: [{ key: 'tier', operator: 'In', values: ['gpu', 'tpu'] }] })).toBe(true);
    expect(matchesSelector(labels, { matchExpressions: [{ key: 'tier', operator: 'NotIn', values: ['gpu'] }] })).toBe(false);
    expect(matchesSelector(labels, { matchExpressions: [{ key: 'team', operator: 'Exists' }] })).toBe(true);
    expect(matchesSelector(labels, { matchExpressions: [{ key: 'spot', operator: 'DoesNotExist' }] })).toBe(true);
    expect(matchesSelector({}, { matchExpressions: [{ key: 'x', operator: 'NotIn', values: ['a'] }] })).toBe(true);
  });

  it('scopes pods by namespace globs, excluded namespaces, namespace labels and pod labels', () => {
    const p = pod([], {}, { team: 'llm' });
    expect(podInScope(p, policy())).toBe(true);
    expect(podInScope(p, policy({ namespaces: ['m*'] }))).toBe(true);
    expect(podInScope(p, policy({ namespaces: ['research'] }))).toBe(false);
    expect(podInScope(p, policy({ excludeNamespaces: ['ml'] }))).toBe(false);
    expect(podInScope(p, policy({ namespaceSelector: { matchLabels: { backup: 'on' } } }), { backup: 'on' })).toBe(true);
    expect(podInScope(p, policy({ namespaceSelector: { matchLabels: { backup: 'on' } } }), {})).toBe(false);
    expect(podInScope(p, policy({ podSelector: { matchLabels: { team: 'cv' } } }))).toBe(false);
  });
});

describe('parsePolicy: the config file', () => {
  it('reads every setting', () => {
    const p = parsePolicy(`
defaultVolumes: emptyDir
interval: 30m
namespaces: [ml-*, research]
excludeNamespaces: [kube-system]
namespaceSelector:
  matchLabels: { backup: "on" }
podSelector:
  matchExpressions:
    - { key: team, operator: In, values: [llm] }
    - { key: spot, operator: DoesNotExist }
maxConcurrentRuns: 2
cacheNeutral: false
politeness:
  readLimit: 200MiB
  uploadLimit: 100M
  pressureBackoff: io=20,memory=10
  cpuShare: 1.5
  gpuBackoff: 80
  gpuHold: 45s
`);
    expect(p).toEqual({
      defaultVolumes: 'emptyDir',
      schedule: { intervalMs: 1_800_000 },
      namespaces: ['ml-*', 'research'],
      excludeNamespaces: ['kube-system'],
      namespaceSelector: { matchLabels: { backup: 'on' } },
      podSelector: {
        matchExpressions: [
          { key: 'team', operator: 'In', values: ['llm'] },
          { key: 'spot', operator: 'DoesNotExist' },
        ],
      },
      maxConcurrentRuns: 2,
      cacheNeutral: false,
      politeness: {
        readLimit: 200 * 2 ** 20,
        uploadLimit: 100e6,
        pressure: { io: 20, memory: 10 },
        cpuShareCores: 1.5,
        gpu: { busyPercent: 80, holdLowMs: 45_000, mode: 'pause' },
      },
    });
    expect(parsePolicy('schedule: "0 3 * * *"').schedule).toEqual({ cron: '0 3 * * *' });
  });

  it('gives the defaults for an empty file', () => {
    expect(parsePolicy('')).toEqual(DEFAULT_POLICY);
    expect(parsePolicy('# nothing yet\n')).toEqual(DEFAULT_POLICY);
  });

  it('rejects a malformed file saying what and where', () => {
    const cases: Array<[string, RegExp]> = [
      ['defaultVolumes: [oops', /cfg: not valid YAML/],
      ['- a\n- b', /must be a YAML map/],
      ['defaultVolume: all', /unknown setting defaultVolume/],
      ['defaultVolumes: some', /defaultVolumes must be none, emptyDir or all, not "some"/],
      ['interval: 10 minutes', /interval.*is not an interval/],
      ['interval: 1h\nschedule: "@daily"', /either interval or schedule, not both/],
      ['schedule: "* * * * * *"', /has 6 fields/],
      ['namespaces: ml', /namespaces must be a list/],
      ['maxConcurrentRuns: 0', /maxConcurrentRuns must be a whole number from 1 to 64/],
      ['cacheNeutral: yes please', /cacheNeutral must be true or false/],
      ['podSelector: { matchLabels: { on: true } }', /matchLabels must map label names to strings/],
      ['podSelector: { matchExpressions: [{ key: a, operator: Has }] }', /operator must be In, NotIn, Exists or DoesNotExist/],
      ['podSelector: { matchExpressions: [{ key: a, operator: In }] }', /values must be a list/],
      ['podSelector: { labels: {} }', /unknown key "labels"/],
      ['a: 1\na: 2', /not valid YAML/],
      ['politeness: { readLimit: fast }', /cfg: politeness.readLimit: "fast" is not a size/],
      ['politeness: { pressureBackoff: disk=5 }', /politeness.pressureBackoff: unknown resource "disk"/],
      ['politeness: { gpuMode: cap }', /gpuHold and gpuMode need gpuBackoff/],
      ['politeness: { readlimit: 5M }', /politeness: unknown key readlimit/],
      ['politeness: { cpuShare: -1 }', /politeness.cpuShare must be a positive number of cores/],
    ];
    for (const [text, re] of cases) expect(() => parsePolicy(text, 'cfg'), text).toThrow(re);
  });
});

describe('PolicyWatcher', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'tender-policy-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Lay out a ConfigMap volume the way the kubelet does: <ts dir>/config.yaml, ..data → <ts dir>, config.yaml → ..data/config.yaml. */
  async function configMapDir(name: string, text: string): Promise<{ dir: string; update: (t: string) => Promise<void> }> {
    const cm = path.join(dir, name);
    let n = 0;
    const write = async (t: string): Promise<void> => {
      const ts = `..2026_01_01_00_00_0${n++}.${Math.random().toString(36).slice(2, 8)}`;
      await mkdir(path.join(cm, ts), { recursive: true });
      await writeFile(path.join(cm, ts, 'config.yaml'), t);
      await symlink(ts, path.join(cm, '..data_tmp'));
      await rename(path.join(cm, '..data_tmp'), path.join(cm, '..data'));
    };
    await write(text);
    await symlink('..data/config.yaml', path.join(cm, 'config.yaml'));
    return { dir: cm, update: write };
  }

  it('reloads a ConfigMap mount when its ..data symlink is swapped, and keeps the last good config on a bad edit', async () => {
    const cm = await configMapDir('cm1', 'defaultVolumes: emptyDir\n');
    const { logger, lines } = memoryLogger();
    // Polling slow enough that the fs.watch path is what delivers the change.
    const w = new PolicyWatcher({ file: path.join(cm.dir, 'config.yaml'), logger, pollMs: 600_000 });
    await w.start();
    try {
      expect(w.policy.defaultVolumes).toBe('emptyDir');
      expect(w.error).toBeUndefined();

      await cm.update('defaultVolumes: all\ninterval: 5m\n');
      await waitFor(w, 'change', () => w.policy.defaultVolumes === 'all', 'the reload of the new config');
      expect(w.policy.schedule).toEqual({ intervalMs: 300_000 });

      await cm.update('defaultVolumes: everything\n');
      const err = await waitFor(w, 'invalid', () => w.error, 'the bad config to be reported');
      expect(err).toMatch(/defaultVolumes must be none, emptyDir or all, not "everything"/);
      expect(w.policy.defaultVolumes).toBe('all'); // the last good one
      expect(w.stats.errors).toBe(1);
      expect(lines.some((l) => l.level === 50 && String(l.error).includes('everything'))).toBe(true);

      await cm.update('defaultVolumes: none\n');
      await waitFor(w, 'change', () => w.policy.defaultVolumes === 'none', 'the fixed config');
      expect(w.error).toBeUndefined();
    } finally {
      await w.stop();
    }
  });

  it('starts with the defaults when the file is missing or bad, and picks it up by polling', async () => {
    const sub = path.join(dir, 'late');
    await mkdir(sub);
    const file = path.join(sub, 'config.yaml');
    const { logger } = memoryLogger();
    const w = new PolicyWatcher({ file, logger, pollMs: 50 });
    await w.start();
    try {
      expect(w.policy).toEqual(DEFAULT_POLICY);
      expect(w.error).toMatch(/does not exist/);
      await writeFile(file, 'maxConcurrentRuns: 3\n');
      await waitFor(w, 'change', () => w.policy.maxConcurrentRuns === 3, 'the late config');
      expect(w.error).toBeUndefined();
    } finally {
      await w.stop();
    }
  });

  it('without a file, is the defaults', async () => {
    const w = new PolicyWatcher({ logger: memoryLogger().logger });
    await w.start();
    expect(w.policy).toEqual(DEFAULT_POLICY);
    await w.stop();
  });
});
