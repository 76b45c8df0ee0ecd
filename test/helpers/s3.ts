/**
 * The test MinIO that test/setup/minio.ts started, as seen from a test file.
 *
 *   const storage = await openStorage(s3TestUrl('backup'), s3TestOptions());
 *
 * s3TestUrl also puts the settings into process.env (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
 * AWS_REGION, AWS_ENDPOINT_URL), so CLI child processes spawned with process.env reach the same MinIO.
 */
import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';
import type { StorageOptions } from '../../src/storage/open.js';
// Brings in the typed ProvidedContext keys that inject() reads below.
import type {} from '../setup/minio.js';

export interface S3TestEnv {
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

export function s3TestEnv(): S3TestEnv {
  return {
    endpoint: inject('s3Endpoint'),
    bucket: inject('s3Bucket'),
    accessKeyId: inject('s3AccessKeyId'),
    secretAccessKey: inject('s3SecretAccessKey'),
    region: inject('s3Region'),
  };
}

/** Point this process's AWS_* environment at the test MinIO. */
export function applyS3TestEnv(): S3TestEnv {
  const env = s3TestEnv();
  process.env.TENDER_TEST_S3_ENDPOINT = env.endpoint;
  process.env.TENDER_TEST_S3_BUCKET = env.bucket;
  process.env.AWS_ACCESS_KEY_ID = env.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = env.secretAccessKey;
  process.env.AWS_REGION = env.region;
  process.env.AWS_ENDPOINT_URL = env.endpoint;
  // Nothing from the developer's own AWS setup may leak in, and the SDK must never probe EC2 metadata.
  delete process.env.AWS_SESSION_TOKEN;
  delete process.env.AWS_PROFILE;
  delete process.env.AWS_ENDPOINT_URL_S3;
  process.env.AWS_EC2_METADATA_DISABLED = 'true';
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return env;
}

/** A fresh, unused `s3://tender-test/<name>-<random>` repository URL on the test MinIO. */
export function s3TestUrl(name: string): string {
  const env = applyS3TestEnv();
  return `s3://${env.bucket}/${name}-${randomBytes(6).toString('hex')}`;
}

/** StorageOptions for the test MinIO (the endpoint; it speaks plain http, so no CA bundle). */
export function s3TestOptions(): StorageOptions {
  const env = applyS3TestEnv();
  return { s3Endpoint: env.endpoint };
}
