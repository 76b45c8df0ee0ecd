import { EventEmitter } from 'node:events';
import os from 'node:os';
import { type Logger, pino } from 'pino';
import { TenderError } from '../errors/errors.js';

/**
 * What every operation (backup, restore, prune, check, forget, repair) is handed by the one who
 * runs it — the CLI for one command, the agent for many at once — instead of reaching for
 * process-wide state: a cancel signal, an event stream for progress, a logger, who is writing,
 * and the clock.
 */
export interface OperationContext {
  /** Cancel: the operation stops reading, uploading and sealing, and throws TENDER_CANCELLED. */
  readonly signal: AbortSignal;
  /** 'progress', 'warning', 'resume' (see OperationEventMap); the CLI's bars and the agent's metrics subscribe. */
  readonly events: OperationEvents;
  readonly logger: Logger;
  readonly identity: Identity;
  /** Milliseconds since the epoch. */
  readonly now: () => number;
}

/**
 * Who writes: recorded in snapshots, key files and session markers. In a pod the hostname is the
 * pod's name and the UID may have no passwd entry (os.userInfo() throws there), so it is decided
 * once, at the top, and passed down.
 */
export interface Identity {
  hostname: string;
  username: string;
}

export interface OperationEventMap {
  progress: [unknown];
  /** A file or directory left out of a backup, or skipped by a restore. */
  warning: [{ path: string; message: string }];
  /** Packs an interrupted run had stored were indexed (and damaged ones skipped). */
  resume: [{ packs: number; damaged: string[] }];
}

export type OperationEvents = EventEmitter<OperationEventMap>;

/** This process's identity: the hostname, and the user name if the system knows one. */
export function processIdentity(): Identity {
  let username = process.env.USER ?? process.env.LOGNAME;
  if (!username) {
    try {
      username = os.userInfo().username;
    } catch {
      // An arbitrary UID without a passwd entry (OpenShift, distroless images).
      username = typeof process.getuid === 'function' ? `uid:${process.getuid()}` : 'unknown';
    }
  }
  return { hostname: os.hostname(), username };
}

const silentLogger = pino({ level: 'silent' });

export function createOperationContext(overrides: Partial<OperationContext> = {}): OperationContext {
  return {
    signal: overrides.signal ?? new AbortController().signal,
    events: overrides.events ?? new EventEmitter<OperationEventMap>(),
    logger: overrides.logger ?? silentLogger,
    identity: overrides.identity ?? processIdentity(),
    now: overrides.now ?? Date.now,
  };
}

/** The error an operation ends with once its signal is aborted. */
export function cancelledError(signal: AbortSignal): TenderError {
  const reason = signal.reason instanceof Error && signal.reason.name !== 'AbortError' ? `: ${signal.reason.message}` : '';
  return new TenderError('TENDER_CANCELLED', `the operation was cancelled${reason}`, {
    hint: 'what was stored so far is kept and indexed; run it again to finish',
  });
}

export function throwIfCancelled(signal: AbortSignal): void {
  if (signal.aborted) throw cancelledError(signal);
}
