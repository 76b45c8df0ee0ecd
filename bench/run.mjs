#!/usr/bin/env node
// Side-by-side backup/restore benchmark of tender, restic and kopia on checkpoint-shaped data
// (see bench/README.md).
//
//   node bench/run.mjs [--scale 1] [--versions 4] [--drift 0.005] [--backend local|minio|both] [--tools tender,restic,kopia]
//                      [--small-files N] [--small-files-only] [--keep] [--timeout-min 60] [--seed S]
//                      [--source cold|cached]
//
// For each backend and tool: init; back up versions 1..N in turn through one path (work/, whose
// content becomes the next version: changed files are new inodes with new mtimes, unchanged files
// stay as they are); back up once more with nothing changed; restore the latest snapshot into an
// empty directory and compare it byte for byte with the source. Prints one markdown table and
// writes it, the raw JSON and a log of every command to bench/results/<timestamp>.{md,json,log}.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { checkpointSeries, smallFiles, DEFAULT_DATA_DIR, DEFAULT_DRIFT } from './dataset.mjs';
import { TOOLS, createBucket, kopiaBinary, makeTool, measure, toolVersions } from './tools.mjs';

const BENCH = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.join(BENCH, '..');
const MiB = 1024 * 1024;

const { values: o } = parseArgs({
  options: {
    scale: { type: 'string', default: '1' },
    versions: { type: 'string', default: '4' },
    drift: { type: 'string', default: String(DEFAULT_DRIFT) },
    backend: { type: 'string', default: 'both' },
    tools: { type: 'string', default: TOOLS.join(',') },
    'small-files': { type: 'string' },
    'small-files-only': { type: 'boolean', default: false },
    seed: { type: 'string', default: 'tender-bench' },
    'data-dir': { type: 'string', default: DEFAULT_DATA_DIR },
    keep: { type: 'boolean', default: false },
    'timeout-min': { type: 'string', default: '60' },
    'kopia-compression': { type: 'string', default: 'zstd-fastest' },
    /** cold: the page cache is dropped before every backup and restore; cached: what is read is read into it first. */
    source: { type: 'string', default: 'cold' },
  },
});

const scale = Number(o.scale);
const nVersions = Number(o.versions);
const backends = o.backend === 'both' ? ['local', 'minio'] : o.backend.split(',');
const tools = o.tools.split(',').map((t) => t.trim()).filter(Boolean);
const smallCount = o['small-files'] === undefined ? 0 : Number(o['small-files'] || 1_000_000);
for (const b of backends) if (!['local', 'minio'].includes(b)) throw new Error(`--backend: unknown ${b}`);
if (!['cold', 'cached'].includes(o.source)) throw new Error(`--source: cold or cached, not ${o.source}`);
for (const t of tools) if (!TOOLS.includes(t)) throw new Error(`--tools: unknown ${t}`);
if (!(scale > 0) || !(nVersions >= 1)) throw new Error('--scale must be > 0 and --versions ≥ 1');
measure.timeoutMs = Number(o['timeout-min']) * 60_000;

const stamp = new Date().toISOString().replace(/[:.]/g, '-').replace('Z', '');
const resultsDir = path.join(BENCH, 'results');
fs.mkdirSync(resultsDir, { recursive: true });
const logFile = path.join(resultsDir, `${stamp}.log`);
const runDir = path.join(o['data-dir'], 'runs', stamp);
fs.mkdirSync(runDir, { recursive: true });

const say = (m) => {
  const line = `[${new Date().toISOString().slice(11, 19)}] ${m}`;
  process.stderr.write(line + '\n');
  fs.appendFileSync(logFile, `# ${line}\n`);
};

// ---------------------------------------------------------------- set-up

function ensureTender() {
  const env = { ...process.env, npm_config_nodedir: process.env.npm_config_nodedir ?? '/usr' };
  if (!fs.existsSync(path.join(ROOT, 'native', 'build', 'Release', 'tender_native.node'))) {
    say('building the native addon (npm run build:native)');
    execFileSync('npm', ['run', 'build:native'], { cwd: ROOT, env, stdio: ['ignore', 2, 2] });
  }
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) {
    say('building tender (npm run build)');
    execFileSync('npm', ['run', 'build'], { cwd: ROOT, env, stdio: ['ignore', 2, 2] });
  }
}

/**
 * Copies the built tender (bin/, dist/, the native addon, package.json; node_modules linked) into
 * the run directory, so the whole run measures one build even if dist/ is rebuilt meanwhile.
 */
function snapshotTender() {
  const dir = path.join(runDir, 'tender-build');
  fs.mkdirSync(path.join(dir, 'native', 'build', 'Release'), { recursive: true });
  fs.cpSync(path.join(ROOT, 'bin'), path.join(dir, 'bin'), { recursive: true });
  fs.cpSync(path.join(ROOT, 'dist'), path.join(dir, 'dist'), { recursive: true, preserveTimestamps: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
  const addon = path.join(ROOT, 'native', 'build', 'Release', 'tender_native.node');
  if (fs.existsSync(addon)) fs.copyFileSync(addon, path.join(dir, 'native', 'build', 'Release', 'tender_native.node'));
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  return path.join(dir, 'bin', 'tender.js');
}

function ensureRestic() {
  try {
    execFileSync('restic', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    say('restic not found; trying apt-get install -y restic');
    try {
      execFileSync('apt-get', ['install', '-y', 'restic'], { stdio: ['ignore', 2, 2] });
      return true;
    } catch {
      say('could not install restic (apt-get install -y restic); skipping it');
      return false;
    }
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function startMinio(dir) {
  // The console takes PORT+1; retry if either is taken.
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    try {
      const endpoint = execFileSync(path.join(ROOT, 'scripts', 'minio.sh'), ['start', dir, String(port)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim().split('\n').at(-1);
      return endpoint;
    } catch (e) {
      if (attempt >= 3) throw new Error(`MinIO did not start: ${e.stderr ?? e.message}`);
    }
  }
}

function stopMinio(dir) {
  try {
    execFileSync(path.join(ROOT, 'scripts', 'minio.sh'), ['stop', dir], { stdio: 'ignore' });
  } catch {
    /* already gone */
  }
}

let dropOk;
/** Writes back dirty pages and drops the page cache; remembers whether that was permitted. */
function dropCaches() {
  try {
    execFileSync('sync');
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    dropOk = dropOk ?? true;
    return true;
  } catch {
    dropOk = false;
    return false;
  }
}

/**
 * Before a command that reads `dirs`: with --source cold, dirty pages are written back and the
 * page cache dropped (reads come from the disk); with --source cached, dirty pages are written
 * back and every file under `dirs` is read once, so the command reads from memory (the issue's
 * "from a cached source"). Either way no write-back of an earlier command competes with it.
 */
function prepareReads(...dirs) {
  if (o.source === 'cold') return dropCaches();
  execFileSync('sync');
  const buffer = Buffer.allocUnsafe(8 * MiB);
  const warm = (p) => {
    const st = fs.lstatSync(p);
    if (st.isDirectory()) for (const name of fs.readdirSync(p)) warm(path.join(p, name));
    else if (st.isFile()) {
      const fd = fs.openSync(p, 'r');
      try {
        while (fs.readSync(fd, buffer, 0, buffer.length, null) > 0);
      } finally {
        fs.closeSync(fd);
      }
    }
  };
  for (const d of dirs) if (d && fs.existsSync(d)) warm(d);
  return true;
}

/**
 * Makes `dst` hold the tree of `src` as a trainer would leave it: files whose content changed
 * (a different inode in the version cache) are replaced — new inode, new mtime — and files that
 * did not change are left alone (same inode, mtime, ctime). Files are hard links into the version
 * cache, so this costs no data I/O.
 */
function syncTree(src, dst) {
  fs.mkdirSync(dst, { recursive: true });
  const names = new Set();
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    names.add(e.name);
    const s = path.join(src, e.name);
    const d = path.join(dst, e.name);
    let ds;
    try {
      ds = fs.lstatSync(d);
    } catch {
      /* absent */
    }
    if (e.isDirectory()) {
      if (ds && !ds.isDirectory()) fs.rmSync(d, { force: true });
      syncTree(s, d);
      continue;
    }
    const ss = fs.lstatSync(s);
    if (ds && ds.ino === ss.ino && ds.dev === ss.dev) continue;
    if (ds) fs.rmSync(d, { recursive: true, force: true });
    fs.linkSync(s, d);
  }
  for (const name of fs.readdirSync(dst)) if (!names.has(name)) fs.rmSync(path.join(dst, name), { recursive: true, force: true });
}

function verify(src, restored) {
  if (!fs.existsSync(restored)) return `restored tree not found at ${restored}`;
  try {
    execFileSync('diff', ['-r', '-q', '--no-dereference', src, restored], { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * MiB });
    return 'ok';
  } catch (e) {
    const out = `${e.stdout ?? ''}${e.stderr ?? ''}`.trim().split('\n');
    return `DIFFERS (${out.length} lines): ${out.slice(0, 3).join('; ')}`;
  }
}

// ---------------------------------------------------------------- scenarios

/** A tool's repository directory on the local backend (what --source cached warms besides the data). */
const localRepo = (tool, backend) => (backend.kind === 'local' ? tool.repo : undefined);

/** The checkpoint series through work/, then a no-change run, then restore + verify. */
async function checkpointScenario(tool, backend, data) {
  const r = { backend: backend.label, tool: tool.name, repo: tool.repo, backups: [] };
  const work = path.join(runDir, 'work');
  fs.rmSync(work, { recursive: true, force: true });
  try {
    say(`${tool.name}/${backend.label}: init`);
    r.init = pick(await tool.init());
    for (let v = 1; v <= data.versions.length; v++) {
      syncTree(data.versions[v - 1], work);
      prepareReads(work, localRepo(tool, backend));
      const b = await tool.backup(work);
      r.backups.push({ version: v, bytes: data.bytes[v - 1], files: data.files[v - 1], ...pick(b), summary: b.summary });
      say(`${tool.name}/${backend.label}: backup v${v}: ${b.seconds.toFixed(1)} s, ${mbps(data.bytes[v - 1], b.seconds)} MB/s, ${(b.rssKB / 1024).toFixed(0)} MB RSS`);
    }
    prepareReads(work, localRepo(tool, backend));
    const n = await tool.backup(work);
    r.noChange = { files: data.files.at(-1), ...pick(n), summary: n.summary };
    say(`${tool.name}/${backend.label}: no-change backup: ${n.seconds.toFixed(2)} s`);
    r.storedBytes = await tool.statsBytes();
    const target = path.join(runDir, 'restore');
    fs.rmSync(target, { recursive: true, force: true });
    fs.mkdirSync(target);
    prepareReads(localRepo(tool, backend));
    const rs = await tool.restore(target);
    r.restore = { bytes: data.bytes.at(-1), ...pick(rs), summary: rs.summary };
    r.restore.verified = verify(data.versions.at(-1), rs.rootFor(work));
    say(`${tool.name}/${backend.label}: restore: ${rs.seconds.toFixed(1)} s, ${mbps(data.bytes.at(-1), rs.seconds)} MB/s, verify ${r.restore.verified}`);
    fs.rmSync(target, { recursive: true, force: true });
  } catch (e) {
    r.error = e.message;
    say(`${tool.name}/${backend.label}: FAILED: ${e.message}`);
  }
  return r;
}

/** Many tiny files: one backup, a no-change backup, restore + verify; time and memory. */
async function smallFilesScenario(tool, backend, data) {
  const r = { backend: backend.label, tool: tool.name, repo: tool.repo, files: data.files, bytes: data.bytes };
  try {
    say(`${tool.name}/${backend.label}: small files: init`);
    await tool.init();
    prepareReads(data.dir, localRepo(tool, backend));
    r.backup = pick(await tool.backup(data.dir));
    say(`${tool.name}/${backend.label}: small files: backup ${r.backup.seconds.toFixed(1)} s, ${(r.backup.rssKB / 1024).toFixed(0)} MB RSS`);
    prepareReads(data.dir, localRepo(tool, backend));
    r.noChange = pick(await tool.backup(data.dir));
    r.storedBytes = await tool.statsBytes();
    const target = path.join(runDir, 'restore');
    fs.rmSync(target, { recursive: true, force: true });
    fs.mkdirSync(target);
    prepareReads(localRepo(tool, backend));
    const rs = await tool.restore(target);
    r.restore = pick(rs);
    r.restore.verified = verify(data.dir, rs.rootFor(data.dir));
    say(`${tool.name}/${backend.label}: small files: restore ${rs.seconds.toFixed(1)} s, verify ${r.restore.verified}`);
    fs.rmSync(target, { recursive: true, force: true });
  } catch (e) {
    r.error = e.message;
    say(`${tool.name}/${backend.label}: small files FAILED: ${e.message}`);
  }
  return r;
}

const pick = (m) => ({ seconds: m.seconds, rssKB: m.rssKB });

/**
 * tender's own figures (the `transforms` object of its snapshot summaries, docs/design.md
 * "Checkpoint-aware storage"), summed over its backups of the series: per layout and dtype what
 * was read, deduplicated, stored and saved by each transform, and seconds per pipeline stage.
 */
function tenderProfile(all) {
  const lines = [];
  for (const r of all.filter((x) => (x.tool === 'tender' || x.tool === 'tender-flat') && !x.error)) {
    const kinds = new Map();
    const stages = { read: 0, chunk: 0, hash: 0, seal: 0, store: 0 };
    let wall = 0;
    for (const b of r.backups) {
      const t = b.summary?.transforms;
      if (!t) continue;
      wall += b.seconds;
      for (const s of Object.keys(stages)) stages[s] += (t.stageMs[s] ?? 0) / 1000;
      for (const k of t.kinds) {
        const key = `${k.layout} ${k.dtype}`;
        const sum = kinds.get(key) ?? { in: 0, dedup: 0, delta: [0, 0], planes: [0, 0], zstd: [0, 0], raw: [0, 0] };
        sum.in += k.bytesIn;
        sum.dedup += k.bytesDeduplicated;
        for (const name of ['delta', 'planes', 'zstd', 'raw']) {
          // A tender from before delta blobs has no figures for them.
          sum[name][0] += k.transforms[name]?.bytes ?? 0;
          sum[name][1] += k.transforms[name]?.stored ?? 0;
        }
        kinds.set(key, sum);
      }
    }
    if (kinds.size === 0) continue;
    const m = (n) => (n / MiB).toFixed(0);
    lines.push(`${r.tool} (${r.backend}), versions 1..N: per layout and dtype (MiB; "saved" = plaintext − stored of the blobs that transform stored)`);
    lines.push('');
    lines.push('| layout dtype | read | dedup | delta in → stored | planes in → stored | zstd in → stored | raw | stored/new |');
    lines.push('|---|--:|--:|--:|--:|--:|--:|--:|');
    for (const [key, s] of [...kinds].sort()) {
      const newBytes = s.delta[0] + s.planes[0] + s.zstd[0] + s.raw[0];
      const stored = s.delta[1] + s.planes[1] + s.zstd[1] + s.raw[1];
      lines.push(
        `| ${key} | ${m(s.in)} | ${m(s.dedup)} | ${m(s.delta[0])} → ${m(s.delta[1])} | ${m(s.planes[0])} → ${m(s.planes[1])} | ${m(s.zstd[0])} → ${m(s.zstd[1])} | ${m(s.raw[0])} | ${newBytes ? (stored / newBytes).toFixed(3) : '–'} |`,
      );
    }
    lines.push('');
    const f = (x) => x.toFixed(1);
    lines.push(`${r.tool} (${r.backend}) stage seconds over the backups (wall ${f(wall)} s): read ${f(stages.read)}, chunk ${f(stages.chunk)} (main thread); hash ${f(stages.hash)}, seal ${f(stages.seal)} (summed over worker threads); store ${f(stages.store)} (summed over concurrent uploads).`);
    lines.push('');
  }
  return lines;
}
const mbps = (bytes, s) => (bytes / 1e6 / s).toFixed(1);

// ---------------------------------------------------------------- main

ensureTender();
const tenderBin = snapshotTender();
const haveRestic = tools.includes('restic') ? ensureRestic() : false;
const kopiaBin = tools.includes('kopia') ? kopiaBinary(say) : undefined;
const active = tools.filter((t) => (t === 'restic' ? haveRestic : t === 'kopia' ? !!kopiaBin : true));

const env = {
  date: new Date().toISOString(),
  host: os.hostname(),
  cpus: os.cpus().length,
  cpuModel: os.cpus()[0]?.model,
  memGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
  loadavgAtStart: os.loadavg().map((x) => +x.toFixed(2)),
  versions: toolVersions(kopiaBin, tenderBin),
  kopiaCompression: o['kopia-compression'],
  args: o,
};
say(`tools: ${JSON.stringify(env.versions)}; load average ${env.loadavgAtStart.join(' ')}`);

let data;
if (!o['small-files-only']) {
  say(`dataset: ${nVersions} versions at scale ${scale} (≈${(scale * 1024).toFixed(0)} MiB each), drift ${o.drift}`);
  data = checkpointSeries({ scale, versions: nVersions, drift: Number(o.drift), seed: o.seed, dataDir: o['data-dir'], log: say });
}
let small;
if (smallCount > 0) {
  say(`dataset: ${smallCount} small files`);
  small = smallFiles({ count: smallCount, seed: o.seed, dataDir: o['data-dir'], log: say });
}

const results = [];
const smallResults = [];
for (const b of backends) {
  let backend;
  const minioDir = path.join(runDir, 'minio');
  try {
    if (b === 'local') {
      backend = { kind: 'local', label: 'local', dir: path.join(runDir, 'repos') };
      fs.mkdirSync(backend.dir, { recursive: true });
    } else {
      const endpoint = await startMinio(minioDir);
      backend = {
        kind: 's3',
        label: 'minio',
        endpoint,
        bucket: 'bench',
        accessKey: process.env.MINIO_ROOT_USER ?? 'tender',
        secretKey: process.env.MINIO_ROOT_PASSWORD ?? 'tender-secret-key',
      };
      await createBucket(backend);
      say(`MinIO at ${endpoint} (data in ${minioDir}/data)`);
    }
    for (const name of active) {
      if (data) {
        const tool = makeTool(name, backend, { runDir: path.join(runDir, `ckpt-${b}`), logFile, kopiaBin, tenderBin, kopiaCompression: o['kopia-compression'] });
        results.push(await checkpointScenario(tool, backend, data));
        if (!o.keep && backend.kind === 'local') fs.rmSync(path.join(backend.dir, `repo-${name}`), { recursive: true, force: true });
      }
      if (small) {
        const sb = backend.kind === 'local' ? { ...backend, dir: path.join(runDir, 'repos-small') } : backend;
        if (sb.kind === 'local') fs.mkdirSync(sb.dir, { recursive: true });
        const tool = makeTool(name, sb, { runDir: path.join(runDir, `small-${b}`), logFile, kopiaBin, tenderBin, kopiaCompression: o['kopia-compression'] });
        smallResults.push(await smallFilesScenario(tool, sb, small));
        if (!o.keep && sb.kind === 'local') fs.rmSync(path.join(sb.dir, `repo-${name}`), { recursive: true, force: true });
      }
    }
  } finally {
    if (b === 'minio') stopMinio(minioDir);
  }
}
fs.rmSync(path.join(runDir, 'work'), { recursive: true, force: true });

// ---------------------------------------------------------------- report

const f1 = (x) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(1));
const f2 = (x) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(2));
const mb = (kb) => (kb ? (kb / 1024).toFixed(0) : '–');
const rate = (bytes, s) => (s > 0 ? bytes / 1e6 / s : undefined);

function derive(r) {
  const first = r.backups[0];
  const later = r.backups.slice(1);
  const laterBytes = later.reduce((a, b) => a + b.bytes, 0);
  const laterSec = later.reduce((a, b) => a + b.seconds, 0);
  return {
    firstS: first?.seconds,
    firstMBs: first ? rate(first.bytes, first.seconds) : undefined,
    laterMBs: later.length ? rate(laterBytes, laterSec) : undefined,
    noChangeS: r.noChange?.seconds,
    noChangeFps: r.noChange ? r.noChange.files / r.noChange.seconds : undefined,
    restoreS: r.restore?.seconds,
    restoreMBs: r.restore ? rate(r.restore.bytes, r.restore.seconds) : undefined,
    backupRssKB: Math.max(0, ...r.backups.map((b) => b.rssKB), r.noChange?.rssKB ?? 0),
    restoreRssKB: r.restore?.rssKB,
  };
}

const lines = [];
lines.push(`# tender benchmark ${env.date}`);
lines.push('');
if (data) {
  const sizes = data.bytes.map((b) => (b / MiB).toFixed(0)).join(', ');
  lines.push(`Data: ${data.versions.length} checkpoint versions of ${sizes} MiB, ${data.files[0]} files each (scale ${scale}, ${data.root}).`);
}
lines.push(
  `Machine: ${env.cpus} × ${env.cpuModel}, ${env.memGiB} GiB; load average at start ${env.loadavgAtStart.join(' ')}. ` +
    (o.source === 'cached'
      ? 'Source cached: dirty pages written back, then the data (and a local repository) read into the page cache before every backup and restore.'
      : `Page cache ${dropOk === undefined ? 'not touched' : dropOk ? 'dropped before every backup and restore' : 'NOT dropped (not permitted): reads may come from memory'}.`),
);
lines.push(`Tools: tender ${env.versions.tender}; ${env.versions.restic}; kopia ${env.versions.kopia} (compression ${env.kopiaCompression}); node ${env.versions.node}.`);
lines.push('MB = 10⁶ bytes; MB/s = logical bytes of the version / wall seconds (process start to exit); RSS = peak resident set of the tool process.');
lines.push('');
if (results.length) {
  lines.push('| backend | tool | 1st backup s | 1st MB/s | later MB/s | no-change s | no-change files/s | restore s | restore MB/s | backup RSS MB | restore RSS MB | stored MiB | restore check |');
  lines.push('|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|');
  for (const r of results) {
    const d = derive(r);
    const check = r.error ? `ERROR: ${r.error.split('\n')[0].slice(0, 120)}` : r.restore?.verified ?? '–';
    lines.push(
      `| ${r.backend} | ${r.tool} | ${f1(d.firstS)} | ${f1(d.firstMBs)} | ${f1(d.laterMBs)} | ${f2(d.noChangeS)} | ${d.noChangeFps === undefined ? "–" : d.noChangeFps.toFixed(0)} | ${f1(d.restoreS)} | ${f1(d.restoreMBs)} | ${mb(d.backupRssKB)} | ${mb(d.restoreRssKB)} | ${r.storedBytes !== undefined ? (r.storedBytes / MiB).toFixed(0) : '–'} | ${check} |`,
    );
  }
  lines.push('');
  lines.push('"later MB/s": total bytes of versions 2..N over their total backup seconds. Stored: after all backups (versions 1..N + the no-change run).');
  lines.push('');
  const ratio = (a, b) => (a !== undefined && b !== undefined && b > 0 ? (a / b).toFixed(2) : '–');
  const others = ['restic', 'kopia', 'tender-flat'].filter((t) => active.includes(t));
  if (active.includes('tender') && others.length) {
    lines.push(`| backend | ${others.map((t) => `tender/${t} 1st MB/s | tender/${t} later MB/s | tender/${t} restore MB/s`).join(' | ')} |`);
    lines.push(`|---|${others.map(() => '--:|--:|--:').join('|')}|`);
    for (const b of backends) {
      const label = b === 'local' ? 'local' : 'minio';
      const get = (t) => {
        const r = results.find((x) => x.backend === label && x.tool === t);
        return r && !r.error ? derive(r) : undefined;
      };
      const t = get('tender');
      lines.push(`| ${label} | ${others.map((x) => { const d = get(x); return [ratio(t?.firstMBs, d?.firstMBs), ratio(t?.laterMBs, d?.laterMBs), ratio(t?.restoreMBs, d?.restoreMBs)].join(' | '); }).join(' | ')} |`);
    }
    lines.push('');
    lines.push(`| backend | ${others.map((t) => `stored tender/${t}`).join(' | ')} |`);
    lines.push(`|---|${others.map(() => '--:').join('|')}|`);
    for (const b of backends) {
      const label = b === 'local' ? 'local' : 'minio';
      const stored = (t) => results.find((x) => x.backend === label && x.tool === t && !x.error)?.storedBytes;
      lines.push(`| ${label} | ${others.map((t) => ratio(stored('tender'), stored(t))).join(' | ')} |`);
    }
    lines.push('');
  }
  lines.push(...tenderProfile(results));
}
if (smallResults.length) {
  lines.push(`Small files: ${small.files} files, ${(small.bytes / MiB).toFixed(0)} MiB (${small.dir}).`);
  lines.push('');
  lines.push('| backend | tool | backup s | files/s | backup RSS MB | no-change s | no-change RSS MB | restore s | restore RSS MB | stored MiB | restore check |');
  lines.push('|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|');
  for (const r of smallResults) {
    const check = r.error ? `ERROR: ${r.error.split('\n')[0].slice(0, 120)}` : r.restore?.verified ?? '–';
    lines.push(
      `| ${r.backend} | ${r.tool} | ${f1(r.backup?.seconds)} | ${r.backup ? (r.files / r.backup.seconds).toFixed(0) : '–'} | ${mb(r.backup?.rssKB)} | ${f1(r.noChange?.seconds)} | ${mb(r.noChange?.rssKB)} | ${f1(r.restore?.seconds)} | ${mb(r.restore?.rssKB)} | ${r.storedBytes !== undefined ? (r.storedBytes / MiB).toFixed(0) : '–'} | ${check} |`,
    );
  }
  lines.push('');
}
const md = lines.join('\n');
process.stdout.write(md + '\n');
fs.writeFileSync(path.join(resultsDir, `${stamp}.md`), md + '\n');
fs.writeFileSync(
  path.join(resultsDir, `${stamp}.json`),
  JSON.stringify({ env: { ...env, source: o.source, pageCacheDropped: dropOk ?? null }, data: data && { root: data.root, bytes: data.bytes, files: data.files }, small, results, smallResults }, null, 2) + '\n',
);
say(`results: ${path.join(resultsDir, stamp)}.{md,json,log}`);
if (!o.keep) fs.rmSync(runDir, { recursive: true, force: true });
else say(`kept ${runDir}`);
