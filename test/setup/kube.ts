/**
 * vitest globalSetup: start a real kube-apiserver + etcd on loopback with
 * scripts/kube-test-cluster.sh (the first run may build both: up to ~15 min on one core) and hand
 * the admin kubeconfig's path to the tests with `provide('kubeconfig', path)`; test/helpers/kube.ts
 * reads it back with `inject`. Nothing is applied to the cluster here. Kube tests never skip: if
 * the API server cannot be built or started, the whole run fails here.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { TestProject } from 'vitest/node';

const run = promisify(execFile);

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const kubeScript = path.join(repoRoot, 'scripts/kube-test-cluster.sh');

declare module 'vitest' {
  export interface ProvidedContext {
    /** Path of the admin kubeconfig of the test API server. */
    kubeconfig: string;
  }
}

/** `scripts/kube-test-cluster.sh start DIR [PORT]`; returns the kubeconfig path. */
export async function startKube(dir: string, port?: number): Promise<string> {
  const args = [kubeScript, 'start', dir, ...(port === undefined ? [] : [String(port)])];
  try {
    const { stdout } = await run('bash', args, { timeout: 20 * 60_000, maxBuffer: 64 * 1024 * 1024 });
    return stdout.trim().split('\n').pop()!;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`could not start the test kube-apiserver in ${dir}: ${e.stderr || e.message}`);
  }
}

export async function stopKube(dir: string): Promise<void> {
  await run('bash', [kubeScript, 'stop', dir], { timeout: 60_000 });
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tender-kube-'));
  let kubeconfig: string;
  try {
    kubeconfig = await startKube(dir);
  } catch (err) {
    await stopKube(dir).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  project.provide('kubeconfig', kubeconfig);
  return async () => {
    await stopKube(dir).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };
}
