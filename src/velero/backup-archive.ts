/**
 * What a Velero backup tarball holds, read in one streaming pass (gunzip → tar → the items that
 * matter to a restore), with memory bounded by one item and the summary kept.
 *
 * Velero's layout (pkg/archive/filesystem.go, pkg/backup/item_backupper.go of Velero 1.x):
 *
 *   metadata/version                                         "1.1.0\n" (the backup format version)
 *   resources/<resource>[.<group>]/cluster/<name>.json       a cluster-scoped item
 *   resources/<resource>[.<group>]/namespaces/<ns>/<name>.json
 *   resources/<resource>[.<group>]/<version>-preferredversion/{cluster|namespaces/<ns>}/<name>.json
 *   resources/<resource>[.<group>]/<version>/{cluster|namespaces/<ns>}/<name>.json   (EnableAPIGroupVersions)
 *
 * The core group has no `.<group>` suffix (`resources/pods/...`). An item in the preferred version
 * is written twice, without a version directory and under `<v>-preferredversion`; either alone is
 * accepted (both are the same item). Items under other versions are copies in another API
 * version and are not counted again.
 */
import { createGunzip } from 'node:zlib';
import { pipeline } from 'node:stream/promises';
import { TenderError } from '../errors/errors.js';
import { tarEntries } from './tar.js';

export interface BackedUpResource {
  /** `resource.group`, or `resource` for the core group. */
  groupResource: string;
  resource: string;
  /** '' for the core group. */
  group: string;
  items: number;
  /** From a `<v>-preferredversion` directory, when the backup has one. */
  preferredVersion?: string;
}

export interface PodVolume {
  name: string;
  kind: 'emptyDir' | 'persistentVolumeClaim' | 'other';
  /** The PVC, for a persistentVolumeClaim volume. */
  claim?: string;
}

export interface BackedUpPod {
  namespace: string;
  name: string;
  phase?: string;
  /** Velero does not restore Succeeded or Failed pods. */
  completed: boolean;
  volumes: PodVolume[];
  /** tender.io/backup-volumes and tender.io/exclude-volumes, when the pod has them. */
  backupVolumes?: string[];
  excludeVolumes?: string[];
  /** The pod's effective request of each extended resource (name with a `/`, e.g. nvidia.com/gpu). */
  extendedRequests: Record<string, number>;
}

/** Where a class is named, e.g. `PersistentVolumeClaim ml/data`: the first few by name, and how many in all. */
export interface Referrers {
  names: string[];
  total: number;
}

export interface VeleroBackupContents {
  /** The tarball's metadata/version, if it has one. */
  formatVersion?: string;
  /** By groupResource. */
  resources: Map<string, BackedUpResource>;
  /** Distinct items (each counted once whatever the versions stored). */
  items: number;
  namespaces: string[];
  pods: BackedUpPod[];
  /** CustomResourceDefinitions in the backup, by name (`plural.group`). */
  crds: Map<string, { group: string; kind: string }>;
  /** StorageClass name → who names it (PVCs, PVs, StatefulSet claim templates). */
  storageClassRefs: Map<string, Referrers>;
  /** StorageClasses in the backup: name → provisioner. */
  storageClasses: Map<string, string>;
  /** VolumeSnapshotClass name → who names it (VolumeSnapshots, VolumeSnapshotContents). */
  snapshotClassRefs: Map<string, Referrers>;
  /** VolumeSnapshotClasses in the backup, and drivers seen on VolumeSnapshotContents: class → driver. */
  snapshotClassDrivers: Map<string, string>;
}

/** A Kubernetes object is at most ~1.5 MiB (etcd's request limit); a bigger item is not one. */
const MAX_ITEM_BYTES = 16 << 20;

/** The group-resources whose items are read (all others are only counted). */
const READ = new Set([
  'pods',
  'persistentvolumeclaims',
  'persistentvolumes',
  'storageclasses.storage.k8s.io',
  'statefulsets.apps',
  'customresourcedefinitions.apiextensions.k8s.io',
  'volumesnapshots.snapshot.storage.k8s.io',
  'volumesnapshotcontents.snapshot.storage.k8s.io',
  'volumesnapshotclasses.snapshot.storage.k8s.io',
]);

const MAX_REFERRERS = 10;

interface ItemPath {
  groupResource: string;
  /** undefined: no version directory. */
  version?: string;
  preferred: boolean;
  namespace: string;
  name: string;
}

/** An archive path in Velero's `resources/` layout, or undefined for anything else. */
export function parseItemPath(path: string): ItemPath | undefined {
  const parts = path.replace(/^\.\//, '').split('/');
  if (parts[0] !== 'resources' || parts.length < 4 || !parts[1]) return undefined;
  let rest = parts.slice(2);
  let version: string | undefined;
  if (rest[0] !== 'cluster' && rest[0] !== 'namespaces') {
    version = rest[0];
    rest = rest.slice(1);
  }
  let namespace: string;
  let file: string;
  if (rest[0] === 'cluster' && rest.length === 2) [namespace, file] = ['', rest[1]!];
  else if (rest[0] === 'namespaces' && rest.length === 3 && rest[1]) [namespace, file] = [rest[1], rest[2]!];
  else return undefined;
  if (!file.endsWith('.json') || file.length === '.json'.length) return undefined;
  const preferred = version === undefined || version.endsWith('-preferredversion');
  return {
    groupResource: parts[1],
    ...(version !== undefined ? { version: version.replace(/-preferredversion$/, '') } : {}),
    preferred,
    namespace,
    name: file.slice(0, -'.json'.length),
  };
}

/**
 * Reads a gzip-compressed Velero backup tarball from `compressed`. `what` names it in messages
 * (a file path, an s3:// URL). Not gzip, not tar, or no Velero layout inside: a TenderError.
 */
export async function readVeleroBackup(compressed: AsyncIterable<Uint8Array>, what: string): Promise<VeleroBackupContents> {
  let contents: VeleroBackupContents | undefined;
  try {
    await pipeline(compressed, createGunzip(), async (tar: AsyncIterable<Buffer>) => {
      contents = await readArchive(tar, what);
    });
  } catch (err) {
    if (err instanceof TenderError) {
      throw new TenderError(err.code, `${what}: ${err.message}`, { ...(err.hint ? { hint: err.hint } : {}), cause: err });
    }
    const code = (err as { code?: string }).code;
    if (code === 'Z_BUF_ERROR') {
      throw new TenderError('TENDER_CORRUPT', `${what} ends early (${(err as Error).message}): the file is incomplete`, {
        hint: 'download the backup again',
      });
    }
    if (code === 'Z_DATA_ERROR') {
      throw new TenderError('TENDER_USAGE', `${what} is not a gzip-compressed Velero backup (${(err as Error).message})`, {
        hint: 'pass the backups/<name>/<name>.tar.gz object of the backup storage location, as downloaded',
      });
    }
    throw err;
  }
  return contents!;
}

async function readArchive(tar: AsyncIterable<Buffer>, what: string): Promise<VeleroBackupContents> {
  const c: VeleroBackupContents = {
    resources: new Map(),
    items: 0,
    namespaces: [],
    pods: [],
    crds: new Map(),
    storageClassRefs: new Map(),
    storageClasses: new Map(),
    snapshotClassRefs: new Map(),
    snapshotClassDrivers: new Map(),
  };
  const namespaces = new Set<string>();
  const seen = new Set<string>();
  let sawResourcesDir = false;
  for await (const entry of tarEntries(tar)) {
    const path = entry.path.replace(/^\.\//, '');
    if (entry.kind !== 'file') {
      if (path === 'resources' || path.startsWith('resources/')) sawResourcesDir = true;
      continue;
    }
    if (path === 'metadata/version') {
      if (entry.size > 64) throw notVelero(what, `its metadata/version is ${entry.size} bytes long`);
      c.formatVersion = (await entry.body()).toString('utf8').trim();
      continue;
    }
    const item = parseItemPath(path);
    if (!item) continue;
    sawResourcesDir = true;
    const [resource, ...groupParts] = item.groupResource.split('.');
    let r = c.resources.get(item.groupResource);
    if (!r) {
      r = { groupResource: item.groupResource, resource: resource!, group: groupParts.join('.'), items: 0 };
      c.resources.set(item.groupResource, r);
    }
    if (item.version !== undefined && item.preferred) r.preferredVersion = item.version;
    if (!item.preferred) continue;
    const key = `${item.groupResource}/${item.namespace}/${item.name}`;
    if (seen.has(key)) continue;
    seen.add(key);
    r.items++;
    c.items++;
    if (item.namespace) namespaces.add(item.namespace);
    if (!READ.has(item.groupResource)) continue;
    if (entry.size > MAX_ITEM_BYTES) throw notVelero(what, `${path} is ${entry.size} bytes, more than any Kubernetes object`);
    let obj: Obj;
    try {
      obj = JSON.parse((await entry.body()).toString('utf8')) as Obj;
    } catch (err) {
      throw new TenderError('TENDER_CORRUPT', `${what}: ${path} is not valid JSON (${(err as Error).message})`, {
        hint: 'the backup is damaged: take a new backup, or check the file was downloaded whole',
      });
    }
    if (!obj || typeof obj !== 'object') throw new TenderError('TENDER_CORRUPT', `${what}: ${path} is not a Kubernetes object`);
    collect(c, item, obj);
  }
  if (c.formatVersion === undefined && !sawResourcesDir) {
    throw notVelero(what, 'it has neither metadata/version nor a resources/ directory');
  }
  c.namespaces = [...namespaces].sort();
  return c;
}

function notVelero(what: string, why: string): TenderError {
  return new TenderError('TENDER_USAGE', `${what} is not a Velero backup: ${why}`, {
    hint: 'pass the backups/<name>/<name>.tar.gz object of the backup storage location, as downloaded',
  });
}

// Items are untyped JSON: read them defensively.
type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** Keeps the MAX_REFERRERS first names in sort order, so the report does not depend on the order of the archive. */
function addRef(map: Map<string, Referrers>, name: string | undefined, who: string): void {
  if (!name) return;
  const refs = map.get(name) ?? { names: [], total: 0 };
  refs.total++;
  refs.names = [...refs.names, who].sort().slice(0, MAX_REFERRERS);
  map.set(name, refs);
}

function collect(c: VeleroBackupContents, item: ItemPath, o: Obj): void {
  const meta = obj(o.metadata);
  const spec = obj(o.spec);
  const at = item.namespace ? `${item.namespace}/${item.name}` : item.name;
  switch (item.groupResource) {
    case 'pods':
      c.pods.push(podSummary(item, meta, spec, obj(o.status)));
      break;
    case 'persistentvolumeclaims':
      addRef(c.storageClassRefs, str(spec.storageClassName) ?? str(obj(meta.annotations)['volume.beta.kubernetes.io/storage-class']), `PersistentVolumeClaim ${at}`);
      break;
    case 'persistentvolumes':
      addRef(c.storageClassRefs, str(spec.storageClassName), `PersistentVolume ${at}`);
      break;
    case 'statefulsets.apps':
      for (const t of arr(spec.volumeClaimTemplates)) {
        addRef(c.storageClassRefs, str(obj(obj(t).spec).storageClassName), `StatefulSet ${at} (volumeClaimTemplate ${str(obj(obj(t).metadata).name) ?? '?'})`);
      }
      break;
    case 'storageclasses.storage.k8s.io':
      c.storageClasses.set(item.name, str(o.provisioner) ?? '');
      break;
    case 'customresourcedefinitions.apiextensions.k8s.io':
      c.crds.set(item.name, { group: str(spec.group) ?? item.name.split('.').slice(1).join('.'), kind: str(obj(spec.names).kind) ?? '' });
      break;
    case 'volumesnapshots.snapshot.storage.k8s.io':
      addRef(c.snapshotClassRefs, str(spec.volumeSnapshotClassName), `VolumeSnapshot ${at}`);
      break;
    case 'volumesnapshotcontents.snapshot.storage.k8s.io': {
      const cls = str(spec.volumeSnapshotClassName);
      addRef(c.snapshotClassRefs, cls, `VolumeSnapshotContent ${at}`);
      const driver = str(spec.driver);
      if (cls && driver && !c.snapshotClassDrivers.has(cls)) c.snapshotClassDrivers.set(cls, driver);
      break;
    }
    case 'volumesnapshotclasses.snapshot.storage.k8s.io':
      c.snapshotClassDrivers.set(item.name, str(o.driver) ?? '');
      break;
  }
}

const splitList = (v: string | undefined): string[] | undefined =>
  v === undefined
    ? undefined
    : v
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== '');

function podSummary(item: ItemPath, meta: Obj, spec: Obj, status: Obj): BackedUpPod {
  const annotations = obj(meta.annotations);
  const phase = str(status.phase);
  const backupVolumes = splitList(str(annotations['tender.io/backup-volumes']));
  const excludeVolumes = splitList(str(annotations['tender.io/exclude-volumes']));
  return {
    namespace: item.namespace,
    name: item.name,
    ...(phase ? { phase } : {}),
    completed: phase === 'Succeeded' || phase === 'Failed',
    volumes: arr(spec.volumes).map((raw) => {
      const v = obj(raw);
      const name = str(v.name) ?? '';
      if (v.emptyDir !== undefined) return { name, kind: 'emptyDir' as const };
      const claim = str(obj(v.persistentVolumeClaim).claimName);
      if (claim) return { name, kind: 'persistentVolumeClaim' as const, claim };
      return { name, kind: 'other' as const };
    }),
    ...(backupVolumes ? { backupVolumes } : {}),
    ...(excludeVolumes ? { excludeVolumes } : {}),
    extendedRequests: extendedRequests(spec),
  };
}

/**
 * What the scheduler counts for each extended resource: the larger of the sum over the containers
 * and the largest init container (requests; for extended resources a limit alone implies the same request).
 */
function extendedRequests(spec: Obj): Record<string, number> {
  const of = (container: unknown): Record<string, number> => {
    const res = obj(obj(container).resources);
    const merged = { ...obj(res.limits), ...obj(res.requests) };
    const out: Record<string, number> = {};
    for (const [name, q] of Object.entries(merged)) {
      if (!name.includes('/') || name.startsWith('kubernetes.io/') || name.startsWith('hugepages-')) continue;
      const n = Number(typeof q === 'number' ? q : str(q));
      if (Number.isFinite(n) && n > 0) out[name] = n;
    }
    return out;
  };
  const total: Record<string, number> = {};
  for (const c of arr(spec.containers)) for (const [k, v] of Object.entries(of(c))) total[k] = (total[k] ?? 0) + v;
  for (const c of arr(spec.initContainers)) for (const [k, v] of Object.entries(of(c))) total[k] = Math.max(total[k] ?? 0, v);
  return total;
}
