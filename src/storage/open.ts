import path from 'node:path';
import { TenderError } from '../errors/errors.js';
import { FsStorage } from './fs.js';
import type { Storage } from './storage.js';

export interface StorageOptions {
  /** S3 endpoint URL override (else AWS_ENDPOINT_URL / AWS defaults). */
  s3Endpoint?: string;
  /** CA bundle for TLS to the S3 endpoint. */
  caBundle?: string;
}

/**
 * Open the storage a repository URL names: `s3://BUCKET/PREFIX`, `local:/path` or a plain path.
 */
export async function openStorage(url: string, options: StorageOptions = {}): Promise<Storage> {
  if (url.startsWith('s3:')) {
    const { openS3Storage } = await import('./s3.js');
    return openS3Storage(url, options);
  }
  const dir = url.startsWith('local:') ? url.slice('local:'.length) : url;
  if (dir === '' || /^[a-z][a-z0-9+.-]*:\/\//i.test(dir)) {
    throw new TenderError('TENDER_USAGE', `unsupported repository location ${JSON.stringify(url)}`, {
      hint: 'use a directory path, local:/path or s3://bucket/prefix',
    });
  }
  return new FsStorage(path.resolve(dir));
}
