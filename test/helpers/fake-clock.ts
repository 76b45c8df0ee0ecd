/**
 * A clock for tests that time is advanced by hand: sleeps resolve when `advance` passes their
 * deadline, in deadline order, so rate measurements are exact and never race the machine's load.
 */
import type { Clock } from '../../src/util/token-bucket.js';

export class FakeClock implements Clock {
  private t = 0;
  private timers: Array<{ at: number; seq: number; resolve: () => void; reject: (e: unknown) => void; signal?: AbortSignal; onAbort?: () => void }> = [];
  private seq = 0;

  now(): number {
    return this.t;
  }

  /** Sleeps pending now. */
  get pending(): number {
    return this.timers.length;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const timer = { at: this.t + Math.max(0, ms), seq: this.seq++, resolve, reject, signal } as (typeof this.timers)[number];
      if (signal) {
        timer.onAbort = () => {
          this.timers = this.timers.filter((x) => x !== timer);
          reject(signal.reason);
        };
        signal.addEventListener('abort', timer.onAbort, { once: true });
      }
      this.timers.push(timer);
    });
  }

  /**
   * Lets what is ready run; if then something sleeps, moves time to the first deadline and wakes
   * it. Returns false when nothing sleeps (time stands still while the code under test works).
   */
  async step(): Promise<boolean> {
    await flush();
    if (this.timers.length === 0) return false;
    const next = Math.min(...this.timers.map((t) => t.at));
    await this.advance(Math.max(0, next - this.t));
    return true;
  }

  /** Moves time on by `ms`, waking each sleeper at its deadline (and letting it run before the next). */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await flush();
      this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.timers[0];
      if (!next || next.at > end) break;
      this.timers.shift();
      this.t = Math.max(this.t, next.at);
      next.signal?.removeEventListener('abort', next.onAbort!);
      next.resolve();
    }
    this.t = end;
    await flush();
  }
}

/** Lets every promise continuation that is ready run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}
