/**
 * Retry transient storage failures (restic `backend/retry`, kopia `blob/retrying`): exponential
 * backoff with jitter, a bounded number of attempts, a sleep that close() or an AbortSignal cuts
 * short.
 *
 * What is retried: a TenderError with code TENDER_STORAGE that the backend did not mark permanent
 * (storage.ts markPermanent). Never TENDER_NOT_FOUND, TENDER_STORAGE_AUTH, TENDER_STORAGE_CONFIG,
 * TENDER_DISK_FULL or anything that is not a TenderError (a bug does not heal by itself).
 *
 * Every method is safe to repeat: put never overwrites (a put whose reply was lost comes back as
 * 'exists'), get/stat/delete change nothing. Two exceptions:
 * - `list` is retried only until it has yielded its first object (the caller has acted on what it
 *   saw; a fresh listing would repeat it);
 * - `put` is not retried once the backend said it released the parts (PutOptions.partsReleased):
 *   the caller may have reused that memory, and a second attempt would store other bytes.
 */
import { TenderError, isTenderError } from '../../errors/errors.js';
import { abortableSleep } from '../../util/token-bucket.js';
import { type ByteRange, type ObjectInfo, type PutOptions, type PutResult, type Storage, isPermanent, markPermanent } from '../storage.js';

export interface RetryOptions {
  /** Attempts per operation, the first included (default 5). */
  maxAttempts?: number;
  /** Backoff before retry n is uniform in [cap/2, cap], cap = min(maxDelayMs, baseDelayMs * 2^(n-1)). */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Cuts a backoff short: the operation then fails with TENDER_CANCELLED. */
  signal?: AbortSignal;
  /** Told before each backoff (for logs and metrics). */
  onRetry?: (event: RetryEvent) => void;
  /** Jitter source in [0, 1) (tests pin it). */
  random?: () => number;
  /** Sleep (tests replace it). */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

export interface RetryEvent {
  op: 'list' | 'stat' | 'get' | 'put' | 'delete';
  key: string;
  /** The attempt that failed (1 = the first). */
  attempt: number;
  delayMs: number;
  error: TenderError;
}

export const defaultRetry = { maxAttempts: 5, baseDelayMs: 200, maxDelayMs: 5000 } as const;

/** Whether the retry wrapper tries `err` again. */
export function isRetryable(err: unknown): boolean {
  return isTenderError(err, 'TENDER_STORAGE') && !isPermanent(err);
}

export class RetryStorage implements Storage {
  readonly location: string;
  readonly concurrentPuts: number;
  private readonly maxAttempts: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly random: () => number;
  private readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  /** Aborted by close() or by the caller's signal: ends every backoff. */
  private readonly stop = new AbortController();

  constructor(
    readonly inner: Storage,
    private readonly options: RetryOptions = {},
  ) {
    this.location = inner.location;
    this.concurrentPuts = inner.concurrentPuts;
    this.maxAttempts = Math.max(1, Math.floor(options.maxAttempts ?? defaultRetry.maxAttempts));
    this.baseDelayMs = options.baseDelayMs ?? defaultRetry.baseDelayMs;
    this.maxDelayMs = options.maxDelayMs ?? defaultRetry.maxDelayMs;
    this.random = options.random ?? Math.random;
    this.sleep = options.sleep ?? abortableSleep;
    const signal = options.signal;
    if (signal) {
      if (signal.aborted) this.stop.abort(signal.reason);
      else signal.addEventListener('abort', () => this.stop.abort(signal.reason), { once: true });
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    for (let attempt = 1; ; attempt++) {
      let yielded = false;
      try {
        for await (const info of this.inner.list(prefix)) {
          yielded = true;
          yield info;
        }
        return;
      } catch (err) {
        if (yielded) throw err;
        await this.backoff(err, 'list', prefix, attempt);
      }
    }
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.run('stat', key, () => this.inner.stat(key));
  }

  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    return this.run('get', key, () => this.inner.get(key, range, into));
  }

  async put(key: string, parts: readonly Uint8Array[], options: PutOptions = {}): Promise<PutResult> {
    let released = false;
    const partsReleased = () => {
      if (released) return;
      released = true;
      options.partsReleased?.();
    };
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.inner.put(key, parts, { ...options, partsReleased });
      } catch (err) {
        // The caller may be writing the next pack into those parts already: no second attempt.
        if (released) throw err;
        await this.backoff(err, 'put', key, attempt);
      }
    }
  }

  delete(key: string): Promise<void> {
    return this.run('delete', key, () => this.inner.delete(key));
  }

  async close(): Promise<void> {
    this.stop.abort(markPermanent(new TenderError('TENDER_STORAGE', `storage ${this.location} was closed`)));
    await this.inner.close();
  }

  private async run<T>(op: RetryEvent['op'], key: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        await this.backoff(err, op, key, attempt);
      }
    }
  }

  /** Rethrows `err` unless another attempt is due; else waits the backoff. */
  private async backoff(err: unknown, op: RetryEvent['op'], key: string, attempt: number): Promise<void> {
    if (!isRetryable(err)) throw err;
    const error = err as TenderError;
    if (attempt >= this.maxAttempts) {
      error.message += ` (gave up after ${attempt} attempts)`;
      throw error;
    }
    if (this.stop.signal.aborted) throw this.stopError(error);
    const cap = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (Math.min(attempt, 30) - 1));
    const delayMs = cap / 2 + (this.random() * cap) / 2;
    this.options.onRetry?.({ op, key, attempt, delayMs, error });
    try {
      await this.sleep(delayMs, this.stop.signal);
    } catch {
      throw this.stopError(error);
    }
  }

  private stopError(last: TenderError): TenderError {
    const reason: unknown = this.stop.signal.reason;
    if (isTenderError(reason)) return reason;
    return new TenderError('TENDER_CANCELLED', `${last.message} (cancelled while waiting to retry)`, { cause: last });
  }
}
