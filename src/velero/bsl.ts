/**
 * A Velero backup by name: its Backup object (velero.io/v1, in Velero's namespace) and its tarball
 * in the backup storage location, `<prefix>/backups/<name>/<name>.tar.gz` of the BSL's bucket
 * (pkg/persistence/object_store_layout.go). S3-compatible locations only (provider `aws`, which is
 * also what MinIO uses); credentials come from the usual AWS_* environment, as for a repository.
 */
import { CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { TenderError } from '../errors/errors.js';
import { type StorageOptions, openStorage } from '../storage/open.js';
import { describeApiError } from './cluster-facts.js';

export interface VeleroBackupRef {
  name: string;
  uid: string;
  storageLocation: string;
  /** `s3://bucket/prefix` of the location. */
  url: string;
  /** The tarball's key under url. */
  key: string;
  region?: string;
  /** The location's s3Url (a MinIO or other S3-compatible endpoint). */
  endpoint?: string;
}

type Obj = { metadata?: { name?: string; uid?: string }; spec?: Record<string, unknown>; status?: Record<string, unknown> };

/** Reads the Backup and its BackupStorageLocation; a missing one is a TenderError saying which. */
export async function locateVeleroBackup(kc: KubeConfig, name: string, namespace: string): Promise<VeleroBackupRef> {
  const api = kc.makeApiClient(CustomObjectsApi);
  const get = async (plural: string, objName: string, what: string): Promise<Obj> => {
    try {
      return (await api.getNamespacedCustomObject({ group: 'velero.io', version: 'v1', namespace, plural, name: objName })) as Obj;
    } catch (err) {
      const code = (err as { code?: number }).code;
      throw new TenderError('TENDER_USAGE', `cannot read ${what} ${namespace}/${objName}: ${describeApiError(err)}`, {
        hint:
          code === 404
            ? `list them with \`velero backup get\` / \`kubectl -n ${namespace} get backups.velero.io,backupstoragelocations.velero.io\`; Velero's namespace is --namespace`
            : 'check --kubeconfig and that the user may read velero.io Backups and BackupStorageLocations',
        cause: err,
      });
    }
  };
  const backup = await get('backups', name, 'Velero backup');
  const location = typeof backup.spec?.storageLocation === 'string' && backup.spec.storageLocation ? backup.spec.storageLocation : 'default';
  const bsl = await get('backupstoragelocations', location, 'backup storage location');
  const provider = String(bsl.spec?.provider ?? '');
  if (provider !== 'aws' && provider !== 'velero.io/aws') {
    throw new TenderError('TENDER_USAGE', `backup storage location ${location} uses provider ${JSON.stringify(provider)}; tender reads S3-compatible locations (provider aws) only`, {
      hint: `download backups/${name}/${name}.tar.gz from it and pass --backup-file`,
    });
  }
  const objectStorage = (bsl.spec?.objectStorage ?? {}) as { bucket?: string; prefix?: string };
  const config = (bsl.spec?.config ?? {}) as { region?: string; s3Url?: string };
  if (!objectStorage.bucket) throw new TenderError('TENDER_USAGE', `backup storage location ${location} names no bucket (spec.objectStorage.bucket)`);
  const prefix = (objectStorage.prefix ?? '').replace(/^\/+|\/+$/g, '');
  return {
    name,
    uid: backup.metadata?.uid ?? '',
    storageLocation: location,
    url: `s3://${objectStorage.bucket}${prefix ? `/${prefix}` : ''}`,
    key: `backups/${name}/${name}.tar.gz`,
    ...(config.region ? { region: config.region } : {}),
    ...(config.s3Url ? { endpoint: config.s3Url } : {}),
  };
}

/** An open storage location (the type of openStorage's result; velero/ reaches storage through open.ts only). */
export type Location = Awaited<ReturnType<typeof openStorage>>;

/** The location's storage: its endpoint and region unless `options` override them. */
export async function openBackupLocation(ref: VeleroBackupRef, options: StorageOptions): Promise<Location> {
  return openStorage(ref.url, { ...(ref.endpoint ? { s3Endpoint: ref.endpoint } : {}), ...(ref.region ? { s3Region: ref.region } : {}), ...options });
}

/** An object as a stream of ranged reads of `chunkBytes`: memory stays at one chunk whatever its size. */
export async function* objectChunks(storage: Location, key: string, chunkBytes = 4 << 20): AsyncGenerator<Buffer> {
  const info = await storage.stat(key);
  if (!info) {
    throw new TenderError('TENDER_NOT_FOUND', `${storage.location}${key} does not exist`, {
      hint: 'the backup may not have completed, or its location holds another Velero installation\'s backups',
    });
  }
  for (let offset = 0; offset < info.size; offset += chunkBytes) {
    yield await storage.get(key, { offset, length: Math.min(chunkBytes, info.size - offset) });
  }
}
