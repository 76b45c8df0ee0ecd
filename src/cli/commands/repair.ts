import type { Command } from 'commander';
import { globalOptions, print, printJson, withRepository } from '../context.js';

export function registerRepair(program: Command): void {
  const repair = program.command('repair').description('repair repository metadata');
  repair
    .command('index')
    .description('rebuild the index from the headers of all packs (replaces every index file)')
    .action(async (_opts: unknown, command: Command) => {
      const g = globalOptions(command);
      await withRepository(g, async (repo) => {
        const oldIndexFiles = await repo.listIndexFiles();
        // Every pack's header is read, whatever the index says.
        const packs = await repo.listPacks();
        const superseded = oldIndexFiles.map((k) => Buffer.from(k.slice('index/'.length), 'hex'));
        // The new index is stored, naming the old files as superseded, before any old one is deleted.
        const result = await repo.indexPacksFromHeaders(packs, superseded);
        for (const key of oldIndexFiles) if (key !== result.indexFile) await repo.deleteIndexFile(key);
        if (g.json) {
          printJson({ message_type: 'repair', packs: result.indexed, damaged: result.damaged, removed_index_files: oldIndexFiles.length });
          return;
        }
        for (const key of result.damaged) print(`damaged pack not indexed: ${key} (run \`tender check\` to see what depends on it)`);
        print(`indexed ${result.indexed} packs into one new index file; removed ${oldIndexFiles.length} old index files`);
      });
    });
}
