import type { Command } from 'commander';
import { TenderError } from '../../errors/errors.js';
import { globalOptions, print, withRepository } from '../context.js';
import { readPassword } from '../password.js';

export function registerKey(program: Command): void {
  const key = program.command('key').description('manage repository passwords');
  key
    .command('passwd')
    .description('change the password: adds a key for the new password, then removes the old key')
    .option('--new-password-file <file>', 'read the new password from this file (else TENDER_NEW_PASSWORD_FILE, TENDER_NEW_PASSWORD or a prompt)')
    .action(async (opts: { newPasswordFile?: string }, command: Command) => {
      const g = globalOptions(command);
      await withRepository(g, async (repo) => {
        const next = await readPassword(
          { file: opts.newPasswordFile, fileVariable: 'TENDER_NEW_PASSWORD_FILE', variable: 'TENDER_NEW_PASSWORD' },
          'new',
        );
        // New key first: if anything fails after this, both passwords still open the repository.
        const added = await repo.addKey(next);
        if (added === repo.keyFile) throw new TenderError('TENDER_USAGE', 'the new password is the same key file as the old one');
        await repo.removeKey(repo.keyFile);
        print(`password changed (key ${added.slice('keys/'.length, 'keys/'.length + 8)} replaces ${repo.keyFile.slice('keys/'.length, 'keys/'.length + 8)})`);
      });
    });
}
