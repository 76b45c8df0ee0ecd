import { loadNative } from '../util/native.js';

/**
 * Whether some process has the file open for writing: true/false from a read-lease probe
 * (F_SETLEASE is refused while a writer holds the file), undefined when it cannot be told (no
 * native addon, not Linux, a file system without leases, not the file's owner without
 * CAP_LEASE, the file is gone).
 */
export function openForWriting(path: string): boolean | undefined {
  return loadNative()?.openForWriting?.(path);
}
