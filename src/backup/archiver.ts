import os from 'node:os';
import path from 'node:path';
import pLimit, { type LimitFunction } from 'p-limit';
import { TenderError } from '../errors/errors.js';
import { doomedPacks } from '../repo/plans.js';
import type { Repository } from '../repo/repository.js';
import { WriterSession, listSessions } from '../repo/sessions.js';
import { onInterrupt } from '../util/interrupt.js';
import { Permits } from '../util/permits.js';
import type { Snapshot, SnapshotSummary } from '../repo/snapshot/snapshot.js';
import { type Tree, type TreeNode, sameNode } from '../repo/snapshot/tree.js';
import { createExecutor, defaultWorkerCount } from '../workers/pool.js';
import { createBoundaryFinder } from './chunk/native.js';
import { gearTable } from './chunk/fastcdc.js';
import { cacheNeutralReads, cachingReads } from './read-cache.js';
import { BufferPool } from '../util/buffer-pool.js';
import { type FileContent, FileSaver } from './file-saver.js';
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
  tags?: string[];
  hostname?: string;
  /** Unchanged files (by size, mtime, ctime, inode) are taken from this snapshot without reading. */
  parent?: { id: string; snapshot: Snapshot };
  workers?: number;
  /** Files read at once; each holds a slot while it is read. */
  fileConcurrency?: number;
  /** Evict what the backup's reads brought into the page cache (see read-cache.ts). */
  cacheNeutral?: boolean;
  /** Count files and bytes first (concurrently), so progress can show totals and an ETA. */
  scan?: boolean;
  onProgress?: (progress: BackupProgress) => void;
  onError?: (error: BackupError) => void;
  /** Called when packs left by an interrupted run were indexed (and damaged ones skipped). */
  onResume?: (resumed: { packs: number; damaged: string[] }) => void;
}

export interface BackupResult {
  snapshotId: string;
  snapshot: Snapshot;
  errors: BackupError[];
}

const version = '0.1.0';

/**
 * The backup composition: session → index → walk → (unchanged? reuse parent) → FileSaver → trees →
 * flush → snapshot. The repository's index is loaded here, after the session is registered.
 * Unreadable files and directories are reported and left out; storage failures abort the run
 * before a snapshot is written, so nothing partial is ever recorded as a snapshot.
 */
export async function backup(repo: Repository, options: BackupOptions): Promise<BackupResult> {
  const started = Date.now();
  const readCache = options.cacheNeutral ? cacheNeutralReads() : cachingReads;
  const workers = options.workers ?? defaultWorkerCount();
  const params = repo.config.chunker;
  const executor = createExecutor(repo.keys, repo.config.compressionLevel, workers);
  const fileConcurrency = options.fileConcurrency ?? 2;
  // A slot holds the tail of the previous read (< maxSize) plus at least maxSize/2 new bytes.
  const slots = new BufferPool(params.maxSize + params.maxSize / 2, fileConcurrency + 1);
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
  };
  const errors: BackupError[] = [];
  const report = () => options.onProgress?.(progress);
  const fail = (p: string, err: unknown) => {
    if (err instanceof TenderError) throw err;
    const e = { path: p, message: describeIoError(err) };
    errors.push(e);
    progress.errors++;
    options.onError?.(e);
  };

  const saver = new FileSaver(
    repo,
    executor,
    createBoundaryFinder(params, gearTable(repo.keys.gearSeed)),
    params,
    slots,
    workers,
    counters,
    (n) => {
      progress.bytesDone += n;
      report();
    },
    readCache,
  );
  const readers: LimitFunction = pLimit(fileConcurrency);
  const hardlinks = new Map<string, Promise<FileContent>>();

  /** True when the file is unchanged since the parent snapshot: its content is taken from there. */
  const reuseUnchanged = (node: TreeNode, previous: TreeNode | undefined): boolean => {
    if (!unchangedSince(previous, node) || !contentStillStored(repo, previous!)) return false;
    if (previous!.content) node.content = previous!.content;
    if (previous!.contentLists) node.contentLists = previous!.contentLists;
    summary.filesUnchanged++;
    progress.filesDone++;
    progress.bytesDone += node.size!;
    report();
    return true;
  };

  /** Reads and stores a changed file; false when it could not be read (reported, left out). */
  const saveFile = async (filePath: string, node: TreeNode): Promise<boolean> => {
    const linkKey = node.links > 1 ? `${node.device}:${node.inode}` : undefined;
    let pending = linkKey ? hardlinks.get(linkKey) : undefined;
    if (!pending) {
      progress.currentFile = filePath;
      // Small files go to a shared batch; only large ones hold slots while they are read.
      pending = node.size! <= params.minSize ? saver.save(filePath, node.size!) : readers(() => saver.save(filePath, node.size!));
      if (linkKey) hardlinks.set(linkKey, pending);
      pending.then(() => summary.filesRead++, () => undefined);
    }
    try {
      Object.assign(node, await pending);
    } catch (err) {
      fail(filePath, err);
      return false;
    }
    progress.filesDone++;
    report();
    return true;
  };

  /**
   * A directory of the parent snapshot, or undefined when its tree is not in this run's index
   * (its pack is doomed by a pending prune plan): then the files are simply read again.
   */
  const parentTree = async (treeHex: string | undefined): Promise<ParentTree | undefined> =>
    treeHex !== undefined && repo.hasHex(treeHex) ? { id: treeHex, tree: await repo.loadTree(treeHex) } : undefined;

  /**
   * The walk is depth-first and in order; changed files are saved concurrently, up to
   * `filesInFlight` at once, and the walk waits for a permit before starting the next one. So
   * the nodes held in memory are those of the directories on the current path and of the
   * directories still waiting for their files, never the whole tree: memory does not grow with
   * the file count. A directory's tree is stored once its files and subdirectories are done.
   */
  const filesInFlight = new Permits(256);
  /** The first error that ends the run: stop starting new work (what is running finishes). */
  let fatal: unknown;
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
      const previousTree = previous?.type === 'dir' ? await parentTree(previous.subtree) : undefined;
      const subtree = await startDir(entryPath, previousTree);
      // An unreadable directory is left out (and reported), not stored as an empty one.
      return { done: subtree.done.then((id) => (id === undefined ? undefined : Object.assign(node, { subtree: id }))) };
    }
    if (type !== 'file') return ready(node);
    summary.files++;
    summary.totalBytes += node.size!;
    if (reuseUnchanged(node, previous)) return ready(node);
    await filesInFlight.acquire();
    const saved = saveFile(entryPath, node).finally(() => filesInFlight.release());
    return { done: settle(saved.then((ok) => (ok ? node : undefined))) };
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
      return repo.saveTree({ nodes: kept });
    });
    return { done: settle(done) };
  };

  /** Saves one backup path: the walk, then everything it started. */
  const saveEntry = async (entryPath: string, name: string, previous: TreeNode | undefined): Promise<TreeNode | undefined> => {
    const node = await (await startEntry(entryPath, name, lstatPath(entryPath), previous)).done;
    if (fatal !== undefined) throw fatal;
    return node;
  };

  const scan = options.scan ? scanTotals(options.paths).then((t) => Object.assign(progress, t), () => undefined) : undefined;
  // Register before reading the index, so a prune that plans deletions after this point waits for
  // this run; packs doomed by plans that already exist are never used (docs/design.md).
  const session = await WriterSession.start(repo);
  // Interrupted (Ctrl-C) or failed: index what was stored, then end the session, so the next
  // run resumes from the stored packs and no prune waits for this one.
  const unregisterInterrupt = onInterrupt(async () => {
    await repo.indexStoredPacks();
    await session.end();
  });

  try {
    await repo.loadIndex(await doomedPacks(repo));
    const roots = options.paths.map((p) => path.resolve(p));
    for (const root of roots) {
      const stats = lstatPath(root);
      if (stats instanceof Error) {
        throw new TenderError('TENDER_USAGE', `cannot back up ${root}: ${describeIoError(stats)}`, {
          hint: 'check the path; nothing was written to the repository',
        });
      }
    }
    const names = roots.map((p) => path.basename(p) || '/');
    const duplicate = names.find((n, i) => names.indexOf(n) !== i);
    if (duplicate !== undefined) {
      throw new TenderError('TENDER_USAGE', `two backup paths have the same name ${JSON.stringify(duplicate)}`, {
        hint: 'back them up in separate snapshots, or back up their common parent directory',
      });
    }
    // Resume: packs stored by an interrupted run but never indexed are indexed now, so their
    // chunks are deduplicated instead of uploaded again. A run that stored packs left a session
    // marker (it is written first and removed last), so without other markers there is nothing
    // to find and the listing of every pack is skipped.
    const otherSessions = (await listSessions(repo)).filter((s) => s.id !== session.id);
    const unindexed = otherSessions.length > 0 ? await repo.listUnindexedPacks() : [];
    if (unindexed.length > 0) {
      const adopted = await repo.indexPacksFromHeaders(unindexed);
      options.onResume?.({ packs: adopted.indexed, damaged: adopted.damaged });
    }
    const parentRoot = options.parent ? await parentTree(options.parent.snapshot.tree) : undefined;
    const previousByName = new Map(parentRoot?.tree.nodes.map((n) => [n.name, n]));
    const rootNodes: TreeNode[] = [];
    for (let i = 0; i < roots.length; i++) {
      const node = await saveEntry(roots[i]!, names[i]!, previousByName.get(names[i]!));
      if (node) rootNodes.push(node);
    }
    if (rootNodes.length === 0) {
      throw new TenderError('TENDER_IO', `none of the backup paths could be read: ${errors.map((e) => e.path).join(', ')}`, {
        hint: 'check that the paths exist and are readable by this user',
      });
    }
    rootNodes.sort((a, b) => compareNames(a.name, b.name));
    const tree = await repo.saveTree({ nodes: rootNodes });
    await repo.flush();
    Object.assign(summary, {
      bytesRead: counters.bytesRead,
      blobsAdded: counters.blobsAdded,
      bytesAdded: counters.bytesAdded,
      bytesStored: counters.bytesStored,
      errors: errors.length,
      durationMs: Date.now() - started,
    });
    const snapshot: Snapshot = {
      version: 1,
      time: new Date(started).toISOString(),
      hostname: options.hostname ?? os.hostname(),
      username: os.userInfo().username,
      paths: roots,
      tags: options.tags ?? [],
      tree,
      ...(options.parent ? { parent: options.parent.id } : {}),
      program: `tender ${version}`,
      summary,
    };
    const snapshotId = await session.commit(() => repo.saveSnapshot(snapshot));
    return { snapshotId, snapshot, errors };
  } catch (err) {
    await repo.indexStoredPacks();
    throw err;
  } finally {
    unregisterInterrupt();
    await scan;
    await executor.close();
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

function contentStillStored(repo: Repository, node: TreeNode): boolean {
  const ids = node.contentLists ?? node.content ?? [];
  return ids.every((hex) => repo.hasHex(hex));
}

async function scanTotals(paths: string[]): Promise<{ totalFiles: number; totalBytes: number }> {
  let totalFiles = 0;
  let totalBytes = 0;
  const visit = async (p: string, stats: EntryStat | Error): Promise<void> => {
    if (stats instanceof Error) return;
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
