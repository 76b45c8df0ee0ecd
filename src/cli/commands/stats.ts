import type { Command } from 'commander';
import { collect } from '../args.js';
import { globalOptions, print, printJson, withRepository } from '../context.js';
import { formatBytes } from '../format.js';
import { listSnapshots, selectSnapshot } from '../../snapshots/select.js';
import { repositoryStats } from '../../snapshots/stats.js';

export function registerStats(program: Command): void {
  program
    .command('stats')
    .description('what the backups read and stored per checkpoint layout and dtype, what each transform saved, and time per stage')
    .argument('[snapshots...]', 'snapshot IDs or "latest" (default: every snapshot)')
    .option('--host <name>', 'only snapshots from this host')
    .option('--tag <tag>', 'only snapshots with this tag (repeatable)', collect, [])
    .option('--path <path>', 'only snapshots of this path (repeatable)', collect, [])
    .action(async (refs: string[], opts: { host?: string; tag: string[]; path: string[] }, command: Command) => {
      const g = globalOptions(command);
      await withRepository(g, async (repo) => {
        const filter = { ...(opts.host ? { host: opts.host } : {}), tags: opts.tag, paths: opts.path };
        const entries = refs.length > 0 ? await Promise.all(refs.map((r) => selectSnapshot(repo, r, filter))) : await listSnapshots(repo, filter);
        const stats = await repositoryStats(repo, entries);
        if (g.json) {
          printJson({ message_type: 'stats', ...stats });
          return;
        }
        print(`backups: ${stats.snapshots.length} snapshots${stats.withoutFigures.length ? ` (${stats.withoutFigures.length} without figures: made before tender recorded them)` : ''}`);
        print('layout       dtype     read        dedup       new         stored      delta saved planes saved  zstd saved');
        const col = (n: number) => formatBytes(n).padEnd(12);
        for (const k of stats.kinds) {
          const t = k.transforms;
          const newBytes = t.delta.bytes + t.planes.bytes + t.zstd.bytes + t.raw.bytes;
          const stored = t.delta.stored + t.planes.stored + t.zstd.stored + t.raw.stored;
          print(
            `${k.layout.padEnd(13)}${k.dtype.padEnd(10)}${col(k.bytesIn)}${col(k.bytesDeduplicated)}${col(newBytes)}${col(stored)}` +
              `${col(t.delta.bytes - t.delta.stored)}${col(t.planes.bytes - t.planes.stored)}  ${formatBytes(t.zstd.bytes - t.zstd.stored)}`,
          );
        }
        const s = stats.stageMs;
        print(
          `time (ms): read ${s.read.toFixed(0)}, chunk ${s.chunk.toFixed(0)} (main thread); hash ${s.hash.toFixed(0)}, ` +
            `seal ${s.seal.toFixed(0)} (summed over worker threads); store ${s.store.toFixed(0)} (summed over concurrent uploads)`,
        );
        print('repository data blobs:');
        for (const [name, f] of Object.entries(stats.stored)) {
          print(`  ${name.padEnd(7)} ${String(f.blobs).padStart(8)} blobs  ${col(f.bytes)} → ${formatBytes(f.stored)}`);
        }
      });
    });
}
