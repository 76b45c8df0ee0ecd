import { inflateRawSync } from 'node:zlib';
import { readAt, u64 } from './read-at.js';

/**
 * The parts of the ZIP format (APPNOTE 6.3, with ZIP64) that torch.save archives use: the
 * end-of-central-directory record (and its ZIP64 locator/record), the central directory and the
 * local headers. Everything is read with positioned reads inside [base, base + size) (a torch.save
 * archive may sit inside a DCP shard), and every inconsistency is reported as a reason, never
 * thrown; only I/O errors throw.
 */

export interface ZipEntry {
  readonly name: string;
  /** 0: stored, 8: deflate. */
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly localHeaderOffset: number;
  /** Where the entry's data starts (after its local header), relative to the archive start. */
  readonly dataOffset: number;
}

export interface ZipDirectory {
  readonly entries: readonly ZipEntry[];
  /** Where the central directory starts, relative to the archive start. */
  readonly centralDirectoryOffset: number;
}

export type ZipRead = { readonly ok: true; readonly zip: ZipDirectory } | { readonly ok: false; readonly reason: string };

/** Largest central directory read (bounded memory; a torch.save archive has ~100 bytes per tensor). */
export const MAX_CENTRAL_DIRECTORY_BYTES = 64 << 20;

const EOCD_SIGNATURE = 0x06054b50;
const EOCD_SIZE = 22;
const MAX_COMMENT = 0xffff;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_LOCATOR_SIZE = 20;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const ZIP64_EOCD_SIZE = 56;
const CENTRAL_SIGNATURE = 0x02014b50;
const CENTRAL_SIZE = 46;
const LOCAL_SIGNATURE = 0x04034b50;
const LOCAL_SIZE = 30;
const ZIP64_EXTRA_ID = 0x0001;
const U16_MAX = 0xffff;
/** Local headers read at once. */
const LOCAL_HEADER_READS = 8;
const U32_MAX = 0xffffffff;

const fail = (reason: string): ZipRead => ({ ok: false, reason });

/** The first four bytes of a ZIP archive (a local header). */
export function looksLikeZip(head: Buffer): boolean {
  return head.length >= 4 && head.readUInt32LE(0) === LOCAL_SIGNATURE;
}

/**
 * Reads and checks the archive's directory: an end record that ends exactly at the end of the
 * range, a central directory right before it (or before the ZIP64 record) with the announced
 * number of entries and size, and for every entry a local header with the same name whose data
 * lies before the central directory without overlapping another entry's.
 */
export async function readZipDirectory(fd: number, base: number, size: number): Promise<ZipRead> {
  if (size < EOCD_SIZE) return fail(`${size} bytes is too short for a ZIP end-of-central-directory record`);
  // Archives without a comment (torch.save's) are found with one small read; others need a scan
  // of the last 64 KiB.
  let found = await findEndRecord(fd, base, size, EOCD_SIZE + ZIP64_LOCATOR_SIZE);
  if (found.eocd < 0 && size > EOCD_SIZE + ZIP64_LOCATOR_SIZE) found = await findEndRecord(fd, base, size, EOCD_SIZE + MAX_COMMENT + ZIP64_LOCATOR_SIZE);
  const { tail, tailStart, eocd } = found;
  if (eocd < 0) return fail('no ZIP end-of-central-directory record at the end (truncated or still being written)');

  const disk = tail.readUInt16LE(eocd + 4);
  const cdDisk = tail.readUInt16LE(eocd + 6);
  let count = tail.readUInt16LE(eocd + 10);
  let cdSize = tail.readUInt32LE(eocd + 12);
  let cdOffset = tail.readUInt32LE(eocd + 16);
  if (disk !== 0 || cdDisk !== 0) return fail('multi-disk ZIP archives are not supported');
  /** Where the central directory must end: at the ZIP64 record when there is one, else at the end record. */
  let cdEnd = tailStart + eocd;

  const locatorAt = eocd - ZIP64_LOCATOR_SIZE;
  if (locatorAt >= 0 && tail.readUInt32LE(locatorAt) === ZIP64_LOCATOR_SIGNATURE) {
    const recordOffset = u64(tail, locatorAt + 8);
    if (recordOffset === undefined || recordOffset + ZIP64_EOCD_SIZE > tailStart + locatorAt) {
      return fail('the ZIP64 end-of-central-directory locator points outside the file');
    }
    const record = await readAt(fd, base + recordOffset, ZIP64_EOCD_SIZE);
    if (record.length < ZIP64_EOCD_SIZE || record.readUInt32LE(0) !== ZIP64_EOCD_SIGNATURE) {
      return fail('no ZIP64 end-of-central-directory record where its locator points');
    }
    const recordSize = u64(record, 4);
    if (recordSize === undefined || recordOffset + 12 + recordSize !== tailStart + locatorAt) {
      return fail('the ZIP64 end-of-central-directory record does not end at its locator');
    }
    const count64 = u64(record, 32);
    const cdSize64 = u64(record, 40);
    const cdOffset64 = u64(record, 48);
    if (count64 === undefined || cdSize64 === undefined || cdOffset64 === undefined) return fail('ZIP64 sizes beyond 2^53');
    count = count64;
    cdSize = cdSize64;
    cdOffset = cdOffset64;
    cdEnd = recordOffset;
  } else if (count === U16_MAX || cdSize === U32_MAX || cdOffset === U32_MAX) {
    return fail('the end record announces ZIP64 but there is no ZIP64 locator');
  }

  if (cdOffset + cdSize !== cdEnd) {
    return fail(`the central directory (${cdOffset}+${cdSize}) does not end where the end record starts (${cdEnd})`);
  }
  if (cdSize > MAX_CENTRAL_DIRECTORY_BYTES) return fail(`central directory of ${cdSize} bytes is over the ${MAX_CENTRAL_DIRECTORY_BYTES}-byte limit`);
  if (count * CENTRAL_SIZE > cdSize) return fail(`${count} entries cannot fit in a central directory of ${cdSize} bytes`);
  const cd = await readAt(fd, base + cdOffset, cdSize);
  if (cd.length < cdSize) return fail('the file ended inside the central directory');

  const central: Omit<ZipEntry, 'dataOffset'>[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + CENTRAL_SIZE > cd.length || cd.readUInt32LE(at) !== CENTRAL_SIGNATURE) return fail(`central directory entry ${i} is damaged`);
    const method = cd.readUInt16LE(at + 10);
    let compressedSize = cd.readUInt32LE(at + 20);
    let uncompressedSize = cd.readUInt32LE(at + 24);
    const nameLength = cd.readUInt16LE(at + 28);
    const extraLength = cd.readUInt16LE(at + 30);
    const commentLength = cd.readUInt16LE(at + 32);
    let localHeaderOffset = cd.readUInt32LE(at + 42);
    const next = at + CENTRAL_SIZE + nameLength + extraLength + commentLength;
    if (next > cd.length) return fail(`central directory entry ${i} runs past the directory`);
    const name = cd.toString('utf8', at + CENTRAL_SIZE, at + CENTRAL_SIZE + nameLength);
    // ZIP64 extended information: only the fields whose 32-bit value is saturated, in this order.
    const extra = cd.subarray(at + CENTRAL_SIZE + nameLength, at + CENTRAL_SIZE + nameLength + extraLength);
    const wants = [uncompressedSize === U32_MAX, compressedSize === U32_MAX, localHeaderOffset === U32_MAX];
    if (wants.some(Boolean)) {
      const values = zip64Extra(extra, wants);
      if (!values) return fail(`central directory entry ${name} lacks its ZIP64 sizes`);
      [uncompressedSize, compressedSize, localHeaderOffset] = [values[0] ?? uncompressedSize, values[1] ?? compressedSize, values[2] ?? localHeaderOffset];
    }
    central.push({ name, method, compressedSize, size: uncompressedSize, localHeaderOffset });
    at = next;
  }
  if (at !== cd.length) return fail('the central directory has bytes after its last entry');

  // Local headers carry their own extra field (torch's 64-byte alignment padding), so each is
  // read; a few at a time, so that an archive with many storages is not one round trip each.
  const entries: ZipEntry[] = [];
  for (let i = 0; i < central.length; i += LOCAL_HEADER_READS) {
    const batch = central.slice(i, i + LOCAL_HEADER_READS);
    const headers = await Promise.all(batch.map((e) => readAt(fd, base + e.localHeaderOffset, LOCAL_SIZE + Buffer.byteLength(e.name))));
    for (const [j, entry] of batch.entries()) {
      const header = headers[j]!;
      if (header.length < LOCAL_SIZE || header.readUInt32LE(0) !== LOCAL_SIGNATURE) return fail(`no local header for ${entry.name}`);
      const nameLength = header.readUInt16LE(26);
      if (header.length < LOCAL_SIZE + nameLength || header.toString('utf8', LOCAL_SIZE, LOCAL_SIZE + nameLength) !== entry.name) {
        return fail(`the local header of ${entry.name} names another entry`);
      }
      const dataOffset = entry.localHeaderOffset + LOCAL_SIZE + nameLength + header.readUInt16LE(28);
      entries.push({ ...entry, dataOffset });
    }
  }
  const byOffset = [...entries].sort((a, b) => a.localHeaderOffset - b.localHeaderOffset);
  let end = 0;
  for (const entry of byOffset) {
    if (entry.localHeaderOffset < end) return fail(`entry ${entry.name} overlaps the entry before it`);
    end = entry.dataOffset + entry.compressedSize;
    if (end > cdOffset) return fail(`the data of ${entry.name} runs into the central directory`);
  }
  return { ok: true, zip: { entries, centralDirectoryOffset: cdOffset } };
}

/** The end record in the last `window` bytes: the last one whose comment ends exactly at the end. */
async function findEndRecord(fd: number, base: number, size: number, window: number): Promise<{ tail: Buffer; tailStart: number; eocd: number }> {
  const tailLength = Math.min(size, window);
  const tailStart = size - tailLength;
  const tail = await readAt(fd, base + tailStart, tailLength);
  if (tail.length < tailLength) return { tail, tailStart, eocd: -1 };
  for (let at = tail.length - EOCD_SIZE; at >= 0; at--) {
    if (tail.readUInt32LE(at) === EOCD_SIGNATURE && at + EOCD_SIZE + tail.readUInt16LE(at + 20) === tail.length) {
      return { tail, tailStart, eocd: at };
    }
  }
  return { tail, tailStart, eocd: -1 };
}

/** The ZIP64 extra field's values for the wanted fields (undefined where not wanted), or undefined. */
function zip64Extra(extra: Buffer, wants: boolean[]): (number | undefined)[] | undefined {
  for (let at = 0; at + 4 <= extra.length; ) {
    const id = extra.readUInt16LE(at);
    const length = extra.readUInt16LE(at + 2);
    if (at + 4 + length > extra.length) return undefined;
    if (id === ZIP64_EXTRA_ID) {
      const values: (number | undefined)[] = [];
      let field = at + 4;
      for (const want of wants) {
        if (!want) {
          values.push(undefined);
          continue;
        }
        if (field + 8 > at + 4 + length) return undefined;
        const value = u64(extra, field);
        if (value === undefined) return undefined;
        values.push(value);
        field += 8;
      }
      return values;
    }
    at += 4 + length;
  }
  return undefined;
}

/**
 * The uncompressed bytes of a (small) entry: stored or deflated; undefined when it is larger
 * than `limit` or cannot be decompressed.
 */
export async function readZipEntry(fd: number, base: number, entry: ZipEntry, limit: number): Promise<Buffer | undefined> {
  if (entry.size > limit || entry.compressedSize > limit) return undefined;
  const raw = await readAt(fd, base + entry.dataOffset, entry.compressedSize);
  if (raw.length < entry.compressedSize) return undefined;
  if (entry.method === 0) return raw;
  if (entry.method !== 8) return undefined;
  try {
    const data = inflateRawSync(raw, { maxOutputLength: limit });
    return data.length === entry.size ? data : undefined;
  } catch {
    return undefined;
  }
}
