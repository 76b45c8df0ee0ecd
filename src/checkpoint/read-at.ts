import { read } from 'node:fs';

/**
 * Up to `length` bytes of the open file `fd` from `position` (fewer at the end of the file): one
 * positioned read loop, no shared file offset. I/O errors are thrown as they come.
 */
export async function readAt(fd: number, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.allocUnsafe(length);
  let filled = 0;
  while (filled < length) {
    const n = await new Promise<number>((resolve, reject) => {
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
