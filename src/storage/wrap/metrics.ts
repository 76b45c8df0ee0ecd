/**
 * Count what goes through a storage (kopia `blob/storagemetrics`): operations, bytes moved and
 * failures, as a plain object (`metrics.snapshot()`) and as one event per finished operation (the
 * `onOp` callback), for progress output and a Prometheus exporter.
 *
 * Placed inside the retry wrapper (see stack.ts), every attempt counts: `puts` and `bytesWritten`
 * are what was really sent, `errors` every failed attempt.
 */
import type { ByteRange, ObjectInfo, PutOptions, PutResult, Storage } from '../storage.js';
import { totalLength } from '../storage.js';

export type StorageOp = 'list' | 'stat' | 'get' | 'put' | 'delete';

export interface StorageCounters {
  lists: number;
  stats: number;
  gets: number;
  puts: number;
  deletes: number;
  /** Bytes returned by gets that succeeded. */
  bytesRead: number;
  /** Bytes of puts that succeeded ('stored' or 'exists': either way the backend was handed them). */
  bytesWritten: number;
  /** Operations that threw (whatever the error, TENDER_NOT_FOUND included); also counted under their op. */
  errors: number;
}

export interface StorageOpEvent {
  op: StorageOp;
  /** The key, or the prefix of a list. */
  key: string;
  /** Bytes read (get) or written (put); 0 otherwise. */
  bytes: number;
  durationMs: number;
  /** What the operation threw, if it failed. */
  error?: unknown;
  /** What a put returned. */
  result?: PutResult;
}

export type StorageOpListener = (event: StorageOpEvent, counters: Readonly<StorageCounters>) => void;

function zeroCounters(): StorageCounters {
  return { lists: 0, stats: 0, gets: 0, puts: 0, deletes: 0, bytesRead: 0, bytesWritten: 0, errors: 0 };
}

const counterOf: Record<StorageOp, 'lists' | 'stats' | 'gets' | 'puts' | 'deletes'> = {
  list: 'lists',
  stat: 'stats',
  get: 'gets',
  put: 'puts',
  delete: 'deletes',
};

/** Counters shared by any number of MetricsStorage wrappers (e.g. one per repository). */
export class StorageMetrics {
  private readonly counters = zeroCounters();
  private readonly listeners: StorageOpListener[] = [];

  constructor(onOp?: StorageOpListener) {
    if (onOp) this.listeners.push(onOp);
  }

  /** The counters now, as a fresh plain object. */
  snapshot(): StorageCounters {
    return { ...this.counters };
  }

  /** Calls `listener` after every operation; returns a function that stops it. */
  subscribe(listener: StorageOpListener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  record(event: StorageOpEvent): void {
    const c = this.counters;
    c[counterOf[event.op]]++;
    if (event.error !== undefined) c.errors++;
    else if (event.op === 'get') c.bytesRead += event.bytes;
    else if (event.op === 'put') c.bytesWritten += event.bytes;
    for (const listener of this.listeners) {
      try {
        listener(event, c);
      } catch (err) {
        // A broken exporter must not fail (or, inside a retry, repeat) a storage operation.
        process.emitWarning(`storage metrics listener failed: ${(err as Error)?.message ?? String(err)}`);
      }
    }
  }
}

export class MetricsStorage implements Storage {
  readonly location: string;
  readonly concurrentPuts: number;

  constructor(
    readonly inner: Storage,
    readonly metrics: StorageMetrics = new StorageMetrics(),
  ) {
    this.location = inner.location;
    this.concurrentPuts = inner.concurrentPuts;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const start = performance.now();
    let error: unknown;
    try {
      yield* this.inner.list(prefix);
    } catch (err) {
      error = err ?? new Error('list failed');
      throw err;
    } finally {
      this.metrics.record({ op: 'list', key: prefix, bytes: 0, durationMs: performance.now() - start, ...(error !== undefined ? { error } : {}) });
    }
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.measure('stat', key, () => this.inner.stat(key), () => 0);
  }

  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    return this.measure('get', key, () => this.inner.get(key, range, into), (buf) => buf.length);
  }

  async put(key: string, parts: readonly Uint8Array[], options?: PutOptions): Promise<PutResult> {
    // Counted now: the caller may reuse the parts once they are released.
    const size = totalLength(parts);
    const start = performance.now();
    try {
      const result = await this.inner.put(key, parts, options);
      this.metrics.record({ op: 'put', key, bytes: size, durationMs: performance.now() - start, result });
      return result;
    } catch (error) {
      this.metrics.record({ op: 'put', key, bytes: 0, durationMs: performance.now() - start, error: error ?? new Error('put failed') });
      throw error;
    }
  }

  delete(key: string): Promise<void> {
    return this.measure('delete', key, () => this.inner.delete(key), () => 0);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private async measure<T>(op: StorageOp, key: string, fn: () => Promise<T>, bytes: (value: T) => number): Promise<T> {
    const start = performance.now();
    try {
      const value = await fn();
      this.metrics.record({ op, key, bytes: bytes(value), durationMs: performance.now() - start });
      return value;
    } catch (error) {
      this.metrics.record({ op, key, bytes: 0, durationMs: performance.now() - start, error: error ?? new Error(`${op} failed`) });
      throw error;
    }
  }
}
