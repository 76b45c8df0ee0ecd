import { TenderError } from '../errors/errors.js';
import { type ByteRange, type ObjectInfo, type PutOptions, type PutResult, type Storage, markPermanent, totalLength, viewOf } from './storage.js';

/**
 * A repository in memory (restic's mem backend): for tests of the layers above storage and for
 * the wrappers' conformance runs. Every guarantee of storage.ts holds: a put copies its parts
 * into one fresh buffer and publishes it in one step (no reader sees part of it), never
 * overwrites ('exists'), and a missing key is TENDER_NOT_FOUND. Objects are copied in and out,
 * so callers may reuse their buffers.
 */
export class MemStorage implements Storage {
  readonly location: string;
  readonly concurrentPuts: number;
  private readonly objects = new Map<string, Buffer>();
  private closed = false;

  constructor(options: { location?: string; concurrentPuts?: number } = {}) {
    this.location = options.location ?? 'mem:';
    this.concurrentPuts = options.concurrentPuts ?? 2;
  }

  /** Number of objects held (for tests). */
  get size(): number {
    return this.objects.size;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    this.checkOpen('list', prefix);
    // What was stored when the list started; later puts and deletes do not disturb it.
    const found: ObjectInfo[] = [];
    for (const [key, body] of this.objects) if (key.startsWith(prefix)) found.push({ key, size: body.length });
    await tick();
    yield* found;
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    this.checkKey('stat', key);
    await tick();
    const body = this.objects.get(key);
    return body ? { key, size: body.length } : undefined;
  }

  async get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    this.checkKey('get', key);
    if (range && (range.offset < 0 || range.length < 0 || !Number.isSafeInteger(range.offset + range.length))) {
      throw markPermanent(new TenderError('TENDER_STORAGE', `get ${key}: invalid byte range ${range.offset}+${range.length}`));
    }
    await tick();
    const body = this.objects.get(key);
    if (!body) throw new TenderError('TENDER_NOT_FOUND', `object ${key} does not exist in ${this.location}`);
    const start = Math.min(range?.offset ?? 0, body.length);
    const end = range ? Math.min(body.length, range.offset + range.length) : body.length;
    const out = into ? viewOf(into, end - start) : Buffer.allocUnsafe(end - start);
    body.copy(out, 0, start, end);
    return out;
  }

  async put(key: string, parts: readonly Uint8Array[], options: PutOptions = {}): Promise<PutResult> {
    this.checkKey('put', key);
    // Copy first, publish after: the caller's parts are read only here.
    const body = Buffer.allocUnsafe(totalLength(parts));
    let at = 0;
    for (const p of parts) {
      body.set(p, at);
      at += p.byteLength;
    }
    options.partsReleased?.();
    await tick();
    this.checkOpen('put', key);
    if (this.objects.has(key)) return 'exists';
    this.objects.set(key, body);
    return 'stored';
  }

  async delete(key: string): Promise<void> {
    this.checkKey('delete', key);
    await tick();
    this.objects.delete(key);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private checkKey(op: string, key: string): void {
    if (key === '' || key.startsWith('/') || key.includes('\\') || key.split('/').includes('..')) {
      throw markPermanent(new TenderError('TENDER_STORAGE', `refusing storage key ${JSON.stringify(key)}`));
    }
    this.checkOpen(op, key);
  }

  private checkOpen(op: string, key: string): void {
    if (this.closed) throw markPermanent(new TenderError('TENDER_STORAGE', `${op} ${key}: storage ${this.location} is closed`));
  }
}

/** Settle on a later turn, as real I/O does, so callers cannot depend on synchronous completion. */
function tick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
