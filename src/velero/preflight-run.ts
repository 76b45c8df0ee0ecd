/**
 * Runs a preflight: reads the backup (a local tarball, or the one in the backup storage location
 * of a Backup read from the API server), the target cluster's facts and, when a repository is
 * given, the tender snapshots tagged with the backup; returns the report (preflight.ts).
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { TenderError } from '../errors/errors.js';
import type { Repository } from '../repo/repository.js';
import { listSnapshots } from '../snapshots/select.js';
import type { StorageOptions } from '../storage/open.js';
import { type VeleroBackupContents, readVeleroBackup } from './backup-archive.js';
import { locateVeleroBackup, objectChunks, openBackupLocation } from './bsl.js';
import { inspectCluster } from './cluster-facts.js';
import { type PreflightReport, type TaggedSnapshot, VELERO_BACKUP_NAME_TAG, VELERO_BACKUP_UID_TAG, evaluatePreflight } from './preflight.js';

export type BackupSource = { file: string; name?: string } | { backup: string };

export interface PreflightOptions {
  source: BackupSource;
  /** The target cluster (and, for `{ backup }`, where the Backup object is read). */
  kubeConfig: KubeConfig;
  veleroNamespace: string;
  gpuResource: string;
  /** Only the nodes with these labels count for GPUs (a label selector). */
  nodeSelector?: string;
  /** Endpoint / CA overrides for the backup storage location. */
  storage?: StorageOptions;
  /** The tender repository to look for the volumes' snapshots in. */
  repo?: Repository;
}

export async function runPreflight(options: PreflightOptions): Promise<PreflightReport> {
  const { backup, contents } = await readBackup(options);
  const groups = new Set([...contents.resources.values()].map((r) => r.group).filter((g) => g !== ''));
  const facts = await inspectCluster(options.kubeConfig, {
    groups,
    veleroNamespace: options.veleroNamespace,
    gpuResource: options.gpuResource,
    ...(options.nodeSelector ? { nodeSelector: options.nodeSelector } : {}),
  });
  const snapshots = options.repo ? await backupSnapshots(options.repo, backup.name, backup.uid) : undefined;
  return evaluatePreflight({
    backup,
    contents,
    facts,
    gpuResource: options.gpuResource,
    veleroNamespace: options.veleroNamespace,
    ...(snapshots ? { snapshots } : {}),
  });
}

async function readBackup(options: PreflightOptions): Promise<{ backup: { name: string; uid?: string; source: string }; contents: VeleroBackupContents }> {
  const { source } = options;
  if ('file' in source) {
    try {
      if (!(await stat(source.file)).isFile()) throw new Error('not a regular file');
    } catch (err) {
      throw new TenderError('TENDER_USAGE', `cannot read the backup file ${source.file}: ${(err as Error).message}`, {
        hint: "pass the backup's <name>.tar.gz as downloaded from its storage location (velero backup download NAME)",
      });
    }
    // Velero names the tarball <backup>.tar.gz; `velero backup download` names it <backup>-data.tar.gz.
    const name = source.name ?? path.basename(source.file).replace(/(-data)?\.tar\.gz$|\.tgz$/, '');
    const contents = await readVeleroBackup(createReadStream(source.file), source.file);
    return { backup: { name, source: source.file }, contents };
  }
  const ref = await locateVeleroBackup(options.kubeConfig, source.backup, options.veleroNamespace);
  const storage = await openBackupLocation(ref, options.storage ?? {});
  try {
    const where = `${storage.location}${ref.key}`;
    const contents = await readVeleroBackup(objectChunks(storage, ref.key), where);
    return { backup: { name: ref.name, ...(ref.uid ? { uid: ref.uid } : {}), source: where }, contents };
  } finally {
    await storage.close();
  }
}

/**
 * The snapshots tagged with the backup's name; with a UID known, those of an older backup of the
 * same name (deleted and taken again) are left out.
 */
async function backupSnapshots(repo: Repository, name: string, uid: string | undefined): Promise<TaggedSnapshot[]> {
  const entries = await listSnapshots(repo, { tags: [`${VELERO_BACKUP_NAME_TAG}=${name}`] });
  return entries.filter((e) => {
    const tagged = e.snapshot.tags.find((t) => t.startsWith(`${VELERO_BACKUP_UID_TAG}=`));
    return uid === undefined || tagged === undefined || tagged === `${VELERO_BACKUP_UID_TAG}=${uid}`;
  });
}
