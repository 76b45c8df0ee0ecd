import type { Command } from 'commander';
import { TenderError } from '../../errors/errors.js';
import { type GroupKey, type RetentionPolicy, applyPolicy, isEmptyPolicy, parseDuration } from '../../policy/retention.js';
import { type PruneOptions, defaultGraceMs, prune, validateGrace } from '../../prune/prune.js';
import type { Repository } from '../../repo/repository.js';
import type { OperationContext } from '../../util/operation.js';
import { collect, positiveInt } from '../args.js';
import { type GlobalOptions, globalOptions, print, printJson, withRepository } from '../context.js';
import { formatBytes } from '../format.js';
import { listSnapshots, selectSnapshot } from '../../snapshots/select.js';

interface ForgetCliOptions {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  keepWithin?: string;
  keepTag: string[];
  groupBy: string;
  host?: string;
  tag: string[];
  path: string[];
  dryRun?: boolean;
  prune?: boolean;
  grace: string;
}

interface PruneCliOptions {
  dryRun?: boolean;
  grace: string;
}

export function registerForget(program: Command): void {
  program
    .command('forget')
    .description('remove snapshots by ID or by a retention policy (data is freed by prune)')
    .argument('[snapshots...]', 'snapshot IDs to remove')
    .option('--keep-last <n>', 'keep the n newest snapshots', positiveInt)
    .option('--keep-hourly <n>', 'keep the newest snapshot of each of the last n hours that have one', positiveInt)
    .option('--keep-daily <n>', 'same, per day (UTC)', positiveInt)
    .option('--keep-weekly <n>', 'same, per ISO week', positiveInt)
    .option('--keep-monthly <n>', 'same, per month', positiveInt)
    .option('--keep-yearly <n>', 'same, per year', positiveInt)
    .option('--keep-within <duration>', 'keep snapshots within this long of the newest (e.g. 7d, 36h)')
    .option('--keep-tag <tag>', 'keep snapshots with this tag (repeatable)', collect, [])
    .option('--group-by <keys>', 'apply the policy per group of host,paths,tags', 'host,paths')
    .option('--host <name>', 'only consider snapshots of this host')
    .option('--tag <tag>', 'only consider snapshots with this tag (repeatable)', collect, [])
    .option('--path <path>', 'only consider snapshots of this path (repeatable)', collect, [])
    .option('--dry-run', 'show what would be removed')
    .option('--prune', 'run prune afterwards')
    .option('--grace <duration>', 'prune: how long a silent backup is presumed alive', '30min')
    .action(async (ids: string[], opts: ForgetCliOptions, command: Command) => {
      const g = globalOptions(command);
      // Prune options are checked before anything is removed.
      const pruneOptions = opts.prune ? pruneSettings({ grace: opts.grace, ...(opts.dryRun ? { dryRun: true } : {}) }) : undefined;
      await withRepository(g, async (repo, ctx) => {
        const policy: RetentionPolicy = {
          ...(opts.keepLast !== undefined ? { last: opts.keepLast } : {}),
          ...(opts.keepHourly !== undefined ? { hourly: opts.keepHourly } : {}),
          ...(opts.keepDaily !== undefined ? { daily: opts.keepDaily } : {}),
          ...(opts.keepWeekly !== undefined ? { weekly: opts.keepWeekly } : {}),
          ...(opts.keepMonthly !== undefined ? { monthly: opts.keepMonthly } : {}),
          ...(opts.keepYearly !== undefined ? { yearly: opts.keepYearly } : {}),
          ...(opts.keepWithin ? { withinMs: duration(opts.keepWithin) } : {}),
          tags: opts.keepTag,
        };
        const remove: string[] = [];
        if (ids.length > 0) {
          if (!isEmptyPolicy(policy)) throw new TenderError('TENDER_USAGE', 'give either snapshot IDs or --keep-* options, not both');
          for (const ref of ids) remove.push((await selectSnapshot(repo, ref)).id);
        } else {
          if (isEmptyPolicy(policy)) {
            throw new TenderError('TENDER_USAGE', 'no snapshots and no policy given', { hint: 'pass snapshot IDs or --keep-* options' });
          }
          const groupBy = opts.groupBy.split(',').filter(Boolean) as GroupKey[];
          if (groupBy.some((k) => !['host', 'paths', 'tags'].includes(k))) throw new TenderError('TENDER_USAGE', `bad --group-by ${opts.groupBy}`);
          const entries = await listSnapshots(repo, { ...(opts.host ? { host: opts.host } : {}), tags: opts.tag, paths: opts.path });
          const decisions = applyPolicy(entries.map((e) => ({ ...e.snapshot, id: e.id })), policy, groupBy);
          for (const d of decisions) {
            if (g.json) {
              printJson({ message_type: 'forget_group', group: JSON.parse(d.group), keep: d.keep.map((k) => ({ id: k.snapshot.id, reasons: k.reasons })), remove: d.remove.map((r) => r.id) });
            } else {
              print(`group ${d.group}: keep ${d.keep.length}, remove ${d.remove.length}`);
              for (const k of d.keep) print(`  keep   ${k.snapshot.id.slice(0, 8)} ${k.snapshot.time} (${k.reasons.join(', ')})`);
              for (const r of d.remove) print(`  remove ${r.id.slice(0, 8)} ${r.time}`);
            }
            remove.push(...d.remove.map((r) => r.id));
          }
        }
        if (!opts.dryRun) for (const id of remove) await repo.deleteSnapshot(id);
        if (!g.json) print(`${opts.dryRun ? 'would remove' : 'removed'} ${remove.length} snapshots`);
        if (pruneOptions) await runPrune(repo, g, pruneOptions, ctx);
      });
    });

  program
    .command('prune')
    .description('delete data no snapshot uses; safe while backups run (deletion waits for them)')
    .option('--dry-run', 'show what would be deleted')
    .option('--grace <duration>', 'how long a silent backup is presumed alive', '30min')
    .action(async (opts: PruneCliOptions, command: Command) => {
      const g = globalOptions(command);
      const pruneOptions = pruneSettings(opts);
      await withRepository(g, (repo, ctx) => runPrune(repo, g, pruneOptions, ctx));
    });
}

function pruneSettings(opts: PruneCliOptions): PruneOptions {
  const graceMs = opts.grace ? duration(opts.grace) : defaultGraceMs;
  validateGrace(graceMs);
  return { graceMs, ...(opts.dryRun ? { dryRun: true } : {}) };
}

async function runPrune(repo: Repository, g: GlobalOptions, options: PruneOptions, ctx: OperationContext): Promise<void> {
  if (!g.json && !g.quiet) ctx.events.on('progress', (p) => process.stderr.write(`${(p as { message: string }).message}\n`));
  const report = await prune(repo, options, ctx);
  if (g.json) {
    printJson({ message_type: 'prune', ...report });
    return;
  }
  const { planned } = report;
  print(
    `${options.dryRun ? 'would plan' : 'planned'}: ${planned.packs} unused packs, ${planned.repacked} packs repacked (${planned.blobsRepacked} blobs), ${formatBytes(planned.bytes)}`,
  );
  if (!options.dryRun) {
    print(`deleted ${report.packsDeleted} packs (${formatBytes(report.bytesDeleted)}); ${report.plansWaiting} plans wait for running backups`);
  }
}

function duration(text: string): number {
  try {
    return parseDuration(text);
  } catch (err) {
    throw new TenderError('TENDER_USAGE', (err as Error).message);
  }
}
