import type { Command } from 'commander';
import type { Repository } from '../../repo/repository.js';
import type { TreeNode } from '../../repo/snapshot/tree.js';
import { globalOptions, print, printJson, withRepository } from '../context.js';
import { selectSnapshot } from '../select.js';

export function registerLs(program: Command): void {
  program
    .command('ls')
    .description('list the files in a snapshot')
    .argument('<snapshot>', 'snapshot ID or "latest"')
    .action(async (ref: string, _opts: unknown, command: Command) => {
      const g = globalOptions(command);
      await withRepository(g, true, async (repo) => {
        const { id, snapshot } = await selectSnapshot(repo, ref);
        if (!g.json) print(`snapshot ${id.slice(0, 8)} of ${snapshot.paths.join(' ')} at ${snapshot.time}`);
        for await (const [path, node] of walkTree(repo, snapshot.tree, '')) {
          if (g.json) {
            printJson({ path, type: node.type, mode: node.mode, size: node.size, mtime: node.mtime, ...(node.linkTarget ? { link: node.linkTarget } : {}) });
          } else {
            print(node.type === 'symlink' ? `${path} -> ${node.linkTarget}` : node.type === 'dir' ? `${path}/` : path);
          }
        }
      });
    });
}

async function* walkTree(repo: Repository, treeId: string, prefix: string): AsyncGenerator<[string, TreeNode]> {
  const tree = await repo.loadTree(treeId);
  for (const node of tree.nodes) {
    const path = `${prefix}/${node.name}`;
    yield [path, node];
    if (node.type === 'dir' && node.subtree) yield* walkTree(repo, node.subtree, path);
  }
}
