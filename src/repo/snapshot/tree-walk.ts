import { throwIfCancelled } from '../../util/operation.js';
import type { IndexView } from '../index/index-view.js';
import type { Repository } from '../repository.js';
import type { Tree, TreeNode } from './tree.js';

/**
 * What the walk meets, in order: a tree as it is loaded (before its entries), then each entry of
 * it, a directory's entry directly followed by everything below it (`ls` order).
 */
export type WalkStep =
  /** A tree: its blob ID (hex) and where it sits (`prefix` for the root, `/name` per directory). */
  | { kind: 'tree'; id: string; path: string; tree: Tree }
  | { kind: 'entry'; path: string; node: TreeNode };

export interface TreeWalkOptions {
  /** Read through this index view (prune and check have their own); default the shared one. */
  view?: IndexView;
  /** Path of the root tree (default ''). */
  prefix?: string;
  /** Trees to leave out, with everything below them (already seen, known missing). */
  skip?: (id: string, path: string) => boolean;
  /** A tree that fails to load: report and go on; without it the walk throws. */
  onError?: (id: string, path: string, err: unknown) => void;
  signal?: AbortSignal;
}

/**
 * The walk of stored trees that ls, check and prune share: depth first, pre-order, in stored
 * (name) order. One tree is loaded at a time, so memory holds the trees on the current path, not
 * the snapshot.
 */
export async function* walkTree(repo: Repository, rootId: string, options: TreeWalkOptions = {}): AsyncGenerator<WalkStep> {
  yield* walk(repo, rootId, options.prefix ?? '', options);
}

async function* walk(repo: Repository, id: string, path: string, options: TreeWalkOptions): AsyncGenerator<WalkStep> {
  if (options.skip?.(id, path)) return;
  if (options.signal) throwIfCancelled(options.signal);
  let tree: Tree;
  try {
    tree = await repo.loadTree(id, options.view);
  } catch (err) {
    if (!options.onError) throw err;
    options.onError(id, path, err);
    return;
  }
  yield { kind: 'tree', id, path, tree };
  for (const node of tree.nodes) {
    const entryPath = `${path}/${node.name}`;
    yield { kind: 'entry', path: entryPath, node };
    if (node.type === 'dir' && node.subtree) yield* walk(repo, node.subtree, entryPath, options);
  }
}
