#!/usr/bin/env node
// Checkpoint complete → stored: how long after a trainer finishes a checkpoint its backup is in
// the repository, with the agent's checkpoint trigger (src/agent/checkpoint-watch.ts) driving
// backups of a local volume into a local repository, as `tender agent` does for a volume with
// `tender.io/trigger: checkpoint`. A writer in this process saves HF Trainer checkpoints
// (checkpoint-N/model.safetensors of --size-mib random bytes, then trainer_state.json last) every
// --every-s seconds, keeping the newest two. Latency = end of the backup run that stored it −
// the mtime of its last file (what the agent's tender_checkpoint_to_stored_seconds observes).
//
//   node bench/checkpoint-latency.mjs                       # 5 checkpoints of 256 MiB, every 20 s
//   node bench/checkpoint-latency.mjs --size-mib 64 --count 3 --every-s 5   # a smoke run
//
// Prints a table (and writes it to bench/results/checkpoint-latency-<time>.md).
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: opts } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '256' },
    count: { type: 'string', default: '5' },
    'every-s': { type: 'string', default: '20' },
    'poll-ms': { type: 'string', default: '10000' },
    'debounce-ms': { type: 'string', default: '250' },
  },
});
const sizeMiB = Number(opts['size-mib']);
const count = Number(opts.count);
const everyMs = Number(opts['every-s']) * 1000;

if (!existsSync(path.join(ROOT, 'dist', 'agent', 'checkpoint-watch.js'))) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
const { backup } = await import(path.join(ROOT, 'dist/backup/archiver.js'));
const { CheckpointWatcher } = await import(path.join(ROOT, 'dist/agent/checkpoint-watch.js'));
const { Repository } = await import(path.join(ROOT, 'dist/repo/repository.js'));
const { openStorage } = await import(path.join(ROOT, 'dist/storage/open.js'));
const { createOperationContext } = await import(path.join(ROOT, 'dist/util/operation.js'));
const { default: pino } = await import('pino');

const tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-ckpt-latency-'));
const volumeDir = path.join(tmp, 'volume');
await mkdir(volumeDir);
const repo = await Repository.init(await openStorage(path.join(tmp, 'repo')), 'bench', { kdf: { N: 1024, r: 8, p: 1 } });

/** HF Trainer's save: the weights, then trainer_state.json last; the oldest beyond two go. */
async function saveCheckpoint(step) {
  const dir = path.join(volumeDir, `checkpoint-${step}`);
  await mkdir(dir);
  const bytes = sizeMiB * 1024 * 1024;
  const header = Buffer.from(JSON.stringify({ w: { dtype: 'U8', shape: [bytes], data_offsets: [0, bytes] } }));
  const file = await open(path.join(dir, 'model.safetensors'), 'w');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(header.length));
  await file.write(Buffer.concat([length, header]));
  const block = Buffer.alloc(8 * 1024 * 1024);
  for (let done = 0; done < bytes; done += block.length) await file.write(randomFillSync(block).subarray(0, Math.min(block.length, bytes - done)));
  await file.sync();
  await file.close();
  await writeFile(path.join(dir, 'trainer_state.json.tmp'), JSON.stringify({ global_step: step }));
  await rename(path.join(dir, 'trainer_state.json.tmp'), path.join(dir, 'trainer_state.json'));
  if (step > 2) await rm(path.join(volumeDir, `checkpoint-${step - 2}`), { recursive: true, force: true });
}

// The agent's part, without Kubernetes: one run at a time per volume, a request during a run queues one more.
const volume = { key: 'bench/trainer/ckpt', namespace: 'bench', pod: 'trainer', podUid: 'u', volume: 'ckpt', identity: 'bench/ckpt', tags: [], path: volumeDir, schedule: {}, onCheckpoint: true };
const latencies = [];
const runs = [];
let parent;
let running;
let again = false;
let lastSuccess;
function enqueue() {
  if (running) {
    again = true;
    return;
  }
  running = (async () => {
    const startedAt = Date.now();
    const result = await backup(repo, { paths: [volumeDir], rootNames: ['ckpt'], hostname: volume.identity, ...(parent ? { parent } : {}) }, createOperationContext());
    parent = { id: result.snapshotId, snapshot: result.snapshot };
    const endedAt = Date.now();
    lastSuccess = endedAt;
    runs.push({ ms: endedAt - startedAt, bytesRead: result.snapshot.summary.bytesRead, checkpoints: result.snapshot.checkpoints ?? [] });
    latencies.push(...watcher.runFinished({ identity: volume.identity, state: 'succeeded', startedAt: new Date(startedAt).toISOString(), endedAt: new Date(endedAt).toISOString() }));
  })().finally(() => {
    running = undefined;
    if (again) {
      again = false;
      enqueue();
    }
  });
}
const watcher = new CheckpointWatcher({
  enqueue,
  lastSuccess: () => lastSuccess,
  logger: pino({ level: 'silent' }),
  pollMs: Number(opts['poll-ms']),
  debounceMs: Number(opts['debounce-ms']),
});
watcher.sync([volume]);

for (let step = 1; step <= count; step++) {
  const began = Date.now();
  await saveCheckpoint(step);
  if (step < count) await sleep(Math.max(0, everyMs - (Date.now() - began)));
}
// A checkpoint rotated away before a run stored it is never stored: the bound ends the wait.
const deadline = Date.now() + Number(opts['poll-ms']) + 120_000;
while (latencies.length < count && Date.now() < deadline) await (running ?? sleep(100));
watcher.stop();
await repo.close();
await rm(tmp, { recursive: true, force: true });

const sorted = [...latencies].sort((a, b) => a - b);
const q = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))].toFixed(2) : '-');
const table = [
  `checkpoint complete → stored (${os.cpus().length} CPUs, local repository, HF Trainer checkpoints of ${sizeMiB} MiB every ${everyMs / 1000} s)`,
  '',
  '| checkpoints | stored | backup runs | p50 s | p90 s | max s | mean backup s |',
  '|--:|--:|--:|--:|--:|--:|--:|',
  `| ${count} | ${latencies.length} | ${runs.length} | ${q(0.5)} | ${q(0.9)} | ${q(1)} | ${(runs.reduce((a, r) => a + r.ms, 0) / Math.max(1, runs.length) / 1000).toFixed(2)} |`,
].join('\n');
console.log(table);
await mkdir(path.join(ROOT, 'bench', 'results'), { recursive: true });
await writeFile(path.join(ROOT, 'bench', 'results', `checkpoint-latency-${new Date().toISOString().replace(/[:.]/g, '-')}.md`), `${table}\n`);
