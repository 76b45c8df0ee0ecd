import type { Command } from 'commander';
import { TenderError } from '../../errors/errors.js';
import { globalOptions, printJson, withRepository } from '../context.js';
import { selectSnapshot } from '../../snapshots/select.js';

export function registerCat(program: Command): void {
  program
    .command('cat')
    .description('print a repository object as JSON: config, or snapshot ID')
    .argument('<type>', 'config | snapshot')
    .argument('[id]', 'snapshot ID')
    .action(async (type: string, ref: string | undefined, _opts: unknown, command: Command) => {
      const g = globalOptions(command);
      await withRepository(g, async (repo) => {
        if (type === 'config') printJson(repo.config);
        else if (type === 'snapshot' && ref) printJson((await selectSnapshot(repo, ref)).snapshot);
        else throw new TenderError('TENDER_USAGE', `cannot cat ${JSON.stringify(type)}`, { hint: 'use `tender cat config` or `tender cat snapshot ID`' });
      });
    });
}
