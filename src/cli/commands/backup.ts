import type { Command } from 'commander';
import { type BackupProgress, backup } from '../../backup/archiver.js';
import { ExitCode, TenderError } from '../../errors/errors.js';
import { defaultFreezeRecordDir, thawLeftFrozen } from '../../quiesce/freeze.js';
import { parseHookSpec } from '../../quiesce/hooks.js';
import { type QuiesceOptions, type QuiesceOutcome, parseOnError, parseTimeout, quiesceHooks } from '../../quiesce/quiesce.js';
import { localRepositoryPath } from '../../storage/open.js';
import { collect, incompletePolicy, positiveInt } from '../args.js';
import { globalOptions, print, printJson, withRepository } from '../context.js';
import { formatBytes, formatRate } from '../format.js';
import { createProgress, progressMode } from '../progress.js';
import { type PoliteCliOptions, addPoliteOptions, governorFromOptions, processBox } from '../polite.js';
import { addGpuSourceOption, gpuReaderFor } from '../gpu.js';
import type { GpuSourceChoice } from '../../polite/gpu-source.js';
import { describeChange } from '../../polite/governor.js';
import type { IncompletePolicy } from '../../backup/checkpoints.js';
import { consistencySummary, describeConsistency } from '../../snapshots/consistency.js';
import { listSnapshots, selectSnapshot } from '../../snapshots/select.js';
import path from 'node:path';

interface BackupCliOptions extends PoliteCliOptions {
  tag: string[];
  host?: string;
  parent?: string;
  force?: boolean;
  cacheNeutral?: boolean;
  preHook?: string;
  postHook?: string;
  hookTimeout: string;
  hookOnError: string;
  fsfreeze?: boolean;
  freezeTimeout: string;
  whileFrozen?: string;
  gpuSource?: GpuSourceChoice;
  incomplete: IncompletePolicy;
  rereads?: number;
}

export function registerBackup(program: Command): void {
  const command = program
    .command('backup')
    .description('back up files and directories into a new snapshot')
    .argument('<paths...>', 'files or directories to back up')
    .option('--tag <tag>', 'add a tag to the snapshot (repeatable)', collect, [])
    .option('--host <name>', 'hostname recorded in the snapshot (default: this host)')
    .option('--parent <snapshot>', 'compare with this snapshot to skip unchanged files (default: latest with the same host and paths)')
    .option('--force', 'read every file, ignoring the parent snapshot')
    .option('--cache-neutral', "leave the page cache as it was: evict what this backup's reads bring in (Linux)")
    .option('--pre-hook <hook>', 'before each path is read: a shell command, http://HOST:PORT/PATH (POST, 2xx = quiesced) or file:NAME (a marker the trainer acknowledges)')
    .option('--post-hook <hook>', 'after each path is read, also after an error or a cancel (same forms)')
    .option('--hook-timeout <duration>', 'limit of each hook', '30s')
    .option('--hook-on-error <policy>', 'a failed quiesce step: fail (end the backup) or continue (record "not quiesced")', 'fail')
    .option('--fsfreeze', "freeze each path's filesystem (FIFREEZE, root): while --while-frozen runs, else while the path is read")
    .option('--freeze-timeout <duration>', 'the longest a filesystem stays frozen: a guard process thaws it then, even if tender is killed', '10s')
    .option('--while-frozen <command>', 'run while the filesystem is frozen (take a storage snapshot); the read follows the thaw')
    .option('--incomplete <what>', 'a checkpoint directory that is incomplete when read: store (labelled), skip, or wait=DURATION (e.g. 30s) then store', incompletePolicy, { mode: 'store' })
    .option('--rereads <n>', 'read a file that changed while it was read up to N more times before storing it labelled torn (default 2)', positiveInt);
  addGpuSourceOption(addPoliteOptions(command)).action(async (paths: string[], opts: BackupCliOptions, command: Command) => {
    const g = globalOptions(command);
    const { box, sizing } = processBox();
    const quiesce = quiesceOptions(opts, localRepositoryPath(g.repo ?? process.env.TENDER_REPOSITORY ?? ''));
    thawWhatEarlierRunsLeftFrozen();
    // Which GPU source was found, or why none: one line, shown once the progress output exists.
    const gpuLines: string[] = [];
    const gpuReader = await gpuReaderFor(opts, (line) => gpuLines.push(line));
    // Without a GPU source the backoff is off (that line said so): the governor need not say it again.
    const governor = governorFromOptions(gpuReader ? opts : { ...opts, gpuBackoff: undefined }, box, paths, gpuReader);
    await withRepository(g, async (repo, ctx) => {
      const absolute = paths.map((p) => path.resolve(p));
      const host = opts.host ?? ctx.identity.hostname;
      const parent = opts.force
        ? undefined
        : opts.parent
          ? await selectSnapshot(repo, opts.parent)
          : (await listSnapshots(repo, { host, paths: absolute })).filter((s) => s.snapshot.paths.length === absolute.length).at(-1);
      const progress = createProgress(progressMode(!!g.json, !!g.quiet), 'backup', !!g.quiet);
      for (const line of gpuLines) progress.note(line);
      governor.on('change', (c) => progress.note(describeChange(c), { state: c.state, rate: c.rate ?? null, reason: c.reason }));
      governor.on('note', (line) => progress.note(line));
      governor.start();
      const quiesceHooksOrNone = quiesce
        ? quiesceHooks(() => quiesce, {
            signal: ctx.signal,
            report: (o) => {
              if (g.json) printJson({ message_type: 'quiesce', ...o });
              else if (!g.quiet || !o.quiesced || o.postHookError) process.stderr.write(describeQuiesce(o) + '\n');
            },
          })
        : undefined;
      // Reads are paced (in pieces of at most 1 MiB) only when something limits them.
      const hooks = { ...quiesceHooksOrNone, ...(governor.pacesReads ? { beforeRead: governor.beforeRead } : {}) };
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
            // A memory limit that leaves room for few read slots reads fewer files at once.
            ...(sizing.bufferBudgetBytes !== undefined && sizing.bufferBudgetBytes < 8 * repo.config.chunker.maxSize ? { fileConcurrency: 1 } : {}),
            hooks,
            checkpoints: { incomplete: opts.incomplete },
            ...(opts.rereads !== undefined ? { rereads: opts.rereads } : {}),
          },
          ctx,
        );
      } finally {
        await governor.close();
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
    }, { storage: { limits: { upload: governor.uploadBudget } }, startWorkersEarly: true });
  });
}

/** The quiesce protocol the flags ask for, or undefined when they ask for none. */
function quiesceOptions(opts: BackupCliOptions, localRepository: string | undefined): QuiesceOptions | undefined {
  const hookTimeoutMs = parseTimeout(opts.hookTimeout, '--hook-timeout');
  const freezeTimeoutMs = parseTimeout(opts.freezeTimeout, '--freeze-timeout');
  const onError = parseOnError(opts.hookOnError, '--hook-on-error');
  if (opts.whileFrozen !== undefined && !opts.fsfreeze) {
    throw new TenderError('TENDER_USAGE', '--while-frozen runs while the filesystem is frozen: it needs --fsfreeze', { hint: 'add --fsfreeze' });
  }
  if (opts.preHook === undefined && opts.postHook === undefined && !opts.fsfreeze) return undefined;
  const hook = (text: string | undefined, flag: string, name: 'preHook' | 'postHook' | 'whileFrozen') =>
    text === undefined ? {} : { [name]: parseHookSpec(text, flag, { allowCommand: true }) };
  return {
    ...hook(opts.preHook, '--pre-hook', 'preHook'),
    ...hook(opts.postHook, '--post-hook', 'postHook'),
    ...hook(opts.whileFrozen, '--while-frozen', 'whileFrozen'),
    hookTimeoutMs,
    onError,
    fsfreeze: opts.fsfreeze === true,
    freezeTimeoutMs,
    recordDir: defaultFreezeRecordDir(),
    keepWritable: localRepository ? [localRepository] : [],
  };
}

function describeQuiesce(o: QuiesceOutcome): string {
  const frozen = o.frozenMs !== undefined ? `, frozen for ${o.frozenMs} ms` : '';
  const state = o.quiesced ? `quiesced${frozen}` : `NOT quiesced${frozen}: ${o.reasons!.join('; ')}`;
  return `${o.path}: ${state}${o.postHookError ? `; post-hook failed: ${o.postHookError}` : ''}`;
}

/** The startup check (docs/design.md, "Quiesce"); a record directory this user cannot read is a warning, not a failure. */
function thawWhatEarlierRunsLeftFrozen(): void {
  const dir = defaultFreezeRecordDir();
  let left;
  try {
    left = thawLeftFrozen(dir);
  } catch (err) {
    process.stderr.write(`warning: cannot check ${dir} for filesystems an earlier run left frozen: ${(err as Error).message}\n`);
    return;
  }
  for (const l of left) {
    process.stderr.write(
      l.error
        ? `warning: ${l.path} may still be frozen by an earlier run and could not be thawed: ${l.error}\n`
        : `${l.path}: ${l.thawed ? 'thawed, left frozen by an earlier run' : 'an earlier run had frozen it; it is no longer frozen'}\n`,
    );
  }
}
