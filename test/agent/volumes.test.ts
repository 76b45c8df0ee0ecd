/**
 * Pod volume → host directory (src/agent/volumes.ts): the kubelet's layout per plugin, claims read
 * back from the real test API server, and the checks on disk with reasons a user can act on.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CoreV1Api, type V1Pod, type V1Volume } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkVolumePath,
  claimName,
  locateVolume,
  readMountPoints,
  volumeClass,
  type ResolvedClaim,
} from '../../src/agent/volumes.js';
import { createBoundClaim, createNamespace, emptyDir, pvcVolume, testKubeConfig } from '../helpers/kube.js';

const PODS = '/host_pods';
const UID = '1b2c3d4e-0000-4000-8000-000000000001';

function pod(volumes: V1Volume[], name = 'trainer-0'): V1Pod {
  return { metadata: { name, namespace: 'ml', uid: UID }, spec: { containers: [], volumes } };
}

const noClaims = new Map<string, ResolvedClaim>();

function pathOf(v: V1Volume, claims: ReadonlyMap<string, ResolvedClaim> = noClaims, p = pod([v])): string {
  const loc = locateVolume(p, v, PODS, claims);
  if (!loc.result.ok) throw new Error(`expected a path, got: ${loc.result.reason}`);
  return loc.result.path;
}

function reasonOf(v: V1Volume, claims: ReadonlyMap<string, ResolvedClaim> = noClaims): string {
  const loc = locateVolume(pod([v]), v, PODS, claims);
  if (loc.result.ok) throw new Error(`expected a reason, got the path ${loc.result.path}`);
  return loc.result.reason;
}

function bound(pvName: string, pvSpec: Record<string, unknown>, annotations?: Record<string, string>): ResolvedClaim {
  return {
    pvc: { spec: { volumeName: pvName }, status: { phase: 'Bound' } },
    pv: { metadata: { name: pvName, ...(annotations ? { annotations } : {}) }, spec: pvSpec },
  };
}

describe('locateVolume: the kubelet layout', () => {
  const vol = (rel: string): string => path.join(PODS, UID, 'volumes', rel);

  it('maps an emptyDir to kubernetes.io~empty-dir/<volume>', () => {
    expect(pathOf(emptyDir('ckpt'))).toBe(vol('kubernetes.io~empty-dir/ckpt'));
    expect(locateVolume(pod([emptyDir('ckpt')]), emptyDir('ckpt'), PODS, noClaims).mounted).toBe(false);
  });

  it('maps a PVC bound to a CSI PV to kubernetes.io~csi/<pv>/mount', () => {
    const v = pvcVolume('data', 'data-claim');
    const claims = new Map([['data-claim', bound('pv-1', { csi: { driver: 'ebs.csi.aws.com', volumeHandle: 'vol-1' } })]]);
    const loc = locateVolume(pod([v]), v, PODS, claims);
    expect(loc).toMatchObject({ claim: 'data-claim', pv: 'pv-1', mounted: true, class: 'claim' });
    expect(pathOf(v, claims)).toBe(vol('kubernetes.io~csi/pv-1/mount'));
  });

  it('maps in-tree PVs by plugin: nfs, local, iscsi, flexVolume', () => {
    const v = pvcVolume('data', 'c');
    const at = (spec: Record<string, unknown>): string => pathOf(v, new Map([['c', bound('pv-2', spec)]]));
    expect(at({ nfs: { server: 'nfs.example', path: '/export' } })).toBe(vol('kubernetes.io~nfs/pv-2'));
    expect(at({ local: { path: '/mnt/disks/ssd1' } })).toBe(vol('kubernetes.io~local-volume/pv-2'));
    expect(at({ iscsi: { targetPortal: 'x', iqn: 'y', lun: 0 } })).toBe(vol('kubernetes.io~iscsi/pv-2'));
    expect(at({ flexVolume: { driver: 'acme/fancy' } })).toBe(vol('acme~fancy/pv-2'));
  });

  it('maps migrated in-tree PVs (EBS, GCE PD, annotated migrated-to) to the CSI directory', () => {
    const v = pvcVolume('data', 'c');
    const ebs = new Map([['c', bound('pv-3', { awsElasticBlockStore: { volumeID: 'vol-9' } })]]);
    expect(pathOf(v, ebs)).toBe(vol('kubernetes.io~csi/pv-3/mount'));
    const gce = new Map([['c', bound('pv-4', { gcePersistentDisk: { pdName: 'd' } })]]);
    expect(pathOf(v, gce)).toBe(vol('kubernetes.io~csi/pv-4/mount'));
    const annotated = new Map([
      ['c', bound('pv-5', { rbd: { image: 'i', monitors: ['m'] } }, { 'pv.kubernetes.io/migrated-to': 'rbd.csi.ceph.com' })],
    ]);
    expect(pathOf(v, annotated)).toBe(vol('kubernetes.io~csi/pv-5/mount'));
  });

  it('maps inline volumes by the same rules with the volume name', () => {
    expect(pathOf({ name: 'shared', nfs: { server: 's', path: '/p' } })).toBe(vol('kubernetes.io~nfs/shared'));
    expect(pathOf({ name: 'scratch', csi: { driver: 'x' } })).toBe(vol('kubernetes.io~csi/scratch/mount'));
    expect(volumeClass({ name: 'scratch', csi: { driver: 'x' } })).toBe('inline');
  });

  it('resolves a generic ephemeral volume through its PVC <pod>-<volume>', () => {
    const v: V1Volume = { name: 'scratch', ephemeral: { volumeClaimTemplate: { spec: {} } } };
    expect(claimName(pod([v]), v)).toBe('trainer-0-scratch');
    const claims = new Map([['trainer-0-scratch', bound('pv-6', { csi: { driver: 'd', volumeHandle: 'h' } })]]);
    expect(pathOf(v, claims)).toBe(vol('kubernetes.io~csi/pv-6/mount'));
    expect(reasonOf(v, new Map([['trainer-0-scratch', {}]]))).toMatch(/trainer-0-scratch.*generic ephemeral volume scratch.*does not exist yet/);
  });

  it('never backs up configMap, secret, projected, downwardAPI volumes, and says why', () => {
    expect(reasonOf({ name: 'c', configMap: { name: 'x' } })).toMatch(/configMap volumes are never backed up/);
    expect(reasonOf({ name: 's', secret: { secretName: 'x' } })).toMatch(/secret volumes are never backed up/);
    expect(reasonOf({ name: 'p', projected: { sources: [] } })).toMatch(/projected volumes are never backed up/);
    expect(reasonOf({ name: 'd', downwardAPI: { items: [] } })).toMatch(/downwardAPI volumes are never backed up/);
    expect(volumeClass({ name: 's', secret: { secretName: 'x' } })).toBe('never');
  });

  it('does not back up hostPath volumes or hostPath PVs, and says why', () => {
    expect(reasonOf({ name: 'h', hostPath: { path: '/data/ckpt' } })).toMatch(
      /hostPath volumes are not backed up: the data \(\/data\/ckpt on the node\) is outside the kubelet's pods directory/,
    );
    const v = pvcVolume('data', 'c');
    expect(reasonOf(v, new Map([['c', bound('pv-7', { hostPath: { path: '/srv/x' } })]]))).toMatch(/hostPath.*\/srv\/x/);
  });

  it('reports claims that are missing, unbound, lost, unreadable, bound to a missing PV, or raw block', () => {
    const v = pvcVolume('data', 'c');
    expect(reasonOf(v, noClaims)).toMatch(/PersistentVolumeClaim ml\/c has not been looked up yet/);
    expect(reasonOf(v, new Map([['c', {}]]))).toBe('PersistentVolumeClaim ml/c does not exist');
    expect(reasonOf(v, new Map([['c', { pvc: { spec: {}, status: { phase: 'Pending' } } }]]))).toMatch(
      /ml\/c is not bound to a PersistentVolume yet \(phase Pending\)/,
    );
    expect(reasonOf(v, new Map([['c', { pvc: { spec: { volumeName: 'pv-8' }, status: { phase: 'Lost' } } }]]))).toMatch(/Lost/);
    expect(reasonOf(v, new Map([['c', { error: 'HTTP 403: forbidden' }]]))).toMatch(/could not read PersistentVolumeClaim ml\/c: HTTP 403/);
    expect(reasonOf(v, new Map([['c', { pvc: { spec: { volumeName: 'pv-9' }, status: { phase: 'Bound' } } }]]))).toMatch(
      /PersistentVolume pv-9 \(bound to PersistentVolumeClaim ml\/c\) does not exist/,
    );
    expect(reasonOf(v, new Map([['c', bound('pv-10', { volumeMode: 'Block', csi: { driver: 'd', volumeHandle: 'h' } })]]))).toMatch(
      /raw block volume/,
    );
  });

  it('reads a PVC and its PV back from the API server and maps them', async () => {
    const kc = testKubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    const ns = await createNamespace(kc);
    const made = await createBoundClaim(kc, ns, { claim: 'data' });
    const pvc = await core.readNamespacedPersistentVolumeClaim({ name: 'data', namespace: ns });
    const pv = await core.readPersistentVolume({ name: pvc.spec!.volumeName! });
    const v = pvcVolume('data', 'data');
    const p: V1Pod = { metadata: { name: 'x', namespace: ns, uid: UID }, spec: { containers: [], volumes: [v] } };
    const loc = locateVolume(p, v, PODS, new Map([['data', { pvc, pv }]]));
    expect(loc.result).toEqual({ ok: true, path: vol(`kubernetes.io~csi/${made.pv.metadata!.name}/mount`) });
  });
});

describe('checkVolumePath: what is on disk', () => {
  let podsDir: string;
  beforeAll(async () => {
    podsDir = await mkdtemp(path.join(os.tmpdir(), 'tender-pods-'));
  });
  afterAll(async () => {
    await rm(podsDir, { recursive: true, force: true });
  });

  const csiClaims = new Map([['c', bound('pv-c', { csi: { driver: 'd', volumeHandle: 'h' } })]]);

  it('accepts an existing emptyDir directory', async () => {
    const v = emptyDir('ckpt');
    const uid = 'uid-ok';
    const p: V1Pod = { metadata: { name: 'a', namespace: 'ml', uid }, spec: { volumes: [v], containers: [] } };
    const dir = path.join(podsDir, uid, 'volumes/kubernetes.io~empty-dir/ckpt');
    await mkdir(dir, { recursive: true });
    expect(await checkVolumePath(locateVolume(p, v, podsDir, noClaims), { podsDir })).toEqual({ ok: true, path: dir });
  });

  it('says when the pod directory is not there (pod gone, or --pods-dir wrong)', async () => {
    const v = emptyDir('ckpt');
    const p: V1Pod = { metadata: { name: 'a', namespace: 'ml', uid: 'uid-none' }, spec: { volumes: [v], containers: [] } };
    const r = await checkVolumePath(locateVolume(p, v, podsDir, noClaims), { podsDir });
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toMatch(/uid-none does not exist: .*--pods-dir .* is not the kubelet's pods directory/);
  });

  it('says when the volume is not set up yet, or is a file', async () => {
    const v = emptyDir('ckpt');
    const p: V1Pod = { metadata: { name: 'a', namespace: 'ml', uid: 'uid-early' }, spec: { volumes: [v], containers: [] } };
    await mkdir(path.join(podsDir, 'uid-early/volumes'), { recursive: true });
    const loc = locateVolume(p, v, podsDir, noClaims);
    const r = await checkVolumePath(loc, { podsDir });
    expect(!r.ok && r.reason).toMatch(/kubernetes.io~empty-dir\/ckpt does not exist: the kubelet has not set up the volume/);
    await mkdir(path.join(podsDir, 'uid-early/volumes/kubernetes.io~empty-dir'), { recursive: true });
    await writeFile(path.join(podsDir, 'uid-early/volumes/kubernetes.io~empty-dir/ckpt'), 'not a dir');
    const r2 = await checkVolumePath(loc, { podsDir });
    expect(!r2.ok && r2.reason).toMatch(/ckpt is not a directory/);
  });

  it('tells a CSI volume not set up from one not mounted, and checks the mount point', async () => {
    const v = pvcVolume('data', 'c');
    const uid = 'uid-csi';
    const p: V1Pod = { metadata: { name: 'a', namespace: 'ml', uid }, spec: { volumes: [v], containers: [] } };
    const loc = locateVolume(p, v, podsDir, csiClaims);
    const csiDir = path.join(podsDir, uid, 'volumes/kubernetes.io~csi/pv-c');
    await mkdir(path.join(podsDir, uid, 'volumes'), { recursive: true });
    let r = await checkVolumePath(loc, { podsDir });
    expect(!r.ok && r.reason).toMatch(/pv-c does not exist: the kubelet has not set up the volume/);
    await mkdir(csiDir, { recursive: true });
    r = await checkVolumePath(loc, { podsDir });
    expect(!r.ok && r.reason).toMatch(/mount does not exist: the CSI driver has not mounted the volume/);
    await mkdir(path.join(csiDir, 'mount'));
    // A plain directory where a mount should be: data written there would land on the node's disk.
    r = await checkVolumePath(loc, { podsDir, mountPoints: new Set() });
    expect(!r.ok && r.reason).toMatch(/is not a mount point.*mountPropagation: HostToContainer/);
    r = await checkVolumePath(loc, { podsDir }); // device numbers: same file system as its parent
    expect(r.ok).toBe(false);
    r = await checkVolumePath(loc, { podsDir, mountPoints: new Set([path.join(csiDir, 'mount')]) });
    expect(r).toEqual({ ok: true, path: path.join(csiDir, 'mount') });
    r = await checkVolumePath(loc, { podsDir, checkMounts: false });
    expect(r.ok).toBe(true);
  });

  it('reads mount points from a mountinfo file, with octal escapes', async () => {
    const file = path.join(podsDir, 'mountinfo');
    await writeFile(
      file,
      '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n' +
        '95 22 0:50 / /host_pods/u/volumes/kubernetes.io~csi/pv\\040x/mount rw shared:40 - ext4 /dev/nvme1n1 rw\n',
    );
    const points = await readMountPoints(file);
    expect(points).toEqual(new Set(['/', '/host_pods/u/volumes/kubernetes.io~csi/pv x/mount']));
    expect(await readMountPoints(path.join(podsDir, 'nope'))).toBeUndefined();
  });
});
