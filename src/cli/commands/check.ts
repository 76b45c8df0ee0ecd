import type { Command } from 'commander';
import { check } from '../../check/checker.js';
import { TenderError } from '../../errors/errors.js';
import { globalOptions, print, printJson, withRepository } from '../context.js';

export function registerCheck(program: Command): void {
  program
    .command('check')
    .description('check the repository for damage')
    .option('--read-data', 'also read every pack and verify every chunk')
    .option('--read-data-subset <subset>', 'read and verify a subset of the packs: N% (random) or n/t (group n of t)')
    .action(async (opts: { readData?: boolean; readDataSubset?: string }, command: Command) => {
      const g = globalOptions(command);
      await withRepository(g, async (repo, ctx) => {
        if (!g.json && !g.quiet) ctx.events.on('progress', (p) => process.stderr.write(`${(p as { message: string }).message}\n`));
        const report = await check(
          repo,
          { readData: !!opts.readData, ...(opts.readDataSubset ? { readDataSubset: parseSubset(opts.readDataSubset) } : {}) },
          ctx,
        );
        if (g.json) printJson({ message_type: 'check', ...report });
        else {
          for (const w of report.warnings) print(`warning: ${w}`);
          for (const p of report.problems) {
            print(`damaged: ${p.object}: ${p.problem}`);
            for (const a of p.affects ?? []) print(`  used by ${a}`);
          }
          const read = opts.readData ? ' (all data read)' : opts.readDataSubset ? ` (data of ${opts.readDataSubset} of the packs read)` : '';
          print(`${report.snapshots} snapshots, ${report.packs} packs, ${report.blobs} blobs checked${read}`);
        }
        if (report.problems.length > 0) {
          throw new TenderError('TENDER_CORRUPT', `check found ${report.problems.length} problems`, {
            hint: 'see the list above; `tender repair` (when available) rebuilds indexes, damaged packs need a copy of the data',
          });
        }
        if (!g.json) print('no errors were found');
      }, { startWorkersEarly: !!(opts.readData || opts.readDataSubset) });
    });
}

function parseSubset(text: string): { fraction: number } | { group: number; of: number } {
  const percent = /^(\d+(?:\.\d+)?)%$/.exec(text);
  if (percent && Number(percent[1]) > 0 && Number(percent[1]) <= 100) return { fraction: Number(percent[1]) / 100 };
  const group = /^(\d+)\/(\d+)$/.exec(text);
  if (group && Number(group[1]) >= 1 && Number(group[1]) <= Number(group[2])) return { group: Number(group[1]), of: Number(group[2]) };
  throw new TenderError('TENDER_USAGE', `bad --read-data-subset ${JSON.stringify(text)}`, { hint: 'use N% (e.g. 10%) or n/t (e.g. 1/5)' });
}
