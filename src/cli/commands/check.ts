import type { Command } from 'commander';
import { check } from '../../check/checker.js';
import { TenderError } from '../../errors/errors.js';
import { globalOptions, print, printJson, withRepository } from '../context.js';

export function registerCheck(program: Command): void {
  program
    .command('check')
    .description('check the repository for damage')
    .option('--read-data', 'also read every pack and verify every chunk')
    .action(async (opts: { readData?: boolean }, command: Command) => {
      const g = globalOptions(command);
      await withRepository(g, false, async (repo) => {
        const report = await check(repo, {
          readData: !!opts.readData,
          ...(g.workers !== undefined ? { workers: g.workers } : {}),
          onProgress: (m) => !g.json && !g.quiet && process.stderr.write(`${m}\n`),
        });
        if (g.json) printJson({ message_type: 'check', ...report });
        else {
          for (const w of report.warnings) print(`warning: ${w}`);
          for (const p of report.problems) {
            print(`damaged: ${p.object}: ${p.problem}`);
            for (const a of p.affects ?? []) print(`  used by ${a}`);
          }
          print(`${report.snapshots} snapshots, ${report.packs} packs, ${report.blobs} blobs checked${opts.readData ? ' (all data read)' : ''}`);
        }
        if (report.problems.length > 0) {
          throw new TenderError('TENDER_CORRUPT', `check found ${report.problems.length} problems`, {
            hint: 'see the list above; `tender repair` (when available) rebuilds indexes, damaged packs need a copy of the data',
          });
        }
        if (!g.json) print('no errors were found');
      });
    });
}
