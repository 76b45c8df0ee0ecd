import type { Command } from 'commander';
import { type BackupProgress, backup } from '../../backup/archiver.js';
import { ExitCode } from '../../errors/errors.js';
import type { IncompletePolicy } from '../../backup/checkpoints.js';
import { collect, incompletePolicy, positiveInt } from '../args.js';
import { globalOptions, print, printJson, withRepository } from '../context.js';
import { formatBytes, formatRate } from '../format.js';
import { createProgress, progressMode } from '../progress.js';
import { consistencySummary, describeConsistency } from '../../snapshots/consistency.js';
import { listSnapshots, selectSnapshot } from '../../snapshots/select.js';
import path from 'node:path';

interface BackupCliOptions {
  tag: string[];
  host?: string;
  parent?: string;
  force?: boolean;
  cacheNeutral?: boolean;
  incomplete: IncompletePolicy;
  rereads?: number;
}

export function registerBackup(program: Command): void {
  program
    .command('backup')
    .description('back up files and directories into a new snapshot')
    .argument('<paths...>', 'files or directories to back up')
    .option('--tag <tag>', 'add a tag to the snapshot (repeatable)', collect, [])
    .option('--host <name>', 'hostname recorded in the snapshot (default: this host)')
    .option('--parent <snapshot>', 'compare with this snapshot to skip unchanged files (default: latest with the same host and paths)')
    .option('--force', 'read every file, ignoring the parent snapshot')
    .option('--cache-neutral', "leave the page cache as it was: evict what this backup's reads bring in (Linux)")
    .option('--incomplete <what>', 'a checkpoint directory that is incomplete when read: store (labelled), skip, or wait=DURATION (e.g. 30s) then store', incompletePolicy, { mode: 'store' })
    .option('--rereads <n>', 'read a file that changed while it was read up to N more times before storing it labelled torn (default 2)', positiveInt)
    .action(async (paths: string[], opts: BackupCliOptions, command: Command) => {
      const g = globalOptions(command);
      await withRepository(g, async (repo, ctx) => {
        const absolute = paths.map((p) => path.resolve(p));
        const host = opts.host ?? ctx.identity.hostname;
        const parent = opts.force
          ? undefined
          : opts.parent
            ? await selectSnapshot(repo, opts.parent)
            : (await listSnapshots(repo, { host, paths: absolute })).filter((s) => s.snapshot.paths.length === absolute.length).at(-1);
        const progress = createProgress(progressMode(!!g.json, !!g.quiet), 'backup');
        let result;
        try {
          ctx.events.on('progress', (p) => progress.update(p as BackupProgress));
          ctx.events.on('resume', ({ packs, damaged }) => {
            if (!g.quiet && !g.json) process.stderr.write(`resuming: indexed ${packs} packs left by an interrupted backup\n`);
            for (const key of damaged) process.stderr.write(`warning: ${key} is damaged and was not indexed; run \`tender check --read-data\`\n`);
          });
          ctx.events.on('warning', (e) => {
            if (g.json) printJson({ message_type: 'error', path: e.path, error: e.message });
            else process.stderr.write(`warning: skipped ${e.path}: ${e.message}\n`);
          });
          result = await backup(
            repo,
            {
              paths: absolute,
              tags: opts.tag,
              hostname: host,
              ...(parent ? { parent } : {}),
              scan: !g.quiet,
              cacheNeutral: opts.cacheNeutral === true,
              checkpoints: { incomplete: opts.incomplete },
              ...(opts.rereads !== undefined ? { rereads: opts.rereads } : {}),
            },
            ctx,
          );
        } finally {
          progress.stop();
        }
        const s = result.snapshot.summary!;
        if (g.json) {
          printJson({ message_type: 'summary', snapshot_id: result.snapshotId, ...s });
        } else if (!g.quiet) {
          print(`files: ${s.files} (${s.filesRead} read, ${s.filesUnchanged} unchanged), dirs: ${s.dirs}`);
          print(`read ${formatBytes(s.bytesRead)} of ${formatBytes(s.totalBytes)} in ${(s.durationMs / 1000).toFixed(1)} s (${formatRate(s.bytesRead, s.durationMs)})`);
          print(`added ${s.blobsAdded} chunks, ${formatBytes(s.bytesAdded)} (${formatBytes(s.bytesStored)} stored)`);
          const c = consistencySummary(result.snapshot);
          if (result.snapshot.checkpoints?.length || c.filesTorn > 0 || c.filesIncomplete > 0) print(`consistency: ${describeConsistency(c)}`);
          print(`snapshot ${result.snapshotId.slice(0, 8)} saved`);
        }
        if (result.errors.length > 0) {
          process.stderr.write(`warning: ${result.errors.length} files or directories could not be read and are not in the snapshot\n`);
          process.exitCode = ExitCode.incomplete;
        }
      });
    });
}
