/**
 * Bandwidth limits (restic `backend/limiter`, kopia `blob/throttling`): a put takes its bytes from
 * the upload budget before it goes to the backend, a get takes from the download budget. The
 * budgets are shared objects (util/token-bucket.ts), so one budget can cap several repositories,
 * e.g. all the backups an agent runs at once on a node.
 *
 * A ranged get takes its length before the request; a whole-object get learns its size from the
 * answer and pays after it (the bucket goes into debt, and the next transfer waits for it).
 * Placed inside the retry wrapper (see stack.ts), every attempt pays: a retried put is sent again.
 */
import type { ByteBudget } from '../../util/token-bucket.js';
import { type ByteRange, type ObjectInfo, type PutOptions, type PutResult, type Storage, totalLength } from '../storage.js';

export interface StorageLimits {
  upload?: ByteBudget;
  download?: ByteBudget;
  /** Cuts a wait for the budget short (the operation then fails with the signal's reason). */
  signal?: AbortSignal;
}

export class LimitStorage implements Storage {
  readonly location: string;
  readonly concurrentPuts: number;

  constructor(
    readonly inner: Storage,
    private readonly limits: StorageLimits,
  ) {
    this.location = inner.location;
    this.concurrentPuts = inner.concurrentPuts;
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.inner.stat(key);
  }

  async get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    const budget = this.limits.download;
    if (!budget) return this.inner.get(key, range, into);
    if (range) {
      await budget.take(range.length, this.limits.signal);
      return this.inner.get(key, range, into);
    }
    const buf = await this.inner.get(key, range, into);
    await budget.take(buf.length, this.limits.signal);
    return buf;
  }

  async put(key: string, parts: readonly Uint8Array[], options?: PutOptions): Promise<PutResult> {
    const budget = this.limits.upload;
    if (budget) await budget.take(totalLength(parts), this.limits.signal);
    return this.inner.put(key, parts, options);
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
