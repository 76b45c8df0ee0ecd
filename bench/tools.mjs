// Adapters for the backup tools under test: tender, restic and kopia, run as child processes with
// the same interface, each measured for wall time and peak RSS.
//
//   const t = makeTool('restic', backend, { runDir });
//   await t.init();
//   const r = await t.backup('/path/work');        // { seconds, rssKB, summary, … }
//   const { root } = await t.restore('/empty/dir');  // root: where the backed-up directory landed
//   await t.statsBytes();                            // bytes the repository occupies
//
// backend: { kind: 'local', dir } (a directory per tool is made below it) or
//          { kind: 's3', endpoint: 'http://127.0.0.1:PORT', bucket, prefix, accessKey, secretKey }.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { fileURLToPath } from 'node:url';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const PASSWORD = 'bench-password-not-secret';
/** tender-flat: tender with `init --no-transforms` (zstd only, no byte planes), to measure what the transforms do. */
export const TOOLS = ['tender', 'tender-flat', 'restic', 'kopia'];

const HAS_GNU_TIME = (() => {
  try {
    execFileSync('/usr/bin/time', ['-f', '%e', 'true'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/**
 * Runs `cmd args` and measures it: wall seconds (monotonic clock around the child) and peak RSS
 * in KB (GNU time's %M, i.e. the child's ru_maxrss; without /usr/bin/time, VmHWM from
 * /proc/PID/status sampled every 50 ms). Output goes to `logFile` (appended) and the last 64 KiB
 * of stdout is returned. Throws on a non-zero exit, with the tail of stderr.
 */
export function measure(cmd, args, { env = {}, cwd = ROOT, logFile, label = path.basename(cmd), okCodes = [0], timeoutMs = measure.timeoutMs } = {}) {
  return new Promise((resolve, reject) => {
    const timeFile = path.join(os.tmpdir(), `bench-time-${process.pid}-${Math.random().toString(36).slice(2)}`);
    const argv = HAS_GNU_TIME ? ['/usr/bin/time', ['-f', '%e %M', '-o', timeFile, cmd, ...args]] : [cmd, args];
    const log = logFile ? fs.openSync(logFile, 'a') : undefined;
    if (log !== undefined) fs.writeSync(log, `\n$ ${[cmd, ...args].join(' ')}\n`);
    const t0 = process.hrtime.bigint();
    // Its own process group, so a timeout kills the tool and not only /usr/bin/time.
    const child = spawn(argv[0], argv[1], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let timedOut = false;
    const timer =
      timeoutMs > 0
        ? setTimeout(() => {
            timedOut = true;
            try {
              process.kill(-child.pid, 'SIGKILL');
            } catch {
              /* gone */
            }
          }, timeoutMs)
        : undefined;
    let stdout = '';
    let stderr = '';
    let hwm = 0;
    const sample = HAS_GNU_TIME
      ? undefined
      : setInterval(() => {
          try {
            const m = /VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'));
            if (m) hwm = Math.max(hwm, Number(m[1]));
          } catch {
            /* gone */
          }
        }, 50);
    child.stdout.on('data', (d) => {
      if (log !== undefined) fs.writeSync(log, d);
      stdout = (stdout + d.toString()).slice(-65536);
    });
    child.stderr.on('data', (d) => {
      if (log !== undefined) fs.writeSync(log, d);
      stderr = (stderr + d.toString()).slice(-16384);
    });
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      if (sample) clearInterval(sample);
      if (timer) clearTimeout(timer);
      if (log !== undefined) fs.closeSync(log);
      let rssKB = hwm;
      if (HAS_GNU_TIME) {
        try {
          const lines = fs.readFileSync(timeFile, 'utf8').trim().split('\n');
          // GNU time prefixes "Command exited with non-zero status N" on failure.
          const [, m] = lines.at(-1).split(' ');
          rssKB = Number(m);
        } catch {
          /* no time output */
        }
        fs.rmSync(timeFile, { force: true });
      }
      if (!okCodes.includes(code)) {
        const why = timedOut ? `was killed after ${timeoutMs / 1000} s` : `exited with ${code}`;
        const err = new Error(`${label} ${why}: ${stderr.trim().split('\n').slice(-8).join('\n')}`);
        err.result = { seconds, rssKB, code, stdout, stderr };
        reject(err);
        return;
      }
      resolve({ seconds, rssKB, code, stdout, stderr });
    });
  });
}

/** Default limit for one command (ms); 0 = none. */
measure.timeoutMs = 0;

/** Size in bytes of every regular file below dir (what the repository occupies on disk). */
export function dirBytes(dir) {
  let n = 0;
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) n += fs.lstatSync(p).size;
    }
  };
  if (fs.existsSync(dir)) walk(dir);
  return n;
}

let s3Module;
async function s3Client(backend) {
  // The SDK warns under Node 20 that its future releases need Node 22 (tender silences it too).
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  s3Module ??= await import('@aws-sdk/client-s3');
  return new s3Module.S3Client({
    endpoint: backend.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: backend.accessKey, secretAccessKey: backend.secretKey },
  });
}

/** Creates the bucket (idempotent). */
export async function createBucket(backend) {
  const c = await s3Client(backend);
  try {
    await c.send(new s3Module.CreateBucketCommand({ Bucket: backend.bucket }));
  } catch (e) {
    if (!/BucketAlready(OwnedByYou|Exists)/.test(e.name ?? '')) throw e;
  } finally {
    c.destroy();
  }
}

/** Sum of the sizes of the objects below prefix/ in the bucket. */
export async function s3Bytes(backend, prefix) {
  const c = await s3Client(backend);
  try {
    let total = 0;
    let token;
    do {
      const r = await c.send(new s3Module.ListObjectsV2Command({ Bucket: backend.bucket, Prefix: `${prefix}/`, ContinuationToken: token }));
      for (const o of r.Contents ?? []) total += o.Size ?? 0;
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return total;
  } finally {
    c.destroy();
  }
}

const lastJson = (text, pred = () => true) => {
  for (const line of text.trim().split('\n').reverse()) {
    try {
      const v = JSON.parse(line);
      if (pred(v)) return v;
    } catch {
      /* not JSON */
    }
  }
  return undefined;
};

/**
 * The adapter for `name` on `backend`. ctx.runDir holds per-tool state (local repositories,
 * caches, configs); ctx.logFile receives every command and its output.
 */
export function makeTool(name, backend, { runDir, logFile, kopiaBin, tenderBin = path.join(ROOT, 'bin', 'tender.js'), kopiaCompression = 'zstd-fastest' }) {
  const id = `${name}-${backend.kind}`;
  const state = path.join(runDir, `state-${id}`);
  fs.mkdirSync(state, { recursive: true });
  const localRepo = backend.kind === 'local' ? path.join(backend.dir, `repo-${name}`) : undefined;
  const prefix = `${name}-${path.basename(runDir)}`;
  const s3Env =
    backend.kind === 's3'
      ? { AWS_ACCESS_KEY_ID: backend.accessKey, AWS_SECRET_ACCESS_KEY: backend.secretKey, AWS_REGION: 'us-east-1', AWS_DEFAULT_REGION: 'us-east-1' }
      : {};
  const run = (cmd, args, env, label) => measure(cmd, args, { env: { ...s3Env, ...env }, logFile, label: `${name} ${label}` });
  const statsBytes = () => (backend.kind === 'local' ? Promise.resolve(dirBytes(localRepo)) : s3Bytes(backend, prefix));

  if (name === 'tender' || name === 'tender-flat') {
    const repo = backend.kind === 'local' ? localRepo : `s3://${backend.bucket}/${prefix}`;
    const env = { TENDER_PASSWORD: PASSWORD, ...(backend.kind === 's3' ? { AWS_ENDPOINT_URL: backend.endpoint } : {}) };
    const tender = (args, label) => run(process.execPath, [tenderBin, '--repo', repo, '--quiet', ...args], env, label);
    return {
      name,
      repo,
      init: () => tender(name === 'tender-flat' ? ['init', '--no-transforms'] : ['init'], 'init'),
      async backup(p) {
        const r = await tender(['--json', 'backup', p], 'backup');
        return { ...r, summary: lastJson(r.stdout, (v) => v.message_type === 'summary') };
      },
      async restore(target) {
        const r = await tender(['--json', 'restore', 'latest', '--target', target], 'restore');
        return { ...r, summary: lastJson(r.stdout, (v) => v.message_type === 'summary'), rootFor: (p) => path.join(target, path.basename(p)) };
      },
      statsBytes,
    };
  }

  if (name === 'restic') {
    const repo = backend.kind === 'local' ? localRepo : `s3:${backend.endpoint}/${backend.bucket}/${prefix}`;
    const env = { RESTIC_PASSWORD: PASSWORD, RESTIC_CACHE_DIR: path.join(state, 'cache') };
    const restic = (args, label) => run('restic', ['-r', repo, ...args], env, label);
    return {
      name,
      repo,
      init: () => restic(['init'], 'init'),
      async backup(p) {
        const r = await restic(['backup', '--json', '--quiet', p], 'backup');
        return { ...r, summary: lastJson(r.stdout, (v) => v.message_type === 'summary') };
      },
      async restore(target) {
        const r = await restic(['restore', 'latest', '--target', target], 'restore');
        // restic recreates the absolute path of what was backed up below the target.
        return { ...r, rootFor: (p) => path.join(target, path.resolve(p)) };
      },
      statsBytes,
    };
  }

  if (name === 'kopia') {
    if (!kopiaBin) throw new Error('kopia: no binary (run scripts/kopia.sh build)');
    const config = path.join(state, 'repository.config');
    const env = {
      KOPIA_PASSWORD: PASSWORD,
      KOPIA_CHECK_FOR_UPDATES: 'false',
      KOPIA_LOG_DIR: path.join(state, 'logs'),
      KOPIA_CACHE_DIRECTORY: path.join(state, 'cache'),
    };
    const kopia = (args, label) => run(kopiaBin, ['--config-file', config, ...args], env, label);
    const where =
      backend.kind === 'local'
        ? ['filesystem', '--path', localRepo]
        : [
            's3',
            '--bucket', backend.bucket,
            '--prefix', `${prefix}/`,
            '--endpoint', new URL(backend.endpoint).host,
            '--disable-tls',
            '--access-key', backend.accessKey,
            '--secret-access-key', backend.secretKey,
          ];
    return {
      name,
      repo: backend.kind === 'local' ? localRepo : `s3://${backend.bucket}/${prefix}/`,
      async init() {
        const r = await kopia(['repository', 'create', ...where, '--cache-directory', env.KOPIA_CACHE_DIRECTORY], 'repository create');
        // kopia stores uncompressed unless a policy says otherwise; tender and restic compress
        // with zstd at their fastest level, so compare like with like.
        if (kopiaCompression && kopiaCompression !== 'none') {
          const p = await kopia(['policy', 'set', '--global', `--compression=${kopiaCompression}`], 'policy set');
          r.seconds += p.seconds;
          r.rssKB = Math.max(r.rssKB, p.rssKB);
        }
        return r;
      },
      async backup(p) {
        const r = await kopia(['snapshot', 'create', '--json', p], 'snapshot create');
        return { ...r, summary: lastJson(r.stdout) };
      },
      async restore(target) {
        const list = await kopia(['snapshot', 'list', '--json', '--all'], 'snapshot list');
        const snaps = JSON.parse(list.stdout);
        if (!snaps.length) throw new Error('kopia: no snapshot to restore');
        snaps.sort((a, b) => (a.startTime < b.startTime ? -1 : 1));
        const snap = snaps.at(-1);
        const r = await kopia(['snapshot', 'restore', snap.id, target], 'snapshot restore');
        return { ...r, rootFor: () => target };
      },
      statsBytes,
    };
  }
  throw new Error(`unknown tool ${name}`);
}

/** Path of the kopia binary, building it with scripts/kopia.sh if needed; undefined if that fails. */
export function kopiaBinary(log = () => {}) {
  try {
    return execFileSync(path.join(ROOT, 'scripts', 'kopia.sh'), ['path'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  } catch (e) {
    log(`kopia unavailable: ${e.message}`);
    return undefined;
  }
}

/** Tool versions, for the report. */
export function toolVersions(kopiaBin, tenderBin = path.join(ROOT, 'bin', 'tender.js')) {
  const v = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n')[0];
    } catch {
      return 'unavailable';
    }
  };
  let build = '';
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'native'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== '';
    const built = fs.statSync(path.join(path.dirname(tenderBin), '..', 'dist', 'cli', 'main.js')).mtime.toISOString();
    build = ` (commit ${head}${dirty ? ' + uncommitted src changes' : ''}; dist/ built ${built})`;
  } catch {
    /* not a git checkout */
  }
  return {
    tender: v(process.execPath, [tenderBin, '--version']) + build,
    restic: v('restic', ['version']),
    kopia: kopiaBin ? v(kopiaBin, ['--version']) : 'unavailable',
    node: process.version,
  };
}
