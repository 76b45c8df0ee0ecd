/**
 * The repository backends every repository-level test runs against, in ONE place:
 *
 *   describe.each(backends)('roundtrip ($name)', ({ name, makeRepoUrl }) => { ... });
 *
 * local: a directory under the test's temporary directory (it must not exist yet).
 * s3:    a fresh `s3://tender-test/<name>-<random>` prefix on the MinIO that test/setup/minio.ts
 *        started; s3TestUrl also exports AWS_* into process.env, so CLI child processes that
 *        inherit process.env (runTender does) reach the same MinIO.
 */
import path from 'node:path';
import { s3TestUrl } from './s3.js';

export type BackendName = 'local' | 's3';

export interface Backend {
  name: BackendName;
  /** A repository URL that holds nothing yet. `tmpDir` is the calling test's scratch directory. */
  makeRepoUrl(tmpDir: string): string;
}

let counter = 0;

export const backends: Backend[] = [
  {
    name: 'local',
    makeRepoUrl: (tmpDir) => path.join(tmpDir, `repo-${++counter}`),
  },
  {
    name: 's3',
    makeRepoUrl: () => s3TestUrl(`t${++counter}`),
  },
];

/** The local directory of a `local` repository URL (for tests that look at or damage files). */
export function localRepoDir(url: string): string {
  if (url.startsWith('s3:')) throw new Error(`${url} is not a local repository`);
  return url.startsWith('local:') ? url.slice('local:'.length) : url;
}
