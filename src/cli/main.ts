import { Command, CommanderError, Option } from 'commander';
import { ExitCode, TenderError, exitCodeFor } from '../errors/errors.js';
import { positiveInt } from './args.js';
import { registerAgent } from './commands/agent.js';
import { registerBackup } from './commands/backup.js';
import { registerBox } from './commands/box.js';
import { registerCat } from './commands/cat.js';
import { registerCheck } from './commands/check.js';
import { registerForget } from './commands/forget.js';
import { registerInit } from './commands/init.js';
import { registerKey } from './commands/key.js';
import { registerLs } from './commands/ls.js';
import { registerPreflight } from './commands/preflight.js';
import { registerRepair } from './commands/repair.js';
import { registerRestore } from './commands/restore.js';
import { registerSnapshots } from './commands/snapshots.js';
import { registerStats } from './commands/stats.js';
import { registerVeleroInject } from './commands/velero-inject.js';

/**
 * The CLI composition root. Only here is an error turned into a message, a hint and an exit
 * code (docs/scripting.md lists the codes).
 */
export function buildProgram(): Command {
  const program = new Command('tender')
    .description('deduplicating, encrypted backups of node volumes to S3/MinIO or a local directory')
    .version('0.1.0')
    .option('-r, --repo <url>', 'repository: a directory, local:/path or s3://bucket/prefix (env TENDER_REPOSITORY)')
    .option('--password-file <file>', 'read the repository password from this file (env TENDER_PASSWORD_FILE)')
    .option('--json', 'machine-readable output: JSON lines on stdout')
    .option('-q, --quiet', 'no progress output')
    .addOption(new Option('--workers <n>', 'worker threads for hashing, compression and encryption').argParser(positiveInt))
    .option('--s3-endpoint <url>', 'S3 endpoint, e.g. http://127.0.0.1:9000 for MinIO (env AWS_ENDPOINT_URL)')
    .option('--ca-bundle <file>', 'PEM file of CAs to trust for the S3 endpoint (env AWS_CA_BUNDLE)')
    .showHelpAfterError()
    .exitOverride();
  registerInit(program);
  registerBackup(program);
  registerSnapshots(program);
  registerStats(program);
  registerLs(program);
  registerRestore(program);
  registerCheck(program);
  registerCat(program);
  registerKey(program);
  registerRepair(program);
  registerForget(program);
  registerAgent(program);
  registerBox(program);
  registerPreflight(program);
  registerVeleroInject(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  const json = argv.includes('--json');
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    }
    reportError(err, json);
    return exitCodeFor(err);
  }
}

function reportError(err: unknown, json: boolean): void {
  if (json) {
    const e = err as TenderError;
    process.stderr.write(JSON.stringify({ message_type: 'exit_error', code: e.code ?? 'TENDER_INTERNAL', message: e.message, hint: e.hint }) + '\n');
    return;
  }
  if (err instanceof TenderError) {
    process.stderr.write(`tender: ${err.message}\n`);
    if (err.hint) process.stderr.write(`hint: ${err.hint}\n`);
    return;
  }
  // Not a known failure: show everything, with causes, so it can be reported.
  process.stderr.write(`tender: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
  let cause = (err as Error)?.cause;
  while (cause) {
    process.stderr.write(`caused by: ${(cause as Error).stack ?? String(cause)}\n`);
    cause = (cause as Error).cause;
  }
}
