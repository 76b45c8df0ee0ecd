import { setImmediate as nextTurn } from 'node:timers/promises';

/**
 * Cooperative time slicing for a loop that runs as a chain of microtasks: `yieldIfDue` goes back
 * to the event loop once the loop has run `sliceMs` since it last did. A walk that starts a run of
 * small files does their reads synchronously; without a yield, hundreds of them run before any I/O
 * completion or worker reply of the large files being read at the same time is handled, and the
 * workers sit idle meanwhile.
 */
export class TimeSlice {
  private sliceStart = performance.now();

  constructor(private readonly sliceMs: number) {}

  async yieldIfDue(): Promise<void> {
    if (performance.now() - this.sliceStart < this.sliceMs) return;
    await nextTurn();
    this.sliceStart = performance.now();
  }
}
