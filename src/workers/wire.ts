import type { OpenRequest, SealRequest, SealedResult } from './ops.js';

/**
 * Seal and open requests as they cross to a worker thread: in columns (typed arrays) rather than
 * as an array of objects. postMessage clones an object graph field by field, and an ID view takes
 * its whole backing buffer along (once per message): serializing 128 small-file seal requests
 * took ~146 µs of CPU as objects and ~27 µs as columns, encoding included. Pack buffers are
 * shared memory, listed once per message.
 */
const idLength = 32;

/** Shared buffers, each listed once; requests refer to them by index. */
class BufferTable {
  readonly buffers: SharedArrayBuffer[] = [];
  private readonly index = new Map<SharedArrayBuffer, number>();

  indexOf(buffer: SharedArrayBuffer): number {
    let i = this.index.get(buffer);
    if (i === undefined) {
      i = this.buffers.length;
      this.buffers.push(buffer);
      this.index.set(buffer, i);
    }
    return i;
  }
}

/** Requests in columns: numeric fields per row, the IDs and delta-base IDs, the shared buffers. */
export interface RequestColumns {
  targets: SharedArrayBuffer[];
  fields: Float64Array;
  ids: Uint8Array;
  /** idLength bytes per request; empty when no request has a base, zeros where one has none. */
  bases: Uint8Array;
}

type Row = { id: Uint8Array; base?: Uint8Array | undefined };

/** `writeRow` fills fields[at, at + width); the IDs, bases and buffer table are common. */
function encodeRows<R extends Row>(requests: readonly R[], width: number, writeRow: (r: R, fields: Float64Array, at: number, table: BufferTable) => void): RequestColumns {
  const n = requests.length;
  const table = new BufferTable();
  const fields = new Float64Array(n * width);
  const ids = new Uint8Array(n * idLength);
  const bases = new Uint8Array(requests.some((r) => r.base) ? n * idLength : 0);
  requests.forEach((r, i) => {
    if (r.id.byteLength !== idLength || (r.base && r.base.byteLength !== idLength)) throw new RangeError(`blob IDs are ${idLength} bytes`);
    writeRow(r, fields, i * width, table);
    ids.set(r.id, i * idLength);
    if (r.base) bases.set(r.base, i * idLength);
  });
  return { targets: table.buffers, fields, ids, bases };
}

/** `readRow` builds a request from fields[at, at + width), its ID and its base (when it has one). */
function decodeRows<R>(wire: RequestColumns, width: number, readRow: (f: Float64Array, at: number, id: Uint8Array, base: Uint8Array | undefined) => R): R[] {
  const n = wire.fields.length / width;
  const rows: R[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const base = wire.bases.length > 0 ? wire.bases.subarray(i * idLength, (i + 1) * idLength) : undefined;
    rows[i] = readRow(wire.fields, i * width, wire.ids.subarray(i * idLength, (i + 1) * idLength), base);
  }
  return rows;
}

// A seal row: type, offset, length, target, targetOffset, targetCapacity, elementSize, hasBase.
const sealWidth = 8;

export function encodeSeals(requests: readonly SealRequest[]): RequestColumns {
  return encodeRows(requests, sealWidth, (r, f, at, table) => {
    f.set([r.type, r.offset, r.length, table.indexOf(r.target), r.targetOffset, r.targetCapacity, r.elementSize ?? 0, r.base ? 1 : 0], at);
  });
}

export function decodeSeals(wire: RequestColumns): SealRequest[] {
  return decodeRows(wire, sealWidth, (f, at, id, base) => ({
    type: f[at]!,
    id,
    offset: f[at + 1]!,
    length: f[at + 2]!,
    target: wire.targets[f[at + 3]!]!,
    targetOffset: f[at + 4]!,
    targetCapacity: f[at + 5]!,
    elementSize: f[at + 6]!,
    ...(f[at + 7] ? { base: base! } : {}),
  }));
}

// An open row: type, flags, rawLength, offset, storedLength, target (-1: verify only), targetOffset, hasBase.
const openWidth = 8;

export function encodeOpens(requests: readonly OpenRequest[]): RequestColumns {
  return encodeRows(requests, openWidth, (r, f, at, table) => {
    f.set([r.type, r.flags, r.rawLength, r.offset, r.storedLength, r.target ? table.indexOf(r.target) : -1, r.targetOffset ?? 0, r.base ? 1 : 0], at);
  });
}

export function decodeOpens(wire: RequestColumns): OpenRequest[] {
  return decodeRows(wire, openWidth, (f, at, id, base) => ({
    type: f[at]!,
    id,
    flags: f[at + 1]!,
    rawLength: f[at + 2]!,
    offset: f[at + 3]!,
    storedLength: f[at + 4]!,
    ...(f[at + 5]! >= 0 ? { target: wire.targets[f[at + 5]!]!, targetOffset: f[at + 6]! } : {}),
    ...(f[at + 7] ? { base: base! } : {}),
  }));
}

// A seal result: storedLength, flags, sealMs; all results in one transferable array.
const sealedWidth = 3;

export function encodeSealed(results: readonly SealedResult[]): Float64Array {
  const out = new Float64Array(results.length * sealedWidth);
  results.forEach((r, i) => out.set([r.storedLength, r.flags, r.sealMs], i * sealedWidth));
  return out;
}

export function decodeSealed(wire: Float64Array): SealedResult[] {
  const results: SealedResult[] = new Array(wire.length / sealedWidth);
  for (let i = 0; i < results.length; i++) {
    const at = i * sealedWidth;
    results[i] = { storedLength: wire[at]!, flags: wire[at + 1]!, sealMs: wire[at + 2]! };
  }
  return results;
}
