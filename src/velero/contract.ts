/**
 * Velero's data-mover contract (velero.io/v2alpha1 DataUpload and DataDownload, v1
 * DeleteBackupRequest) as far as tender reads and writes it, and the snapshotID tender stores in
 * a DataUpload for the DataDownload that restores it. Field names are Velero's JSON names.
 */
import { TenderError } from '../errors/errors.js';

export const VELERO_GROUP = 'velero.io';
export const SNAPSHOT_GROUP = 'snapshot.storage.k8s.io';

/** `spec.datamover` of the objects that are tender's ("" and "velero" are Velero's own). */
export const TENDER_DATA_MOVER = 'tender';

/** Labels Velero puts on DataUploads and DeleteBackupRequests (label-safe backup name, UID). */
export const BACKUP_NAME_LABEL = 'velero.io/backup-name';
export const BACKUP_UID_LABEL = 'velero.io/backup-uid';
/** The label a restored PVC selects its PV by (Velero's CSI restore action sets the selector). */
export const DYNAMIC_PV_RESTORE_LABEL = 'velero.io/dynamic-pv-restore';
/** On the intermediate objects tender creates: the DataUpload or DataDownload they serve. */
export const DATA_UPLOAD_LABEL = 'tender.io/data-upload';
export const DATA_DOWNLOAD_LABEL = 'tender.io/data-download';

export type Phase = 'New' | 'Accepted' | 'Prepared' | 'InProgress' | 'Canceling' | 'Canceled' | 'Completed' | 'Failed';
export const terminalPhases: ReadonlySet<string> = new Set(['Canceled', 'Completed', 'Failed']);

export interface ObjectMeta {
  name: string;
  namespace: string;
  uid: string;
  resourceVersion: string;
  labels?: Record<string, string>;
  deletionTimestamp?: string;
}

export interface Progress {
  totalBytes?: number;
  bytesDone?: number;
}

/** The status fields both kinds share. */
export interface MoverStatus {
  phase?: Phase | '';
  message?: string;
  startTimestamp?: string;
  completionTimestamp?: string;
  progress?: Progress;
  node?: string;
  acceptedByNode?: string;
  acceptedTimestamp?: string;
}

export interface DataUpload {
  apiVersion: string;
  kind: 'DataUpload';
  metadata: ObjectMeta;
  spec: {
    snapshotType: string;
    csiSnapshot?: { volumeSnapshot: string; storageClass: string; snapshotClass?: string; driver?: string };
    sourcePVC: string;
    datamover?: string;
    backupStorageLocation: string;
    sourceNamespace: string;
    dataMoverConfig?: Record<string, string>;
    cancel?: boolean;
    operationTimeout?: string;
  };
  status?: MoverStatus & { path?: string; snapshotID?: string; dataMoverResult?: Record<string, string>; nodeOS?: string };
}

export interface DataDownload {
  apiVersion: string;
  kind: 'DataDownload';
  metadata: ObjectMeta;
  spec: {
    targetVolume: { pvc: string; pv?: string; namespace: string };
    backupStorageLocation: string;
    datamover?: string;
    snapshotID: string;
    sourceNamespace: string;
    dataMoverConfig?: Record<string, string>;
    cancel?: boolean;
    operationTimeout?: string;
  };
  status?: MoverStatus;
}

export type MoverObject = DataUpload | DataDownload;

export interface DeleteBackupRequest {
  metadata: ObjectMeta;
  spec: { backupName: string };
  status?: { phase?: string };
}

/** The custom resources tender uses: group, version, plural. */
export const resources = {
  dataUpload: { group: VELERO_GROUP, version: 'v2alpha1', plural: 'datauploads' },
  dataDownload: { group: VELERO_GROUP, version: 'v2alpha1', plural: 'datadownloads' },
  deleteBackupRequest: { group: VELERO_GROUP, version: 'v1', plural: 'deletebackuprequests' },
  backup: { group: VELERO_GROUP, version: 'v1', plural: 'backups' },
  volumeSnapshot: { group: SNAPSHOT_GROUP, version: 'v1', plural: 'volumesnapshots' },
  volumeSnapshotContent: { group: SNAPSHOT_GROUP, version: 'v1', plural: 'volumesnapshotcontents' },
} as const;

export function phaseOf(obj: MoverObject): Phase {
  return obj.status?.phase || 'New';
}

export function isTenders(obj: MoverObject): boolean {
  return obj.spec?.datamover === TENDER_DATA_MOVER;
}

export function describe(obj: MoverObject): string {
  return `${obj.kind} ${obj.metadata.namespace}/${obj.metadata.name}`;
}

/**
 * What a DataDownload needs to find the data again, in the DataUpload's `status.snapshotID`
 * (Velero copies that field, not dataMoverResult, into the DataDownload):
 * `tender-v1:<snapshot id, 64 hex>:<root>`, where root is the directory in the snapshot that holds
 * the volume's files (the source PVC's name).
 */
export interface SnapshotRef {
  snapshotId: string;
  root: string;
}

const SNAPSHOT_REF = /^tender-v1:([0-9a-f]{64}):([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/;

export function encodeSnapshotRef(ref: SnapshotRef): string {
  const text = `tender-v1:${ref.snapshotId}:${ref.root}`;
  if (!SNAPSHOT_REF.test(text)) throw new Error(`cannot encode snapshot reference ${JSON.stringify(ref)}`);
  return text;
}

export function decodeSnapshotRef(text: string, where: string): SnapshotRef {
  const m = SNAPSHOT_REF.exec(text ?? '');
  if (!m) {
    throw new TenderError('TENDER_USAGE', `${where}: snapshotID ${JSON.stringify(text)} was not written by tender's data mover (expected tender-v1:<64 hex digits>:<volume>)`, {
      hint: 'restore this volume with the data mover that backed it up (the Backup\'s spec.dataMover)',
    });
  }
  return { snapshotId: m[1]!, root: m[2]! };
}
