import type { Command } from 'commander';
import { TenderError } from '../errors/errors.js';
import { Repository } from '../repo/repository.js';
import { openStorage } from '../storage/open.js';
import type { Storage } from '../storage/storage.js';
import { readPassword, repositoryPassword } from './password.js';

/** Options every command shares (declared on the root program). */
export interface GlobalOptions {
  repo?: string;
  passwordFile?: string;
  json?: boolean;
  quiet?: boolean;
  workers?: number;
  s3Endpoint?: string;
  caBundle?: string;
}

export function globalOptions(command: Command): GlobalOptions {
  return command.optsWithGlobals<GlobalOptions>();
}

export async function openRepoStorage(opts: GlobalOptions): Promise<Storage> {
  const url = opts.repo ?? process.env.TENDER_REPOSITORY;
  if (!url) {
    throw new TenderError('TENDER_USAGE', 'no repository given', { hint: 'pass --repo or set TENDER_REPOSITORY' });
  }
  return openStorage(url, {
    ...(opts.s3Endpoint ? { s3Endpoint: opts.s3Endpoint } : {}),
    ...(opts.caBundle ? { caBundle: opts.caBundle } : {}),
  });
}

/** Opens the repository; with `loadIndex` also reads every index file (needed to read or write blobs). */
export async function openRepository(opts: GlobalOptions, loadIndex: boolean): Promise<Repository> {
  const storage = await openRepoStorage(opts);
  try {
    const repo = await Repository.open(storage, await readPassword(repositoryPassword(opts.passwordFile), 'open'));
    if (loadIndex) await repo.loadIndex();
    return repo;
  } catch (err) {
    await storage.close();
    throw err;
  }
}

/** Runs `fn` with an open repository and always closes it. */
export async function withRepository<T>(opts: GlobalOptions, loadIndex: boolean, fn: (repo: Repository) => Promise<T>): Promise<T> {
  const repo = await openRepository(opts, loadIndex);
  try {
    return await fn(repo);
  } finally {
    await repo.close();
  }
}

export function print(line: string): void {
  process.stdout.write(line + '\n');
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
}
