/**
 * End-to-end network faults: `tender backup` (the real CLI, dist/: build first) against a real
 * MinIO that runs inside a network namespace (scripts/netns.sh), reached over a veth pair on a
 * private /30, while the traffic between them is capped (tc tbf), blackholed (nft drop), reset
 * (nft reject with tcp reset), or MinIO itself is SIGKILLed and restarted. After every fault:
 * the objects stored before it are unchanged, nothing was stored twice, `check --read-data` is
 * clean and `restore latest` is byte-identical; a backup that fails does so with one clear
 * error naming the endpoint and writes no snapshot, and a re-run resumes what it left.
 *
 * Needs root and `ip netns`; the whole file is skipped (with the reason printed) without them.
 * The drop/reset rules live inside the namespace, so the host firewall is never touched;
 * scripts/netns.sh installs nftables with apt-get when `nft` is missing.
 *
 * Not tested end to end: a *blackhole* longer than the retry budget. The CLI has no S3 retry or
 * timeout settings (openStorage() passes no S3Tuning; no flag or variable reaches it), and with
 * the defaults (socket idle 60 s, connect 10 s, 8 attempts) an upload stalled by a blackhole only
 * gives up after 2 to 8 minutes. The same code path is tested at the storage level with short
 * timeouts, and "outlasts the retry budget" end to end with resets, which fail fast.
 *
 * Known failures (bugs in src/, see the comments at each test): the retry budget is counted in
 * attempts, not time; a failed backup removes its session marker so the next one does not
 * resume its packs; a reset connection is reported as a timeout.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CreateBucketCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TenderError } from '../../src/errors/errors.js';
import { S3Storage } from '../../src/storage/s3.js';
import {
  assertSameTree,
  backupSummary,
  type BackupSummary,
  describeRun,
  repoRoot,
  type RunResult,
  runTender,
  startTender,
  writeRandomFile,
} from '../helpers/cli.js';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MiB = 1 << 20;

const netnsScript = path.join(repoRoot, 'scripts/netns.sh');
const minioBin = path.join(process.env.TENDER_TOOLS_DIR ?? path.join(os.homedir(), '.cache/tender/bin'), 'minio');
const credentials = { user: 'tender', password: 'tender-secret-key' };
const bucket = 'faults';
/** Inside the namespace nothing else listens: fixed ports. */
const port = 9000;
/** tbf rate that paces the fault tests' backups (~25 MB/s), so the uploads after the fault take seconds, as on a real link. */
const paceRate = '200mbit';
/** Source files (MiB): several files, ~105 MB of random (incompressible) data. */
const fileSizes = [28, 24, 20, 16, 8, 4];
const sourceBytes = fileSizes.reduce((a, b) => a + b, 0) * MiB;
/**
 * Random data does not compress: what a complete backup of the source stores (+28 bytes per
 * chunk, trees, pack headers). Nothing stored is ever uploaded twice - a retried put finds its
 * object ('exists'), and a re-run resumes the packs a failed run left - so this bounds the pack
 * bytes of every repository below, whatever the fault.
 */
const fullStoredBound = Math.ceil(sourceBytes * 1.001) + MiB;

function whyNoNetns(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'not running as root (ip netns, tc and nft need root)';
  try {
    execFileSync('bash', [netnsScript, 'check'], { stdio: 'pipe', timeout: 30_000 });
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    return `ip netns is unusable here: ${e.stderr?.toString().trim() || e.message}`;
  }
  return undefined;
}

const skipReason = whyNoNetns();
if (skipReason) console.warn(`test/faults/network.test.ts skipped: ${skipReason}`);

interface ObjectState {
  etag: string;
  size: number;
  modified: number;
}
type Listing = Map<string, ObjectState>;

describe.skipIf(skipReason !== undefined)('network faults between tender and MinIO (network namespace)', () => {
  const name = `tf${process.pid.toString(36)}`.slice(0, 11);
  let tmp: string;
  let src: string;
  let nsIp: string;
  let endpoint: string;
  let client: S3Client;
  let minio: ChildProcess | undefined;
  let netnsUp = false;
  /** tender processes still running (killed in afterAll if a test gave up on them). */
  const children = new Set<ChildProcess>();

  const netns = async (...args: string[]): Promise<string> => {
    try {
      const { stdout } = await run('bash', [netnsScript, ...args], { timeout: 180_000 });
      return stdout.trim();
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(`scripts/netns.sh ${args.join(' ')} failed: ${e.stderr || e.message}`);
    }
  };

  /** The settings every tender child process gets: this MinIO only, nothing from the developer's AWS setup. */
  const s3Env = (): Record<string, string | undefined> => ({
    AWS_ACCESS_KEY_ID: credentials.user,
    AWS_SECRET_ACCESS_KEY: credentials.password,
    AWS_REGION: 'us-east-1',
    AWS_ENDPOINT_URL: endpoint,
    AWS_ENDPOINT_URL_S3: undefined,
    AWS_PROFILE: undefined,
    AWS_SESSION_TOKEN: undefined,
    AWS_CA_BUNDLE: undefined,
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  });

  async function startMinio(): Promise<void> {
    const log = await open(path.join(tmp, 'minio.log'), 'a');
    try {
      // `ip netns exec` execs MinIO in place, so the child's pid is MinIO's.
      const child = spawn(
        'ip',
        ['netns', 'exec', name, minioBin, 'server', '--quiet', '--address', `${nsIp}:${port}`, '--console-address', `127.0.0.1:${port + 1}`, path.join(tmp, 'minio-data')],
        {
          env: {
            ...process.env,
            MINIO_ROOT_USER: credentials.user,
            MINIO_ROOT_PASSWORD: credentials.password,
            MINIO_BROWSER: 'off',
            MINIO_UPDATE: 'off',
            MINIO_CALLHOME_ENABLE: 'off',
          },
          stdio: ['ignore', log.fd, log.fd],
        },
      );
      minio = child;
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      const deadline = Date.now() + 60_000;
      for (;;) {
        const up = await fetch(`${endpoint}/minio/health/live`, { signal: AbortSignal.timeout(1000) }).then(
          (r) => r.ok,
          () => false,
        );
        if (up) return;
        const code = await Promise.race([exited, sleep(200).then(() => 'running' as const)]);
        if (code !== 'running') throw new Error(`MinIO exited (${code}) during start-up; log: ${path.join(tmp, 'minio.log')}`);
        if (Date.now() > deadline) throw new Error(`MinIO did not answer on ${endpoint} within 60 s`);
      }
    } finally {
      await log.close();
    }
  }

  async function killMinio(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = minio;
    minio = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(signal);
    await exited;
  }

  async function list(prefix: string): Promise<Listing> {
    const out: Listing = new Map();
    let token: string | undefined;
    do {
      const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}/`, ContinuationToken: token }));
      for (const o of page.Contents ?? []) {
        out.set(o.Key!.slice(prefix.length + 1), { etag: o.ETag ?? '', size: o.Size ?? 0, modified: o.LastModified?.getTime() ?? 0 });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  const under = (l: Listing, dir: string) => [...l].filter(([k]) => k.startsWith(dir));
  const bytesUnder = (l: Listing, dir: string) => under(l, dir).reduce((n, [, o]) => n + o.size, 0);

  function expectUnchanged(before: Listing, after: Listing): void {
    // Session markers (sessions/) are renamed by heartbeats and removed at the end of a run: not data.
    const changed = [...before].filter(([k, o]) => {
      if (k.startsWith('sessions/')) return false;
      const now = after.get(k);
      return !now || now.etag !== o.etag || now.size !== o.size || now.modified !== o.modified;
    });
    expect(
      changed.map(([k]) => k),
      'objects stored before the fault were changed or removed',
    ).toEqual([]);
  }

  /** A fresh repository under its own prefix. */
  async function newRepo(label: string): Promise<{ url: string; prefix: string }> {
    const prefix = `${label}-${randomBytes(4).toString('hex')}`;
    const url = `s3://${bucket}/${prefix}`;
    const r = await runTender(['--repo', url, 'init'], { env: s3Env() });
    expect(r.code, describeRun(['init'], r)).toBe(0);
    return { url, prefix };
  }

  interface Backup {
    child: ChildProcess;
    done: Promise<RunResult & { wallMs: number }>;
    exited: () => boolean;
  }

  function startBackup(url: string, env: Record<string, string | undefined> = {}): Backup {
    const started = Date.now();
    const child = startTender(['--repo', url, '--json', 'backup', src], { env: { ...s3Env(), ...env } });
    children.add(child);
    child.once('close', () => children.delete(child));
    let out = '';
    let err = '';
    let ended = false;
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    child.stdin!.end();
    const done = new Promise<RunResult & { wallMs: number }>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code, signal) => {
        ended = true;
        resolve({ code, signal, stdout: out, stderr: err, wallMs: Date.now() - started });
      });
    });
    return { child, done, exited: () => ended };
  }

  /**
   * A barrier instead of a race with the clock: the backup runs with TENDER_TEST_HOLD_AFTER_PUTS=1
   * and TENDER_TEST_HOLD_GATE=`gate` (src/storage/stack.ts), so it stores its first pack and then
   * holds every further pack upload until the file `gate` exists; once it is held there it creates
   * `gate`.held. This waits for that file and returns what the repository holds then.
   */
  async function waitUntilHeld(prefix: string, backup: Backup, gate: string): Promise<Listing> {
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (existsSync(`${gate}.held`)) {
        const l = await list(prefix);
        expect(under(l, 'data/').length, 'packs stored when the backup is held').toBe(1);
        return l;
      }
      if (backup.exited()) {
        const r = await backup.done;
        throw new Error(`the backup ended before it was held after its first pack: ${describeRun(['backup'], r)}`);
      }
      if (Date.now() > deadline) throw new Error('the backup was not held after a first pack within 60 s');
      await sleep(20);
    }
  }

  /**
   * Runs a backup that stops after its first pack (waitUntilHeld), applies `fault`, lets the
   * backup go on, holds the fault for `holdMs` (or until the backup ends: 'until-exit'), then
   * clears it (always). Whatever the load on the machine, the fault is in place before the second
   * pack upload starts. The backup runs under a pacing cap (tbf at `paceRate`), lifted when it ends.
   */
  async function backupWithFault(
    url: string,
    prefix: string,
    fault: { apply: () => Promise<void>; clear: () => Promise<void> },
    holdMs: number | 'until-exit',
    env: Record<string, string | undefined> = {},
  ): Promise<{ result: RunResult & { wallMs: number }; before: Listing; runningAtClear: boolean }> {
    await netns('shape', name, paceRate);
    const gate = path.join(tmp, `gate-${randomBytes(4).toString('hex')}`);
    const backup = startBackup(url, { TENDER_TEST_HOLD_AFTER_PUTS: '1', TENDER_TEST_HOLD_GATE: gate, ...env });
    const timeline: string[] = [];
    let runningAtClear = false;
    try {
      const before = await waitUntilHeld(prefix, backup, gate);
      const t0 = Date.now();
      try {
        await fault.apply();
        // Let the backup go on: its next pack upload meets the fault.
        await writeFile(gate, '');
        timeline.push(`fault applied ${Date.now() - t0} ms after the backup was held with ${under(before, 'data/').length} pack stored`);
        if (backup.exited() && (await backup.done).code === 0) {
          throw new Error(`test precondition: the backup completed before the fault was in place (${timeline.join('; ')})`);
        }
        if (holdMs === 'until-exit') {
          await Promise.race([backup.done, sleep(90_000)]);
        } else {
          await sleep(holdMs);
        }
      } finally {
        runningAtClear = !backup.exited();
        await fault.clear();
        timeline.push(`fault cleared at ${Date.now() - t0} ms${runningAtClear ? '' : ' (the backup had ended)'}`);
      }
      const result = await Promise.race([
        backup.done,
        sleep(90_000).then(() => {
          throw new Error('the backup did not end within 90 s after the fault was cleared');
        }),
      ]);
      timeline.push(`backup ended at ${Date.now() - t0} ms, exit ${result.code}`);
      console.info(timeline.join('; '));
      return { result, before, runningAtClear };
    } finally {
      if (!backup.exited()) {
        backup.child.kill('SIGKILL');
        await backup.done.catch(() => undefined);
      }
      await netns('clear', name, 'shape');
    }
  }

  const rules = {
    drop: { apply: () => netns('drop', name, String(port)).then(() => undefined), clear: () => netns('clear', name, 'rules').then(() => undefined) },
    reset: { apply: () => netns('reset', name, String(port)).then(() => undefined), clear: () => netns('clear', name, 'rules').then(() => undefined) },
    /** Connections are reset once they have carried 1 MiB: pack uploads fail, small requests pass. */
    cutUploads: {
      apply: () => netns('reset', name, String(port), String(MiB)).then(() => undefined),
      clear: () => netns('clear', name, 'rules').then(() => undefined),
    },
  };

  /** `check --read-data` is clean and `restore latest` is identical to the source (run side by side). */
  async function verifyRepo(url: string, label: string): Promise<void> {
    const target = path.join(tmp, `restore-${label}`);
    const checkArgs = ['--repo', url, 'check', '--read-data'];
    const restoreArgs = ['--repo', url, 'restore', 'latest', '--target', target];
    const [check, restore] = await Promise.all([runTender(checkArgs, { env: s3Env() }), runTender(restoreArgs, { env: s3Env() })]);
    expect(check.code, describeRun(checkArgs, check)).toBe(0);
    expect(check.stdout).toMatch(/no errors were found/);
    expect(`${check.stdout}${check.stderr}`, 'no pack is left out of the index').not.toMatch(/in no index/);
    expect(restore.code, describeRun(restoreArgs, restore)).toBe(0);
    await assertSameTree(src, path.join(target, path.basename(src)));
    await rm(target, { recursive: true, force: true });
  }

  /** A failed backup failed cleanly: exit 1, one JSON exit_error naming the endpoint, no snapshot. */
  async function expectCleanFailure(r: RunResult, prefix: string, before: Listing): Promise<void> {
    expect(r.code, describeRun(['backup'], r)).toBe(1);
    expect(r.stderr).not.toMatch(/internal error|^\s+at /m);
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
    const last = JSON.parse(lines.at(-1)!) as { message_type: string; code: string; message: string; hint?: string };
    expect(last.message_type).toBe('exit_error');
    expect(last.code).toMatch(/^TENDER_STORAGE/);
    expect(`${last.message} ${last.hint ?? ''}`, 'the error names the S3 endpoint').toContain(endpoint);
    expect(r.stdout).not.toMatch(/"message_type":"summary"/);
    const after = await list(prefix);
    expect(under(after, 'snapshots/'), 'a failed backup wrote no snapshot').toEqual([]);
    expectUnchanged(before, after);
  }

  /**
   * After a failed run: the same backup again completes, and uploads only what the failed run
   * had not stored (the packs it left are resumed), give or take what was in flight.
   */
  async function rerunAfterFailure(url: string, prefix: string): Promise<BackupSummary> {
    const left = await list(prefix);
    const storedBefore = bytesUnder(left, 'data/');
    const r = await runTender(['--repo', url, '--json', 'backup', src], { env: s3Env() });
    expect(r.code, describeRun(['backup (re-run)'], r)).toBe(0);
    const summary = backupSummary(r.stdout);
    const after = await list(prefix);
    expectUnchanged(left, after);
    const report =
      `the failed run left ${under(left, 'data/').length} packs (${storedBefore} bytes), the re-run stored ${summary.bytesStored} ` +
      `(source ${sourceBytes}): ${storedBefore + summary.bytesStored - sourceBytes} bytes uploaded twice`;
    console.info(`re-run after the failed backup: ${report}${r.stderr.trim() ? `; its stderr: ${r.stderr.trim()}` : ''}`);
    // What was in flight (not stored) is uploaded again; what the failed run stored is not.
    expect(storedBefore + summary.bytesStored, `the re-run resumes the packs the failed run stored: ${report}`).toBeLessThanOrEqual(fullStoredBound);
    expect(bytesUnder(after, 'data/'), 'pack bytes in the repository').toBeLessThanOrEqual(fullStoredBound);
    return summary;
  }

  function expectNoDuplicates(summary: BackupSummary, after: Listing): void {
    expect(summary.bytesStored, 'bytes stored by a backup that survived the fault').toBeLessThanOrEqual(fullStoredBound);
    expect(bytesUnder(after, 'data/'), 'pack bytes in the repository (a retried put must not store a pack twice)').toBeLessThanOrEqual(
      fullStoredBound,
    );
  }

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-faults-'));
    src = path.join(tmp, 'data');
    await mkdir(src);
    await Promise.all(fileSizes.map((mib, i) => writeRandomFile(path.join(src, `file-${i}.bin`), mib * MiB)));
    // The MinIO binary: test/setup/minio.ts (globalSetup) has built it already.
    await run('bash', [path.join(repoRoot, 'scripts/minio.sh'), 'build'], { timeout: 20 * 60_000 });
    await netns('down', name).catch(() => undefined);
    const line = await netns('up', name);
    netnsUp = true;
    [, nsIp] = line.split(/\s+/) as [string, string];
    endpoint = `http://${nsIp}:${port}`;
    await startMinio();
    client = new S3Client({
      region: 'us-east-1',
      endpoint,
      forcePathStyle: true,
      credentials: { accessKeyId: credentials.user, secretAccessKey: credentials.password },
      maxAttempts: 5,
    });
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  });

  afterAll(async () => {
    for (const child of children) child.kill('SIGKILL');
    client?.destroy();
    await killMinio().catch(() => undefined);
    if (netnsUp) await netns('down', name).catch((err) => console.error(String(err)));
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('bandwidth cap (tbf) for the whole run: slower, complete, clean, identical', { timeout: 120_000 }, async () => {
    const { url, prefix } = await newRepo('tbf');
    const rateBits = 80e6;
    await netns('shape', name, '80mbit');
    let r: RunResult & { wallMs: number };
    const backup = startBackup(url);
    try {
      r = await backup.done;
    } finally {
      if (!backup.exited()) backup.child.kill('SIGKILL');
      await netns('clear', name);
    }
    expect(r.code, describeRun(['backup'], r)).toBe(0);
    const summary = backupSummary(r.stdout);
    // The pack bytes went through an 80 Mbit/s bucket: a physical lower bound on the upload time.
    const minMs = ((summary.bytesStored * 8) / rateBits) * 1000 * 0.9;
    console.info(`tbf 80mbit: stored ${summary.bytesStored} bytes in ${summary.durationMs} ms (lower bound ${Math.round(minMs)} ms)`);
    expect(summary.durationMs).toBeGreaterThan(minMs);
    expectNoDuplicates(summary, await list(prefix));
    await verifyRepo(url, 'tbf');
  });

  it('blackhole (drop) for 5 s mid-backup: stalls, then completes', { timeout: 120_000 }, async () => {
    const { url, prefix } = await newRepo('drop');
    const { result, before, runningAtClear } = await backupWithFault(url, prefix, rules.drop, 5000);
    expect(result.code, describeRun(['backup'], result)).toBe(0);
    expect(runningAtClear, 'the backup was still running (stalled) when the blackhole ended').toBe(true);
    const summary = backupSummary(result.stdout);
    const after = await list(prefix);
    expectUnchanged(before, after);
    expectNoDuplicates(summary, after);
    await verifyRepo(url, 'drop');
  });

  // Resets come back at once: the S3 backend's retry budget is time as well as attempts, so a
  // 3 s outage is outlasted whatever the backoff jitter draws (Math.random is pinned low here).
  it('connection resets (tcp reset) for 3 s mid-backup: retried, completes, whatever the backoff jitter draws', { timeout: 120_000 }, async () => {
    const { url, prefix } = await newRepo('reset');
    const pin = '--import=data:text/javascript,Math.random=()=>0';
    const { result, before, runningAtClear } = await backupWithFault(
      url,
      prefix,
      rules.reset,
      3000,
      { NODE_OPTIONS: [process.env.NODE_OPTIONS, pin].filter(Boolean).join(' ') },
    );
    if (result.code !== 0) await expectCleanFailure(result, prefix, before);
    expect(
      result.code,
      `the backup gave up during a 3 s reset: the S3 retry budget is counted in attempts, not time; ${describeRun(['backup'], result)}`,
    ).toBe(0);
    expect(runningAtClear, 'the backup was still running when the resets ended').toBe(true);
    const after = await list(prefix);
    expectUnchanged(before, after);
    expectNoDuplicates(backupSummary(result.stdout), after);
    await verifyRepo(url, 'reset');
  });

  // The resets last until the backup gives up (today within ~11 s: 8 attempts; the hold is
  // bounded at 90 s). Its session marker cannot be removed while every connection is reset, so the
  // re-run resumes the packs it left (compare the next test).
  it('resets that outlast the retry budget: fails cleanly (endpoint named, no snapshot); a re-run completes', { timeout: 150_000 }, async () => {
    const { url, prefix } = await newRepo('reset-long');
    // A short retry budget, so giving up does not take the default 30 s per request.
    const { result, before } = await backupWithFault(url, prefix, rules.reset, 'until-exit', { TENDER_S3_RETRY_SECONDS: '2' });
    await expectCleanFailure(result, prefix, before);
    await rerunAfterFailure(url, prefix);
    await verifyRepo(url, 'reset-long');
  });

  // A backup that fails indexes the packs it stored before it ends its session, so the re-run
  // uploads none of them again and `check` finds no packs outside the index.
  it('uploads cut after 1 MB until the backup gives up: fails cleanly; the re-run resumes the packs it left', { timeout: 150_000 }, async () => {
    const { url, prefix } = await newRepo('cut');
    const { result, before } = await backupWithFault(url, prefix, rules.cutUploads, 'until-exit');
    await expectCleanFailure(result, prefix, before);
    expect(under(await list(prefix), 'data/').length, 'the failed run stored packs').toBeGreaterThan(0);
    await rerunAfterFailure(url, prefix);
    await verifyRepo(url, 'cut');
  });

  // Either outcome is allowed, but today the backup fails in most runs (the retry budget, above:
  // the outage lasts ~4 s with MinIO's start-up), and then the re-run re-uploads the packs the
  // failed run stored (the session marker bug, above: MinIO is back when the failed run removes
  // its marker), so this test fails whenever the backup did.
  it('MinIO SIGKILLed mid-backup and restarted after 3 s: completes, or fails cleanly and a re-run completes', { timeout: 150_000 }, async () => {
    const { url, prefix } = await newRepo('kill');
    const { result, before } = await backupWithFault(url, prefix, { apply: () => killMinio('SIGKILL'), clear: () => startMinio() }, 3000);
    if (result.code === 0) {
      console.info('MinIO restart: the backup rode it out');
      const after = await list(prefix);
      expectUnchanged(before, after);
      expectNoDuplicates(backupSummary(result.stdout), after);
    } else {
      console.info(`MinIO restart: the backup failed (${result.stderr.trim().split('\n').at(-1)}); re-running`);
      await expectCleanFailure(result, prefix, before);
      await rerunAfterFailure(url, prefix);
    }
    await verifyRepo(url, 'kill');
  });

  // The CLI exposes no S3 timeouts or retry settings, and with its defaults a blackhole that
  // outlasts the retries takes minutes to fail; the same code path with short timeouts:
  it('blackhole longer than the retries (storage level, short timeouts): fails with a timeout naming the endpoint', { timeout: 60_000 }, async () => {
    const prefix = `bh-${randomBytes(4).toString('hex')}`;
    const tuning = {
      credentials: { accessKeyId: credentials.user, secretAccessKey: credentials.password },
      region: 'us-east-1',
      connectTimeoutMs: 1000,
      idleTimeoutMs: 2000,
      maxAttempts: 3,
      retryBudgetMs: 0,
      baseDelayMs: 50,
      maxDelayMs: 200,
    };
    const pooled = new S3Storage(`s3://${bucket}/${prefix}`, { s3Endpoint: endpoint }, tuning);
    const fresh = new S3Storage(`s3://${bucket}/${prefix}`, { s3Endpoint: endpoint }, tuning);
    const body = randomBytes(8 * MiB);
    try {
      // A keep-alive connection exists before the blackhole (the upload stalls on it).
      expect(await pooled.put('warm', [Buffer.from('x')])).toBe('stored');
      await netns('drop', name, String(port));
      let t = Date.now();
      const stalled = await pooled.put('data/00/big', [body]).then(
        () => undefined,
        (err: unknown) => err,
      );
      const stalledMs = Date.now() - t;
      // No connection yet: the connect attempts time out.
      t = Date.now();
      const unconnected = await fresh.stat('warm').then(
        () => undefined,
        (err: unknown) => err,
      );
      const connectMs = Date.now() - t;
      await netns('clear', name);
      console.info(`blackhole at the storage level: stalled put failed after ${stalledMs} ms, stat without a connection after ${connectMs} ms`);
      for (const err of [stalled, unconnected]) {
        expect(err).toBeInstanceOf(TenderError);
        const e = err as TenderError;
        expect(e.code).toBe('TENDER_STORAGE');
        expect(e.message).toContain(endpoint);
        expect(e.message).toMatch(/timed out .*gave up after 3 attempts/);
      }
      expect(stalledMs).toBeLessThan(20_000);
      expect(connectMs).toBeLessThan(10_000);
      // Whatever reached MinIO is whole or absent, and the put can be done again.
      const seen = await pooled.stat('data/00/big');
      if (seen) expect(seen.size).toBe(body.length);
      expect(['stored', 'exists']).toContain(await pooled.put('data/00/big', [body]));
      expect((await pooled.get('data/00/big')).equals(body)).toBe(true);
    } finally {
      await netns('clear', name).catch(() => undefined);
      await pooled.close();
      await fresh.close();
    }
  });
  // @smithy/node-http-handler renames resets to TimeoutError; the backend looks at the system
  // error code first, so a reset is reported as a reset.
  it('a reset that ends the retries is reported as a reset, not as a timeout (storage level)', { timeout: 30_000 }, async () => {
    const s = new S3Storage(`s3://${bucket}/rst-${randomBytes(4).toString('hex')}`, { s3Endpoint: endpoint }, {
      credentials: { accessKeyId: credentials.user, secretAccessKey: credentials.password },
      region: 'us-east-1',
      // One attempt: the error is the classification of a reset on an established connection,
      // which is what the last of the 8 attempts gets when a proxy accepts and then resets.
      maxAttempts: 1,
      retryBudgetMs: 0,
    });
    try {
      expect(await s.put('warm', [Buffer.from('x')])).toBe('stored');
      await netns('reset', name, String(port));
      const err = await s.put('data/00/reset', [randomBytes(4 * MiB)]).then(
        () => undefined,
        (e: unknown) => e,
      );
      await netns('clear', name);
      expect(err).toBeInstanceOf(TenderError);
      const e = err as TenderError;
      expect(e.code).toBe('TENDER_STORAGE');
      expect(e.message).toContain(endpoint);
      expect(e.message, 'a reset connection is not a timeout').not.toMatch(/timed out/);
      expect(e.message).toMatch(/reset|ECONNRESET|EPIPE/);
    } finally {
      await netns('clear', name).catch(() => undefined);
      await s.close();
    }
  });
});
