/**
 * vitest globalSetup: build (once) and start a throwaway MinIO on a free loopback port, create the
 * bucket `tender-test`, and hand the settings to the tests with `provide` (globalSetup runs in
 * another process than the tests; test/helpers/s3.ts reads them back with `inject`).
 * S3 tests never skip: if MinIO cannot be built or started, the whole run fails here.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import type { TestProject } from 'vitest/node';

const run = promisify(execFile);

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const minioScript = path.join(repoRoot, 'scripts/minio.sh');

declare module 'vitest' {
  export interface ProvidedContext {
    s3Endpoint: string;
    s3Bucket: string;
    s3AccessKeyId: string;
    s3SecretAccessKey: string;
    s3Region: string;
  }
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** `scripts/minio.sh start DIR PORT`; returns the endpoint URL. */
export async function startMinio(
  dir: string,
  port: number,
  credentials: { user: string; password: string },
): Promise<string> {
  const consolePort = await freePort();
  try {
    const { stdout } = await run('bash', [minioScript, 'start', dir, String(port)], {
      env: {
        ...process.env,
        MINIO_ROOT_USER: credentials.user,
        MINIO_ROOT_PASSWORD: credentials.password,
        MINIO_CONSOLE_PORT: String(consolePort),
      },
      timeout: 120_000,
    });
    return stdout.trim().split('\n').pop()!;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`could not start MinIO on 127.0.0.1:${port}: ${e.stderr || e.message}`);
  }
}

export async function stopMinio(dir: string): Promise<void> {
  await run('bash', [minioScript, 'stop', dir], { timeout: 60_000 });
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  try {
    await run('bash', [minioScript, 'build'], { timeout: 20 * 60_000, maxBuffer: 64 * 1024 * 1024 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`S3 tests need MinIO, and \`scripts/minio.sh build\` failed: ${e.stderr || e.message}`);
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tender-minio-'));
  const credentials = {
    user: process.env.MINIO_ROOT_USER ?? 'tender',
    password: process.env.MINIO_ROOT_PASSWORD ?? 'tender-secret-key',
  };
  let endpoint: string;
  try {
    endpoint = await startMinio(dir, await freePort(), credentials);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const teardown = async (): Promise<void> => {
    await stopMinio(dir).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };
  const region = 'us-east-1';
  const bucket = 'tender-test';
  // The SDK warns under Node 20 that its 2027 releases will need Node 22; keep test output clean.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const client = new S3Client({
    region,
    endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: credentials.user, secretAccessKey: credentials.password },
  });
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  } catch (err) {
    await teardown();
    throw new Error(`could not create the test bucket on MinIO at ${endpoint}: ${(err as Error).message}`);
  } finally {
    client.destroy();
  }

  project.provide('s3Endpoint', endpoint);
  project.provide('s3Bucket', bucket);
  project.provide('s3AccessKeyId', credentials.user);
  project.provide('s3SecretAccessKey', credentials.password);
  project.provide('s3Region', region);
  process.env.TENDER_TEST_S3_ENDPOINT = endpoint;
  process.env.TENDER_TEST_S3_BUCKET = bucket;
  process.env.AWS_ACCESS_KEY_ID = credentials.user;
  process.env.AWS_SECRET_ACCESS_KEY = credentials.password;
  process.env.AWS_REGION = region;
  return teardown;
}
