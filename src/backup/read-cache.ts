import { TenderError } from '../errors/errors.js';
import { loadNative, nativeUnavailableReason } from '../util/native.js';

/**
 * What a backup's reads leave in the page cache. A backup reads hundreds of GB once; kept in the
 * cache they would push out what the trainer keeps there (its data set, its libraries).
 * Cache-neutral reads record which pages of a file were cached before the backup touched them and
 * evict, after each read, the pages of the range read that were not: what was cached stays cached.
 */
export interface ReadCachePolicy {
  open(fd: number): FileReadCache;
}

/** Wraps the reads of one open file, in any order, with either call around each read. */
export interface FileReadCache {
  beforeRead(offset: number, length: number): void;
  afterRead(offset: number, length: number): void;
}

const noTrace: FileReadCache = { beforeRead: () => {}, afterRead: () => {} };

/** Plain reads: the kernel keeps what was read, as for any program. */
export const cachingReads: ReadCachePolicy = { open: () => noTrace };

/**
 * Cache-neutral reads (mincore + posix_fadvise DONTNEED, from the native addon). Throws when
 * they are not available here. Best effort per file: where the kernel cannot tell residency
 * (a file system without mmap), the reads are left cached rather than failing the backup.
 */
export function cacheNeutralReads(): ReadCachePolicy {
  const addon = loadNative();
  const residentPages = addon?.residentPages;
  const dropPages = addon?.dropPages;
  if (!residentPages || !dropPages) {
    const why = addon ? (addon.pageCacheUnavailable ?? 'the native addon lacks it') : nativeUnavailableReason();
    throw new TenderError('TENDER_USAGE', `cache-neutral reads are not available: ${why}`, {
      hint: 'back up without --cache-neutral, or build the native addon on Linux (npm run build:native)',
    });
  }
  return { open: (fd) => new NeutralFile(fd, residentPages, dropPages) };
}

const page = 4096;
/**
 * Residency is recorded per window, well ahead of the reads: the kernel's readahead brings in
 * pages beyond each read (a few MiB at most), and those must not be taken for the trainer's.
 */
const windowSize = 64 * 1024 * 1024;
const lookahead = 64 * 1024 * 1024;
/**
 * The page cache holds large files in folios of up to 2 MiB, naturally aligned; fadvise drops
 * only folios wholly inside its range. A folio across the start of a read was left by the previous
 * read, so each drop reaches back to the 2 MiB boundary below its start.
 */
const folioAlign = 2 * 1024 * 1024;

class NeutralFile implements FileReadCache {
  /** Window index → one byte per page, as mincore reported before this backup read there. */
  private readonly windows = new Map<number, Uint8Array | null>();

  constructor(
    private readonly fd: number,
    private readonly residentPages: (fd: number, offset: number, length: number) => Uint8Array,
    private readonly dropPages: (fd: number, offset: number, length: number, before: Uint8Array) => void,
  ) {}

  beforeRead(offset: number, length: number): void {
    const last = Math.floor((offset + length + lookahead) / windowSize);
    for (let w = Math.floor(offset / windowSize); w <= last; w++) {
      if (this.windows.has(w)) continue;
      let resident: Uint8Array | null = null;
      try {
        resident = this.residentPages(this.fd, w * windowSize, windowSize);
      } catch {
        // No residency here (no mmap on this file system): leave this window's reads cached.
      }
      this.windows.set(w, resident);
    }
  }

  afterRead(offset: number, length: number): void {
    const end = offset + length;
    for (let w = Math.floor(offset / windowSize); w * windowSize < end; w++) {
      const resident = this.windows.get(w);
      if (!resident) continue;
      const from = Math.max(Math.floor(offset / folioAlign) * folioAlign, w * windowSize);
      const to = Math.min(end, (w + 1) * windowSize);
      const firstPage = Math.floor(from / page) - (w * windowSize) / page;
      const lastPage = Math.ceil(to / page) - (w * windowSize) / page;
      try {
        this.dropPages(this.fd, from, to - from, resident.subarray(firstPage, lastPage));
      } catch {
        // Eviction is a courtesy: a file system that refuses it still gets backed up.
      }
      // Windows behind a sequential reader are not needed again.
      if (to === (w + 1) * windowSize) this.windows.delete(w);
    }
  }
}
