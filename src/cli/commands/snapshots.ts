import type { Command } from 'commander';
import { globalOptions, print, printJson, withRepository } from '../context.js';
import { formatBytes } from '../format.js';
import { consistencySummary, describeConsistency } from '../../snapshots/consistency.js';
import { listSnapshots } from '../../snapshots/select.js';
import { collect } from '../args.js';

export function registerSnapshots(program: Command): void {
  program
    .command('snapshots')
    .description('list snapshots')
    .option('--host <name>', 'only snapshots from this host')
    .option('--tag <tag>', 'only snapshots with this tag (repeatable)', collect, [])
    .option('--path <path>', 'only snapshots of this path (repeatable)', collect, [])
    .action(async (opts: { host?: string; tag: string[]; path: string[] }, command: Command) => {
      const g = globalOptions(command);
      await withRepository(g, async (repo) => {
        const entries = await listSnapshots(repo, { ...(opts.host ? { host: opts.host } : {}), tags: opts.tag, paths: opts.path });
        if (g.json) {
          printJson(entries.map((e) => ({ id: e.id, short_id: e.id.slice(0, 8), ...e.snapshot, consistency: consistencySummary(e.snapshot) })));
          return;
        }
        print('ID        Time                      Host             Tags        Size        Paths');
        for (const { id, snapshot: s } of entries) {
          print(
            `${id.slice(0, 8)}  ${s.time.padEnd(24)}  ${s.hostname.padEnd(15)}  ${s.tags.join(',').padEnd(10)}  ${formatBytes(s.summary?.totalBytes ?? 0).padEnd(10)}  ${s.paths.join(' ')}`,
          );
          const c = consistencySummary(s);
          // Only snapshots with something to say get the second line: checkpoints or labelled files.
          if (s.checkpoints?.length || c.filesTorn > 0 || c.filesIncomplete > 0) print(`          ${describeConsistency(c)}`);
        }
        print(`${entries.length} snapshots`);
      });
    });
}
