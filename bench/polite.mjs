// What a backup costs a training job, and what polite tender saves it (issue 13).
//
// A stand-in trainer (bench/polite-trainer.mjs: steady disk reads and writes, per-operation
// latency) runs in its own cgroup, alone, then beside `tender backup` unthrottled, then beside
// polite tender (pressure backoff on the trainer's own PSI); then the same with an idle-phased
// trainer (busy and idle spells, as a trainer between epochs or evaluating), where polite tender
// should run at least at half its unthrottled speed. Tender alone gives its baseline speed.
//
//   sudo node bench/polite.mjs                         # defaults: 90 s per case, 4 GiB dataset
//   node bench/polite.mjs --seconds 8 --dataset-mib 512 --trainer-file-mib 256   # smoke
//
// Options: --seconds S (per case, default 90), --dataset-mib N (what tender backs up, default
// 4096), --trainer-file-mib N (what the trainer reads, default 2048), --trainer-ops N (operations
// per second, default 50: 50 MiB/s of reads + 12.5 MiB/s of writes), --phases B:I (busy:idle
// seconds of the idle-phased trainer, default 15:30: polite tender waits 5 s of quiet before it
// speeds up again), --polite "FLAGS" (default
// "--pressure-backoff io=10"; --pressure-cgroup is added), --data-dir DIR (default
// bench/.data/polite), --keep.
//
// Needs root (cgroups, dropping the page cache), Linux with PSI, dist/ and the native addon
// built. The trainer's cgroup: on a cgroup v2 host /sys/fs/cgroup/tender-bench-trainer (its PSI
// and io); on a v1 or hybrid host cpu and blkio cgroups of that name plus one in the unified
// hierarchy (/sys/fs/cgroup/unified) for its PSI. Targets (issue 13): polite tender costs the
// trainer ≤ 5% throughput and ≤ 10% p99; with the idle-phased trainer it runs at ≥ 50% of its
// unthrottled speed. Results: printed, and written to bench/results/polite-<timestamp>.md/.json.
// The trainer's io stall % (its cgroup's PSI) shows what the pressure threshold acts on: set
// --polite's io= between the stall of "trainer alone" and that of "trainer + tender unthrottled".
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : fallback;
};
const seconds = Number(opt('seconds', 90));
const datasetMiB = Number(opt('dataset-mib', 4096));
const trainerFileMiB = Number(opt('trainer-file-mib', 2048));
const trainerOps = Number(opt('trainer-ops', 50));
const phases = opt('phases', '15:30');
const politeFlags = opt('polite', '--pressure-backoff io=10').split(/\s+/).filter(Boolean);
const dataDir = path.resolve(opt('data-dir', path.join(ROOT, 'bench/.data/polite')));
const keep = argv.includes('--keep');
const MiB = 2 ** 20;

if (!fs.existsSync(path.join(ROOT, 'dist/cli/main.js'))) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });

// ---- data ------------------------------------------------------------------------------------
function writeRandom(file, bytes) {
  if (fs.existsSync(file) && fs.statSync(file).size === bytes) return;
  const fd = fs.openSync(file, 'w');
  const chunk = Buffer.allocUnsafe(8 * MiB);
  for (let done = 0; done < bytes; done += chunk.length) {
    crypto.randomFillSync(chunk);
    fs.writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - done));
  }
  fs.closeSync(fd);
}
fs.mkdirSync(path.join(dataDir, 'dataset'), { recursive: true });
const shard = 256;
for (let i = 0; i * shard < datasetMiB; i++) writeRandom(path.join(dataDir, 'dataset', `shard-${i}.bin`), Math.min(shard, datasetMiB - i * shard) * MiB);
const trainerFile = path.join(dataDir, 'trainer.bin');
writeRandom(trainerFile, trainerFileMiB * MiB);

// ---- the trainer's cgroup --------------------------------------------------------------------
const name = 'tender-bench-trainer';
const v2 = fs.existsSync('/sys/fs/cgroup/cgroup.controllers');
const psiDir = v2 ? `/sys/fs/cgroup/${name}` : `/sys/fs/cgroup/unified/${name}`;
const cgroupDirs = v2 ? [psiDir] : [psiDir, `/sys/fs/cgroup/cpu/${name}`, `/sys/fs/cgroup/blkio/${name}`];
for (const d of cgroupDirs) fs.mkdirSync(d, { recursive: true });
const joinCgroups = cgroupDirs.map((d) => `echo $$ > ${d}/cgroup.procs`).join(' && ');

function dropCaches() {
  try {
    execFileSync('sync');
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  } catch (err) {
    console.error(`cannot drop the page cache (${err.message}): tender's reads may come from memory`);
  }
}

// ---- running ---------------------------------------------------------------------------------
const log = fs.createWriteStream(path.join(dataDir, 'polite.log'), { flags: 'a' });

function startTrainer(idlePhased) {
  const args = [path.join(ROOT, 'bench/polite-trainer.mjs'), '--file', trainerFile, '--out', path.join(dataDir, 'trainer.out'), '--ops', String(trainerOps), '--seconds', String(seconds)];
  if (idlePhased) args.push('--phases', phases);
  const child = spawn('sh', ['-c', `${joinCgroups} && exec "$@"`, 'sh', process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b) => (out += b));
  child.stderr.on('data', (b) => log.write(b));
  return new Promise((resolve, reject) =>
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').at(-1))) : reject(new Error(`trainer exited ${code}: ${out}`)))),
  );
}

let repoCount = 0;
/** `tender backup` of the dataset for `seconds`, again and again (--force); returns MiB/s read and its throttle notes. */
async function runTender(extra) {
  const repo = path.join(dataDir, `repo-${process.pid}-${repoCount++}`);
  const env = { ...process.env, TENDER_PASSWORD: 'bench' };
  execFileSync(process.execPath, [path.join(ROOT, 'bin/tender.js'), '--repo', repo, 'init'], { env, stdio: 'ignore' });
  const deadline = performance.now() + seconds * 1000;
  let bytes = 0;
  const notes = [];
  while (performance.now() < deadline - 500) {
    const child = spawn(process.execPath, [path.join(ROOT, 'bin/tender.js'), '--repo', repo, '--json', 'backup', '--force', ...extra, path.join(dataDir, 'dataset')], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let last = 0;
    let buffered = '';
    child.stdout.on('data', (b) => {
      buffered += b;
      const lines = buffered.split('\n');
      buffered = lines.pop();
      for (const l of lines) {
        log.write(l + '\n');
        const j = JSON.parse(l);
        if (j.message_type === 'status') last = j.bytesDone;
        if (j.message_type === 'summary') last = j.bytesRead;
        if (j.message_type === 'note') notes.push(j.message);
      }
    });
    child.stderr.on('data', (b) => log.write(b));
    const timer = setTimeout(() => child.kill('SIGTERM'), Math.max(0, deadline - performance.now()));
    await new Promise((r) => child.on('exit', r));
    clearTimeout(timer);
    bytes += last;
  }
  if (!keep) fs.rmSync(repo, { recursive: true, force: true });
  return { MiBps: bytes / MiB / seconds, notes };
}

/** Microseconds the trainer's tasks were stalled on I/O so far (its cgroup's io.pressure `some` total). */
function trainerStallUs() {
  return Number(/^some .*total=(\d+)/m.exec(fs.readFileSync(path.join(psiDir, 'io.pressure'), 'utf8'))[1]);
}

async function scenario(label, { trainer, tender, idlePhased = false }) {
  dropCaches();
  console.error(`-- ${label}`);
  const stallBefore = trainerStallUs();
  const started = performance.now();
  const [t, b] = await Promise.all([trainer ? startTrainer(idlePhased) : undefined, tender ? runTender(tender) : undefined]);
  const stallPercent = ((trainerStallUs() - stallBefore) / ((performance.now() - started) * 1000)) * 100;
  return { label, trainer: t && { ...t, ioStallPercent: stallPercent }, tender: b };
}

const polite = [...politeFlags, '--pressure-cgroup', psiDir];
const results = [];
try {
  results.push(await scenario('tender alone, unthrottled', { tender: [] }));
  results.push(await scenario('trainer alone', { trainer: true }));
  results.push(await scenario('trainer + tender unthrottled', { trainer: true, tender: [] }));
  results.push(await scenario('trainer + polite tender', { trainer: true, tender: polite }));
  results.push(await scenario('idle-phased trainer alone', { trainer: true, idlePhased: true }));
  results.push(await scenario('idle-phased trainer + tender unthrottled', { trainer: true, idlePhased: true, tender: [] }));
  results.push(await scenario('idle-phased trainer + polite tender', { trainer: true, idlePhased: true, tender: polite }));
} finally {
  for (const d of cgroupDirs.reverse()) {
    try {
      fs.rmdirSync(d);
    } catch {
      // a process still leaving; the directory is reused next time
    }
  }
}

// ---- the table -------------------------------------------------------------------------------
const byLabel = Object.fromEntries(results.map((r) => [r.label, r]));
const pct = (a, b) => (b ? `${(((a - b) / b) * 100).toFixed(1)}%` : '');
const rows = results.map((r) => {
  const base = r.label.startsWith('idle-phased') ? byLabel['idle-phased trainer alone'] : byLabel['trainer alone'];
  const unthrottled = r.label.startsWith('idle-phased') ? byLabel['idle-phased trainer + tender unthrottled'] : byLabel['trainer + tender unthrottled'];
  const t = r.trainer;
  return [
    r.label,
    t ? t.readMiBps.toFixed(1) : '',
    t && base.trainer && r !== base ? pct(t.readMiBps, base.trainer.readMiBps) : '',
    t ? t.p99ms.toFixed(1) : '',
    t && base.trainer && r !== base ? pct(t.p99ms, base.trainer.p99ms) : '',
    t ? t.ioStallPercent.toFixed(1) : '',
    r.tender ? r.tender.MiBps.toFixed(1) : '',
    r.tender && r.trainer && unthrottled.tender && r !== unthrottled ? `${((r.tender.MiBps / unthrottled.tender.MiBps) * 100).toFixed(0)}%` : '',
    r.tender ? String(r.tender.notes.length) : '',
  ];
});
const header = ['case', 'trainer MiB/s', 'Δ vs alone', 'trainer p99 ms', 'Δ p99', 'trainer io stall %', 'tender MiB/s', 'of unthrottled', 'throttle changes'];
const table = [header, header.map(() => '---'), ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
const setup = `${seconds} s per case; trainer ${trainerOps} ops/s (1 MiB read + 256 KiB write), idle phases ${phases}; dataset ${datasetMiB} MiB; polite flags: ${polite.join(' ')}; cgroup ${v2 ? 'v2' : 'v1 + unified PSI'}`;
console.log(`\n${setup}\n\n${table}\n`);
fs.mkdirSync(path.join(ROOT, 'bench/results'), { recursive: true });
const stamp = new Date().toISOString().replace(/[:.]/g, '-');
fs.writeFileSync(path.join(ROOT, `bench/results/polite-${stamp}.md`), `# polite tender vs a stand-in trainer\n\n${setup}\n\n${table}\n`);
fs.writeFileSync(path.join(ROOT, `bench/results/polite-${stamp}.json`), JSON.stringify({ setup, results }, null, 2));
if (!keep) fs.rmSync(path.join(dataDir, 'trainer.out'), { force: true });
