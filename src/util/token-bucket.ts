/**
 * Byte budgets for rate limits (upload and download bandwidth), restic `limiter` style: the
 * storage limit wrapper (src/storage/wrap/limit.ts) takes from a budget before it moves bytes.
 */

/** Something that hands out bytes at some rate: `take` resolves once `bytes` may be moved. */
export interface ByteBudget {
  /** Waits until `bytes` may be moved; rejects with `signal`'s reason if it fires first. */
  take(bytes: number, signal?: AbortSignal): Promise<void>;
}

/** Time, for the bucket: the real clock by default, a fake one in tests. */
export interface Clock {
  /** Milliseconds, monotonic. */
  now(): number;
  /** Resolves after `ms`; rejects with the signal's reason if it fires first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const realClock: Clock = {
  now: () => performance.now(),
  sleep: (ms, signal) => abortableSleep(ms, signal),
};

/** setTimeout as a promise that an AbortSignal cuts short (rejecting with the signal's reason). */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export interface TokenBucketOptions {
  /** The sustained rate. */
  bytesPerSecond: number;
  /** How many bytes may go at once after an idle spell (default: one second's worth). */
  burstBytes?: number;
  clock?: Clock;
}

/**
 * A token bucket that may go into debt: `take(n)` reserves its bytes at once (so takers are
 * served in the order they came) and waits until the bucket has paid for them. Over any span
 * of time t, at most `burstBytes + bytesPerSecond * t` bytes are handed out; a take larger than
 * the burst is allowed (it just waits longer).
 */
export class TokenBucket implements ByteBudget {
  readonly bytesPerSecond: number;
  readonly burstBytes: number;
  private readonly clock: Clock;
  /** Bytes available now; negative while takers wait for the bucket to refill. */
  private tokens: number;
  private last: number;

  constructor(options: TokenBucketOptions) {
    if (!(options.bytesPerSecond > 0) || !Number.isFinite(options.bytesPerSecond)) {
      throw new RangeError(`bytesPerSecond must be a positive number, got ${options.bytesPerSecond}`);
    }
    this.bytesPerSecond = options.bytesPerSecond;
    this.burstBytes = Math.max(1, options.burstBytes ?? options.bytesPerSecond);
    this.clock = options.clock ?? realClock;
    this.tokens = this.burstBytes;
    this.last = this.clock.now();
  }

  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    if (bytes <= 0) return;
    if (signal?.aborted) throw signal.reason;
    this.refill();
    this.tokens -= bytes;
    if (this.tokens >= 0) return;
    const waitMs = (-this.tokens / this.bytesPerSecond) * 1000;
    try {
      await this.clock.sleep(waitMs, signal);
    } catch (err) {
      // Cancelled: the bytes were never moved, give them back.
      this.refill();
      this.tokens = Math.min(this.burstBytes, this.tokens + bytes);
      throw err;
    }
  }

  private refill(): void {
    const now = this.clock.now();
    const elapsed = now - this.last;
    this.last = now;
    if (elapsed > 0) this.tokens = Math.min(this.burstBytes, this.tokens + (elapsed / 1000) * this.bytesPerSecond);
  }
}
