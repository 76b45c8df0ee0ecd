/**
 * Fault injection for tests (kopia `blobtesting/faulty.go`): make chosen operations fail, and
 * hold operations at a gate until the test opens it. A hold turns "wait until the backup has
 * stored its first pack, then put a fault in place before it stores the next" into a barrier
 * instead of a race with the clock:
 *
 *   const faulty = new FaultyStorage(new MemStorage());
 *   const gate = faulty.hold({ op: 'put', prefix: 'data/', after: 1 });
 *   const running = backup(...);          // its first pack goes through, the second waits
 *   await gate.reached;                   // the first pack is stored, the second is held
 *   faulty.add({ op: 'put', prefix: 'data/', times: 2 });   // the next two pack puts fail
 *   gate.release();
 *
 * Faults fail with a transient TENDER_STORAGE error by default (what the retry wrapper retries),
 * before the operation reaches the backend, or, with `when: 'after'`, after it did its work (a
 * lost reply: the put is stored but the caller sees an error).
 *
 * The CLI gets a hold from the environment for end-to-end tests; see stack.ts.
 */
import { TenderError } from '../../errors/errors.js';
import { type ByteRange, type ObjectInfo, type PutOptions, type PutResult, type Storage, markPermanent } from '../storage.js';

export type FaultOp = 'list' | 'stat' | 'get' | 'put' | 'delete';

export interface FaultSpec {
  /** Which operations (default: every kind). */
  op?: FaultOp | readonly FaultOp[];
  /** Only keys (list: prefixes) that start with this. */
  prefix?: string;
  /** Let the first nth-1 matching calls (counted from when the fault is added) pass, fail the nth. */
  nth?: number;
  /** How many calls fail from then on (default: 1 with `nth`, else every one). */
  times?: number;
  /** Fail before the call reaches the backend (default), or after it succeeded there. */
  when?: 'before' | 'after';
  /** The error to throw (default: a transient TENDER_STORAGE error naming the call). */
  error?: (op: FaultOp, key: string) => Error;
  /** Mark the default error permanent (the retry wrapper then gives up at once). */
  permanent?: boolean;
}

export interface FaultHandle {
  /** Calls this fault made fail so far. */
  readonly failed: number;
  /** Take the fault out. */
  remove(): void;
}

export interface HoldSpec {
  /** Which operations wait (default: 'put'). */
  op?: FaultOp | readonly FaultOp[];
  prefix?: string;
  /** Let this many matching calls through first; the ones after them wait (default 0). */
  after?: number;
}

export interface Hold {
  /**
   * Resolves once a call waits at the gate and the `after` calls that went through before it
   * have all finished (settled): the caller is stopped exactly there.
   */
  readonly reached: Promise<void>;
  /** Resolves when the gate opens (release(), or close() of the storage). */
  readonly released: Promise<void>;
  /** Calls waiting at the gate now. */
  readonly waiting: number;
  /** Opens the gate: the waiting calls go on, and later ones no longer stop. */
  release(): void;
}

interface ActiveFault {
  spec: FaultSpec;
  ops: ReadonlySet<FaultOp> | undefined;
  seen: number;
  failed: number;
  removed: boolean;
}

const allOps = undefined;

function opSet(op: FaultOp | readonly FaultOp[] | undefined, fallback: ReadonlySet<FaultOp> | undefined): ReadonlySet<FaultOp> | undefined {
  if (op === undefined) return fallback;
  return new Set(typeof op === 'string' ? [op] : op);
}

class Gate implements Hold {
  readonly reached: Promise<void>;
  readonly released: Promise<void>;
  private resolveReached!: () => void;
  private resolveReleased!: () => void;
  private open = false;
  private passed = 0;
  private passedInFlight = 0;
  private waiters: Array<() => void> = [];

  constructor(
    readonly ops: ReadonlySet<FaultOp> | undefined,
    readonly prefix: string,
    private readonly after: number,
  ) {
    this.reached = new Promise((resolve) => (this.resolveReached = resolve));
    this.released = new Promise((resolve) => (this.resolveReleased = resolve));
  }

  get waiting(): number {
    return this.waiters.length;
  }

  matches(op: FaultOp, key: string): boolean {
    return !this.open && (this.ops === undefined || this.ops.has(op)) && key.startsWith(this.prefix);
  }

  /** Runs `fn` now, or once the gate opens. */
  async pass<T>(fn: () => Promise<T>): Promise<T> {
    if (this.passed < this.after) {
      this.passed++;
      this.passedInFlight++;
      try {
        return await fn();
      } finally {
        this.passedInFlight--;
        this.check();
      }
    }
    await new Promise<void>((resolve) => {
      this.waiters.push(resolve);
      this.check();
    });
    return fn();
  }

  release(): void {
    this.open = true;
    this.resolveReleased();
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private check(): void {
    if (this.waiters.length > 0 && this.passedInFlight === 0) this.resolveReached();
  }
}

export class FaultyStorage implements Storage {
  readonly location: string;
  readonly concurrentPuts: number;
  /** Calls seen so far, by operation (whether they failed or not). */
  readonly calls: Record<FaultOp, number> = { list: 0, stat: 0, get: 0, put: 0, delete: 0 };
  private faults: ActiveFault[] = [];
  private gates: Gate[] = [];

  constructor(readonly inner: Storage) {
    this.location = inner.location;
    this.concurrentPuts = inner.concurrentPuts;
  }

  /** Adds a fault; see FaultSpec. */
  add(spec: FaultSpec): FaultHandle {
    const fault: ActiveFault = { spec, ops: opSet(spec.op, allOps), seen: 0, failed: 0, removed: false };
    this.faults.push(fault);
    return {
      get failed() {
        return fault.failed;
      },
      remove: () => {
        fault.removed = true;
        this.faults = this.faults.filter((f) => f !== fault);
      },
    };
  }

  /** Fails the nth `op` call from now (1: the next one). */
  failNth(op: FaultOp, nth: number, spec: Omit<FaultSpec, 'op' | 'nth'> = {}): FaultHandle {
    return this.add({ ...spec, op, nth });
  }

  /** Fails every call on keys under `prefix` until removed. */
  failPrefix(prefix: string, spec: Omit<FaultSpec, 'prefix'> = {}): FaultHandle {
    return this.add({ ...spec, prefix });
  }

  /** Stops matching calls at a gate; see Hold. */
  hold(spec: HoldSpec = {}): Hold {
    const gate = new Gate(opSet(spec.op, new Set<FaultOp>(['put'])), spec.prefix ?? '', Math.max(0, spec.after ?? 0));
    this.gates.push(gate);
    return gate;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const items = await this.call('list', prefix, async () => this.inner.list(prefix));
    yield* items;
  }

  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.call('stat', key, () => this.inner.stat(key));
  }

  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    return this.call('get', key, () => this.inner.get(key, range, into));
  }

  put(key: string, parts: readonly Uint8Array[], options?: PutOptions): Promise<PutResult> {
    return this.call('put', key, () => this.inner.put(key, parts, options));
  }

  delete(key: string): Promise<void> {
    return this.call('delete', key, () => this.inner.delete(key));
  }

  async close(): Promise<void> {
    // Nothing may wait for a gate that no test will open any more.
    for (const g of this.gates) g.release();
    await this.inner.close();
  }

  private async call<T>(op: FaultOp, key: string, fn: () => Promise<T>): Promise<T> {
    this.calls[op]++;
    const gate = this.gates.find((g) => g.matches(op, key));
    const run = async (): Promise<T> => {
      // Which faults this call meets is decided once the call goes on (after any gate).
      const before: ActiveFault[] = [];
      const after: ActiveFault[] = [];
      for (const f of this.faults) if (this.hits(f, op, key)) (f.spec.when === 'after' ? after : before).push(f);
      if (before[0]) throw this.errorOf(before[0], op, key);
      const value = await fn();
      if (after[0]) throw this.errorOf(after[0], op, key);
      return value;
    };
    return gate ? gate.pass(run) : run();
  }

  /** Whether fault `f` makes this call fail (counting the call against it). */
  private hits(f: ActiveFault, op: FaultOp, key: string): boolean {
    if (f.removed || (f.ops !== undefined && !f.ops.has(op)) || !key.startsWith(f.spec.prefix ?? '')) return false;
    f.seen++;
    const first = f.spec.nth ?? 1;
    const times = f.spec.times ?? (f.spec.nth !== undefined ? 1 : Infinity);
    if (f.seen < first || f.seen >= first + times) return false;
    f.failed++;
    return true;
  }

  private errorOf(f: ActiveFault, op: FaultOp, key: string): Error {
    if (f.spec.error) return f.spec.error(op, key);
    const err = new TenderError('TENDER_STORAGE', `${op} ${key} in ${this.location} failed: injected fault`);
    return f.spec.permanent ? markPermanent(err) : err;
  }
}
