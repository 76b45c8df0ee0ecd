import { read, readSync } from 'node:fs';

/**
 * Reads of at most this many bytes are made directly on the calling thread: headers are mostly in
 * the page cache, where such a read takes microseconds and a thread-pool round trip (two thread
 * handoffs) costs more than the read; a torch archive's hundreds of local headers made the
 * handoffs a large share of a backup's main-thread time.
 */
const directReadBytes = 64 * 1024;

/**
 * Up to `length` bytes of the open file `fd` from `position` (fewer at the end of the file): one
 * positioned read loop, no shared file offset. I/O errors are thrown as they come.
 */
export async function readAt(fd: number, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.allocUnsafe(length);
  let filled = 0;
  while (filled < length) {
    const n =
      length <= directReadBytes
        ? readSync(fd, buffer, filled, length - filled, position + filled)
        : await new Promise<number>((resolve, reject) => {
            read(fd, buffer, filled, length - filled, position + filled, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead)));
          });
    if (n === 0) break;
    filled += n;
  }
  return filled === length ? buffer : buffer.subarray(0, filled);
}

/** A little-endian u64 as a number, or undefined when it is beyond 2^53. */
export function u64(buffer: Buffer, at: number): number | undefined {
  const value = buffer.readBigUInt64LE(at);
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : undefined;
}
