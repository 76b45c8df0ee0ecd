/**
 * Velero on the test API server without Velero: its CRDs (a small loader: the names and scope of
 * the real ones, any content accepted, no status subresource, as in Velero's config/crd/v1), other
 * CRDs a test needs, and backup tarballs in Velero's layout, written by GNU tar.
 *
 *   await ensureCrd(kc, { group: 'velero.io', plural: 'backups', kind: 'Backup' });
 *   await ensureVeleroCrds(kc);
 *   await writeVeleroTarball(file, items, { layout: 'both', format: 'pax' });
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ApiextensionsV1Api, type KubeConfig } from '@kubernetes/client-node';

const run = promisify(execFile);

export interface CrdSpec {
  group: string;
  plural: string;
  kind: string;
  scope?: 'Namespaced' | 'Cluster';
  versions?: string[];
}

/**
 * Creates the CRD unless one of that name exists (another test file may have loaded it, possibly
 * the real one), and waits until the API server serves it.
 */
export async function ensureCrd(kc: KubeConfig, spec: CrdSpec): Promise<void> {
  const api = kc.makeApiClient(ApiextensionsV1Api);
  const name = `${spec.plural}.${spec.group}`;
  const versions = spec.versions ?? ['v1'];
  try {
    await api.createCustomResourceDefinition({
      body: {
        metadata: {
          name,
          // Groups under k8s.io must say their API was approved (the real snapshot CRDs point at their review).
          ...(/(^|\.)(k8s|kubernetes)\.io$/.test(spec.group) ? { annotations: { 'api-approved.kubernetes.io': 'https://github.com/kubernetes-csi/external-snapshotter/pull/814' } } : {}),
        },
        spec: {
          group: spec.group,
          scope: spec.scope ?? 'Namespaced',
          names: { plural: spec.plural, singular: spec.kind.toLowerCase(), kind: spec.kind, listKind: `${spec.kind}List` },
          versions: versions.map((v, i) => ({
            name: v,
            served: true,
            storage: i === 0,
            // client-node's serializer knows the field by its TypeScript name only.
            schema: { openAPIV3Schema: { type: 'object', x_kubernetes_preserve_unknown_fields: true } },
          })),
        },
      },
    });
  } catch (err) {
    if ((err as { code?: number }).code !== 409) throw err;
  }
  // Established is set by the API server itself (no controller manager needed); poll it briefly.
  for (let i = 0; i < 200; i++) {
    const crd = await api.readCustomResourceDefinition({ name });
    if (crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True')) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`CRD ${name} did not become Established`);
}

/** The Velero CRDs tender reads: Backups, Restores, BackupStorageLocations. */
export async function ensureVeleroCrds(kc: KubeConfig): Promise<void> {
  await ensureCrd(kc, { group: 'velero.io', plural: 'backups', kind: 'Backup' });
  await ensureCrd(kc, { group: 'velero.io', plural: 'restores', kind: 'Restore' });
  await ensureCrd(kc, { group: 'velero.io', plural: 'backupstoragelocations', kind: 'BackupStorageLocation' });
}

export interface VeleroItem {
  /** `resource.group`, or `resource` for the core group. */
  groupResource: string;
  /** Omitted: cluster-scoped. */
  namespace?: string;
  name: string;
  object: unknown;
  /** The preferred API version (default v1). */
  version?: string;
}

export interface TarballOptions {
  /**
   * unversioned: `resources/<gr>/namespaces/<ns>/<name>.json` only (Velero before 1.4);
   * preferred: `resources/<gr>/<v>-preferredversion/...` only;
   * both: both, plus a copy under a non-preferred `v1beta1/` (EnableAPIGroupVersions), as Velero 1.x writes.
   */
  layout: 'unversioned' | 'preferred' | 'both';
  /** GNU tar's --format, or `go`: Go's archive/tar as Velero writes (test/helpers/velero-tarball-go/main.go). */
  format?: 'gnu' | 'pax' | 'ustar' | 'go';
  /** metadata/version; default "1.1.0". */
  formatVersion?: string;
}

/** The archive paths and bodies of `items` in Velero's layout (metadata/version first). */
export function veleroEntries(items: VeleroItem[], options: TarballOptions): Array<{ path: string; body: string }> {
  const entries = [{ path: 'metadata/version', body: `${options.formatVersion ?? '1.1.0'}\n` }];
  for (const item of items) {
    const scope = item.namespace ? `namespaces/${item.namespace}` : 'cluster';
    const body = JSON.stringify(item.object);
    if (options.layout !== 'preferred') entries.push({ path: `resources/${item.groupResource}/${scope}/${item.name}.json`, body });
    if (options.layout !== 'unversioned') entries.push({ path: `resources/${item.groupResource}/${item.version ?? 'v1'}-preferredversion/${scope}/${item.name}.json`, body });
    if (options.layout === 'both') entries.push({ path: `resources/${item.groupResource}/v1beta1/${scope}/${item.name}.json`, body });
  }
  return entries;
}

const goWriter = path.join(path.dirname(fileURLToPath(import.meta.url)), 'velero-tarball-go', 'main.go');

/** Writes a gzip-compressed tarball of `items` in Velero's layout, with GNU tar or Go's archive/tar. */
export async function writeVeleroTarball(file: string, items: VeleroItem[], options: TarballOptions): Promise<void> {
  const entries = veleroEntries(items, options);
  if (options.format === 'go') {
    await new Promise<void>((resolve, reject) => {
      const child = execFile('go', ['run', goWriter, file], { timeout: 300_000 }, (err) => (err ? reject(err) : resolve()));
      child.stdin!.end(JSON.stringify(entries));
    });
    return;
  }
  const root = await mkdtemp(path.join(os.tmpdir(), 'tender-velero-tar-'));
  try {
    for (const e of entries) {
      await mkdir(path.dirname(path.join(root, e.path)), { recursive: true });
      await writeFile(path.join(root, e.path), e.body);
    }
    await run('tar', [`--format=${options.format ?? 'gnu'}`, '-czf', file, '-C', root, 'metadata', 'resources']);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}
