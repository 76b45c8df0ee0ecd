import type { OpenRequest, SealRequest, SealedResult } from './ops.js';

/**
 * Seal and open requests as they cross to a worker thread: in columns (typed arrays) rather than
 * as an array of objects. postMessage clones an object graph field by field, and each ID view
 * drags its whole backing buffer along: a message of 128 small-file seals cost ~250 µs to post
 * as objects and ~80 µs with 32-byte ID copies; as columns it is a handful of objects whatever
 * the count. Pack buffers are shared memory, listed once per message.
 */
const idLength = 32;

function checkIds(r: { id: Uint8Array; base?: Uint8Array | undefined }): void {
  if (r.id.byteLength !== idLength || (r.base && r.base.byteLength !== idLength)) throw new RangeError(`blob IDs are ${idLength} bytes`);
}

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

/** Column layout of a seal request: one Float64Array row per request. */
const sealFields = 8; // type, offset, length, target, targetOffset, targetCapacity, elementSize, hasBase

export interface SealWire {
  targets: SharedArrayBuffer[];
  fields: Float64Array;
  ids: Uint8Array;
  /** idLength bytes per request; zeros where hasBase is 0. */
  bases: Uint8Array;
}

export function encodeSeals(requests: readonly SealRequest[]): SealWire {
  const n = requests.length;
  const table = new BufferTable();
  const fields = new Float64Array(n * sealFields);
  const ids = new Uint8Array(n * idLength);
  const bases = new Uint8Array(requests.some((r) => r.base) ? n * idLength : 0);
  requests.forEach((r, i) => {
    checkIds(r);
    const row = i * sealFields;
    fields[row] = r.type;
    fields[row + 1] = r.offset;
    fields[row + 2] = r.length;
    fields[row + 3] = table.indexOf(r.target);
    fields[row + 4] = r.targetOffset;
    fields[row + 5] = r.targetCapacity;
    fields[row + 6] = r.elementSize ?? 0;
    fields[row + 7] = r.base ? 1 : 0;
    ids.set(r.id, i * idLength);
    if (r.base) bases.set(r.base, i * idLength);
  });
  return { targets: table.buffers, fields, ids, bases };
}

export function decodeSeals(wire: SealWire): SealRequest[] {
  const n = wire.fields.length / sealFields;
  const requests: SealRequest[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const row = i * sealFields;
    const f = wire.fields;
    requests[i] = {
      type: f[row]!,
      id: wire.ids.subarray(i * idLength, (i + 1) * idLength),
      offset: f[row + 1]!,
      length: f[row + 2]!,
      target: wire.targets[f[row + 3]!]!,
      targetOffset: f[row + 4]!,
      targetCapacity: f[row + 5]!,
      elementSize: f[row + 6]!,
      ...(f[row + 7] ? { base: wire.bases.subarray(i * idLength, (i + 1) * idLength) } : {}),
    };
  }
  return requests;
}

/** Results in one transferable column: storedLength, flags, sealMs per request. */
const sealedFields = 3;

export function encodeSealed(results: readonly SealedResult[]): Float64Array {
  const out = new Float64Array(results.length * sealedFields);
  results.forEach((r, i) => {
    out[i * sealedFields] = r.storedLength;
    out[i * sealedFields + 1] = r.flags;
    out[i * sealedFields + 2] = r.sealMs;
  });
  return out;
}

export function decodeSealed(wire: Float64Array): SealedResult[] {
  const results: SealedResult[] = new Array(wire.length / sealedFields);
  for (let i = 0; i < results.length; i++) {
    results[i] = { storedLength: wire[i * sealedFields]!, flags: wire[i * sealedFields + 1]!, sealMs: wire[i * sealedFields + 2]! };
  }
  return results;
}

/** Column layout of an open request (target -1: verify only). */
const openFields = 8; // type, flags, rawLength, offset, storedLength, target, targetOffset, hasBase

export interface OpenWire {
  targets: SharedArrayBuffer[];
  fields: Float64Array;
  ids: Uint8Array;
  bases: Uint8Array;
}

export function encodeOpens(requests: readonly OpenRequest[]): OpenWire {
  const n = requests.length;
  const table = new BufferTable();
  const fields = new Float64Array(n * openFields);
  const ids = new Uint8Array(n * idLength);
  const bases = new Uint8Array(requests.some((r) => r.base) ? n * idLength : 0);
  requests.forEach((r, i) => {
    checkIds(r);
    const row = i * openFields;
    fields[row] = r.type;
    fields[row + 1] = r.flags;
    fields[row + 2] = r.rawLength;
    fields[row + 3] = r.offset;
    fields[row + 4] = r.storedLength;
    fields[row + 5] = r.target ? table.indexOf(r.target) : -1;
    fields[row + 6] = r.targetOffset ?? 0;
    fields[row + 7] = r.base ? 1 : 0;
    ids.set(r.id, i * idLength);
    if (r.base) bases.set(r.base, i * idLength);
  });
  return { targets: table.buffers, fields, ids, bases };
}

export function decodeOpens(wire: OpenWire): OpenRequest[] {
  const n = wire.fields.length / openFields;
  const requests: OpenRequest[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const row = i * openFields;
    const f = wire.fields;
    const target = f[row + 5]!;
    requests[i] = {
      type: f[row]!,
      id: wire.ids.subarray(i * idLength, (i + 1) * idLength),
      flags: f[row + 1]!,
      rawLength: f[row + 2]!,
      offset: f[row + 3]!,
      storedLength: f[row + 4]!,
      ...(target >= 0 ? { target: wire.targets[target]!, targetOffset: f[row + 6]! } : {}),
      ...(f[row + 7] ? { base: wire.bases.subarray(i * idLength, (i + 1) * idLength) } : {}),
    };
  }
  return requests;
}
