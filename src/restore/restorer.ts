import { execFile } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { promisify } from 'node:util';
import { chmodSync, closeSync, ftruncateSync, lchownSync, lutimesSync, openSync, unlinkSync, utimesSync, write, writeSync } from 'node:fs';
import { link, lstat, mkdir, readdir, rm, rmdir, symlink } from 'node:fs/promises';
import path from 'node:path';
import { minimatch } from 'minimatch';
import pLimit from 'p-limit';
import { sealOverhead } from '../crypto/aead.js';
import { TenderError, systemErrorCode } from '../errors/errors.js';
import { BlobType } from '../repo/blob.js';
import { idToHex } from '../repo/ids.js';
import { blobNotIndexed, corrupt, type Repository } from '../repo/repository.js';
import { type ChunkIndex, type FileChunk, fileChunks } from '../repo/snapshot/file-chunks.js';
import type { Snapshot } from '../repo/snapshot/snapshot.js';
import { type TreeNode, isSafeName } from '../repo/snapshot/tree.js';
import { type OperationContext, cancelledError, throwIfCancelled } from '../util/operation.js';
import { type PackRead, planReads } from './plan.js';
import { type BufferPair, PackReader, type RestoreSource } from './reader.js';

export interface RestoreOptions {
  target: string;
  /** Globs on the path inside the snapshot ("ckpt/step-100/**"); a match includes everything below it. */
  include?: string[];
  /** Restore into a non-empty target, replacing entries that are in the way. */
  overwrite?: boolean;
  /**
   * A directory inside the snapshot ("ckpt", "ckpt/step-100"): its contents go straight into the
   * target (restic's snapshot:subfolder), e.g. one volume's files into a fresh PVC.
   */
  subpath?: string;
  /**
   * Leave out files labelled torn or incomplete and checkpoint directories whose verdict in the
   * snapshot is incomplete (with everything in them); each is listed in `skipped`.
   */
  onlyConsistent?: boolean;
  /**
   * Large reads in flight (read-ahead across packs), default 4: each holds a read buffer and a
   * plaintext buffer of max(8 MiB, the chunker's maxSize) + 28 bytes while it runs.
   */
  readAhead?: number;
}

export interface RestoreProgress {
  filesDone: number;
  bytesDone: number;
  totalBytes?: number;
}

export interface RestoreError {
  path: string;
  message: string;
}

export interface RestoreResult {
  files: number;
  dirs: number;
  bytes: number;
  errors: RestoreError[];
  /** Entries `onlyConsistent` left out, with why. */
  skipped: RestoreError[];
}

const execFileAsync = promisify(execFile);
const writeAt = promisify(write);
const zeroBlock = Buffer.alloc(8 * 1024 * 1024);

function isAllZero(buf: Uint8Array): boolean {
  for (let at = 0; at < buf.length; at += zeroBlock.length) {
    const part = buf.subarray(at, Math.min(buf.length, at + zeroBlock.length));
    if (Buffer.compare(part, zeroBlock.subarray(0, part.length)) !== 0) return false;
  }
  return true;
}

/**
 * Restore mirrors backup: tree walk → plan ranged reads per pack → decrypt+decompress+verify in
 * workers → positional writes in order. Every name is checked before anything is created; files
 * are created with O_EXCL|O_NOFOLLOW, and directories are entered only if they are real
 * directories (with --overwrite, a symlink in the way is removed, never followed), so a hostile
 * snapshot (names with "/" or "..", duplicate names, symlink tricks) cannot write outside the target.
 */
export async function restore(repo: Repository, snapshot: Snapshot, options: RestoreOptions, ctx: OperationContext): Promise<RestoreResult> {
  const target = path.resolve(options.target);
  throwIfCancelled(ctx.signal);
  await repo.refreshIndex();
  // Every lookup of this restore goes through one view: pack numbers are the view's own.
  const src: RestoreSource = { repo, view: repo.index };
  const rootTree = await subpathTree(src, snapshot.tree, options.subpath);
  await prepareTarget(target, options.overwrite ?? false);
  /** Creates an entry; with overwrite, whatever is in its place (never followed if a symlink) goes first. */
  const create = async (full: string, make: () => Promise<unknown>, keepDirectory = false): Promise<void> => {
    try {
      await make();
    } catch (err) {
      if (systemErrorCode(err) !== 'EEXIST' || !options.overwrite) throw err;
      const existing = await lstat(full);
      if (keepDirectory && existing.isDirectory()) return;
      await rm(full, { recursive: true, force: true });
      await make();
    }
  };
  const reader = new PackReader(src, repo.executor());
  const chunkRefs = chunkResolver(src);
  // A read must hold at least one whole blob: the repository's largest chunk, stored raw.
  const largeBufferSize = Math.max(largeReadSize, repo.config.chunker.maxSize) + sealOverhead;
  const readAhead = options.readAhead ?? defaultReadAhead;
  if (!Number.isSafeInteger(readAhead) || readAhead < 1) {
    throw new TenderError('TENDER_USAGE', `read-ahead ${readAhead} is not a positive whole number`, { hint: 'give a number of reads in flight, e.g. 4' });
  }
  const leases = [
    repo.leaseBuffers('restore-reads', largeBufferSize, readAhead),
    repo.leaseBuffers('restore-plaintext', largeBufferSize, readAhead),
    repo.leaseBuffers('restore-reads', smallReadSize, 16),
    repo.leaseBuffers('restore-plaintext', smallReadSize, 16),
  ] as const;
  const buffers: RestoreBuffers = {
    large: { reads: leases[0].pool, plaintext: leases[1].pool },
    small: { reads: leases[2].pool, plaintext: leases[3].pool },
  };
  const result: RestoreResult = { files: 0, dirs: 0, bytes: 0, errors: [], skipped: [] };
  const inconsistency = options.onlyConsistent ? inconsistencyOf(snapshot, options.subpath) : undefined;
  const progress: RestoreProgress = { filesDone: 0, bytesDone: 0 };
  /** First path restored for each hardlinked inode, resolved once that file is complete. */
  const hardlinks = new Map<string, Promise<string>>();
  // Many files at once: small files are one request each, so latency, not bandwidth, bounds them.
  const files = pLimit(16);
  /** Reads for batches of small files in flight (each fills one small buffer pair). */
  const smallReads = pLimit(4);
  const isRoot = process.getuid?.() === 0;
  const include = options.include?.map((g) => g.replace(/^\/+/, '').replace(/\/+$/, ''));
  const matches = (rel: string) => !include || include.some((g) => minimatch(rel, g, { dot: true }));
  const couldContainMatch = (rel: string) => !include || include.some((g) => minimatch(rel, g, { dot: true, partial: true }));

  const report = () => ctx.events.emit('progress', progress);
  /** The first error that ends the restore (damaged repository, full disk, cancel); later work is skipped. */
  let fatal: unknown;
  const onAbort = () => (fatal ??= cancelledError(ctx.signal));
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  /** Records a per-entry failure, or the fatal one. Never throws, so pending work cannot go unobserved. */
  const fail = (p: string, err: unknown): void => {
    // The error that stopped it is already recorded.
    if (err instanceof RestoreStopped) return;
    const code = systemErrorCode(err);
    if (code === 'ENOSPC' || code === 'EDQUOT') {
      fatal ??= new TenderError('TENDER_DISK_FULL', `the disk under ${target} is full (writing ${p})`, {
        hint: 'free space or choose another --target, then restore again; the repository is unchanged',
        cause: err,
      });
    } else if (err instanceof TenderError && err.code !== 'TENDER_UNSAFE_PATH') {
      fatal ??= err;
    } else {
      result.errors.push({ path: p, message: (err as Error).message });
    }
  };

  // Metadata calls are direct (synchronous): on a local disk each is a few microseconds, far
  // less than a thread-pool round trip, and a tree of small files is mostly metadata.
  const setMetadata = (full: string, node: TreeNode): void => {
    const mtime = Number(BigInt(node.mtime) / 1000n) / 1e6;
    if (isRoot) {
      try {
        lchownSync(full, node.uid, node.gid);
      } catch {
        // Owners that do not exist here: keep the restoring user's.
      }
    }
    if (node.type === 'symlink') {
      lutimesSync(full, mtime, mtime);
      return;
    }
    chmodSync(full, node.mode);
    utimesSync(full, mtime, mtime);
  };

  /** Restores a file, or links it to the first restored path of its inode (waiting outside the file limiter). */
  const restoreFileOrLink = (full: string, rel: string, node: TreeNode): Promise<void> => {
    const linkKey = node.links > 1 ? `${node.device}:${node.inode}` : undefined;
    const first = linkKey ? hardlinks.get(linkKey) : undefined;
    if (first) {
      return first.then(async (firstPath) => {
        await create(full, () => link(firstPath, full));
        result.files++;
      });
    }
    const done = files(() => restoreFile(full, rel, node)).then(() => full);
    if (linkKey) hardlinks.set(linkKey, done);
    return done.then(() => undefined);
  };

  const restoreFile = async (full: string, rel: string, node: TreeNode) => {
    if (fatal) return;
    let fd = -1;
    await create(full, async () => {
      fd = openSync(full, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
    });
    try {
      const refs = await chunkRefs(node);
      const written = await writeContent(reader, buffers, fd, refs, () => fatal !== undefined, (n) => {
        progress.bytesDone += n;
        report();
      });
      if (written !== node.size) throw corrupt(`file ${rel}`, `restored to ${written} bytes, the snapshot says ${node.size}`);
      // Holes were skipped, not written: set the length so trailing holes exist too.
      ftruncateSync(fd, written);
    } catch (err) {
      // Never leave a half-written file behind that could pass for the restored one.
      closeSync(fd);
      fd = -1;
      try {
        unlinkSync(full);
      } catch {
        // Gone already: nothing is left to mistake for the file.
      }
      throw err;
    } finally {
      if (fd !== -1) closeSync(fd);
    }
    setMetadata(full, node);
    result.files++;
    result.bytes += node.size!;
    progress.filesDone++;
    report();
  };

  /**
   * Restores files of one chunk each (small files) together: their blobs are read pack by pack
   * in ranged reads across files and opened in one worker message per read, so a directory of
   * thousands of small files costs a few reads instead of thousands of round trips.
   */
  const restoreSmallFiles = async (batch: SmallFile[]): Promise<void> => {
    try {
      await restoreBatch(batch);
    } finally {
      const notRestored = new Error('its first link was not restored');
      for (const file of batch) if (!file.restored) file.linked?.reject(notRestored);
    }
  };

  const restoreBatch = async (batch: SmallFile[]): Promise<void> => {
    const byBlob = new Map<string, { ref: FileChunk; files: SmallFile[] }>();
    for (const file of batch) {
      const hex = file.node.content![0]!;
      let blob = byBlob.get(hex);
      if (!blob) {
        const [ref] = await chunkRefs(file.node).catch((err) => {
          fail(file.rel, err);
          return [];
        });
        if (!ref) continue;
        byBlob.set(hex, (blob = { ref, files: [] }));
      }
      blob.files.push(file);
    }
    const blobs = [...byBlob.values()].sort((a, b) => a.ref.loc.packIndex - b.ref.loc.packIndex || a.ref.loc.offset - b.ref.loc.offset);
    const filesOf = new Map(blobs.map((b) => [b.ref, b.files]));
    const reads = planReads(
      blobs.map((b) => b.ref),
      smallReadSize,
      smallReadSize,
    );
    const writeFiles = async (chunk: Uint8Array, files: SmallFile[]) => {
      for (const file of files) {
        const { full, rel, node } = file;
        if (fatal) return;
        try {
          if (chunk.length !== node.size) throw corrupt(`file ${rel}`, `restored to ${chunk.length} bytes, the snapshot says ${node.size}`);
          let fd = -1;
          await create(full, async () => {
            fd = openSync(full, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
          });
          try {
            if (!isAllZero(chunk)) for (let done = 0; done < chunk.length; ) done += writeSync(fd, chunk, done, chunk.length - done, done);
            ftruncateSync(fd, chunk.length);
          } finally {
            closeSync(fd);
          }
          setMetadata(full, node);
          file.restored = true;
          file.linked?.resolve(full);
          result.files++;
          result.bytes += node.size!;
          progress.filesDone++;
          progress.bytesDone += chunk.length;
          report();
        } catch (err) {
          file.linked?.reject(err);
          fail(rel, err);
        }
      }
    };
    await Promise.all(
      reads.map((read) =>
        smallReads(async () => {
          if (fatal) return;
          const pools = buffersFor(buffers, read);
          await reader.read(pools, await reader.reserve(pools), read, (ref, chunk) => writeFiles(chunk, filesOf.get(ref)!));
        }).catch((err) => fail(filesOf.get(read.refs[0]!)![0]!.rel, err)),
      ),
    );
  };

  /** Restores the children of a directory; returns how many entries it restored there. */
  const restoreDir = async (dirFull: string, dirRel: string, subtree: string, wholeDir: boolean): Promise<number> => {
    const tree = await repo.loadTree(subtree, src.view);
    const seen = new Set<string>();
    const pendingFiles: Promise<void>[] = [];
    const dirsToFinish: Array<[string, TreeNode]> = [];
    let smallFiles: SmallFile[] = [];
    /** Starts the batch collected so far: before descending, since links below may wait for it. */
    const startSmallFiles = () => {
      if (smallFiles.length > 0) pendingFiles.push(restoreSmallFiles(smallFiles));
      smallFiles = [];
    };
    let restored = 0;
    for (const node of tree.nodes) {
      if (fatal) break;
      if (dirRel === '' && dirFull === target && node.name === '/' && node.type === 'dir' && tree.nodes.length === 1) {
        // A snapshot of `/`: its root directory is the target itself.
        restored += await restoreDir(target, '', node.subtree!, wholeDir);
        continue;
      }
      const rel = dirRel === '' ? node.name : `${dirRel}/${node.name}`;
      if (!isSafeName(node.name) || seen.has(node.name)) {
        fail(rel, new TenderError('TENDER_UNSAFE_PATH', `refusing unsafe or duplicate name ${JSON.stringify(node.name)} in the snapshot`));
        continue;
      }
      seen.add(node.name);
      const included = wholeDir || matches(rel);
      if (!included && !(node.type === 'dir' && couldContainMatch(rel))) continue;
      const why = inconsistency?.(rel, node);
      if (why !== undefined) {
        result.skipped.push({ path: rel, message: why });
        continue;
      }
      const full = path.join(dirFull, node.name);
      try {
        switch (node.type) {
          case 'dir':
            startSmallFiles();
            // An existing real directory is reused; a symlink in its place is replaced, never followed.
            await create(full, () => mkdir(full, { mode: 0o700 }), true);
            // A directory entered only on the way to --include matches is dropped if none were inside.
            if ((await restoreDir(full, rel, node.subtree!, included)) === 0 && !included) {
              await rmdir(full);
              break;
            }
            dirsToFinish.push([full, node]);
            result.dirs++;
            restored++;
            break;
          case 'file': {
            const linkKey = node.links > 1 ? `${node.device}:${node.inode}` : undefined;
            if (isSmallFile(node) && !(linkKey && hardlinks.has(linkKey))) {
              const file: SmallFile = { full, rel, node };
              // Other links to this inode wait for this file, as in restoreFileOrLink.
              if (linkKey) {
                const first = new Promise<string>((resolve, reject) => (file.linked = { resolve, reject }));
                first.catch(() => undefined); // its failure is reported for this file; followers see it too
                hardlinks.set(linkKey, first);
              }
              smallFiles.push(file);
            } else {
              pendingFiles.push(restoreFileOrLink(full, rel, node).catch((err) => fail(rel, err)));
            }
            restored++;
            break;
          }
          case 'symlink':
            await create(full, () => symlink(node.linkTarget!, full));
            setMetadata(full, node);
            restored++;
            break;
          case 'fifo':
            await create(full, () => execFileAsync('mkfifo', ['-m', node.mode.toString(8), full]));
            setMetadata(full, node);
            restored++;
            break;
          case 'chardev':
          case 'blockdev': {
            const rdev = BigInt(node.rdev ?? 0);
            const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
            const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
            const args = ['-m', node.mode.toString(8), full, node.type === 'chardev' ? 'c' : 'b', String(major), String(minor)];
            await create(full, () => execFileAsync('mknod', args));
            setMetadata(full, node);
            restored++;
            break;
          }
          case 'socket':
            // A socket belongs to the process that listened on it; there is nothing to restore.
            break;
        }
      } catch (err) {
        fail(rel, err);
      }
    }
    startSmallFiles();
    await Promise.all(pendingFiles);
    // Directory modes and times last: writing into a directory changes its mtime.
    for (const [full, node] of dirsToFinish) {
      try {
        setMetadata(full, node);
      } catch (err) {
        fail(full, err);
      }
    }
    return restored;
  };

  try {
    await restoreDir(target, '', rootTree, false);
  } catch (err) {
    fail('', err);
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
    for (const lease of leases) lease.release();
  }
  if (fatal) throw fatal;
  return result;
}

/**
 * Why an entry is not a consistent copy, or undefined: a file's label, or the verdict of the
 * checkpoint directory at that path (snapshot paths are `/<root>/…`, as `tender ls` prints them).
 */
function inconsistencyOf(snapshot: Snapshot, subpath: string | undefined): (rel: string, node: TreeNode) => string | undefined {
  const prefix = (subpath ?? '').split('/').filter((n) => n !== '' && n !== '.').map((n) => `/${n}`).join('');
  const incomplete = new Map((snapshot.checkpoints ?? []).filter((c) => !c.complete).map((c) => [c.path, c]));
  return (rel, node) => {
    if (node.type === 'file' && node.consistency) return `${node.consistency}: ${node.consistencyReason ?? 'no reason recorded'}`;
    const checkpoint = node.type === 'dir' ? incomplete.get(`${prefix}/${rel}`) : undefined;
    return checkpoint ? `incomplete ${checkpoint.kind} checkpoint: ${checkpoint.reason ?? 'no reason recorded'}` : undefined;
  };
}

/** The tree to restore: the snapshot's root, or the directory `subpath` names in it. */
async function subpathTree(src: RestoreSource, rootTree: string, subpath: string | undefined): Promise<string> {
  let tree = rootTree;
  const names = (subpath ?? '').split('/').filter((n) => n !== '' && n !== '.');
  for (const [i, name] of names.entries()) {
    const nodes = (await src.repo.loadTree(tree, src.view)).nodes;
    // A snapshot of `/` keeps everything under one root named "/": look through it.
    const node = nodes.find((n) => n.name === name) ?? (i === 0 && nodes.length === 1 && nodes[0]!.name === '/' ? await childOfRoot(src, nodes[0]!, name) : undefined);
    if (!node || node.type !== 'dir' || !node.subtree) {
      throw new TenderError('TENDER_USAGE', `${JSON.stringify(names.slice(0, i + 1).join('/'))} is not a directory in the snapshot`, {
        hint: 'list the snapshot with `tender ls SNAPSHOT` and give a directory after the colon',
      });
    }
    tree = node.subtree;
  }
  return tree;
}

async function childOfRoot(src: RestoreSource, root: TreeNode, name: string): Promise<TreeNode | undefined> {
  return root.subtree ? (await src.repo.loadTree(root.subtree, src.view)).nodes.find((n) => n.name === name) : undefined;
}

/** A file restored in a batch with others: one data blob, no other links to it. */
interface SmallFile {
  full: string;
  rel: string;
  node: TreeNode;
  /** Settles the restore of other links to the same inode: with this path, or failed. */
  linked?: { resolve: (path: string) => void; reject: (err: unknown) => void };
  restored?: boolean;
}

const isSmallFile = (node: TreeNode): boolean => node.content?.length === 1 && node.contentLists === undefined && node.size! <= smallReadSize;

async function prepareTarget(target: string, overwrite: boolean): Promise<void> {
  try {
    const entries = await readdir(target);
    if (entries.length > 0 && !overwrite) {
      throw new TenderError('TENDER_TARGET_NOT_EMPTY', `the restore target ${target} is not empty`, {
        hint: 'restore into a new or empty directory, or pass --overwrite to replace what is there',
      });
    }
  } catch (err) {
    if (systemErrorCode(err) !== 'ENOENT') throw err;
    await mkdir(target, { recursive: true });
  }
}

/** A file's ordered data blobs through the restore's index view; throws naming a missing blob. */
function chunkResolver(src: RestoreSource): (node: TreeNode) => Promise<FileChunk[]> {
  const index: ChunkIndex = { lookup: (id) => src.view.lookup(id), loadList: (id) => src.repo.loadBlob(id, BlobType.list, src.view) };
  const absent = (id: Uint8Array, type: BlobType): never => {
    if (type === BlobType.list) throw blobNotIndexed(id);
    throw new TenderError('TENDER_CORRUPT', `data blob ${idToHex(id)} is not in the index`, {
      hint: 'run `tender check`; the snapshot refers to data the repository lacks',
    });
  };
  return (node) => fileChunks(node, index, absent);
}

/** Large reads (up to 8 MiB) take few large buffers; small ones (small files) many small buffers. */
interface RestoreBuffers {
  large: BufferPair;
  small: BufferPair;
}

/**
 * Reads of large files: 8 MiB (a default chunk at most). Against 16 MiB: half the memory, as
 * fast from a local directory, ~6% slower from MinIO (more requests, each costing CPU).
 */
const largeReadSize = 8 * 1024 * 1024;
const smallReadSize = 1024 * 1024;
const defaultReadAhead = 4;

/**
 * Writes a file's chunks at their offsets (pwrite), skipping all-zero chunks (holes). Reads are
 * planned in file order and started in that order, each as soon as a read buffer is free: up to
 * the pool's count are fetched, opened (by all workers) and written at once, so the next packs
 * are read while the current ones are decoded and written. Stops starting reads once `stopped()`
 * (a cancel, another file's fatal error) or one of its reads failed; throws that failure once
 * the reads under way have ended.
 */
async function writeContent(
  reader: PackReader,
  buffers: RestoreBuffers,
  fd: number,
  refs: FileChunk[],
  stopped: () => boolean,
  onBytes: (n: number) => void,
): Promise<number> {
  let size = 0;
  for (const r of refs) size += r.loc.rawLength;
  const writeChunk = async (ref: FileChunk, chunk: Uint8Array) => {
    if (!isAllZero(chunk)) {
      for (let done = 0; done < chunk.length; ) {
        const { bytesWritten } = await writeAt(fd, chunk, done, chunk.length - done, ref.fileOffset + done);
        done += bytesWritten;
      }
    }
    onBytes(chunk.length);
  };
  let failure: { error: unknown } | undefined;
  const inFlight = new Set<Promise<void>>();
  const reads = planReads(refs, buffers.large.reads.bufferSize, buffers.large.plaintext.bufferSize);
  let started = 0;
  for (const read of reads) {
    if (failure || stopped()) break;
    const pools = buffersFor(buffers, read);
    const sealed = await reader.reserve(pools);
    if (failure || stopped()) {
      pools.reads.release(sealed);
      break;
    }
    started++;
    const running: Promise<void> = reader
      .read(pools, sealed, read, writeChunk)
      .catch((error: unknown) => void (failure ??= { error }))
      .finally(() => inFlight.delete(running));
    inFlight.add(running);
  }
  await Promise.all(inFlight);
  if (failure) throw failure.error;
  if (started < reads.length) throw new RestoreStopped();
  return size;
}

/** A file left unfinished because the restore is ending (cancelled, or failed elsewhere): that error is reported, not this. */
class RestoreStopped extends Error {
  constructor() {
    super('the restore stopped before this file was complete');
  }
}

/** The buffer pair a read fits in: a small one when it can (a blob may be a little over its plaintext). */
function buffersFor(buffers: RestoreBuffers, read: PackRead): BufferPair {
  return read.length <= smallReadSize && read.rawLength <= smallReadSize ? buffers.small : buffers.large;
}
