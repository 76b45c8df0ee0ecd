/**
 * The blob storage layer: a flat namespace of immutable objects addressed by key
 * ("data/ab/abcd...", "index/...", "snapshots/...", "keys/...", "config").
 *
 * Guarantees every backend must give (checked by test/storage/conformance.ts, run against every
 * backend and every wrapper in src/storage/wrap/):
 * - `put` is atomic: a reader sees the whole object or nothing; never a partial object,
 *   even if the writer crashes mid-put.
 * - `put` never overwrites: if the key exists it returns 'exists' and leaves the object alone.
 *   (Keys are content-addressed or random, so an existing object already has the right bytes.)
 * - `get` of a missing key throws a TenderError with code TENDER_NOT_FOUND.
 * - `list` returns every object whose put completed before the list started.
 * - Nothing is ever renamed or rewritten, so S3 and local directories behave alike.
 * Failures are TenderErrors with code TENDER_STORAGE (or TENDER_STORAGE_AUTH / _CONFIG for
 * settings to fix, TENDER_DISK_FULL). A TENDER_STORAGE error may be transient (a timeout, a reset);
 * the retry wrapper (wrap/retry.ts) tries those again unless the backend marked them permanent
 * (markPermanent): retrying them is pointless, because of what failed or because the backend
 * already retried as long as it should (the S3 backend retries inside, with its own budget).
 */
export interface ObjectInfo {
  key: string;
  size: number;
}

export interface ByteRange {
  offset: number;
  length: number;
}

export type PutResult = 'stored' | 'exists';

export interface PutOptions {
  /**
   * Called once the backend reads `parts` no more, at the latest just before `put` settles; the
   * caller may reuse their memory from then on. A local directory calls it after the write, before
   * the fsync, so pack buffers are not held while the disk catches up.
   */
  partsReleased?: () => void;
}

export interface Storage {
  /** Human-readable location for messages, e.g. "/srv/repo" or "s3://bucket/prefix". Never holds credentials. */
  readonly location: string;
  /**
   * Puts that hold their parts at once to keep this backend busy: a writer keeps this many pack
   * buffers uploading, plus the one it fills.
   */
  readonly concurrentPuts: number;
  /** All objects whose key starts with `prefix`, in no particular order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /** Size of the object, or undefined if it does not exist. */
  stat(key: string): Promise<ObjectInfo | undefined>;
  /**
   * The whole object, or `range` of it. Throws TENDER_NOT_FOUND if missing. With `into` (at least
   * as long as the result), the bytes are read into it and the result is a view of it: hot paths
   * read into pooled buffers instead of fresh memory.
   */
  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer>;
  /** Store an object made of `parts` (concatenated) unless `key` already exists. */
  put(key: string, parts: readonly Uint8Array[], options?: PutOptions): Promise<PutResult>;
  /** Remove an object. Removing a missing object is not an error. */
  delete(key: string): Promise<void>;
  /** Release connections and file handles. */
  close(): Promise<void>;
}

export function totalLength(parts: readonly Uint8Array[]): number {
  let n = 0;
  for (const p of parts) n += p.byteLength;
  return n;
}

/** A Buffer over the first `length` bytes of `into` (for `get` into a caller's buffer). */
export function viewOf(into: Uint8Array, length: number): Buffer {
  if (into.byteLength < length) throw new RangeError(`read buffer of ${into.byteLength} bytes is too small for ${length}`);
  return Buffer.from(into.buffer, into.byteOffset, length);
}

const permanentMark = Symbol.for('tender.storage.permanent');

/** Marks `err` as not worth retrying (see isPermanent); returns it. */
export function markPermanent<E extends Error>(err: E): E {
  Object.defineProperty(err, permanentMark, { value: true, enumerable: false, configurable: true });
  return err;
}

/** Whether a backend said that retrying `err` is pointless. */
export function isPermanent(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as Record<symbol, unknown>)[permanentMark] === true;
}
