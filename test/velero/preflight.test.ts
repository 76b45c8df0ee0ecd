/**
 * `tender preflight` (the real CLI) against the real test API server as the target cluster, with
 * backups in Velero's tarball layout written by GNU tar in the test, and a real repository for
 * the tender snapshots. Everything cluster-wide this file creates has a random name (the API
 * server is shared with the other test files); GPUs are counted on this file's nodes only
 * (--node-selector).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { AppsV1Api, CoreV1Api, CustomObjectsApi, type KubeConfig, StorageV1Api } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Finding, PreflightReport } from '../../src/velero/preflight.js';
import { openStorage } from '../../src/storage/open.js';
import { describeRun, errorLine, makeTree, runTender, tenderOk } from '../helpers/cli.js';
import { createNamespace, testKubeConfig } from '../helpers/kube.js';
import { s3TestEnv, s3TestOptions, s3TestUrl } from '../helpers/s3.js';
import { applyVeleroCrds } from '../helpers/velero.js';
import { type VeleroItem, ensureCrd, ensureVeleroCrds, writeVeleroTarball } from '../helpers/velero-tarball.js';

const r = randomBytes(4).toString('hex');
const GPU = 'nvidia.com/gpu';
const pool = `tender-test.io/pool`;

// Names in the backup and on the target.
const kubeflow = `kubeflow-${r}.org`;
const pytorchjobs = `pytorchjobs.${kubeflow}`;
const widgets = `widgets.w${r}.example.com`; // not on the target, no CRD in the backup
const gadgets = `gadgets.g${r}.example.com`; // not on the target, its CRD in the backup
const notebooks = `notebooks.nb${r}.example.com`; // on the target, no operator
const driver = `csi.${r}.example.com`;
const fastClass = `fast-${r}`; // in the backup (provisioner `driver`), not on the target
const goneClass = `gone-${r}`; // not anywhere
const presentClass = `present-${r}`;
const targetClass = `target-${r}`; // on the target, provisioner `driver`
const oldSnapClass = `vsc-old-${r}`;
const targetSnapClass = `vsc-target-${r}`;

let kc: KubeConfig;
let work: string;
let repo: string;
let operatorNs: string;

function pod(name: string, opts: { gpus?: number; limitsOnly?: boolean; volumes: object[]; backupVolumes?: string; phase?: string }): VeleroItem {
  const resources = opts.gpus ? (opts.limitsOnly ? { limits: { [GPU]: String(opts.gpus) } } : { requests: { [GPU]: String(opts.gpus), cpu: '4' }, limits: { [GPU]: String(opts.gpus) } }) : {};
  return {
    groupResource: 'pods',
    namespace: 'ml',
    name,
    object: {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace: 'ml', ...(opts.backupVolumes ? { annotations: { 'tender.io/backup-volumes': opts.backupVolumes } } : {}) },
      spec: { containers: [{ name: 'main', image: 'trainer', resources }], volumes: opts.volumes },
      status: { phase: opts.phase ?? 'Running' },
    },
  };
}

const item = (groupResource: string, namespace: string | undefined, name: string, object: Record<string, unknown>): VeleroItem => ({
  groupResource,
  ...(namespace ? { namespace } : {}),
  name,
  object: { metadata: { name, ...(namespace ? { namespace } : {}) }, ...object },
});

/** A backup that lacks something of every kind on the target. */
function generatedBackup(): VeleroItem[] {
  return [
    pod('trainer-0', { gpus: 8, volumes: [{ name: 'ckpt', emptyDir: {} }, { name: 'data', persistentVolumeClaim: { claimName: 'data' } }], backupVolumes: 'ckpt,data' }),
    // Its annotation leaves out `cache` (restored empty: a warning), not `scratch` (a claim: the data mover's).
    pod('trainer-1', {
      gpus: 4,
      limitsOnly: true,
      volumes: [{ name: 'ckpt', emptyDir: {} }, { name: 'cache', emptyDir: {} }, { name: 'cfg', configMap: { name: 'c' } }, { name: 'scratch', persistentVolumeClaim: { claimName: 'scratch' } }],
      backupVolumes: 'ckpt',
    }),
    pod('old-run', { gpus: 16, volumes: [{ name: 'ckpt', emptyDir: {} }], phase: 'Succeeded' }),
    item('persistentvolumeclaims', 'ml', 'data', { spec: { storageClassName: fastClass, volumeName: 'pv-data' } }),
    item('persistentvolumeclaims', 'ml', 'scratch', { spec: { storageClassName: presentClass } }),
    item('persistentvolumeclaims', 'ml', 'legacy', { spec: { storageClassName: goneClass } }),
    item('persistentvolumes', undefined, 'pv-data', { spec: { storageClassName: fastClass, csi: { driver } } }),
    item('storageclasses.storage.k8s.io', undefined, fastClass, { provisioner: driver }),
    item('configmaps', 'ml', 'c', { data: {} }),
    item(pytorchjobs, 'ml', 'llama', { spec: {} }),
    item(widgets, 'ml', 'w1', { spec: {} }),
    item(gadgets, 'ml', 'g1', { spec: {} }),
    item('customresourcedefinitions.apiextensions.k8s.io', undefined, gadgets, { spec: { group: `g${r}.example.com`, names: { kind: 'Gadget', plural: 'gadgets' } } }),
    item(notebooks, 'ml', 'nb1', { spec: {} }),
    item('volumesnapshots.snapshot.storage.k8s.io', 'ml', 'data-snap', { spec: { volumeSnapshotClassName: oldSnapClass } }),
    item('volumesnapshotclasses.snapshot.storage.k8s.io', undefined, oldSnapClass, { driver, deletionPolicy: 'Retain' }),
  ];
}

async function preflight(args: string[], env: Record<string, string | undefined> = {}) {
  return runTender(['preflight', '--kubeconfig', inject('kubeconfig'), '--node-selector', `${pool}=${r}`, ...args], { env });
}

function report(stdout: string): PreflightReport {
  const lines = stdout.split('\n').filter((l) => l.trim() !== '');
  expect(lines).toHaveLength(1);
  const parsed = JSON.parse(lines[0]!) as PreflightReport & { message_type: string };
  expect(parsed.message_type).toBe('preflight');
  return parsed;
}

const brief = (findings: Finding[], severity: Finding['severity']) =>
  findings
    .filter((f) => f.severity === severity)
    .map((f) => `${f.check} ${f.subject}`)
    .sort();

beforeAll(async () => {
  kc = testKubeConfig();
  work = await mkdtemp(path.join(os.tmpdir(), 'tender-preflight-'));
  repo = path.join(work, 'repo');
  await tenderOk(['--repo', repo, 'init']);

  // CRDs on the target: PyTorchJobs (with a running operator) and Notebooks (without one).
  await ensureCrd(kc, { group: kubeflow, plural: 'pytorchjobs', kind: 'PyTorchJob' });
  await ensureCrd(kc, { group: `nb${r}.example.com`, plural: 'notebooks', kind: `Notebook${r}` });
  // The real snapshot CRDs (with their status subresource), as the data-mover tests that share this
  // API server need them: a stand-in CRD created first would stay, and break those tests.
  await applyVeleroCrds(kc);
  operatorNs = await createNamespace(kc);
  await runningDeployment(operatorNs, 'training-operator', { 'app.kubernetes.io/name': `${kubeflow.split('.')[0]}-training-operator` }, 'kubeflow/training-operator:v1');
  await runningDeployment(operatorNs, 'snapshot-controller', { app: 'snapshot-controller' }, 'registry.k8s.io/sig-storage/snapshot-controller:v8');

  const storage = kc.makeApiClient(StorageV1Api);
  await storage.createStorageClass({ body: { metadata: { name: targetClass }, provisioner: driver } });
  await storage.createStorageClass({ body: { metadata: { name: presentClass }, provisioner: `other.${driver}` } });
  await kc.makeApiClient(CustomObjectsApi).createClusterCustomObject({
    group: 'snapshot.storage.k8s.io',
    version: 'v1',
    plural: 'volumesnapshotclasses',
    body: { apiVersion: 'snapshot.storage.k8s.io/v1', kind: 'VolumeSnapshotClass', metadata: { name: targetSnapClass }, driver, deletionPolicy: 'Delete' },
  });

  // Two GPU nodes of 4 each, and one cordoned node of 8 (not counted).
  const core = kc.makeApiClient(CoreV1Api);
  for (const [name, gpus, unschedulable] of [
    [`gpu-a-${r}`, 4, false],
    [`gpu-b-${r}`, 4, false],
    [`gpu-cordoned-${r}`, 8, true],
  ] as const) {
    const node = await core.createNode({ body: { metadata: { name, labels: { [pool]: r } }, spec: { unschedulable } } });
    await core.replaceNodeStatus({ name, body: { ...node, status: { allocatable: { [GPU]: String(gpus), cpu: '64' }, capacity: { [GPU]: String(gpus), cpu: '64' } } } });
  }
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** A Deployment with one ready replica (no controller manager here: its status is written as its controller would). */
async function runningDeployment(namespace: string, name: string, labels: Record<string, string>, image: string): Promise<void> {
  const apps = kc.makeApiClient(AppsV1Api);
  const dep = await apps.createNamespacedDeployment({
    namespace,
    body: {
      metadata: { name, labels },
      spec: { replicas: 1, selector: { matchLabels: labels }, template: { metadata: { labels }, spec: { containers: [{ name: 'main', image }] } } },
    },
  });
  await apps.replaceNamespacedDeploymentStatus({ name, namespace, body: { ...dep, status: { replicas: 1, readyReplicas: 1, availableReplicas: 1 } } });
}

/** Backs up a small directory as the snapshot of one pod volume, tagged as tender's Velero backups are. */
async function volumeSnapshot(backup: string, pod: string, volume: string, extra: string[] = []): Promise<void> {
  const dir = path.join(work, `vol-${randomBytes(4).toString('hex')}`);
  await makeTree(dir, { 'a.bin': 'x'.repeat(1000) });
  await tenderOk([
    '--repo', repo, 'backup', dir, '--quiet',
    '--tag', `velero.io/backup-name=${backup}`, '--tag', 'k8s.namespace=ml', '--tag', `k8s.pod=${pod}`, '--tag', `k8s.volume=${volume}`,
    ...extra.flatMap((t) => ['--tag', t]),
  ]);
}

describe('tender preflight --backup-file', () => {
  it('names every missing CRD, StorageClass (with a mapping), VolumeSnapshotClass, GPU shortfall and tender snapshot, and exits 4', async () => {
    const name = `nightly-${r}`;
    const file = path.join(work, `${name}.tar.gz`);
    await writeVeleroTarball(file, generatedBackup(), { layout: 'both', format: 'pax' });
    await volumeSnapshot(name, 'trainer-1', 'ckpt');
    await volumeSnapshot(`other-${r}`, 'trainer-0', 'ckpt'); // another backup's: does not count

    const res = await preflight(['--backup-file', file, '--json'], { TENDER_REPOSITORY: repo });
    expect(res.code, describeRun(['preflight'], res)).toBe(4);
    const rep = report(res.stdout);
    expect(rep.backup).toMatchObject({ name, formatVersion: '1.1.0', items: 16, namespaces: ['ml'] });
    expect(brief(rep.findings, 'missing')).toEqual(
      [
        `resource ${widgets}`,
        `storage-class ${fastClass}`,
        `storage-class ${goneClass}`,
        `snapshot-class ${oldSnapClass}`,
        `gpu ${GPU}`,
        'gpu pod ml/trainer-0',
        'tender-snapshot ml/trainer-0 volume ckpt',
        'tender-snapshot ml/trainer-0 volume data',
        'tender-snapshot ml/trainer-1 volume scratch',
      ].sort(),
    );
    expect(brief(rep.findings, 'warning')).toEqual(
      [`resource ${gadgets}`, `operator ${gadgets}`, `operator ${notebooks}`, 'tender-snapshot ml/trainer-1 volume cache'].sort(),
    );
    expect(brief(rep.findings, 'ok')).toEqual(
      expect.arrayContaining([`resource ${pytorchjobs}`, `operator ${pytorchjobs}`, `resource ${notebooks}`, `storage-class ${presentClass}`, 'tender-snapshot ml/trainer-1 volume ckpt']),
    );
    expect(rep.missing).toBe(9);
    const find = (check: string, subject: string) => rep.findings.find((f) => f.check === check && f.subject === subject)!;
    expect(find('operator', pytorchjobs).message).toContain(`Deployment ${operatorNs}/training-operator runs (1/1 ready`);
    // The class in the backup has the provisioner of a target class: that is the suggested mapping.
    expect(rep.storageClassMapping[fastClass]).toBe(targetClass);
    expect(rep.storageClassConfigMap).toContain('velero.io/change-storage-class: RestoreItemAction');
    expect(rep.storageClassConfigMap).toContain(`"${fastClass}": "${targetClass}"`);
    expect(find('snapshot-class', oldSnapClass).suggestion).toContain(`${targetSnapClass} has the same driver ${driver}`);
    // The Succeeded pod's 16 GPUs are not counted (Velero does not restore completed pods); the cordoned node's 8 neither.
    expect(rep.gpu).toMatchObject({ resource: GPU, requested: 12, allocatable: 8 });
    expect(find('gpu', GPU).message).toContain('short by 4');
    expect(find('gpu', 'pod ml/trainer-0').message).toContain('requests 8 nvidia.com/gpu; no schedulable node of the target has that many (the largest has 4)');

    // The table for people says the same.
    const table = await preflight(['--backup-file', file], { TENDER_REPOSITORY: repo });
    expect(table.code).toBe(4);
    for (const subject of [widgets, fastClass, goneClass, oldSnapClass, 'pod ml/trainer-0', 'ml/trainer-0 volume ckpt', 'ml/trainer-0 volume data']) {
      expect(table.stdout).toMatch(new RegExp(`MISSING .*${subject.replace(/[.*/]/g, '\\$&')}`));
    }
    expect(table.stdout).toContain(`"${fastClass}": "${targetClass}"`);
    expect(table.stdout).toContain('9 missing, 4 warnings: the target is not ready for this restore');
  });

  it('reads every Velero layout and tar format alike', async () => {
    const reports: unknown[] = [];
    for (const [layout, format] of [
      ['unversioned', 'gnu'],
      ['preferred', 'pax'],
      ['both', 'gnu'],
      ['both', 'ustar'],
      ['both', 'go'],
      ['preferred', 'go'],
    ] as const) {
      const file = path.join(work, `layout-${layout}-${format}.tar.gz`);
      await writeVeleroTarball(file, generatedBackup(), { layout, format });
      const res = await preflight(['--backup-file', file, '--backup-name', `layouts-${r}`, '--json']);
      expect(res.code, describeRun(['preflight', layout, format], res)).toBe(4);
      const { backup, ...rest } = report(res.stdout);
      expect(backup.items).toBe(16);
      reports.push(rest);
    }
    for (const other of reports.slice(1)) expect(other).toEqual(reports[0]);
    // Without a repository the volumes' snapshots are not checked (said as a warning).
    expect((reports[0] as PreflightReport).findings.filter((f) => f.check === 'tender-snapshot').map((f) => f.severity)).toEqual(['warning']);
  });

  it('exits 0 when the target has everything, a StorageClass mapped by the ConfigMap included', async () => {
    const veleroNs = await createNamespace(kc);
    await kc.makeApiClient(CoreV1Api).createNamespacedConfigMap({
      namespace: veleroNs,
      body: {
        metadata: { name: 'change-storage-class-config', labels: { 'velero.io/plugin-config': '', 'velero.io/change-storage-class': 'RestoreItemAction' } },
        data: { [fastClass]: targetClass },
      },
    });
    const name = `ready-${r}`;
    const file = path.join(work, `${name}.tar.gz`);
    await writeVeleroTarball(
      file,
      [
        pod('trainer-0', { gpus: 4, volumes: [{ name: 'ckpt', emptyDir: {} }, { name: 'data', persistentVolumeClaim: { claimName: 'data' } }] }),
        pod('trainer-1', { gpus: 4, volumes: [{ name: 'ckpt', emptyDir: {} }] }),
        item('persistentvolumeclaims', 'ml', 'data', { spec: { storageClassName: fastClass } }),
        item(pytorchjobs, 'ml', 'llama', { spec: {} }),
      ],
      { layout: 'both' },
    );
    await volumeSnapshot(name, 'trainer-0', 'ckpt');
    await volumeSnapshot(name, 'trainer-1', 'ckpt');
    // A PVC snapshot tagged as the data mover tags them (src/velero/datamover.ts): found by its claim.
    const dir = path.join(work, `pvc-${r}`);
    await makeTree(dir, { 'x.bin': 'y'.repeat(10) });
    await tenderOk(['--repo', repo, 'backup', dir, '--quiet', '--tag', `velero.io/backup-name=${name}`, '--tag', 'velero.io/data-upload=du-1', '--tag', 'velero.io/source-pvc=ml/data']);

    const res = await preflight(['--backup-file', file, '--namespace', veleroNs, '--json'], { TENDER_REPOSITORY: repo });
    expect(res.code, describeRun(['preflight'], res)).toBe(0);
    const rep = report(res.stdout);
    expect(rep.missing).toBe(0);
    expect(rep.findings.find((f) => f.check === 'storage-class')!.message).toContain(`mapped to ${targetClass} by ConfigMap ${veleroNs}/change-storage-class-config`);
    expect(rep.gpu).toMatchObject({ requested: 8, allocatable: 8 });
    expect(brief(rep.findings, 'ok')).toEqual(expect.arrayContaining(['tender-snapshot ml/trainer-0 volume data', 'tender-snapshot ml/trainer-0 volume ckpt']));

    const table = await preflight(['--backup-file', file, '--namespace', veleroNs], { TENDER_REPOSITORY: repo });
    expect(table.code).toBe(0);
    expect(table.stdout).toContain('nothing missing');
  });

  it('says clearly when the file is not a Velero backup', async () => {
    const plain = path.join(work, 'plain');
    await makeTree(plain, { 'readme.txt': 'hello', dir: { type: 'dir', children: { 'file.json': '{}' } } });
    const notVelero = path.join(work, 'not-velero.tar.gz');
    await runTar(['-czf', notVelero, '-C', plain, '.']);
    let res = await preflight(['--backup-file', notVelero]);
    expect(res.code).toBe(2);
    expect(errorLine(res).message).toContain(`${notVelero} is not a Velero backup: it has neither metadata/version nor a resources/ directory`);

    const notGzip = path.join(work, 'not-gzip.tar.gz');
    await writeFile(notGzip, 'just text, not gzip\n'.repeat(10));
    res = await preflight(['--backup-file', notGzip]);
    expect(res.code).toBe(2);
    expect(errorLine(res).message).toContain(`${notGzip} is not a gzip-compressed Velero backup`);

    const gzNotTar = path.join(work, 'gz-not-tar.tar.gz');
    await writeFile(gzNotTar, gzipSync(Buffer.from('y'.repeat(5000))));
    res = await preflight(['--backup-file', gzNotTar]);
    expect(res.code).toBe(1);
    expect(errorLine(res).message).toContain(`${gzNotTar}: not a tar archive: the header at byte 0 has a malformed checksum field`);

    const cut = path.join(work, 'cut.tar.gz');
    await writeVeleroTarball(cut, generatedBackup(), { layout: 'both' });
    const whole = await readFile(cut);
    await truncate(cut, Math.floor(whole.length / 2));
    res = await preflight(['--backup-file', cut]);
    expect(res.code).not.toBe(0);
    expect(res.code).not.toBe(4);
    expect(errorLine(res).message).toMatch(/unexpected end of file|ends in the middle of an entry/);

    // An item bigger than any Kubernetes object is refused, not read into memory.
    const huge = path.join(work, 'huge.tar.gz');
    await writeVeleroTarball(huge, [{ groupResource: 'pods', namespace: 'ml', name: 'huge', object: { pad: 'x'.repeat(17 << 20) } }], { layout: 'unversioned' });
    res = await preflight(['--backup-file', huge]);
    expect(res.code).toBe(2);
    expect(errorLine(res).message).toMatch(/resources\/pods\/namespaces\/ml\/huge.json is \d+ bytes, more than any Kubernetes object/);

    res = await preflight(['--backup-file', path.join(work, 'absent.tar.gz')]);
    expect(res.code).toBe(2);
    expect(errorLine(res).message).toContain('cannot read the backup file');

    res = await preflight(['--backup-file', cut, '--backup', 'x']);
    expect(res.code).toBe(2);
    expect(errorLine(res).message).toContain('one of --backup-file FILE and --backup NAME');
  });
});

describe('tender preflight --backup NAME', () => {
  it('reads the Backup and its storage location from the API server, and the tarball from S3', async () => {
    await ensureVeleroCrds(kc);
    const veleroNs = await createNamespace(kc);
    const env = s3TestEnv();
    const bslUrl = s3TestUrl('velero-bsl');
    const prefix = bslUrl.slice(`s3://${env.bucket}/`.length);
    const name = `daily-${r}`;
    const custom = kc.makeApiClient(CustomObjectsApi);
    await custom.createNamespacedCustomObject({
      group: 'velero.io',
      version: 'v1',
      namespace: veleroNs,
      plural: 'backupstoragelocations',
      body: {
        apiVersion: 'velero.io/v1',
        kind: 'BackupStorageLocation',
        metadata: { name: 'default' },
        spec: { provider: 'aws', objectStorage: { bucket: env.bucket, prefix }, config: { region: env.region, s3Url: env.endpoint, s3ForcePathStyle: 'true' } },
      },
    });
    const backupObj = (await custom.createNamespacedCustomObject({
      group: 'velero.io',
      version: 'v1',
      namespace: veleroNs,
      plural: 'backups',
      body: { apiVersion: 'velero.io/v1', kind: 'Backup', metadata: { name }, spec: { includedNamespaces: ['ml'], storageLocation: 'default' }, status: { phase: 'Completed' } },
    })) as { metadata: { uid: string } };

    const file = path.join(work, 'upload.tar.gz');
    await writeVeleroTarball(file, generatedBackup(), { layout: 'both' });
    const storage = await openStorage(bslUrl, s3TestOptions());
    await storage.put(`backups/${name}/${name}.tar.gz`, [await readFile(file)]);
    await storage.close();
    // Snapshots of this backup's UID count; one of an older backup of the same name does not.
    await volumeSnapshot(name, 'trainer-0', 'ckpt', [`velero.io/backup-uid=${backupObj.metadata.uid}`]);
    await volumeSnapshot(name, 'trainer-0', 'data', ['velero.io/backup-uid=00000000-dead-beef-0000-000000000000']);

    // The endpoint comes from the storage location; only the credentials from the environment.
    const res = await preflight(['--backup', name, '--namespace', veleroNs, '--json'], { TENDER_REPOSITORY: repo, AWS_ENDPOINT_URL: undefined });
    expect(res.code, describeRun(['preflight', '--backup', name], res)).toBe(4);
    const rep = report(res.stdout);
    expect(rep.backup).toMatchObject({ name, uid: backupObj.metadata.uid, source: `${bslUrl}/backups/${name}/${name}.tar.gz`, items: 16 });
    expect(brief(rep.findings, 'ok')).toContain('tender-snapshot ml/trainer-0 volume ckpt');
    expect(brief(rep.findings, 'missing')).toContain('tender-snapshot ml/trainer-0 volume data');

    const absent = await preflight(['--backup', `absent-${r}`, '--namespace', veleroNs]);
    expect(absent.code).toBe(2);
    expect(errorLine(absent).message).toContain(`cannot read Velero backup ${veleroNs}/absent-${r}: HTTP 404`);
  });
});

async function runTar(args: string[]): Promise<void> {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  await promisify(execFile)('tar', args);
}
