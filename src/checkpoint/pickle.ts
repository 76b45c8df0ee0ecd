/**
 * A small, safe reader for Python pickles (protocols 0-5 as written by pickle.dump and
 * torch.save): it never imports or calls anything. GLOBAL/STACK_GLOBAL give a PyGlobal (a
 * name), REDUCE/NEWOBJ/INST/OBJ a PyInstance (the callable and its arguments, plus whatever
 * BUILD/SETITEMS/APPENDS add to it), BINPERSID/PERSID a PyPersistentRef. The caller interprets
 * these inert values. Input size, mark depth and the number of values made are bounded; any
 * malformed, truncated or unsupported input gives a PickleError naming the opcode and offset.
 */

export class PickleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PickleError';
  }
}

/** A module-level name (`module.name`), never resolved. */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}

  is(module: string, name: string): boolean {
    return this.module === module && this.name === name;
  }
}

/** What REDUCE/NEWOBJ/INST/OBJ would have built: the callable and its arguments, never called. */
export class PyInstance {
  /** The BUILD argument (an object's __dict__, or (dict, slots), or a __setstate__ value). */
  state: PyValue | undefined = undefined;
  /** SETITEM(S) applied to the object (a dict subclass). */
  items: Map<PyValue, PyValue> | undefined = undefined;
  /** APPEND(S) applied to the object (a list subclass). */
  elements: PyValue[] | undefined = undefined;

  constructor(
    readonly callable: PyValue,
    readonly args: readonly PyValue[],
  ) {}

  /** The callable when it is a global (a class or function name). */
  get global(): PyGlobal | undefined {
    return this.callable instanceof PyGlobal ? this.callable : undefined;
  }

  /** A field of the BUILD state: a __dict__, or the slot dict of a (dict, slots) pair. */
  field(name: string): PyValue | undefined {
    const state = this.state;
    if (state instanceof Map) return state.get(name);
    if (Array.isArray(state) && state.length === 2) {
      for (const part of state) if (part instanceof Map && part.has(name)) return part.get(name);
    }
    return undefined;
  }
}

/** A persistent id (BINPERSID/PERSID): torch.save stores tensor storages this way. */
export class PyPersistentRef {
  constructor(readonly pid: PyValue) {}
}

/**
 * A decoded value. Tuples are frozen arrays, lists plain arrays, dicts (and OrderedDicts) Maps,
 * sets Sets, bytes Uint8Arrays; integers beyond 2^53 are bigints.
 */
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | Map<PyValue, PyValue>
  | Set<PyValue>
  | PyGlobal
  | PyInstance
  | PyPersistentRef;

export interface PickleLimits {
  /** Largest input accepted. */
  readonly maxBytes: number;
  /** Deepest nesting of MARKs (containers being built at once). */
  readonly maxDepth: number;
  /** Most values made (stack pushes), memo entries included. */
  readonly maxObjects: number;
}

export const defaultPickleLimits: PickleLimits = { maxBytes: 64 << 20, maxDepth: 1000, maxObjects: 4_000_000 };

/** Longest LONG1/LONG4 integer accepted, in bytes. */
const MAX_LONG_BYTES = 64;

const MARK = Symbol('mark');
type StackItem = PyValue | typeof MARK;

const utf8 = new TextDecoder('utf-8', { fatal: true });
const latin1 = new TextDecoder('latin1');

/** Decodes one pickle (up to its STOP opcode) into inert values. */
export function readPickle(data: Uint8Array, limits: Partial<PickleLimits> = {}): PyValue {
  const lim = { ...defaultPickleLimits, ...limits };
  if (data.length > lim.maxBytes) throw new PickleError(`pickle of ${data.length} bytes is over the ${lim.maxBytes}-byte limit`);
  return new Reader(data, lim).run();
}

class Reader {
  private pos = 0;
  private readonly stack: StackItem[] = [];
  private readonly memo = new Map<number, PyValue>();
  private marks = 0;
  private made = 0;
  private opAt = 0;
  private readonly view: DataView;

  constructor(
    private readonly data: Uint8Array,
    private readonly limits: PickleLimits,
  ) {
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  }

  run(): PyValue {
    for (;;) {
      this.opAt = this.pos;
      const op = this.u8();
      if (op === 0x2e /* STOP '.' */) {
        const value = this.pop();
        if (this.stack.length !== 0) throw this.error('values left on the stack at STOP');
        return value;
      }
      this.step(op);
    }
  }

  private error(message: string): PickleError {
    return new PickleError(`pickle: ${message} (opcode at byte ${this.opAt})`);
  }

  // ---- input ------------------------------------------------------------------------------

  private need(n: number): number {
    if (n < 0 || this.pos + n > this.data.length) throw this.error('truncated');
    const at = this.pos;
    this.pos += n;
    return at;
  }

  private u8(): number {
    return this.data[this.need(1)]!;
  }

  private u16(): number {
    return this.view.getUint16(this.need(2), true);
  }

  private u32(): number {
    return this.view.getUint32(this.need(4), true);
  }

  private i32(): number {
    return this.view.getInt32(this.need(4), true);
  }

  private u64(): number {
    const at = this.need(8);
    const value = this.view.getBigUint64(at, true);
    if (value > BigInt(this.data.length)) throw this.error('length beyond the end of the input');
    return Number(value);
  }

  private bytes(n: number): Uint8Array {
    const at = this.need(n);
    return this.data.subarray(at, at + n);
  }

  private line(): string {
    const end = this.data.indexOf(0x0a, this.pos);
    if (end < 0) throw this.error('truncated (no end of line)');
    const text = latin1.decode(this.data.subarray(this.pos, end));
    this.pos = end + 1;
    return text;
  }

  private text(n: number): string {
    try {
      return utf8.decode(this.bytes(n));
    } catch (err) {
      if (err instanceof PickleError) throw err;
      throw this.error('invalid UTF-8 in a string');
    }
  }

  // ---- stack --------------------------------------------------------------------------------

  private push(value: PyValue): void {
    if (++this.made > this.limits.maxObjects) throw this.error(`more than ${this.limits.maxObjects} values`);
    this.stack.push(value);
  }

  private pop(): PyValue {
    const value = this.stack.pop();
    if (value === undefined) throw this.error('stack underflow');
    if (value === MARK) throw this.error('unexpected MARK');
    return value;
  }

  private top(): PyValue {
    const value = this.stack[this.stack.length - 1];
    if (value === undefined) throw this.error('stack underflow');
    if (value === MARK) throw this.error('unexpected MARK');
    return value;
  }

  /** The values above the topmost MARK, removing them and the mark. */
  private popMark(): PyValue[] {
    const at = this.stack.lastIndexOf(MARK);
    if (at < 0) throw this.error('no MARK');
    const items = this.stack.splice(at) as PyValue[];
    items.shift();
    this.marks--;
    return items;
  }

  private mark(): void {
    if (++this.marks > this.limits.maxDepth) throw this.error(`MARKs nested deeper than ${this.limits.maxDepth}`);
    this.stack.push(MARK);
  }

  private memoPut(index: number): void {
    if (!this.memo.has(index) && this.memo.size >= this.limits.maxObjects) throw this.error('memo too large');
    this.memo.set(index, this.top());
  }

  private memoGet(index: number): void {
    const value = this.memo.get(index);
    if (value === undefined) throw this.error(`memo key ${index} not set`);
    this.push(value);
  }

  private decimal(text: string): number {
    if (!/^-?\d+L?$/.test(text)) throw this.error(`not an integer: ${JSON.stringify(text.slice(0, 40))}`);
    const value = Number(text.replace(/L$/, ''));
    if (!Number.isSafeInteger(value)) throw this.error('integer too large');
    return value;
  }

  // ---- values -------------------------------------------------------------------------------

  private long(n: number): number | bigint {
    if (n > MAX_LONG_BYTES) throw this.error(`integer of ${n} bytes is over the ${MAX_LONG_BYTES}-byte limit`);
    const raw = this.bytes(n);
    if (n === 0) return 0;
    let value = 0n;
    for (let i = n - 1; i >= 0; i--) value = (value << 8n) | BigInt(raw[i]!);
    if (raw[n - 1]! & 0x80) value -= 1n << BigInt(8 * n);
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }

  private tuple(items: PyValue[]): PyValue[] {
    return Object.freeze(items) as PyValue[];
  }

  private setItems(target: PyValue, items: PyValue[]): void {
    if (items.length % 2 !== 0) throw this.error('SETITEMS with an odd number of values');
    let map: Map<PyValue, PyValue>;
    if (target instanceof Map) map = target;
    else if (target instanceof PyInstance) map = target.items ??= new Map();
    else throw this.error('SETITEM(S) on a value that is not a dict');
    for (let i = 0; i < items.length; i += 2) map.set(items[i]!, items[i + 1]!);
  }

  private appendItems(target: PyValue, items: PyValue[]): void {
    let list: PyValue[];
    if (Array.isArray(target) && !Object.isFrozen(target)) list = target;
    else if (target instanceof PyInstance) list = target.elements ??= [];
    else throw this.error('APPEND(S) on a value that is not a list');
    // A loop, not push(...items): a long APPENDS would overflow the call stack.
    for (const item of items) list.push(item);
  }

  private reduce(callable: PyValue, args: PyValue): PyValue {
    if (!Array.isArray(args)) throw this.error('REDUCE arguments are not a tuple');
    if (!(callable instanceof PyGlobal)) return new PyInstance(callable, args);
    // Inert container types become their JS equivalent so that SETITEMS/ADDITEMS apply.
    if (callable.is('collections', 'OrderedDict') && args.length === 0) return new Map();
    if ((callable.is('builtins', 'set') || callable.is('__builtin__', 'set')) && args.length <= 1) {
      const items = args[0];
      if (items === undefined) return new Set();
      if (Array.isArray(items)) return new Set(items);
    }
    return new PyInstance(callable, args);
  }

  private global(module: string, name: string): PyGlobal {
    if (!module || !name) throw this.error('empty module or name in GLOBAL');
    return new PyGlobal(module, name);
  }

  private step(op: number): void {
    switch (op) {
      case 0x80: {
        // PROTO
        const version = this.u8();
        if (version > 5) throw this.error(`unsupported protocol ${version}`);
        return;
      }
      case 0x95: // FRAME: framing is only a buffering hint
        this.u64();
        return;
      case 0x28: // MARK
        return this.mark();
      case 0x30: // POP
        if (this.stack[this.stack.length - 1] === MARK) {
          this.stack.pop();
          this.marks--;
        } else this.pop();
        return;
      case 0x31: // POP_MARK
        this.popMark();
        return;
      case 0x32: // DUP
        return this.push(this.top());
      case 0x4e: // NONE
        return this.push(null);
      case 0x88: // NEWTRUE
        return this.push(true);
      case 0x89: // NEWFALSE
        return this.push(false);
      case 0x4a: // BININT
        return this.push(this.i32());
      case 0x4b: // BININT1
        return this.push(this.u8());
      case 0x4d: // BININT2
        return this.push(this.u16());
      case 0x8a: // LONG1
        return this.push(this.long(this.u8()));
      case 0x8b: {
        // LONG4
        const n = this.i32();
        if (n < 0) throw this.error('negative LONG4 length');
        return this.push(this.long(n));
      }
      case 0x49: {
        // INT (protocol 0): also spells booleans as 01/00
        const text = this.line();
        if (text === '01') return this.push(true);
        if (text === '00') return this.push(false);
        return this.push(this.decimal(text));
      }
      case 0x4c: // LONG (protocol 0)
        return this.push(this.decimal(this.line()));
      case 0x47: // BINFLOAT (big-endian double)
        return this.push(this.view.getFloat64(this.need(8), false));
      case 0x46: {
        // FLOAT (protocol 0)
        const text = this.line();
        const value = Number(text);
        if (text.trim() === '' || (Number.isNaN(value) && !/^[-+]?nan$/i.test(text))) throw this.error('not a float');
        return this.push(value);
      }
      case 0x58: // BINUNICODE
        return this.push(this.text(this.u32()));
      case 0x8c: // SHORT_BINUNICODE
        return this.push(this.text(this.u8()));
      case 0x8d: // BINUNICODE8
        return this.push(this.text(this.u64()));
      case 0x54: {
        // BINSTRING (Python 2 str): kept as latin-1 text
        const n = this.i32();
        if (n < 0) throw this.error('negative BINSTRING length');
        return this.push(latin1.decode(this.bytes(n)));
      }
      case 0x55: // SHORT_BINSTRING
        return this.push(latin1.decode(this.bytes(this.u8())));
      case 0x42: // BINBYTES
        return this.push(this.bytes(this.u32()));
      case 0x43: // SHORT_BINBYTES
        return this.push(this.bytes(this.u8()));
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        return this.push(this.bytes(this.u64()));
      case 0x29: // EMPTY_TUPLE
        return this.push(this.tuple([]));
      case 0x74: // TUPLE
        return this.push(this.tuple(this.popMark()));
      case 0x85: // TUPLE1
        return this.push(this.tuple([this.pop()]));
      case 0x86: {
        // TUPLE2
        const b = this.pop();
        return this.push(this.tuple([this.pop(), b]));
      }
      case 0x87: {
        // TUPLE3
        const c = this.pop();
        const b = this.pop();
        return this.push(this.tuple([this.pop(), b, c]));
      }
      case 0x5d: // EMPTY_LIST
        return this.push([]);
      case 0x6c: // LIST
        return this.push(this.popMark());
      case 0x61: {
        // APPEND
        const item = this.pop();
        return this.appendItems(this.top(), [item]);
      }
      case 0x65: {
        // APPENDS
        const items = this.popMark();
        return this.appendItems(this.top(), items);
      }
      case 0x7d: // EMPTY_DICT
        return this.push(new Map());
      case 0x64: {
        // DICT
        const map = new Map<PyValue, PyValue>();
        this.setItems(map, this.popMark());
        return this.push(map);
      }
      case 0x73: {
        // SETITEM
        const value = this.pop();
        const key = this.pop();
        return this.setItems(this.top(), [key, value]);
      }
      case 0x75: {
        // SETITEMS
        const items = this.popMark();
        return this.setItems(this.top(), items);
      }
      case 0x8f: // EMPTY_SET
        return this.push(new Set());
      case 0x90: {
        // ADDITEMS
        const items = this.popMark();
        const target = this.top();
        if (!(target instanceof Set)) throw this.error('ADDITEMS on a value that is not a set');
        for (const item of items) target.add(item);
        return;
      }
      case 0x91: // FROZENSET
        return this.push(new Set(this.popMark()));
      case 0x70: // PUT
        return this.memoPut(this.decimal(this.line()));
      case 0x71: // BINPUT
        return this.memoPut(this.u8());
      case 0x72: // LONG_BINPUT
        return this.memoPut(this.u32());
      case 0x94: // MEMOIZE
        return this.memoPut(this.memo.size);
      case 0x67: // GET
        return this.memoGet(this.decimal(this.line()));
      case 0x68: // BINGET
        return this.memoGet(this.u8());
      case 0x6a: // LONG_BINGET
        return this.memoGet(this.u32());
      case 0x63: {
        // GLOBAL
        const module = this.line();
        return this.push(this.global(module, this.line()));
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = this.pop();
        const module = this.pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw this.error('STACK_GLOBAL needs two strings');
        return this.push(this.global(module, name));
      }
      case 0x52: {
        // REDUCE
        const args = this.pop();
        const callable = this.pop();
        return this.push(this.reduce(callable, args));
      }
      case 0x81: {
        // NEWOBJ
        const args = this.pop();
        const cls = this.pop();
        if (!Array.isArray(args)) throw this.error('NEWOBJ arguments are not a tuple');
        return this.push(new PyInstance(cls, args));
      }
      case 0x92: {
        // NEWOBJ_EX: keyword arguments are kept as a trailing Map argument
        const kwargs = this.pop();
        const args = this.pop();
        const cls = this.pop();
        if (!Array.isArray(args) || !(kwargs instanceof Map)) throw this.error('NEWOBJ_EX needs a tuple and a dict');
        return this.push(new PyInstance(cls, kwargs.size ? [...args, kwargs] : args));
      }
      case 0x69: {
        // INST (protocol 0)
        const module = this.line();
        const cls = this.global(module, this.line());
        return this.push(new PyInstance(cls, this.popMark()));
      }
      case 0x6f: {
        // OBJ (protocol 1)
        const items = this.popMark();
        if (items.length === 0) throw this.error('OBJ without a class');
        return this.push(new PyInstance(items[0]!, items.slice(1)));
      }
      case 0x62: {
        // BUILD
        const state = this.pop();
        const target = this.top();
        // On a dict, list or set (an OrderedDict with attributes, like a torch state_dict's
        // _metadata) the state is dropped: only objects keep theirs.
        if (target instanceof PyInstance) target.state = state;
        else if (target === null || typeof target !== 'object' || target instanceof PyGlobal || target instanceof PyPersistentRef || target instanceof Uint8Array) {
          throw this.error('BUILD on a value that is not an object');
        }
        return;
      }
      case 0x51: // BINPERSID
        return this.push(new PyPersistentRef(this.pop()));
      case 0x50: // PERSID
        return this.push(new PyPersistentRef(this.line()));
      default:
        throw this.error(`unsupported opcode 0x${op.toString(16).padStart(2, '0')}`);
    }
  }
}
