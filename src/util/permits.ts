/** A counting semaphore: at most `count` holders at once; waiters are served in order. */
export class Permits {
  private readonly waiters: Array<() => void> = [];

  constructor(private available: number) {}

  /** Resolves once a permit is held; undefined (no wait at all) when one is free now. */
  acquire(): Promise<void> | undefined {
    if (this.available > 0) {
      this.available--;
      return undefined;
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.available++;
  }
}
