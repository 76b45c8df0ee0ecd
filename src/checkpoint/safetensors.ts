import { readAt, u64 } from './read-at.js';
import { type Dtype, dtypeSize, orderedExtents, type Parsed, type TensorExtent } from './types.js';

/**
 * safetensors (https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian
 * header length N, N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, ...,
 * "__metadata__": {...}}` (padded with spaces), then the data; offsets are relative to 8 + N.
 * Whole when 8 + N + the largest end offset is the file size.
 */

/** Largest header accepted (the reference implementation's own limit is 100 MB). */
export const MAX_SAFETENSORS_HEADER = 64 << 20;

const known = new Set<string>(Object.keys(dtypeSize));
/** Sizes of the safetensors dtypes that tender does not transform (lengths are still checked). */
const otherSizes: Readonly<Record<string, number>> = { U16: 2, U32: 4, U64: 8, C64: 8, F8_E8M0: 1 };

export function isSafetensorsName(path: string): boolean {
  return path.endsWith('.safetensors');
}

/** The first 9 bytes look like a safetensors file: a plausible length, then '{'. */
export function looksLikeSafetensors(head: Buffer): boolean {
  if (head.length < 9 || head[8] !== 0x7b) return false;
  const n = u64(head, 0);
  return n !== undefined && n >= 2;
}

export async function parseSafetensors(fd: number, size: number): Promise<Parsed> {
  const fail = (reason: string): Parsed => ({ ok: false, kind: 'safetensors', reason });
  if (size < 8) return fail(`${size} bytes is shorter than the 8-byte header length`);
  const head = await readAt(fd, 0, 8);
  if (head.length < 8) return fail('the file ended inside the header length');
  const headerLength = u64(head, 0);
  if (headerLength === undefined || headerLength > MAX_SAFETENSORS_HEADER) {
    return fail(`header length ${head.readBigUInt64LE(0)} is over the ${MAX_SAFETENSORS_HEADER}-byte limit`);
  }
  if (8 + headerLength > size) return fail(`the ${headerLength}-byte header runs past the end of the ${size}-byte file`);
  const header = await readAt(fd, 8, headerLength);
  if (header.length < headerLength) return fail('the file ended inside the header');
  let json: unknown;
  try {
    json = JSON.parse(header.toString('utf8'));
  } catch {
    return fail('the header is not valid JSON');
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return fail('the header is not a JSON object');

  const dataStart = 8 + headerLength;
  const extents: TensorExtent[] = [];
  let maxEnd = 0;
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') continue;
    const info = tensorInfo(entry);
    if (typeof info === 'string') return fail(`tensor ${JSON.stringify(name)}: ${info}`);
    maxEnd = Math.max(maxEnd, info.end);
    extents.push({ name, dtype: info.dtype, offset: dataStart + info.begin, length: info.end - info.begin });
  }
  const expectedSize = dataStart + maxEnd;
  const ordered = orderedExtents(extents, Number.MAX_SAFE_INTEGER);
  if (!ordered) return fail('tensors overlap');
  return { ok: true, layout: { kind: 'safetensors', extents: ordered }, expectedSize };
}

function tensorInfo(entry: unknown): { dtype: Dtype; begin: number; end: number } | string {
  if (typeof entry !== 'object' || entry === null) return 'not an object';
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== 'string') return 'no dtype';
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) return 'bad shape';
  if (!Array.isArray(offsets) || offsets.length !== 2) return 'bad data_offsets';
  const [begin, end] = offsets as unknown[];
  if (!Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || (begin as number) < 0 || (end as number) < (begin as number)) {
    return 'bad data_offsets';
  }
  const elementSize = known.has(dtype) ? dtypeSize[dtype as Exclude<Dtype, 'unknown'>] : otherSizes[dtype];
  if (elementSize !== undefined) {
    const elements = (shape as number[]).reduce((a, b) => a * b, 1);
    if (elements * elementSize !== (end as number) - (begin as number)) return `${dtype}${JSON.stringify(shape)} does not fill data_offsets`;
  }
  return { dtype: known.has(dtype) ? (dtype as Dtype) : 'unknown', begin: begin as number, end: end as number };
}
