/**
 * A fixed set of reusable shared buffers ("slots") that file data is read into. Workers see the
 * same memory, so chunks are never copied to reach them, and reuse keeps pages warm (first
 * touch of fresh memory is slow on our VMs). The slot count bounds the data in flight.
 */
export interface Slot {
  readonly buffer: SharedArrayBuffer;
  readonly view: Uint8Array;
}

export class SlotPool {
  private readonly free: Slot[] = [];
  private readonly waiters: Array<(slot: Slot) => void> = [];
  private created = 0;

  constructor(
    readonly slotSize: number,
    readonly slotCount: number,
  ) {}

  acquire(): Promise<Slot> {
    const slot = this.free.pop();
    if (slot) return Promise.resolve(slot);
    if (this.created < this.slotCount) {
      this.created++;
      const buffer = new SharedArrayBuffer(this.slotSize);
      return Promise.resolve({ buffer, view: new Uint8Array(buffer) });
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(slot: Slot): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(slot);
    else this.free.push(slot);
  }
}
