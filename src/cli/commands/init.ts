import type { Command } from 'commander';
import { positiveInt } from '../args.js';
import { Repository } from '../../repo/repository.js';
import { globalOptions, openRepoStorage, print, printJson } from '../context.js';
import { readPassword, repositoryPassword } from '../password.js';

export function registerInit(program: Command): void {
  program
    .command('init')
    .description('create a new repository')
    .option('--compression <level>', 'zstd level for data (0 = off)', positiveInt, 1)
    .option('--no-transforms', 'no byte-plane or delta blobs: a format-version-1 repository that older tender releases can read')
    .action(async (opts: { compression: number; transforms: boolean }, command: Command) => {
      const g = globalOptions(command);
      const storage = await openRepoStorage(g);
      try {
        const repo = await Repository.init(storage, await readPassword(repositoryPassword(g.passwordFile), 'new'), {
          compressionLevel: opts.compression,
          transforms: opts.transforms ? ['planes', 'delta'] : [],
        });
        if (g.json) printJson({ message_type: 'initialized', id: repo.config.repository, repository: storage.location });
        else print(`created tender repository ${repo.config.repository.slice(0, 10)} at ${storage.location}`);
      } finally {
        await storage.close();
      }
    });
}
