import type { Command } from 'commander';
import { walkTree } from '../../repo/snapshot/tree-walk.js';
import { globalOptions, print, printJson, withRepository } from '../context.js';
import { selectSnapshot } from '../../snapshots/select.js';

export function registerLs(program: Command): void {
  program
    .command('ls')
    .description('list the files in a snapshot')
    .argument('<snapshot>', 'snapshot ID or "latest"')
    .action(async (ref: string, _opts: unknown, command: Command) => {
      const g = globalOptions(command);
      await withRepository(g, async (repo) => {
        const { id, snapshot } = await selectSnapshot(repo, ref);
        if (!g.json) print(`snapshot ${id.slice(0, 8)} of ${snapshot.paths.join(' ')} at ${snapshot.time}`);
        await repo.refreshIndex();
        const checkpoints = new Map((snapshot.checkpoints ?? []).map((c) => [c.path, c]));
        for await (const step of walkTree(repo, snapshot.tree)) {
          if (step.kind !== 'entry') continue;
          const { path, node } = step;
          const checkpoint = node.type === 'dir' ? checkpoints.get(path) : undefined;
          if (g.json) {
            printJson({
              path,
              type: node.type,
              mode: node.mode,
              size: node.size,
              mtime: node.mtime,
              ...(node.linkTarget ? { link: node.linkTarget } : {}),
              ...(node.type === 'file' ? { consistency: node.consistency ?? 'consistent', ...(node.consistencyReason ? { reason: node.consistencyReason } : {}) } : {}),
              ...(checkpoint ? { checkpoint: { kind: checkpoint.kind, complete: checkpoint.complete, ...(checkpoint.reason ? { reason: checkpoint.reason } : {}) } } : {}),
            });
          } else {
            const name = node.type === 'symlink' ? `${path} -> ${node.linkTarget}` : node.type === 'dir' ? `${path}/` : path;
            const label = node.consistency
              ? `  [${node.consistency}: ${node.consistencyReason ?? ''}]`
              : checkpoint
                ? `  [${checkpoint.kind} checkpoint, ${checkpoint.complete ? 'complete' : `incomplete: ${checkpoint.reason ?? ''}`}]`
                : '';
            print(name + label);
          }
        }
      });
    });
}
