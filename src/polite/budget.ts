/**
 * A byte budget whose rate may change at any time: unlimited, a rate, or paused. The read budget
 * (paced per read chunk through BackupHooks.beforeRead) and the upload budget (the storage
 * stack's limit wrapper) of a process are one instance each, shared by every operation, and the
 * governor and the agent's API turn their rates while reads and uploads wait on them.
 *
 * Takers are served one at a time, in the order they came: only the first waits on the clock,
 * so a rate change (a cut, a pause, a resume) takes effect at once for everyone waiting, not
 * after sleeps computed at the old rate.
 */
import { type ByteBudget, type Clock, realClock } from '../util/token-bucket.js';

/** What a budget allows: `undefined` no limit, `0` nothing (paused), else bytes per second. */
export type Rate = number | undefined;

/** A wait with nothing to wake it checks again after this long (a paused budget). */
const idleRecheckMs = 60_000;

export class RateBudget implements ByteBudget {
  private rate: Rate;
  private tokens = 0;
  private last: number;
  /** The takers' queue: each one's turn starts when the previous one has paid. */
  private tail: Promise<void> = Promise.resolve();
  /** Aborted when the rate changes, to wake the taker that waits on the clock. */
  private change = new AbortController();
  /** Bytes handed out so far (the governor measures the rate actually used from it). */
  granted = 0;

  constructor(
    rate: Rate = undefined,
    private readonly clock: Clock = realClock,
  ) {
    checkRate(rate);
    this.rate = rate;
    this.last = clock.now();
    this.tokens = this.burst();
  }

  get bytesPerSecond(): Rate {
    return this.rate;
  }

  /** Sets the rate; waiting takers go on at the new rate at once. */
  setRate(rate: Rate): void {
    checkRate(rate);
    if (rate === this.rate) return;
    this.refill();
    // From unlimited or paused: no saved-up burst (the debt of waiting takers stays).
    if (this.rate === undefined || this.rate === 0) this.tokens = Math.min(this.tokens, 0);
    this.rate = rate;
    this.tokens = Math.min(this.tokens, this.burst());
    const woken = this.change;
    this.change = new AbortController();
    woken.abort();
  }

  take(bytes: number, signal?: AbortSignal): Promise<void> {
    if (bytes <= 0) return Promise.resolve();
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.rate === undefined && this.tokens >= 0) {
      // Nobody waits (the queue only grows while a rate applies): no queue, no allocation.
      this.granted += bytes;
      return Promise.resolve();
    }
    const turn = this.tail.then(() => this.pay(bytes, signal));
    this.tail = turn.catch(() => undefined);
    return turn;
  }

  /** The taker's turn: pays `bytes`, waiting while the bucket is in debt. */
  private async pay(bytes: number, signal: AbortSignal | undefined): Promise<void> {
    if (signal?.aborted) throw signal.reason;
    this.refill();
    this.tokens -= bytes;
    try {
      // Half a byte of debt is rounding, not a reason to sleep again.
      while (this.tokens < -0.5 && this.rate !== undefined) {
        const waitMs = this.rate === 0 ? idleRecheckMs : (-this.tokens / this.rate) * 1000;
        const change = this.change.signal;
        try {
          await this.clock.sleep(waitMs, signal ? AbortSignal.any([signal, change]) : change);
        } catch (err) {
          if (signal?.aborted || !change.aborted) throw err;
        }
        this.refill();
      }
    } catch (err) {
      // Cancelled: the bytes were never moved, give them back.
      this.tokens += bytes;
      throw err;
    }
    if (this.rate === undefined) this.tokens = 0;
    this.granted += bytes;
  }

  /** One quarter second's worth: smooth pacing, and a cut is felt within a read or two. */
  private burst(): number {
    return this.rate === undefined || this.rate === 0 ? 0 : Math.max(64 * 1024, this.rate / 4);
  }

  private refill(): void {
    const now = this.clock.now();
    const elapsed = now - this.last;
    this.last = now;
    if (elapsed > 0 && this.rate) this.tokens = Math.min(this.burst(), this.tokens + (elapsed / 1000) * this.rate);
  }
}

function checkRate(rate: Rate): void {
  if (rate !== undefined && !(rate >= 0 && Number.isFinite(rate))) throw new RangeError(`a rate must be a non-negative number of bytes per second or undefined, got ${rate}`);
}
