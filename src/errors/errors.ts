import { constants as osConstants } from 'node:os';

/**
 * One error type for everything tender reports. Callers (CLI, retry logic) match on `code`,
 * never on `instanceof` subclasses or message text. `hint` says what the user should do.
 */
export type ErrorCode =
  | 'TENDER_USAGE'
  | 'TENDER_REPO_NOT_FOUND'
  | 'TENDER_REPO_EXISTS'
  | 'TENDER_REPO_VERSION'
  | 'TENDER_WRONG_PASSWORD'
  | 'TENDER_NO_PASSWORD'
  | 'TENDER_CORRUPT'
  | 'TENDER_NOT_FOUND'
  | 'TENDER_SNAPSHOT_NOT_FOUND'
  | 'TENDER_TARGET_NOT_EMPTY'
  | 'TENDER_UNSAFE_PATH'
  | 'TENDER_DISK_FULL'
  | 'TENDER_STORAGE'
  | 'TENDER_STORAGE_AUTH'
  | 'TENDER_STORAGE_CONFIG'
  | 'TENDER_INTERRUPTED'
  /** The operation's AbortSignal fired (Ctrl-C, SIGTERM, an agent's DELETE /v1/runs/{id}). */
  | 'TENDER_CANCELLED'
  | 'TENDER_IO'
  /** A quiesce step (hook, syncfs, fsfreeze) failed under the on-error policy "fail". */
  | 'TENDER_QUIESCE'
  /** A bug or an unexpected failure inside tender (worker thread, invariant). */
  | 'TENDER_INTERNAL';

export class TenderError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TenderError';
    this.code = code;
    this.hint = options.hint;
  }
}

export function isTenderError(err: unknown, code?: ErrorCode): err is TenderError {
  return err instanceof TenderError && (code === undefined || err.code === code);
}

/**
 * Node's system error codes (ENOENT, ENOSPC, ...), or undefined. The addon's errors carry only
 * `errno` (a number): its name is looked up.
 */
export function systemErrorCode(err: unknown): string | undefined {
  const { code, errno } = (err ?? {}) as { code?: unknown; errno?: unknown };
  if (typeof code === 'string') return code;
  return typeof errno === 'number' && errno > 0 ? errnoNames.get(errno) : undefined;
}

const errnoNames = new Map(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

/** The documented process exit codes (docs/scripting.md). */
export const ExitCode = {
  ok: 0,
  failure: 1,
  usage: 2,
  /** The backup finished but some files could not be read; the snapshot lacks them. */
  incomplete: 3,
  /** `preflight`: something a restore needs is missing on the target cluster. */
  restoreNotReady: 4,
  repoNotFound: 10,
  wrongPassword: 12,
  interrupted: 130,
} as const;

export function exitCodeFor(err: unknown): number {
  if (!(err instanceof TenderError)) return ExitCode.failure;
  switch (err.code) {
    case 'TENDER_USAGE':
      return ExitCode.usage;
    case 'TENDER_REPO_NOT_FOUND':
      return ExitCode.repoNotFound;
    case 'TENDER_WRONG_PASSWORD':
      return ExitCode.wrongPassword;
    case 'TENDER_INTERRUPTED':
    case 'TENDER_CANCELLED':
      return ExitCode.interrupted;
    default:
      return ExitCode.failure;
  }
}

/** O_DIRECT refused by the filesystem (tmpfs, some overlay and network filesystems): EINVAL at the open or at a write. */
export function refusesDirectIo(err: unknown): boolean {
  return systemErrorCode(err) === 'EINVAL';
}
