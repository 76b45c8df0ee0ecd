/**
 * The init container that fills an emptyDir from tender when Velero restores its pod
 * (docs/design.md, "emptyDir volumes with Velero"; docs/examples/velero-emptydir-restore.yaml is
 * this module's output for one pod), and `injectRestoreInit`, which adds it to every pod template
 * of a manifest for the emptyDir volumes its `tender.io/backup-volumes` annotation names.
 */

export interface RestoreInitOptions {
  /** The tender image. */
  image: string;
  /** The Secret in the pod's namespace with the keys repository, password and (optional) aws-access-key-id, aws-secret-access-key. */
  secret: string;
  /** Seconds to wait for a snapshot the agent is still writing. */
  waitSeconds: number;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => !!v && typeof v === 'object' && !Array.isArray(v);

export const PASSWORD_VOLUME = 'tender-password';

/** The init container restoring `volume` (mounted at /restore/<volume>). */
export function restoreInitContainer(volume: string, o: RestoreInitOptions): Obj {
  const target = `/restore/${volume}`;
  const fieldEnv = (name: string, fieldPath: string): Obj => ({ name, valueFrom: { fieldRef: { fieldPath } } });
  const secretEnv = (name: string, key: string, optional: boolean): Obj => ({
    name,
    valueFrom: { secretKeyRef: { name: o.secret, key, ...(optional ? { optional: true } : {}) } },
  });
  return {
    name: `tender-restore-${volume}`,
    image: o.image,
    args: [
      'restore', `latest:${volume}`,
      '--velero-backup', '$(VELERO_BACKUP)',
      '--tag', 'k8s.namespace=$(POD_NAMESPACE)',
      '--tag', 'k8s.pod=$(POD_NAME)',
      '--tag', `k8s.volume=${volume}`,
      '--target', target,
      '--overwrite',
      '--wait', String(o.waitSeconds),
    ],
    env: [
      fieldEnv('VELERO_BACKUP', "metadata.labels['velero.io/backup-name']"),
      fieldEnv('POD_NAMESPACE', 'metadata.namespace'),
      fieldEnv('POD_NAME', 'metadata.name'),
      secretEnv('TENDER_REPOSITORY', 'repository', false),
      { name: 'TENDER_PASSWORD_FILE', value: '/etc/tender/password' },
      secretEnv('AWS_ACCESS_KEY_ID', 'aws-access-key-id', true),
      secretEnv('AWS_SECRET_ACCESS_KEY', 'aws-secret-access-key', true),
    ],
    volumeMounts: [
      { name: volume, mountPath: target },
      { name: PASSWORD_VOLUME, mountPath: '/etc/tender', readOnly: true },
    ],
  };
}

/**
 * Adds the restore init containers to every pod template in `manifest` (a Pod, or anything with
 * pod templates: Deployments, StatefulSets, Jobs, CronJobs, Kubeflow jobs' replica specs, ...:
 * each object with `metadata` and a `spec` holding `containers`), first among its init
 * containers, for each emptyDir volume its `tender.io/backup-volumes` annotation names; plus the
 * password volume. Idempotent. Returns the names of the volumes it added restores for.
 */
export function injectRestoreInit(manifest: unknown, o: RestoreInitOptions): string[] {
  const added: string[] = [];
  const visit = (node: unknown): void => {
    if (Array.isArray(node)) return node.forEach(visit);
    if (!isObj(node)) return;
    const spec = node.spec;
    if (isObj(node.metadata) && isObj(spec) && Array.isArray(spec.containers)) {
      added.push(...injectPodSpec(node.metadata, spec, o));
    }
    for (const v of Object.values(node)) visit(v);
  };
  visit(manifest);
  return added;
}

function injectPodSpec(metadata: Obj, spec: Obj, o: RestoreInitOptions): string[] {
  const annotation = isObj(metadata.annotations) ? metadata.annotations['tender.io/backup-volumes'] : undefined;
  if (typeof annotation !== 'string') return [];
  const volumes = Array.isArray(spec.volumes) ? (spec.volumes as unknown[]).filter(isObj) : [];
  const emptyDirs = annotation
    .split(',')
    .map((s) => s.trim())
    .filter((name) => volumes.some((v) => v.name === name && v.emptyDir !== undefined));
  const inits = Array.isArray(spec.initContainers) ? (spec.initContainers as unknown[]) : [];
  const have = new Set(inits.filter(isObj).map((c) => c.name));
  const fresh = emptyDirs.filter((v) => !have.has(`tender-restore-${v}`));
  if (fresh.length === 0) return [];
  spec.initContainers = [...fresh.map((v) => restoreInitContainer(v, o)), ...inits];
  if (!volumes.some((v) => v.name === PASSWORD_VOLUME)) {
    spec.volumes = [...volumes, { name: PASSWORD_VOLUME, secret: { secretName: o.secret, items: [{ key: 'password', path: 'password' }] } }];
  }
  return fresh;
}
