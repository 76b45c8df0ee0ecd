import path from 'node:path';
import { TenderError } from '../errors/errors.js';
import { FsStorage } from './fs.js';
import type { StorageOptions } from './options.js';
import { type StackOptions, stackStorage } from './stack.js';
import type { Storage } from './storage.js';

export type { StorageOptions } from './options.js';

/** What openStorage takes: the backend's settings, and the wrappers to put around it (stack.ts). */
export type OpenStorageOptions = StorageOptions & StackOptions;

/**
 * Open the storage a repository URL names: `s3://BUCKET/PREFIX`, `local:/path` or a plain path,
 * wrapped as stack.ts does (retry by default; metrics and limits when `options` has them).
 */
export async function openStorage(url: string, options: OpenStorageOptions = {}): Promise<Storage> {
  return stackStorage(await openBackend(url, options), options);
}

/** The bare backend a repository URL names, without wrappers. */
export async function openBackend(url: string, options: StorageOptions = {}): Promise<Storage> {
  if (url.startsWith('s3:')) {
    const { openS3Storage } = await import('./s3.js');
    return openS3Storage(url, options);
  }
  const dir = localRepositoryPath(url);
  if (dir === undefined) {
    throw new TenderError('TENDER_USAGE', `unsupported repository location ${JSON.stringify(url)}`, {
      hint: 'use a directory path, local:/path or s3://bucket/prefix',
    });
  }
  return new FsStorage(dir);
}

/** The directory of a local repository URL (`local:/path` or a plain path); undefined for any other. */
export function localRepositoryPath(url: string): string | undefined {
  if (url.startsWith('s3:')) return undefined;
  const dir = url.startsWith('local:') ? url.slice('local:'.length) : url;
  return dir === '' || /^[a-z][a-z0-9+.-]*:\/\//i.test(dir) ? undefined : path.resolve(dir);
}
