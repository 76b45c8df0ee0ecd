/**
 * A bounded set of reusable shared buffers. Used for file-read slots and for pack buffers:
 * workers see the same memory (nothing is copied to reach them), reuse keeps pages warm (first
 * touch of fresh memory is slow on our VMs), and the count bounds the memory in flight —
 * `acquire` waits while every buffer is in use (backpressure).
 */
export interface PooledBuffer {
  readonly buffer: SharedArrayBuffer;
  readonly view: Uint8Array;
  /** The same memory as a Buffer, for fast copies (TypedArray.set on shared memory is slow). */
  readonly bytes: Buffer;
  /** The pool it returns to; undefined for a buffer outside any pool. */
  readonly pool?: BufferPool;
}

export class BufferPool {
  private readonly free: PooledBuffer[] = [];
  private readonly waiters: Array<(buffer: PooledBuffer) => void> = [];
  private created = 0;

  constructor(
    readonly bufferSize: number,
    private maxBuffers: number,
  ) {}

  acquire(): Promise<PooledBuffer> {
    const buffer = this.tryAcquire();
    if (buffer) return Promise.resolve(buffer);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** A buffer now, or undefined when every buffer is in use. */
  tryAcquire(): PooledBuffer | undefined {
    const buffer = this.free.pop();
    if (buffer) return buffer;
    if (this.created < this.maxBuffers) {
      this.created++;
      return sharedBuffer(this.bufferSize, this);
    }
    return undefined;
  }

  release(buffer: PooledBuffer): void {
    if (this.created > this.maxBuffers) {
      // The pool shrank while this buffer was out: let it go.
      this.created--;
      return;
    }
    const waiter = this.waiters.shift();
    if (waiter) waiter(buffer);
    else this.free.push(buffer);
  }

  /** Changes how many buffers may exist; growing wakes waiters, shrinking takes effect as buffers return. */
  resize(maxBuffers: number): void {
    this.maxBuffers = maxBuffers;
    while (this.created > this.maxBuffers && this.free.length > 0) {
      this.free.pop();
      this.created--;
    }
    while (this.waiters.length > 0) {
      const buffer = this.tryAcquire();
      if (!buffer) break;
      this.waiters.shift()!(buffer);
    }
  }
}

/** A shared buffer outside any pool (for the rare object larger than the pool's buffers). */
export function sharedBuffer(size: number, pool?: BufferPool): PooledBuffer {
  const buffer = new SharedArrayBuffer(size);
  return { buffer, view: new Uint8Array(buffer), bytes: Buffer.from(buffer), ...(pool ? { pool } : {}) };
}
