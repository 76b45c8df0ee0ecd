import type { ByteRange, ObjectInfo, PutOptions, PutResult, Storage } from '../../src/storage/storage.js';

/**
 * A Storage that hands every call to `inner` unchanged: a test extends it and overrides only the
 * calls it counts, holds or hooks (calling super for the real work).
 */
export class PassThroughStorage implements Storage {
  constructor(readonly inner: Storage) {}

  get location(): string {
    return this.inner.location;
  }

  get concurrentPuts(): number {
    return this.inner.concurrentPuts;
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.inner.stat(key);
  }

  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    return this.inner.get(key, range, into);
  }

  put(key: string, parts: readonly Uint8Array[], options?: PutOptions): Promise<PutResult> {
    return this.inner.put(key, parts, options);
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
