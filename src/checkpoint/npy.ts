import { readAt } from './read-at.js';
import type { Dtype, Parsed } from './types.js';

/**
 * NumPy .npy (numpy/lib/format.py): "\x93NUMPY", major and minor version, a header length (u16 in
 * version 1, u32 in 2 and 3), a Python dict literal {'descr': '<f4', 'fortran_order': False,
 * 'shape': (3, 4), } padded to a multiple of 64 (16 in old files), then the raw array. Whole when
 * the file is exactly header + product(shape) * itemsize bytes. Object arrays (pickled) and
 * structured dtypes are not handled.
 */

const MAGIC = Buffer.from('\x93NUMPY', 'latin1');
/** Largest header accepted (numpy itself refuses headers over 10000 bytes by default). */
const MAX_NPY_HEADER = 64 << 10;

const dtypes: Readonly<Record<string, Dtype>> = {
  f8: 'F64',
  f4: 'F32',
  f2: 'F16',
  i8: 'I64',
  i4: 'I32',
  i2: 'I16',
  i1: 'I8',
  u1: 'U8',
  b1: 'BOOL',
};

export function isNpyName(path: string): boolean {
  return path.endsWith('.npy');
}

export function looksLikeNpy(head: Buffer): boolean {
  return head.length >= MAGIC.length && head.subarray(0, MAGIC.length).equals(MAGIC);
}

export async function parseNpy(fd: number, size: number): Promise<Parsed> {
  const fail = (reason: string): Parsed => ({ ok: false, kind: 'npy', reason });
  const prefix = await readAt(fd, 0, 12);
  if (prefix.length < 10) return fail(`${size} bytes is shorter than the .npy preamble`);
  if (!looksLikeNpy(prefix)) return fail('no .npy magic');
  const major = prefix[6]!;
  if (major < 1 || major > 3) return fail(`unknown .npy version ${major}`);
  let headerStart: number;
  let headerLength: number;
  if (major === 1) {
    headerStart = 10;
    headerLength = prefix.readUInt16LE(8);
  } else {
    if (prefix.length < 12) return fail('the file ended inside the preamble');
    headerStart = 12;
    headerLength = prefix.readUInt32LE(8);
  }
  if (headerLength > MAX_NPY_HEADER) return fail(`header of ${headerLength} bytes is over the ${MAX_NPY_HEADER}-byte limit`);
  const dataStart = headerStart + headerLength;
  if (dataStart > size) return fail('the file ended inside the header');
  const header = (await readAt(fd, headerStart, headerLength)).toString(major === 3 ? 'utf8' : 'latin1');
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || shapeText === undefined || !/'fortran_order':\s*(True|False)/.test(header)) {
    return fail('the header is not a plain-array .npy header');
  }
  const type = /^([<>|=])([a-zA-Z])(\d+)$/.exec(descr);
  if (!type || type[2] === 'O') return fail(`dtype ${JSON.stringify(descr)} is not a plain array type`);
  const itemSize = Number(type[3]);
  const dims = shapeText.split(',').map((d) => d.trim()).filter((d) => d !== '');
  if (!dims.every((d) => /^\d+$/.test(d))) return fail('bad shape');
  const elements = dims.reduce((a, d) => a * Number(d), 1);
  const length = elements * itemSize;
  if (!Number.isSafeInteger(length)) return fail('array size beyond 2^53');
  // Big-endian data is not what the per-dtype transforms expect: its extent carries no dtype.
  const littleEndian = type[1] === '<' || type[1] === '|' || (type[1] === '=' && itemSize === 1);
  const dtype = littleEndian ? (dtypes[`${type[2]}${type[3]}`] ?? 'unknown') : 'unknown';
  const extents = length > 0 ? [{ name: 'array', dtype, offset: dataStart, length }] : [];
  return { ok: true, layout: { kind: 'npy', extents }, expectedSize: dataStart + length };
}
