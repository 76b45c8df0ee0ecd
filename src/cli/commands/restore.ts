import { setTimeout as delay } from 'node:timers/promises';
import { type Command, Option } from 'commander';
import { TenderError, isTenderError } from '../../errors/errors.js';
import { restore } from '../../restore/restorer.js';
import { collect, positiveInt } from '../args.js';
import { globalOptions, print, printJson, withRepository } from '../context.js';
import { formatBytes, formatRate } from '../format.js';
import { type ProgressSample, createProgress, progressMode } from '../progress.js';
import { type SnapshotEntry, selectSnapshot } from '../../snapshots/select.js';

interface RestoreCliOptions {
  target?: string;
  include: string[];
  overwrite?: boolean;
  host?: string;
  tag: string[];
  path: string[];
  onlyConsistent?: boolean;
  veleroBackup?: string;
  wait?: number;
  readAhead?: number;
}

export function registerRestore(program: Command): void {
  program
    .command('restore')
    .description('restore a snapshot into a directory (the manual restore path)')
    .argument('<snapshot>', 'snapshot ID or "latest", optionally with :DIR to restore only the contents of that directory (latest:ckpt)')
    .option('-t, --target <dir>', 'directory to restore into (must be new or empty)')
    .option('--overwrite', 'restore into a non-empty target, replacing entries that are in the way')
    .option('--include <glob>', 'restore only paths matching this glob, relative to the snapshot root (repeatable)', collect, [])
    .option('--host <name>', 'with latest: newest snapshot of this host')
    .option('--tag <tag>', 'with latest: newest snapshot with this tag (repeatable)', collect, [])
    .option('--path <path>', 'with latest: newest snapshot of this path (repeatable)', collect, [])
    .option('--only-consistent', 'leave out files stored torn or incomplete, and incomplete checkpoint directories (each is listed)')
    .option(
      '--velero-backup <name>',
      "with latest: the snapshot taken with this Velero backup (tag velero.io/backup-name); an empty name restores nothing and succeeds, so an init container can pass its pod's velero.io/backup-name label, which only restored pods have",
    )
    .addOption(
      new Option('--read-ahead <reads>', 'large reads in flight at once (default 4); each holds two buffers of max(8 MiB, the largest chunk): fewer for less memory, more for a slow, distant store').argParser(positiveInt),
    )
    .addOption(new Option('--wait <seconds>', 'with latest: if no snapshot matches yet, look again every 2 s for this long (an init container waiting for its backup)').argParser(positiveInt))
    .action(async (ref: string, opts: RestoreCliOptions, command: Command) => {
      const g = globalOptions(command);
      if (!opts.target) throw new TenderError('TENDER_USAGE', 'restore needs --target DIR');
      const target = opts.target;
      if (opts.veleroBackup === '') {
        const reason = 'no Velero backup named (the pod was not restored by Velero): nothing to restore';
        if (g.json) printJson({ message_type: 'summary', snapshot_id: null, files: 0, dirs: 0, bytes: 0, errors: [], reason });
        else if (!g.quiet) print(reason);
        return;
      }
      const tags = opts.veleroBackup === undefined ? opts.tag : [...opts.tag, `velero.io/backup-name=${opts.veleroBackup}`];
      await withRepository(g, async (repo, ctx) => {
        const colon = ref.indexOf(':');
        const subpath = colon >= 0 ? ref.slice(colon + 1) : undefined;
        const { id, snapshot } = await selectWaiting(
          () =>
            selectSnapshot(repo, colon >= 0 ? ref.slice(0, colon) : ref, {
              ...(opts.host ? { host: opts.host } : {}),
              tags,
              paths: opts.path,
            }),
          opts.wait ?? 0,
          ctx.signal,
        );
        const progress = createProgress(progressMode(!!g.json, !!g.quiet), 'restore');
        const started = Date.now();
        let result;
        try {
          ctx.events.on('progress', (p) => progress.update({ ...(p as ProgressSample), ...(snapshot.summary && !subpath ? { totalBytes: snapshot.summary.totalBytes } : {}) }));
          result = await restore(
            repo,
            snapshot,
            {
              target,
              ...(opts.include.length ? { include: opts.include } : {}),
              ...(opts.overwrite ? { overwrite: true } : {}),
              ...(subpath ? { subpath } : {}),
              ...(opts.onlyConsistent ? { onlyConsistent: true } : {}),
              ...(opts.readAhead !== undefined ? { readAhead: opts.readAhead } : {}),
            },
            ctx,
          );
        } finally {
          progress.stop();
        }
        const ms = Date.now() - started;
        if (g.json) printJson({ message_type: 'summary', snapshot_id: id, ...result, duration_ms: ms });
        else if (!g.quiet) {
          for (const s of result.skipped) print(`skipped ${s.path}: ${s.message}`);
          print(`restored snapshot ${id.slice(0, 8)}: ${result.files} files, ${result.dirs} dirs, ${formatBytes(result.bytes)} in ${(ms / 1000).toFixed(1)} s (${formatRate(result.bytes, ms)})`);
        }
        if (result.errors.length > 0) {
          for (const e of result.errors) process.stderr.write(`error: ${e.path}: ${e.message}\n`);
          throw new TenderError('TENDER_IO', `${result.errors.length} entries could not be restored (listed above)`);
        }
      }, { startWorkersEarly: true });
    });
}

/** select(), tried again every 2 s while no snapshot matches, for up to `waitSeconds`. */
async function selectWaiting(select: () => Promise<SnapshotEntry>, waitSeconds: number, signal: AbortSignal): Promise<SnapshotEntry> {
  const deadline = Date.now() + waitSeconds * 1000;
  for (let announced = false; ; announced = true) {
    try {
      return await select();
    } catch (err) {
      if (!isTenderError(err, 'TENDER_SNAPSHOT_NOT_FOUND') || Date.now() >= deadline) throw err;
      if (!announced) process.stderr.write(`${err.message}; waiting up to ${waitSeconds} s for one\n`);
    }
    try {
      await delay(2000, undefined, { signal });
    } catch {
      throw new TenderError('TENDER_CANCELLED', 'interrupted while waiting for a snapshot to restore');
    }
  }
}
