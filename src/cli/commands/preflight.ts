import type { Command } from 'commander';
import { ExitCode, TenderError } from '../../errors/errors.js';
import type { Repository } from '../../repo/repository.js';
import type { BackupSource } from '../../velero/preflight-run.js';
import type { Finding, PreflightReport } from '../../velero/preflight.js';
import { globalOptions, print, printJson, withRepository } from '../context.js';
import { loadKubeConfig } from '../kubeconfig.js';

interface PreflightCliOptions {
  backupFile?: string;
  backup?: string;
  backupName?: string;
  kubeconfig?: string;
  namespace: string;
  gpuResource: string;
  nodeSelector?: string;
}

/**
 * `tender preflight`: what restoring a Velero backup into a cluster needs and whether it is there.
 * Exits 4 (ExitCode.restoreNotReady) when something required is missing.
 */
export function registerPreflight(program: Command): void {
  program
    .command('preflight')
    .description('check that a cluster has what restoring a Velero backup needs: CRDs and operators, storage and snapshot classes, GPUs, tender snapshots')
    .option('--backup-file <file>', "the backup's tarball (<name>.tar.gz from the backup storage location)")
    .option('--backup <name>', 'the Velero backup, read from the API server and its backup storage location (S3; AWS_* credentials)')
    .option('--backup-name <name>', 'with --backup-file: the backup\'s name, for its tender snapshots (default: the file name without .tar.gz)')
    .option('--kubeconfig <file>', 'the target cluster (env KUBECONFIG; default: in-cluster service account)')
    .option('--namespace <ns>', "Velero's namespace (its Backups, storage locations and plugin ConfigMaps)", 'velero')
    .option('--gpu-resource <name>', 'the extended resource that counts GPUs', 'nvidia.com/gpu')
    .option('--node-selector <labels>', 'count the GPUs of these nodes only (a label selector, e.g. pool=gpu)')
    .action(async (opts: PreflightCliOptions, command: Command) => {
      const g = globalOptions(command);
      if (!!opts.backupFile === !!opts.backup) {
        throw new TenderError('TENDER_USAGE', 'preflight needs one of --backup-file FILE and --backup NAME', {
          hint: 'tender preflight --backup-file BACKUP.tar.gz | --backup NAME [--kubeconfig FILE] [--json]',
        });
      }
      if (opts.backupName && !opts.backupFile) throw new TenderError('TENDER_USAGE', '--backup-name goes with --backup-file');
      const source: BackupSource = opts.backupFile ? { file: opts.backupFile, ...(opts.backupName ? { name: opts.backupName } : {}) } : { backup: opts.backup! };
      const kubeConfig = await loadKubeConfig(opts.kubeconfig ?? process.env.KUBECONFIG);
      const { runPreflight } = await import('../../velero/preflight-run.js');
      const run = (repo?: Repository): Promise<PreflightReport> =>
        runPreflight({
          source,
          kubeConfig,
          veleroNamespace: opts.namespace,
          gpuResource: opts.gpuResource,
          ...(opts.nodeSelector ? { nodeSelector: opts.nodeSelector } : {}),
          storage: { ...(g.s3Endpoint ? { s3Endpoint: g.s3Endpoint } : {}), ...(g.caBundle ? { caBundle: g.caBundle } : {}) },
          ...(repo ? { repo } : {}),
        });
      const report = g.repo || process.env.TENDER_REPOSITORY ? await withRepository(g, (repo) => run(repo)) : await run();
      if (g.json) printJson({ message_type: 'preflight', ...report });
      else printReport(report);
      if (report.missing > 0) process.exitCode = ExitCode.restoreNotReady;
    });
}

const LABEL: Record<Finding['severity'], string> = { ok: 'ok', warning: 'WARNING', missing: 'MISSING' };

function printReport(r: PreflightReport): void {
  const b = r.backup;
  print(
    `Velero backup ${b.name} (${b.source})${b.formatVersion ? `, format ${b.formatVersion}` : ''}: ${plural(b.items, 'item')} in ${plural(b.namespaces.length, 'namespace')} (${b.namespaces.join(', ') || 'none'})`,
  );
  print(`Target cluster: ${r.target}`);
  print('');
  const rows = r.findings.map((f) => [LABEL[f.severity], f.check, f.subject, f.message]);
  const widths = [0, 1, 2].map((i) => Math.min(48, Math.max(['STATUS', 'CHECK', 'SUBJECT'][i]!.length, ...rows.map((row) => row[i]!.length))));
  const line = (cells: string[]): string => cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c)).join('  ');
  print(line(['STATUS', 'CHECK', 'SUBJECT', 'DETAIL']));
  r.findings.forEach((f, i) => {
    print(line(rows[i]!));
    if (f.suggestion) print(`${' '.repeat(widths[0]! + widths[1]! + widths[2]! + 6)}-> ${f.suggestion}`);
  });
  if (r.storageClassConfigMap) {
    print('');
    print("Suggested StorageClass mapping for Velero's change-storage-class plugin (kubectl apply -f -):");
    print(r.storageClassConfigMap.trimEnd());
  }
  print('');
  print(
    r.missing > 0
      ? `${r.missing} missing, ${plural(r.warnings, 'warning')}: the target is not ready for this restore`
      : `nothing missing${r.warnings > 0 ? `, ${plural(r.warnings, 'warning')}` : ''}: the target is ready for this restore`,
  );
}

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;
