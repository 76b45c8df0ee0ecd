import type { Command } from 'commander';
import { TenderError } from '../errors/errors.js';
import { detectBox, sizeToBox } from '../polite/cgroup.js';
import { Repository } from '../repo/repository.js';
import { type OpenStorageOptions, openStorage } from '../storage/open.js';
import type { Storage } from '../storage/storage.js';
import { cancelOnInterrupt } from '../util/interrupt.js';
import { type OperationContext, createOperationContext } from '../util/operation.js';
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

export async function openRepoStorage(opts: GlobalOptions, stack: OpenStorageOptions = {}): Promise<Storage> {
  const url = opts.repo ?? process.env.TENDER_REPOSITORY;
  if (!url) {
    throw new TenderError('TENDER_USAGE', 'no repository given', { hint: 'pass --repo or set TENDER_REPOSITORY' });
  }
  return openStorage(url, {
    ...stack,
    ...(opts.s3Endpoint ? { s3Endpoint: opts.s3Endpoint } : {}),
    ...(opts.caBundle ? { caBundle: opts.caBundle } : {}),
  });
}

/** How a command uses the repository it opens. */
export interface RepositoryUse {
  /** The storage stack's options (rate limits). */
  storage?: OpenStorageOptions;
  /** The command runs blobs through the worker threads (backup, restore, check): start them while the key is derived. */
  startWorkersEarly?: boolean;
}

/**
 * Opens the repository (every operation refreshes the index it needs itself). Without --workers
 * the worker count follows the CPU quota of the process's cgroup, not the host's core count.
 */
export async function openRepository(opts: GlobalOptions, use: RepositoryUse = {}): Promise<Repository> {
  const storage = await openRepoStorage(opts, use.storage);
  try {
    return await Repository.open(storage, () => readPassword(repositoryPassword(opts.passwordFile), 'open'), {
      workers: opts.workers ?? sizeToBox(detectBox()).workers,
      ...(use.startWorkersEarly ? { startWorkersEarly: true } : {}),
    });
  } catch (err) {
    await storage.close();
    throw err;
  }
}

/**
 * Runs one command's operation with an open repository and always closes it. Its context is
 * cancelled by Ctrl-C and SIGTERM (bin/tender.js), so the operation unwinds cleanly.
 */
export async function withRepository<T>(opts: GlobalOptions, fn: (repo: Repository, ctx: OperationContext) => Promise<T>, use: RepositoryUse = {}): Promise<T> {
  const repo = await openRepository(opts, use);
  const controller = new AbortController();
  const unregister = cancelOnInterrupt(controller);
  try {
    return await fn(repo, createOperationContext({ signal: controller.signal }));
  } finally {
    unregister();
    await repo.close();
  }
}

export function print(line: string): void {
  process.stdout.write(line + '\n');
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
}
