import { TenderError } from '../errors/errors.js';
import { cancelledError } from '../util/operation.js';
import { FreezeGuard, fsyncFile, syncVolume } from './freeze.js';
import { type HookPhase, type HookSpec, describeHook, formatMs, runHook } from './hooks.js';

/**
 * The quiesce protocol around one volume's backup (docs/design.md, "Quiesce"):
 *
 *   pre-hook → syncfs → [FIFREEZE → while-frozen → FITHAW] → read (each file fsynced first) → post-hook
 *
 * or, with fsfreeze and no while-frozen hook, the read itself inside the freeze:
 *
 *   pre-hook → syncfs → FIFREEZE → read → FITHAW → post-hook
 *
 * The post-hook runs whatever happened before it (errors, cancels); the thaw is guaranteed by
 * the freeze guard (freeze.ts) even when this process is killed.
 */
export interface QuiesceOptions {
  preHook?: HookSpec;
  postHook?: HookSpec;
  /** Runs while the filesystem is frozen (a storage snapshot); needs fsfreeze. */
  whileFrozen?: HookSpec;
  /** Limit of the pre- and post-hook each. */
  hookTimeoutMs: number;
  /** A step that fails: 'fail' ends the backup, 'continue' records the volume as not quiesced. */
  onError: 'fail' | 'continue';
  fsfreeze: boolean;
  /** The longest a filesystem stays frozen: the guard thaws at this deadline. */
  freezeTimeoutMs: number;
  /** Where freeze records live (the startup check reads them). */
  recordDir: string;
  /** Paths whose filesystems tender writes during the backup (the repository): never frozen. */
  keepWritable: string[];
}

export const DEFAULT_HOOK_TIMEOUT_MS = 30_000;
export const DEFAULT_FREEZE_TIMEOUT_MS = 10_000;

/** What the protocol achieved for one volume: the snapshot's `quiesce` entry. */
export interface QuiesceOutcome {
  path: string;
  /** Every configured step succeeded (and the freeze, if any, held until the read or snapshot ended). */
  quiesced: boolean;
  /** Why not, one line per failed step. */
  reasons?: string[];
  frozenMs?: number;
  /** The post-hook failed: the trainer may not have been told to go on. */
  postHookError?: string;
}

export interface QuiesceHooks {
  aroundRoot<T>(root: string, run: () => Promise<T>): Promise<T>;
  aroundFile<T>(path: string, size: number, read: () => Promise<T>): Promise<T>;
  /** The snapshot's `quiesce` field (absent when no volume was quiesced). */
  annotate(): { quiesce?: QuiesceOutcome[] };
}

export interface QuiesceContext {
  signal: AbortSignal;
  /** Called once per volume, after its post-hook. */
  report?(outcome: QuiesceOutcome): void;
}

/**
 * Backup hooks (BackupHooks in src/backup/archiver.ts) that quiesce each volume `optionsFor`
 * gives options for; others are read as they are.
 */
export function quiesceHooks(optionsFor: (root: string) => QuiesceOptions | undefined, ctx: QuiesceContext): QuiesceHooks {
  const outcomes: QuiesceOutcome[] = [];
  /** Files read under this root are fsynced first (not while it is frozen: the freeze synced it). */
  let fsyncUnder: string | undefined;

  return {
    annotate: () => (outcomes.length > 0 ? { quiesce: outcomes.map((o) => ({ ...o })) } : {}),

    async aroundFile(file, _size, read) {
      if (fsyncUnder !== undefined && (file === fsyncUnder || file.startsWith(fsyncUnder.endsWith('/') ? fsyncUnder : `${fsyncUnder}/`))) {
        await fsyncFile(file);
      }
      return read();
    },

    async aroundRoot(root, run) {
      const options = optionsFor(root);
      if (!options) return run();
      const outcome: QuiesceOutcome = { path: root, quiesced: true };
      outcomes.push(outcome);
      /** A failed step: recorded; under 'fail' (or after a cancel) it ends the backup. */
      const problem = (step: string, err: unknown) => {
        const message = `${step}: ${(err as Error).message}`;
        outcome.quiesced = false;
        (outcome.reasons ??= []).push(message);
        if (ctx.signal.aborted) throw cancelledError(ctx.signal);
        if (options.onError === 'fail') {
          throw new TenderError('TENDER_QUIESCE', `cannot quiesce ${root}: ${message}`, {
            hint: 'fix the hook or the filesystem, or set the on-error policy to continue to back up without quiescing',
          });
        }
      };
      const hook = (phase: HookPhase, spec: HookSpec, timeoutMs: number, signal: AbortSignal) =>
        runHook(spec, { phase, volume: root, timeoutMs, signal }).catch((err) => {
          throw new Error(`${describeHook(spec)} ${(err as Error).message}`);
        });
      let guard: FreezeGuard | undefined;
      /** Thaws; a deadline that passed first is a failed step (only recorded once an error is on its way). */
      const thaw = async (recordOnly: boolean) => {
        const frozen = guard!;
        guard = undefined;
        const { frozenMs, deadlinePassed } = await frozen.thaw();
        outcome.frozenMs = frozenMs;
        if (!deadlinePassed) return;
        const late = new Error(`the deadline (${formatMs(options.freezeTimeoutMs)}) passed before tender thawed; the guard thawed the filesystem`);
        if (recordOnly) {
          outcome.quiesced = false;
          (outcome.reasons ??= []).push(`fsfreeze: ${late.message}`);
        } else {
          problem('fsfreeze', late);
        }
      };
      try {
        if (options.preHook) await hook('pre', options.preHook, options.hookTimeoutMs, ctx.signal).catch((err) => problem('pre-hook', err));
        await syncVolume(root).catch((err) => problem('syncfs', err));
        if (options.fsfreeze) {
          guard = await FreezeGuard.freeze(root, {
            deadlineMs: options.freezeTimeoutMs,
            recordDir: options.recordDir,
            keepWritable: options.keepWritable,
          }).catch((err) => {
            problem('fsfreeze', err);
            return undefined;
          });
        }
        if (guard && options.whileFrozen) {
          // Bounded by the freeze: once the guard has thawed, a snapshot taken now is not frozen.
          const deadline = new AbortController();
          void guard.expired.then(() => deadline.abort(new Error('the freeze deadline passed')));
          await hook('while-frozen', options.whileFrozen, options.freezeTimeoutMs, AbortSignal.any([ctx.signal, deadline.signal])).catch((err) =>
            problem('while-frozen', err),
          );
          await thaw(false);
        }
        fsyncUnder = guard ? undefined : root;
        const result = await run();
        fsyncUnder = undefined;
        if (guard) await thaw(false);
        return result;
      } finally {
        fsyncUnder = undefined;
        if (guard) await thaw(true);
        if (options.postHook) {
          // Also after a cancel: the trainer must be told to go on, so not under the cancelled signal.
          await hook('post', options.postHook, options.hookTimeoutMs, new AbortController().signal).catch((err) => {
            outcome.postHookError = (err as Error).message;
          });
        }
        ctx.report?.({ ...outcome });
      }
    },
  };
}

const TIMEOUT_UNIT_MS: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1 };

/** A hook or freeze timeout: `10s`, `1m30s`, `500ms`; `where` names it in the error. */
export function parseTimeout(text: string, where: string): number {
  const parts = [...text.trim().matchAll(/(\d+)(ms|h|m|s)/g)];
  const ms = parts.reduce((sum, [, n, unit]) => sum + Number(n) * TIMEOUT_UNIT_MS[unit!]!, 0);
  if (parts.map((p) => p[0]).join('') !== text.trim() || ms <= 0 || !Number.isSafeInteger(ms)) {
    throw new TenderError('TENDER_USAGE', `${where}: ${JSON.stringify(text)} is not a timeout`, {
      hint: 'a positive number with a unit: 500ms, 10s, 1m30s, 1h',
    });
  }
  return ms;
}

/** The `--hook-on-error` / `tender.io/hook-on-error` policy; `where` names it in the error. */
export function parseOnError(text: string, where: string): QuiesceOptions['onError'] {
  const value = text.trim();
  if (value !== 'fail' && value !== 'continue') {
    throw new TenderError('TENDER_USAGE', `${where}: ${JSON.stringify(text)} is neither "fail" nor "continue"`, {
      hint: 'fail ends the backup when a quiesce step fails; continue backs up and records the volume as not quiesced',
    });
  }
  return value;
}
