/**
 * Where a pod volume lives on the node: the kubelet keeps every volume of a pod under
 * `<pods dir>/<pod uid>/volumes/<plugin dir>/<volume dir>` (Velero's GetPodVolumeHostPath, which
 * globs the plugin dir; here the plugin dir is derived from the volume source, so nothing is
 * guessed). The agent sees the kubelet's pods directory (`/var/lib/kubelet/pods` on the host) at
 * --pods-dir.
 *
 *   emptyDir                       kubernetes.io~empty-dir/<volume>
 *   PVC → PV with spec.csi         kubernetes.io~csi/<pv>/mount
 *   PVC → PV of a migrated in-tree driver (EBS, GCE PD, Azure Disk/File, Cinder, vSphere,
 *     Portworx, or annotated pv.kubernetes.io/migrated-to): the CSI rule, as the kubelet mounts
 *     them through the CSI driver
 *   PVC → PV with spec.nfs         kubernetes.io~nfs/<pv>   (iscsi, fc, local, rbd, cephfs, flexVolume
 *                                  ... by the same rule: kubernetes.io~<plugin>/<pv>)
 *   inline csi / nfs / ...         the same rules with the volume name in place of the PV name
 *   generic ephemeral volume       its PVC `<pod>-<volume>`, then the PVC rules
 *
 * Never backed up: configMap, secret, projected, downwardAPI, gitRepo and image volumes (their
 * content comes from the API server or a registry), raw block volumes (volumeMode: Block).
 * hostPath volumes (and hostPath PVs) are not backed up: their data is on the node outside the
 * kubelet's pods directory, which is all the agent mounts.
 *
 * Everything here is pure except checkVolumePath, which looks at the disk.
 */
import { constants as fsConstants } from 'node:fs';
import { access, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { V1PersistentVolume, V1PersistentVolumeClaim, V1Pod, V1Volume } from '@kubernetes/client-node';

export type PathResult = { ok: true; path: string } | { ok: false; reason: string };

/**
 * How the policy treats a volume: `emptyDir`, `claim` (a PVC or a generic ephemeral volume),
 * `inline` (an inline CSI or in-tree network/disk volume: backed up only when named),
 * `hostPath`, `never` (configMap, secret, ...).
 */
export type VolumeClass = 'emptyDir' | 'claim' | 'inline' | 'hostPath' | 'never';

/** The claim a volume uses, with what the API server said about it. */
export interface ResolvedClaim {
  /** The PVC, or undefined when it does not exist. */
  pvc?: V1PersistentVolumeClaim;
  /** The PV the PVC is bound to, or undefined when it does not exist (or the PVC is unbound). */
  pv?: V1PersistentVolume;
  /** Why the PVC or PV could not be read (API error); then pvc/pv say nothing. */
  error?: string;
}

/** The plan for one volume: its class, its claim, and the path it should have on the node. */
export interface VolumeLocation {
  volume: string;
  class: VolumeClass;
  /** The PVC name (a persistentVolumeClaim, or the PVC of a generic ephemeral volume). */
  claim?: string;
  /** The PV name, when known. */
  pv?: string;
  /** The expected directory (not yet checked), or why there is none. */
  result: PathResult;
  /** True when the directory must be a mount point (CSI, NFS, ...: everything but emptyDir). */
  mounted: boolean;
  /** For CSI: the directory above `mount` (holds vol_data.json), to tell "not set up" from "not mounted". */
  csiDir?: string;
}

const EMPTY_DIR = 'kubernetes.io~empty-dir';
const CSI = 'kubernetes.io~csi';

/** Volume sources whose content comes from elsewhere, with the reason they are skipped. */
const NEVER: Record<string, string> = {
  configMap: 'configMap volumes are never backed up (the ConfigMap is in the API server)',
  secret: 'secret volumes are never backed up (the Secret is in the API server)',
  projected: 'projected volumes are never backed up (their content comes from the API server)',
  downwardAPI: 'downwardAPI volumes are never backed up (their content comes from the API server)',
  gitRepo: 'gitRepo volumes are never backed up (their content comes from a git repository)',
  image: 'image volumes are never backed up (their content is an OCI image)',
};

/** In-tree sources the kubelet now mounts through a CSI driver (CSI migration is GA and on). */
const MIGRATED_TO_CSI = new Set([
  'awsElasticBlockStore',
  'gcePersistentDisk',
  'azureDisk',
  'azureFile',
  'cinder',
  'vsphereVolume',
  'portworxVolume',
]);

/** In-tree sources and the kubelet plugin directory each mounts under. */
const IN_TREE: Record<string, string> = {
  nfs: 'kubernetes.io~nfs',
  iscsi: 'kubernetes.io~iscsi',
  fc: 'kubernetes.io~fc',
  local: 'kubernetes.io~local-volume',
  rbd: 'kubernetes.io~rbd',
  cephfs: 'kubernetes.io~cephfs',
  glusterfs: 'kubernetes.io~glusterfs',
  quobyte: 'kubernetes.io~quobyte',
  flocker: 'kubernetes.io~flocker',
  storageos: 'kubernetes.io~storageos',
  scaleIO: 'kubernetes.io~scaleio',
  photonPersistentDisk: 'kubernetes.io~photon-pd',
};

function sourceKeys(obj: object): string[] {
  return Object.entries(obj)
    .filter(([k, v]) => v !== undefined && v !== null && k !== 'name')
    .map(([k]) => k);
}

/** The class of a pod volume, from its source alone. */
export function volumeClass(vol: V1Volume): VolumeClass {
  if (vol.emptyDir) return 'emptyDir';
  if (vol.persistentVolumeClaim || vol.ephemeral) return 'claim';
  if (vol.hostPath) return 'hostPath';
  if (sourceKeys(vol).some((k) => k in NEVER)) return 'never';
  return 'inline';
}

/** The PVC a volume uses: its claimName, or `<pod>-<volume>` for a generic ephemeral volume. */
export function claimName(pod: V1Pod, vol: V1Volume): string | undefined {
  if (vol.persistentVolumeClaim) return vol.persistentVolumeClaim.claimName;
  if (vol.ephemeral) return `${pod.metadata?.name ?? ''}-${vol.name}`;
  return undefined;
}

/** The reason a volume class is never backed up, or undefined when it can be. */
export function neverReason(vol: V1Volume): string | undefined {
  for (const k of sourceKeys(vol)) if (NEVER[k]) return NEVER[k];
  if (vol.hostPath) return hostPathReason(vol.hostPath.path);
  return undefined;
}

function hostPathReason(hostPath: string | undefined): string {
  return (
    `hostPath volumes are not backed up: the data (${hostPath ?? '?'} on the node) is outside the kubelet's ` +
    'pods directory, the only host directory the agent reads; use an emptyDir or a PVC for data to back up'
  );
}

/** `vendor/driver` → `vendor~driver`, as the kubelet names flexVolume plugin directories. */
function flexPluginDir(driver: string): string {
  return driver.replaceAll('/', '~');
}

/**
 * Where a volume source (a pod volume's inline source, or a PV's spec) is mounted: the plugin
 * directory and whether the CSI `mount` rule applies. `dirName` is the volume name (inline) or
 * the PV name.
 */
function sourceLocation(
  source: object,
  dirName: string,
  volumesDir: string,
  what: string,
  migratedTo?: string,
): { result: PathResult; mounted: boolean; csiDir?: string } {
  const keys = sourceKeys(source);
  const isCsi = keys.includes('csi') || migratedTo !== undefined || keys.some((k) => MIGRATED_TO_CSI.has(k));
  if (isCsi) {
    const csiDir = path.join(volumesDir, CSI, dirName);
    return { result: { ok: true, path: path.join(csiDir, 'mount') }, mounted: true, csiDir };
  }
  const flex = (source as { flexVolume?: { driver?: string } }).flexVolume;
  if (flex?.driver) {
    return { result: { ok: true, path: path.join(volumesDir, flexPluginDir(flex.driver), dirName) }, mounted: true };
  }
  for (const k of keys) {
    const plugin = IN_TREE[k];
    if (plugin) return { result: { ok: true, path: path.join(volumesDir, plugin, dirName) }, mounted: true };
  }
  if (keys.includes('hostPath')) {
    const hp = (source as { hostPath?: { path?: string } }).hostPath;
    return { result: { ok: false, reason: hostPathReason(hp?.path) }, mounted: false };
  }
  return {
    result: {
      ok: false,
      reason: `${what} has a volume source tender does not know (${keys.join(', ') || 'none'}), so its directory on the node is unknown`,
    },
    mounted: false,
  };
}

/**
 * The expected host directory of one pod volume. `claims` holds the resolved PVC (and its PV) of
 * each claim name the pod uses (see claimName); a missing entry reads as "not looked up yet".
 */
export function locateVolume(
  pod: V1Pod,
  vol: V1Volume,
  podsDir: string,
  claims: ReadonlyMap<string, ResolvedClaim>,
): VolumeLocation {
  const ns = pod.metadata?.namespace ?? '';
  const uid = pod.metadata?.uid ?? '';
  const volumesDir = path.join(podsDir, uid, 'volumes');
  const cls = volumeClass(vol);
  const base = { volume: vol.name, class: cls };
  if (!uid) return { ...base, result: { ok: false, reason: 'the pod has no UID yet' }, mounted: false };

  if (vol.emptyDir) {
    return { ...base, result: { ok: true, path: path.join(volumesDir, EMPTY_DIR, vol.name) }, mounted: false };
  }
  const never = neverReason(vol);
  if (never) return { ...base, result: { ok: false, reason: never }, mounted: false };

  const claim = claimName(pod, vol);
  if (claim === undefined) {
    return { ...base, ...sourceLocation(vol, vol.name, volumesDir, `volume ${vol.name}`) };
  }

  const withClaim = { ...base, claim };
  const fail = (reason: string): VolumeLocation => ({ ...withClaim, result: { ok: false, reason }, mounted: false });
  const resolved = claims.get(claim);
  const claimRef = `PersistentVolumeClaim ${ns}/${claim}`;
  if (!resolved) return fail(`${claimRef} has not been looked up yet`);
  if (resolved.error) return fail(`could not read ${claimRef}: ${resolved.error}`);
  const pvc = resolved.pvc;
  if (!pvc) {
    return fail(
      vol.ephemeral
        ? `${claimRef} (of the generic ephemeral volume ${vol.name}) does not exist yet`
        : `${claimRef} does not exist`,
    );
  }
  const pvName = pvc.spec?.volumeName;
  if (!pvName || pvc.status?.phase === 'Pending') {
    return fail(`${claimRef} is not bound to a PersistentVolume yet (phase ${pvc.status?.phase ?? 'unknown'})`);
  }
  if (pvc.status?.phase === 'Lost') {
    return fail(`${claimRef} has lost its PersistentVolume ${pvName} (phase Lost)`);
  }
  const pv = resolved.pv;
  if (!pv) return { ...withClaim, pv: pvName, ...failLoc(`PersistentVolume ${pvName} (bound to ${claimRef}) does not exist`) };
  if (pv.spec?.volumeMode === 'Block' || pvc.spec?.volumeMode === 'Block') {
    return {
      ...withClaim,
      pv: pvName,
      ...failLoc(`PersistentVolume ${pvName} is a raw block volume (volumeMode: Block); tender backs up file systems only`),
    };
  }
  const migratedTo = pv.metadata?.annotations?.['pv.kubernetes.io/migrated-to'];
  return {
    ...withClaim,
    pv: pvName,
    ...sourceLocation(pv.spec ?? {}, pvName, volumesDir, `PersistentVolume ${pvName}`, migratedTo || undefined),
  };
}

function failLoc(reason: string): { result: PathResult; mounted: boolean } {
  return { result: { ok: false, reason }, mounted: false };
}

/**
 * The mount points this process sees (from /proc/self/mountinfo), or undefined where that file
 * cannot be read (not Linux). Read once per pass over the pods, not once per volume.
 */
export async function readMountPoints(file = '/proc/self/mountinfo'): Promise<Set<string> | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  const points = new Set<string>();
  for (const line of text.split('\n')) {
    const field = line.split(' ')[4];
    // Spaces, tabs, newlines and backslashes are octal escapes (\040 ...).
    if (field) points.add(field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return points;
}

export interface CheckOptions {
  /** The pods directory as given (--pods-dir), for the reasons. */
  podsDir: string;
  /**
   * Whether a volume that must be mounted (CSI, NFS, ...) is checked to be a mount point. Off in
   * tests, whose fake pods directory has no mounts. Default true.
   */
  checkMounts?: boolean;
  /** From readMountPoints(); undefined falls back to comparing device numbers with the parent. */
  mountPoints?: Set<string>;
}

function describeError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'EACCES':
    case 'EPERM':
      return 'permission denied (the agent runs as root with CAP_DAC_READ_SEARCH to read every pod volume)';
    case 'ENOTDIR':
      return 'a part of the path is not a directory';
    case 'ELOOP':
      return 'too many symbolic links';
    default:
      return e?.message ?? String(err);
  }
}

async function isMountPoint(dir: string, mountPoints: Set<string> | undefined): Promise<boolean> {
  if (mountPoints) return mountPoints.has(path.resolve(dir));
  const [self, parent] = await Promise.all([stat(dir), stat(path.dirname(dir))]);
  return self.dev !== parent.dev;
}

/**
 * Whether a located volume can be backed up now: the directory exists, is a directory, can be read,
 * and (for mounted plugins, when checkMounts) is a mount point. A failed result's reason says
 * what to do.
 */
export async function checkVolumePath(loc: VolumeLocation, opts: CheckOptions): Promise<PathResult> {
  if (!loc.result.ok) return loc.result;
  const dir = loc.result.path;
  const podDir = path.dirname(path.dirname(path.dirname(loc.csiDir ?? dir)));
  let st;
  try {
    st = await stat(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      return { ok: false, reason: `cannot read ${dir}: ${describeError(err)}` };
    }
    const podDirExists = await stat(podDir).then(
      () => true,
      () => false,
    );
    if (!podDirExists) {
      return {
        ok: false,
        reason:
          `${podDir} does not exist: the pod is not (or no longer) running on this node, or --pods-dir ` +
          `(${opts.podsDir}) is not the kubelet's pods directory (/var/lib/kubelet/pods on the host)`,
      };
    }
    if (loc.csiDir) {
      const csiDirExists = await stat(loc.csiDir).then(
        () => true,
        () => false,
      );
      return {
        ok: false,
        reason: csiDirExists
          ? `${dir} does not exist: the CSI driver has not mounted the volume (yet)`
          : `${loc.csiDir} does not exist: the kubelet has not set up the volume (yet); the pod may still be starting`,
      };
    }
    return { ok: false, reason: `${dir} does not exist: the kubelet has not set up the volume (yet); the pod may still be starting` };
  }
  if (!st.isDirectory()) return { ok: false, reason: `${dir} is not a directory` };
  try {
    await access(dir, fsConstants.R_OK | fsConstants.X_OK);
  } catch (err) {
    return { ok: false, reason: `cannot read ${dir}: ${describeError(err)}` };
  }
  if (loc.mounted && opts.checkMounts !== false) {
    let mounted: boolean;
    try {
      mounted = await isMountPoint(dir, opts.mountPoints);
    } catch (err) {
      return { ok: false, reason: `cannot read ${dir}: ${describeError(err)}` };
    }
    if (!mounted) {
      return {
        ok: false,
        reason:
          `${dir} is not a mount point, so the volume is not mounted there: the pod may not be running yet, ` +
          `or the agent's mount of the pods directory lacks mountPropagation: HostToContainer`,
      };
    }
  }
  return { ok: true, path: dir };
}
