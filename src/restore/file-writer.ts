import { constants as fsConstants, closeSync, openSync, write } from 'node:fs';
import { promisify } from 'node:util';
import { refusesDirectIo } from '../errors/errors.js';
import { loadNative } from '../util/native.js';

const writeAt = promisify(write);

/** O_DIRECT's alignment of file offsets and lengths (addon's pwriteDirect). */
const directAlign = 4096;
/** Ranges shorter than this go through the page cache: a direct write costs a thread-pool round trip and a device request. */
const directMinBytes = 64 * 1024;

/**
 * Writes a restored file's data at file offsets, from any number of concurrent reads. The
 * 4096-aligned interior of a long range is written with O_DIRECT through the addon (pwriteDirect,
 * native/src/directio.cc) on a second descriptor; the unaligned edges (< 4 KiB on each side)
 * through the page cache. Edges and interiors are whole disjoint blocks, so the two paths never
 * write the same block. Why: buffered writes of fresh page-cache pages are what bounds a restore
 * on the development VMs (docs/design.md, "Storage backends", local), and a restore of hundreds
 * of GB would evict a node's cached data. A filesystem that refuses O_DIRECT (tmpfs, some
 * overlay and network filesystems: EINVAL) is written through the page cache, as is everything
 * without the addon.
 */
export class DirectIoPolicy {
  private refused = false;

  /** The writer for a file just created at `path` (its buffered descriptor `fd`, owned by the caller). */
  open(path: string, fd: number, size: number): RestoredFileWriter {
    const pwriteDirect = loadNative()?.pwriteDirect;
    let directFd = -1;
    if (pwriteDirect && !this.refused && size >= directMinBytes) {
      try {
        directFd = openSync(path, fsConstants.O_WRONLY | fsConstants.O_DIRECT | fsConstants.O_NOFOLLOW);
      } catch (err) {
        if (!refusesDirectIo(err)) throw err;
        this.refused = true;
      }
    }
    return new RestoredFileWriter(fd, directFd, directFd >= 0 ? pwriteDirect : undefined, this);
  }

  /** The filesystem refused a direct write: the rest of this restore writes through the page cache. */
  refuse(): void {
    this.refused = true;
  }

  get directRefused(): boolean {
    return this.refused;
  }
}

export class RestoredFileWriter {
  constructor(
    private readonly fd: number,
    private directFd: number,
    private pwriteDirect: ((fd: number, data: Uint8Array, position: number) => Promise<void>) | undefined,
    private readonly policy: DirectIoPolicy,
  ) {}

  /** Writes `data` at file offset `position`. */
  async write(data: Uint8Array, position: number): Promise<void> {
    const start = Math.ceil(position / directAlign) * directAlign;
    const end = Math.floor((position + data.length) / directAlign) * directAlign;
    if (this.pwriteDirect && !this.policy.directRefused && end - start >= directMinBytes) {
      try {
        await this.pwriteDirect(this.directFd, data.subarray(start - position, end - position), start);
        await this.writeBuffered(data.subarray(0, start - position), position);
        await this.writeBuffered(data.subarray(end - position), end);
        return;
      } catch (err) {
        if (!refusesDirectIo(err)) throw err;
        this.policy.refuse();
      }
    }
    await this.writeBuffered(data, position);
  }

  private async writeBuffered(data: Uint8Array, position: number): Promise<void> {
    for (let done = 0; done < data.length; ) {
      const { bytesWritten } = await writeAt(this.fd, data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  }

  /** Closes the direct descriptor (the buffered one is the caller's). */
  close(): void {
    if (this.directFd >= 0) closeSync(this.directFd);
    this.directFd = -1;
    this.pwriteDirect = undefined;
  }
}
