import path from 'node:path';
import pLimit, { type LimitFunction } from 'p-limit';
import { TenderError } from '../errors/errors.js';
import { BlobType } from '../repo/blob.js';
import { idLength } from '../repo/ids.js';
import type { Repository, RepositoryWriter } from '../repo/repository.js';
import type { WriterSession } from '../repo/sessions.js';
import type { Snapshot, SnapshotAnnotations, SnapshotSummary } from '../repo/snapshot/snapshot.js';
import { type Tree, type TreeNode, sameNode } from '../repo/snapshot/tree.js';
import { type OperationContext, cancelledError, throwIfCancelled } from '../util/operation.js';
import { Permits } from '../util/permits.js';
import { gearTable } from './chunk/fastcdc.js';
import { createBoundaryFinder } from './chunk/native.js';
import { CheckpointTracker, type IncompletePolicy, inspectFile, recheckFile } from './checkpoints.js';
import { type ConsistentRead, defaultRereads, readConsistently } from './consistency.js';
import { DeltaBaseFinder } from './delta-bases.js';
import { FileSaver } from './file-saver.js';
import { cacheNeutralReads, cachingReads } from './read-cache.js';
import { type EntryStat, compareNames, lstatEntries, lstatPath, metadataNode, nodeType, readDirSorted, unchangedSince } from './walk.js';

export interface BackupProgress {
  filesDone: number;
  bytesDone: number;
  errors: number;
  /** Totals from the concurrent scan; undefined until the scan finishes. */
  totalFiles?: number;
  totalBytes?: number;
  currentFile?: string;
}

export interface BackupError {
  path: string;
  message: string;
}

export interface BackupOptions {
  paths: string[];
  /**
   * The names the paths get in the snapshot's root (default: each path's last component). The
   * agent names a volume's root after the volume, whatever its directory on the node is called
   * (`…/kubernetes.io~csi/<pv>/mount`), so `restore latest:<volume>` finds it.
   */
  rootNames?: string[];
  tags?: string[];
  /** The snapshot's host: default the context's identity (the agent passes a volume's stable identity). */
  hostname?: string;
  /** Unchanged files (by size, mtime, ctime, inode) are taken from this snapshot without reading. */
  parent?: { id: string; snapshot: Snapshot };
  /** Files read at once; each holds a slot while it is read. */
  fileConcurrency?: number;
  /** Evict what the backup's reads brought into the page cache (see read-cache.ts). */
  cacheNeutral?: boolean;
  /** Count files and bytes first (concurrently), so progress events carry totals and an ETA. */
  scan?: boolean;
  hooks?: BackupHooks;
  /** Re-reads of a file that changed while it was read, before it is stored labelled torn (default 2). */
  rereads?: number;
  /**
   * Checkpoint completeness (src/checkpoint/): each file's format is checked as it is read, and
   * each checkpoint directory before and after; default on. `incomplete` (default store): what to
   * do with a checkpoint directory that is incomplete when the backup reaches it.
   */
  checkpoints?: false | { incomplete?: IncompletePolicy };
}

/**
 * Where later layers wrap the reading without touching the archiver: the quiesce protocol around
 * each backup path (a volume), a throttle around each changed file. A hook must call `run`/`read`
 * once and return (or throw) what it returns.
 */
export interface BackupHooks {
  aroundRoot?<T>(root: string, run: () => Promise<T>): Promise<T>;
  aroundFile?<T>(path: string, size: number, read: () => Promise<T>): Promise<T>;
  /** Fields for the snapshot (what the hooks found, e.g. how each root was quiesced); called once every root is read. */
  annotate?(): SnapshotAnnotations;
  /**
   * Awaited before each read of file content with the bytes about to be read (a small file's
   * size; at most 1 MiB of a large file): a rate limit or pause on reading. Rejecting with the
   * signal's reason cancels the backup; any other rejection fails the file being read.
   */
  beforeRead?(bytes: number, signal: AbortSignal): Promise<void>;
}

export interface BackupResult {
  snapshotId: string;
  snapshot: Snapshot;
  errors: BackupError[];
}

const version = '0.1.0';

/**
 * A backup whose first phase is done: the paths are checked, the session is registered, the
 * index is fresh, packs an interrupted run left are adopted and the parent's root is loaded.
 * Nothing has been read yet: `run` reads, stores and commits; `discard` ends it without a
 * snapshot. Exactly one of them must be called.
 */
export interface PreparedBackup {
  readonly roots: readonly string[];
  run(): Promise<BackupResult>;
  discard(): Promise<void>;
}

/** Prepare, then run: the whole backup. */
export async function backup(repo: Repository, options: BackupOptions, ctx: OperationContext): Promise<BackupResult> {
  return (await prepareBackup(repo, options, ctx)).run();
}

/**
 * Phase one (see PreparedBackup). The session is registered before the index is read, so a
 * prune that plans deletions after this point waits for this run; packs doomed by plans that
 * already exist are never used (docs/design.md, "Garbage collection").
 */
export async function prepareBackup(repo: Repository, options: BackupOptions, ctx: OperationContext): Promise<PreparedBackup> {
  throwIfCancelled(ctx.signal);
  const roots = options.paths.map((p) => path.resolve(p));
  for (const root of roots) {
    const stats = lstatPath(root);
    if (stats instanceof Error) {
      throw new TenderError('TENDER_USAGE', `cannot back up ${root}: ${describeIoError(stats)}`, {
        hint: 'check the path; nothing was written to the repository',
      });
    }
  }
  const names = options.rootNames ?? roots.map(rootName);
  if (names.length !== roots.length || names.some((n) => n === '' || n === '.' || n === '..' || (n.includes('/') && n !== '/'))) {
    throw new TenderError('TENDER_USAGE', `root names ${JSON.stringify(names)} do not fit the paths ${JSON.stringify(roots)}`, {
      hint: 'give one plain name (no "/") per backup path',
    });
  }
  const duplicate = names.find((n, i) => names.indexOf(n) !== i);
  if (duplicate !== undefined) {
    throw new TenderError('TENDER_USAGE', `two backup paths have the same name ${JSON.stringify(duplicate)}`, {
      hint: 'back them up in separate snapshots, or back up their common parent directory',
    });
  }
  const session = await repo.startSession();
  try {
    await repo.refreshIndex();
    // Resume: packs stored by an interrupted run but never indexed are indexed now, so their
    // chunks are deduplicated instead of uploaded again. A run that stored packs left a session
    // marker (it is written first and removed last), so without other markers there is nothing
    // to find and the listing of every pack is skipped.
    const otherSessions = (await repo.listSessions()).filter((s) => s.id !== session.id);
    const unindexed = otherSessions.length > 0 ? await repo.listUnindexedPacks() : [];
    if (unindexed.length > 0) {
      const adopted = await repo.indexPacksFromHeaders(unindexed);
      ctx.events.emit('resume', { packs: adopted.indexed, damaged: adopted.damaged });
    }
    const parentRoot = options.parent ? await parentTree(repo, options.parent.snapshot.tree) : undefined;
    throwIfCancelled(ctx.signal);
    let used = false;
    const once = () => {
      if (used) throw new Error('a prepared backup runs or is discarded once');
      used = true;
    };
    return {
      roots,
      run: () => {
        once();
        return runBackup(repo, options, ctx, session, roots, names, parentRoot);
      },
      discard: async () => {
        once();
        await session.end();
      },
    };
  } catch (err) {
    await session.end().catch(() => undefined);
    throw err;
  }
}

/**
 * Phase two: walk → (unchanged? reuse parent) → FileSaver → trees → flush → snapshot.
 * Unreadable files and directories are reported and left out; storage failures and cancels end
 * the run before a snapshot is written, so nothing partial is ever recorded as a snapshot.
 */
async function runBackup(
  repo: Repository,
  options: BackupOptions,
  ctx: OperationContext,
  session: WriterSession,
  roots: string[],
  names: string[],
  parentRoot: ParentTree | undefined,
): Promise<BackupResult> {
  const started = ctx.now();
  const { signal, events } = ctx;
  const hooks = options.hooks ?? {};
  const readCache = options.cacheNeutral ? cacheNeutralReads() : cachingReads;
  const params = repo.config.chunker;
  const writer = repo.openWriter();
  const fileConcurrency = options.fileConcurrency ?? 2;
  // A slot holds the tail of the previous read (< maxSize) plus at least maxSize/2 new bytes.
  const slotLease = repo.leaseBuffers('read-slots', params.maxSize + params.maxSize / 2, fileConcurrency + 1);
  const slots = slotLease.pool;
  const progress: BackupProgress = { filesDone: 0, bytesDone: 0, errors: 0 };
  const counters = { bytesRead: 0, blobsAdded: 0, bytesAdded: 0, bytesStored: 0 };
  const summary: SnapshotSummary = {
    files: 0,
    dirs: 0,
    filesRead: 0,
    filesUnchanged: 0,
    bytesRead: 0,
    totalBytes: 0,
    blobsAdded: 0,
    bytesAdded: 0,
    bytesStored: 0,
    errors: 0,
    durationMs: 0,
    filesTorn: 0,
    filesIncomplete: 0,
    rereads: 0,
  };
  const errors: BackupError[] = [];
  const report = () => events.emit('progress', progress);
  const fail = (p: string, err: unknown) => {
    if (err instanceof TenderError) throw err;
    const e = { path: p, message: describeIoError(err) };
    errors.push(e);
    progress.errors++;
    events.emit('warning', e);
  };

  const saver = new FileSaver(
    writer,
    repo.executor(),
    createBoundaryFinder(params, gearTable(repo.keys.gearSeed)),
    params,
    slots,
    repo.parallelism,
    counters,
    (n) => {
      progress.bytesDone += n;
      report();
    },
    readCache,
    signal,
    hooks.beforeRead ? (bytes, s) => hooks.beforeRead!(bytes, s) : undefined,
    options.checkpoints === false ? undefined : inspectFile,
    new DeltaBaseFinder(repo),
  );
  const checkpoints = options.checkpoints === false ? undefined : new CheckpointTracker(options.checkpoints?.incomplete ?? { mode: 'store' }, signal, ctx.now);
  const rereads = options.rereads ?? defaultRereads;
  const readers: LimitFunction = pLimit(fileConcurrency);
  const hardlinks = new Map<string, Promise<ConsistentRead>>();
  /** Every file save under way: all must end before the writer closes, whatever happens. */
  const saving = new Set<Promise<unknown>>();

  /**
   * True when the file is unchanged since the parent snapshot and everything its content names
   * is still in this run's index (its chunk lists, and the chunks they list: a prune may have
   * doomed them): its content is taken from there.
   */
  const reuseUnchanged = async (filePath: string, node: TreeNode, previous: TreeNode | undefined): Promise<boolean> => {
    // A torn copy is never kept: the file is read again, now that it may be quiet.
    if (!unchangedSince(previous, node) || previous!.consistency === 'torn' || !(await contentStillStored(repo, writer, previous!))) return false;
    if (previous!.consistency === 'incomplete') {
      // Its verdict again, from its headers: it may have been whole but still open for writing.
      const stamp = { size: node.size!, mtimeNs: node.mtime, ctimeNs: node.ctime, ino: node.inode };
      const now = checkpoints ? await recheckFile(filePath, stamp).catch(() => undefined) : undefined;
      if (!now) return false;
      if (now.verdict && !now.verdict.complete) Object.assign(node, { consistency: 'incomplete', consistencyReason: now.verdict.reason });
    }
    if (previous!.content) node.content = previous!.content;
    if (previous!.contentLists) node.contentLists = previous!.contentLists;
    summary.filesUnchanged++;
    progress.filesDone++;
    progress.bytesDone += node.size!;
    report();
    return true;
  };

  /** Reads and stores a changed file; false when it could not be read (reported, left out). */
  const saveFile = async (filePath: string, node: TreeNode, previous: TreeNode | undefined): Promise<boolean> => {
    const linkKey = node.links > 1 ? `${node.device}:${node.inode}` : undefined;
    let pending = linkKey ? hardlinks.get(linkKey) : undefined;
    if (!pending) {
      progress.currentFile = filePath;
      const size = node.size!;
      const walked = { size, mtimeNs: node.mtime, ctimeNs: node.ctime, ino: node.inode };
      const read = () => readConsistently(saver, filePath, walked, rereads, previous?.type === 'file' ? previous : undefined);
      const hooked = hooks.aroundFile ? () => hooks.aroundFile!(filePath, size, read) : read;
      // Small files go to a shared batch; only large ones hold slots while they are read.
      pending = size <= params.minSize ? hooked() : readers(hooked);
      if (linkKey) hardlinks.set(linkKey, pending);
      saving.add(pending);
      pending.then(
        (r) => {
          summary.filesRead++;
          summary.rereads! += r.rereads;
        },
        () => undefined,
      );
      void pending.catch(() => undefined).finally(() => saving.delete(pending!));
    }
    try {
      Object.assign(node, (await pending).patch);
    } catch (err) {
      fail(filePath, err);
      return false;
    }
    progress.filesDone++;
    report();
    return true;
  };

  /**
   * The walk is depth-first and in order; changed files are saved concurrently, up to
   * `filesInFlight` at once, and the walk waits for a permit before starting the next one. So
   * the nodes held in memory are those of the directories on the current path and of the
   * directories still waiting for their files, never the whole tree: memory does not grow with
   * the file count. A directory's tree is stored once its files and subdirectories are done.
   */
  const filesInFlight = new Permits(256);
  /** The first error that ends the run (or the cancel): stop starting new work. */
  let fatal: unknown;
  const onAbort = () => (fatal ??= cancelledError(signal));
  signal.addEventListener('abort', onAbort, { once: true });
  if (signal.aborted) onAbort();
  const settle = <T>(p: Promise<T>): Promise<T> => {
    p.catch((err) => (fatal ??= err));
    return p;
  };
  const ready = (node: TreeNode | undefined): Started<TreeNode | undefined> => ({ done: Promise.resolve(node) });

  /**
   * Starts saving one entry. Resolves once everything below it has been started, with a promise
   * of its finished node (undefined: it could not be read and is left out).
   */
  const startEntry = async (
    entryPath: string,
    name: string,
    stats: EntryStat | Error,
    previous: TreeNode | undefined,
  ): Promise<Started<TreeNode | undefined>> => {
    if (stats instanceof Error) {
      fail(entryPath, stats);
      return ready(undefined);
    }
    const type = nodeType(stats);
    if (!type) return ready(undefined);
    let node: TreeNode;
    try {
      node = metadataNode(entryPath, name, stats, type);
    } catch (err) {
      fail(entryPath, err);
      return ready(undefined);
    }
    if (type === 'dir') {
      summary.dirs++;
      const previousTree = previous?.type === 'dir' ? await parentTree(repo, previous.subtree) : undefined;
      const subtree = await startDir(entryPath, previousTree);
      // An unreadable directory is left out (and reported), not stored as an empty one.
      return { done: subtree.done.then((id) => (id === undefined ? undefined : Object.assign(node, { subtree: id }))) };
    }
    if (type !== 'file') return ready(node);
    if (checkpoints?.skips(entryPath)) return ready(undefined);
    summary.files++;
    summary.totalBytes += node.size!;
    if (await reuseUnchanged(entryPath, node, previous)) return ready(stored(entryPath, node));
    await filesInFlight.acquire();
    const saved = saveFile(entryPath, node, previous).finally(() => filesInFlight.release());
    return { done: settle(saved.then((ok) => (ok ? stored(entryPath, node) : undefined))) };
  };

  /** A file node as stored: counted by its label, and shown to the checkpoint tracker. */
  const stored = (filePath: string, node: TreeNode): TreeNode => {
    if (node.consistency === 'torn') summary.filesTorn!++;
    else if (node.consistency === 'incomplete') summary.filesIncomplete!++;
    checkpoints?.record(filePath, node);
    return node;
  };

  /** Starts a directory: resolves once all of it has been started, with a promise of its tree ID. */
  const startDir = async (dirPath: string, previous: ParentTree | undefined): Promise<Started<string | undefined>> => {
    let names: string[];
    try {
      names = readDirSorted(dirPath);
    } catch (err) {
      fail(dirPath, err);
      return { done: Promise.resolve(undefined) };
    }
    const previousByName = new Map(previous?.tree.nodes.map((n) => [n.name, n]));
    const entries: Promise<TreeNode | undefined>[] = [];
    const stats = lstatEntries(dirPath, names);
    const prefix = dirPath.endsWith('/') ? dirPath : `${dirPath}/`;
    for (const [i, name] of names.entries()) {
      if (fatal !== undefined) break;
      entries.push((await startEntry(prefix + name, name, stats[i]!, previousByName.get(name))).done);
    }
    const done = Promise.all(entries).then((nodes) => {
      if (fatal !== undefined) throw fatal;
      const kept = nodes.filter((n): n is TreeNode => n !== undefined);
      // Nothing changed in this directory: its tree is the parent's, already stored.
      if (previous && kept.length === previous.tree.nodes.length && kept.every((n, i) => sameNode(n, previous.tree.nodes[i]!))) return previous.id;
      return writer.saveTree({ nodes: kept });
    });
    return { done: settle(done) };
  };

  /** Saves one backup path: the walk, then everything it started. */
  const saveRoot = async (root: string, name: string, previous: TreeNode | undefined): Promise<TreeNode | undefined> => {
    const save = async () => {
      await checkpoints?.before(root);
      const node = await (await startEntry(root, name, lstatPath(root), previous)).done;
      if (fatal !== undefined) throw fatal;
      await checkpoints?.after(root, name);
      return node;
    };
    return hooks.aroundRoot ? hooks.aroundRoot(root, save) : save();
  };

  const scan = options.scan ? scanTotals(roots, signal).then((t) => Object.assign(progress, t), () => undefined) : undefined;
  try {
    const previousByName = new Map(parentRoot?.tree.nodes.map((n) => [n.name, n]));
    const rootNodes: TreeNode[] = [];
    for (let i = 0; i < roots.length; i++) {
      const node = await saveRoot(roots[i]!, names[i]!, previousByName.get(names[i]!));
      if (node) rootNodes.push(node);
    }
    if (rootNodes.length === 0) {
      throw new TenderError('TENDER_IO', `none of the backup paths could be read: ${errors.map((e) => e.path).join(', ')}`, {
        hint: 'check that the paths exist and are readable by this user',
      });
    }
    rootNodes.sort((a, b) => compareNames(a.name, b.name));
    const tree = await writer.saveTree({ nodes: rootNodes });
    throwIfCancelled(signal);
    await writer.flush();
    Object.assign(summary, {
      bytesRead: counters.bytesRead,
      blobsAdded: counters.blobsAdded,
      bytesAdded: counters.bytesAdded,
      bytesStored: counters.bytesStored,
      transforms: saver.stats.summary(writer.storeMs),
      errors: errors.length,
      durationMs: ctx.now() - started,
    });
    const snapshot: Snapshot = {
      version: 1,
      time: new Date(started).toISOString(),
      hostname: options.hostname ?? ctx.identity.hostname,
      username: ctx.identity.username,
      paths: roots,
      tags: options.tags ?? [],
      tree,
      ...(options.parent ? { parent: options.parent.id } : {}),
      program: `tender ${version}`,
      summary,
      ...hooks.annotate?.(),
      ...(checkpoints && checkpoints.records.length > 0 ? { checkpoints: checkpoints.records } : {}),
    };
    throwIfCancelled(signal);
    const snapshotId = await session.commit(snapshot);
    return { snapshotId, snapshot, errors };
  } catch (err) {
    fatal ??= err;
    // Interrupted or failed: let every read and seal under way end, then index what was stored,
    // so the next run resumes from the stored packs.
    while (saving.size > 0) await Promise.allSettled([...saving]);
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort);
    await writer.close();
    slotLease.release();
    await scan;
    await session.end().catch(() => undefined);
  }
}

/** Work that has been started; `done` settles when it has finished. */
interface Started<T> {
  done: Promise<T>;
}

/** A directory of the parent snapshot, with its tree ID. */
interface ParentTree {
  id: string;
  tree: Tree;
}

/**
 * A directory of the parent snapshot, or undefined when its tree is not in this run's index
 * (its pack is doomed by a pending prune plan): then the files are simply read again.
 */
async function parentTree(repo: Repository, treeHex: string | undefined): Promise<ParentTree | undefined> {
  return treeHex !== undefined && repo.hasHex(treeHex) ? { id: treeHex, tree: await repo.loadTree(treeHex) } : undefined;
}

/** Whether every blob the node's content names, through its chunk lists too, is in the index. */
async function contentStillStored(repo: Repository, writer: RepositoryWriter, node: TreeNode): Promise<boolean> {
  if (!(node.content ?? []).every((hex) => writer.hasHex(hex))) return false;
  for (const hex of node.contentLists ?? []) {
    if (!writer.hasHex(hex)) return false;
    const list = await repo.loadBlob(Buffer.from(hex, 'hex'), BlobType.list);
    for (let i = 0; i < list.length; i += idLength) if (!writer.has(list.subarray(i, i + idLength))) return false;
  }
  return true;
}

/** A backup path's name in the snapshot's root tree: its last component, `/` for the root itself. */
function rootName(absolutePath: string): string {
  return path.basename(absolutePath) || '/';
}

async function scanTotals(paths: string[], signal: AbortSignal): Promise<{ totalFiles: number; totalBytes: number }> {
  let totalFiles = 0;
  let totalBytes = 0;
  const visit = async (p: string, stats: EntryStat | Error): Promise<void> => {
    if (stats instanceof Error || signal.aborted) return;
    const type = nodeType(stats);
    if (type === 'file') {
      totalFiles++;
      totalBytes += stats.size;
    } else if (type === 'dir') {
      let names: string[] = [];
      try {
        names = readDirSorted(p);
      } catch {
        return;
      }
      const children = lstatEntries(p, names);
      for (const [i, name] of names.entries()) await visit(path.join(p, name), children[i]!);
      // Let the backup itself run between directories.
      await new Promise((resolve) => setImmediate(resolve));
    }
  };
  for (const p of paths) await visit(path.resolve(p), lstatPath(path.resolve(p)));
  return { totalFiles, totalBytes };
}

export function describeIoError(err: unknown): string {
  const code = (err as { code?: string }).code;
  const reason =
    code === 'EACCES' || code === 'EPERM'
      ? 'permission denied'
      : code === 'ENOENT'
        ? 'vanished during the backup'
        : code === 'EIO'
          ? 'I/O error while reading'
          : (err as Error).message;
  return reason;
}
