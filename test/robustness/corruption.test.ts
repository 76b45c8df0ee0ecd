/**
 * Corruption sweep: every object of a small repository (config, the key file, every pack, every
 * index file, every snapshot) is damaged in several ways, one damage per fresh copy of the
 * repository, and for each case:
 *
 *   - `tender check --read-data` must exit non-zero and name the damaged object (config and key
 *     damage may keep the repository from opening: then the one-line error must name the config,
 *     or for a key file say "wrong password"), with a one-line error, a hint and no stack trace;
 *   - `tender restore latest` must either succeed with byte-identical files (the damaged object
 *     was not needed) or fail with an error that names the damaged object;
 *   - neither command may change the damaged repository.
 *
 * Detection is counted per object type and damage kind and must be 100 %. The table of outcomes
 * is printed at the end (set TENDER_CORRUPTION_SEED to replay another set of random offsets).
 *
 * Then: wrong password, key files from another repository (copied, and copied with the
 * plaintext repository field forged), and a pack copied into another repository.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pLimit from 'p-limit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type RunResult,
  assertSameTree,
  backupJson,
  describeRun,
  errorLine,
  expectRepoUnchanged,
  hashFiles,
  makeTree,
  runTender,
  testPassword,
  tenderOk,
  treeDigest,
  writeRandomFile,
} from '../helpers/cli.js';
import { BlobType } from '../../src/repo/blob.js';
import { hexToId, idToHex } from '../../src/repo/ids.js';
import { packIdFromKey, packKey } from '../../src/repo/pack/pack.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStorage } from '../../src/storage/fs.js';
import { TenderError } from '../../src/errors/errors.js';

const KiB = 1 << 10;
/** A cheap KDF for the test repositories (the format is the same; only the cost differs). */
const testKdf = { N: 1024, r: 8, p: 1 };
const concurrency = Math.max(2, Math.min(4, os.availableParallelism()));

let tmp: string;
/** The healthy repository every case starts from (never modified after beforeAll). */
let pristine: string;
/** The source tree as it was for the latest snapshot. */
let src: string;
let latestId: string;
/** Every object of the pristine repository: key → classification. */
const objects = new Map<string, ObjectType>();
/** Packs that `restore latest` needs. */
const neededPacks = new Set<string>();

type ObjectType = 'config' | 'key file' | 'index file' | 'snapshot' | 'data pack' | 'tree pack';
const objectTypes: ObjectType[] = ['config', 'key file', 'index file', 'snapshot', 'data pack', 'tree pack'];

// ---- seeded randomness (reproducible offsets) ----------------------------------------------

const seed = Number(process.env.TENDER_CORRUPTION_SEED ?? 0x7e4de5);
function mulberry32(a: number): () => number {
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
/** A generator per object key, so a case's damage does not depend on the order cases run in. */
function rngFor(key: string, kind: string): () => number {
  const h = createHash('sha256').update(`${seed}:${key}:${kind}`).digest();
  return mulberry32(h.readUInt32LE(0));
}

// ---- damage kinds ---------------------------------------------------------------------------

interface Damage {
  kind: string;
  /** Returns the damaged bytes, or undefined when the kind does not apply to this object. */
  apply(bytes: Buffer, key: string): Buffer | undefined;
  describe?(bytes: Buffer, key: string): string;
}

function flipAt(bytes: Buffer, offset: number, bit: number): Buffer {
  const out = Buffer.from(bytes);
  out[offset] = out[offset]! ^ (1 << bit);
  return out;
}

function flip(kind: string, where: (len: number, rnd: () => number) => number): Damage {
  return {
    kind,
    apply(bytes, key) {
      if (bytes.length === 0) return undefined;
      const rnd = rngFor(key, kind);
      const offset = Math.min(bytes.length - 1, Math.max(0, where(bytes.length, rnd)));
      const bit = Math.floor(rnd() * 8);
      return flipAt(bytes, offset, bit);
    },
    describe(bytes, key) {
      const rnd = rngFor(key, kind);
      const offset = Math.min(bytes.length - 1, Math.max(0, where(bytes.length, rnd)));
      return `bit ${Math.floor(rnd() * 8)} of byte ${offset}/${bytes.length}`;
    },
  };
}

const damages: Damage[] = [
  flip('flip start', () => 0),
  flip('flip middle', (len) => Math.floor(len / 2)),
  flip('flip end', (len) => len - 1),
  // For packs: the low byte of the header-length trailer; elsewhere just "near the end".
  flip('flip trailer', (len) => len - 4),
  flip('flip random', (len, rnd) => Math.floor(rnd() * len)),
  flip('flip random 2', (len, rnd) => {
    rnd();
    return Math.floor(rnd() * len);
  }),
  { kind: 'truncate 1 byte', apply: (b) => (b.length >= 1 ? b.subarray(0, b.length - 1) : undefined) },
  { kind: 'truncate to half', apply: (b) => (b.length >= 2 ? b.subarray(0, Math.floor(b.length / 2)) : undefined) },
  { kind: 'truncate to zero', apply: (b) => (b.length >= 1 ? Buffer.alloc(0) : undefined) },
  {
    kind: 'append garbage',
    apply(b, key) {
      const rnd = rngFor(key, 'append');
      const garbage = Buffer.alloc(17);
      for (let i = 0; i < garbage.length; i++) garbage[i] = Math.floor(rnd() * 256);
      return Buffer.concat([b, garbage]);
    },
  },
];

/**
 * Flips aimed at the JSON fields of the config and the key file (a random offset rarely hits
 * the few bytes that matter most). `field` is found in the text; `delta` is added to where its
 * value starts; `bit` is chosen so the result is still valid JSON.
 */
interface FieldFlip {
  kind: string;
  field: string;
  delta: number;
  bit: number;
}
const configFieldFlips: FieldFlip[] = [
  // "version": 1 → 3 (still JSON; looks like a newer format).
  { kind: 'field: version 1→3', field: '"version": ', delta: 0, bit: 1 },
  // A hex digit of the repository ID: '0'..'9' ^ 1 stays a digit; 'a'..'f' ^ 1 stays hex.
  { kind: 'field: repository id', field: '"repository": "', delta: 5, bit: 0 },
  { kind: 'field: sealed', field: '"sealed": "', delta: 40, bit: 0 },
];
const keyFieldFlips: FieldFlip[] = [
  // N: "1024" → "3024": not a power of two (scrypt rejects the parameters).
  { kind: 'field: kdf N', field: '"N": ', delta: 0, bit: 1 },
  // r: "8" → "9": valid parameters, a different wrapping key.
  { kind: 'field: kdf r', field: '"r": ', delta: 0, bit: 0 },
  // p: "1" → "0".
  { kind: 'field: kdf p', field: '"p": ', delta: 0, bit: 0 },
  { kind: 'field: salt', field: '"salt": "', delta: 3, bit: 0 },
  { kind: 'field: sealed', field: '"sealed": "', delta: 30, bit: 0 },
  { kind: 'field: repository id', field: '"repository": "', delta: 9, bit: 0 },
  // hostname: informational only; the repository still opens, check must see the name mismatch.
  { kind: 'field: hostname', field: '"hostname": "', delta: 0, bit: 0 },
  { kind: 'field: version', field: '"version": ', delta: 0, bit: 0 },
];

function fieldDamage(f: FieldFlip): Damage {
  const offsetOf = (bytes: Buffer) => {
    const at = bytes.toString('latin1').indexOf(f.field);
    return at < 0 ? undefined : at + f.field.length + f.delta;
  };
  return {
    kind: f.kind,
    apply(bytes) {
      const offset = offsetOf(bytes);
      return offset === undefined ? undefined : flipAt(bytes, offset, f.bit);
    },
    describe(bytes) {
      const offset = offsetOf(bytes)!;
      return `bit ${f.bit} of byte ${offset} (${JSON.stringify(String.fromCharCode(bytes[offset]!))} → ${JSON.stringify(String.fromCharCode(bytes[offset]! ^ (1 << f.bit)))})`;
    },
  };
}

function damagesFor(type: ObjectType): Damage[] {
  if (type === 'config') return [...damages, ...configFieldFlips.map(fieldDamage)];
  if (type === 'key file') return [...damages, ...keyFieldFlips.map(fieldDamage)];
  return damages;
}

// ---- case results ---------------------------------------------------------------------------

type RestoreOutcome = 'identical' | 'failed, names object' | 'WRONG DATA' | 'FAILED WITHOUT NAMING' | 'BAD ERROR OUTPUT';

interface CaseResult {
  object: string;
  type: ObjectType;
  kind: string;
  detail: string;
  checkCode: number | null;
  detected: boolean;
  /** Damage that changes nothing the format reads (config whitespace, base64 padding bits). */
  harmless: boolean;
  restore: RestoreOutcome;
  restoreCode: number | null;
  /** Everything that is wrong with this case (empty: the case passed). */
  failures: string[];
}

const results: CaseResult[] = [];

/** The config as the format reads it: the JSON value, with the sealed part decoded. */
function configMeaning(bytes: Buffer): string | undefined {
  try {
    const v = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
    if (!v || typeof v !== 'object') return undefined;
    if (typeof v.sealed === 'string') v.sealed = Buffer.from(v.sealed, 'base64').toString('hex');
    return JSON.stringify(v);
  } catch {
    return undefined;
  }
}

function changes(before: Map<string, string>, after: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [k, v] of before) if (after.get(k) !== v) out.push(after.has(k) ? `changed ${k}` : `removed ${k}`);
  for (const k of after.keys()) if (!before.has(k)) out.push(`added ${k}`);
  return out;
}

/** The shape of a failed command's report; returns a problem, or undefined when it is fine. */
function errorShapeProblem(r: RunResult, needHint: boolean): string | undefined {
  try {
    const { hint } = errorLine(r);
    if (needHint && hint === undefined) return `no hint line:\n${r.stderr}`;
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** Does the output of a failed command name the damaged object (or, for keys, say why it cannot open)? */
function namesObject(r: RunResult, key: string, type: ObjectType): boolean {
  const out = `${r.stdout}\n${r.stderr}`;
  if (out.includes(key)) return true;
  if (type === 'config') return /\bconfig\b/.test(out) || /format version/.test(out);
  // A damaged key file cannot be opened: "wrong password" (exit 12) is all tender can say.
  if (type === 'key file') return r.code === 12 && /wrong password/.test(out);
  return false;
}

let caseCounter = 0;

async function runCase(key: string, type: ObjectType, damage: Damage): Promise<CaseResult | undefined> {
  const original = await readFile(path.join(pristine, key));
  const damaged = damage.apply(original, key);
  if (!damaged) return undefined;
  const dir = path.join(tmp, `case-${++caseCounter}`);
  const repo = path.join(dir, 'repo');
  await mkdir(dir, { recursive: true });
  execFileSync('cp', ['-a', pristine, repo]);
  await writeFile(path.join(repo, key), damaged);
  const result: CaseResult = {
    object: key,
    type,
    kind: damage.kind,
    detail: damage.describe?.(original, key) ?? `${original.length} → ${damaged.length} bytes`,
    checkCode: null,
    detected: false,
    harmless: false,
    restore: 'identical',
    restoreCode: null,
    failures: [],
  };
  const fail = (what: string) => result.failures.push(what);
  try {
    const before = await hashFiles(repo);

    // check --read-data: must fail and name the object.
    const checkArgs = ['--repo', repo, '--workers', '1', 'check', '--read-data'];
    const check = await runTender(checkArgs, { timeoutMs: 60_000 });
    result.checkCode = check.code;
    if (check.code === 0) {
      const meaning = configMeaning(damaged);
      if (type === 'config' && meaning !== undefined && meaning === configMeaning(original)) result.harmless = true;
      else fail(`check exited 0 (damage not detected):\n${describeRun(checkArgs, check)}`);
    } else {
      const shape = errorShapeProblem(check, true);
      if (shape) fail(`check error output: ${shape}`);
      if (namesObject(check, key, type)) result.detected = !shape;
      else fail(`check does not name ${key}:\n${describeRun(checkArgs, check)}`);
    }
    const afterCheck = await hashFiles(repo);
    for (const c of changes(before, afterCheck)) fail(`check modified the repository: ${c}`);

    // restore latest: identical, or a failure naming the object.
    const target = path.join(dir, 'restored');
    const restoreArgs = ['--repo', repo, '--workers', '1', '-q', 'restore', 'latest', '--target', target];
    const restore = await runTender(restoreArgs, { timeoutMs: 60_000 });
    result.restoreCode = restore.code;
    if (restore.code === 0) {
      const names = await readdir(target);
      const same =
        names.length === 1 &&
        names[0] === path.basename(src) &&
        JSON.stringify((await treeDigest(path.join(target, names[0]!))).entries) === JSON.stringify((await treeDigest(src)).entries);
      if (!same) {
        result.restore = 'WRONG DATA';
        fail(`restore exited 0 but the restored tree differs from the source`);
      }
    } else {
      const shape = errorShapeProblem(restore, false);
      if (shape) {
        result.restore = 'BAD ERROR OUTPUT';
        fail(`restore error output: ${shape}`);
      } else if (namesObject(restore, key, type)) {
        result.restore = 'failed, names object';
      } else {
        result.restore = 'FAILED WITHOUT NAMING';
        fail(`restore failed without naming ${key}:\n${describeRun(restoreArgs, restore)}`);
      }
    }
    const afterRestore = await hashFiles(repo);
    for (const c of changes(before, afterRestore)) fail(`restore modified the repository: ${c}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return result;
}

async function runCasesOf(type: ObjectType): Promise<CaseResult[]> {
  const keys = [...objects].filter(([, t]) => t === type).map(([k]) => k);
  expect(keys.length, `the repository has ${type} objects`).toBeGreaterThan(0);
  const limit = pLimit(concurrency);
  const done = await Promise.all(keys.flatMap((key) => damagesFor(type).map((d) => limit(() => runCase(key, type, d)))));
  const mine = done.filter((r): r is CaseResult => r !== undefined);
  results.push(...mine);
  return mine;
}

function assertCases(type: ObjectType, cases: CaseResult[]): void {
  const failed = cases.filter((c) => c.failures.length > 0);
  const report = failed.map((c) => `### ${c.object} / ${c.kind} (${c.detail})\n${c.failures.join('\n')}`).join('\n\n');
  const relevant = cases.filter((c) => !c.harmless);
  const detected = relevant.filter((c) => c.detected).length;
  expect(`${detected}/${relevant.length} ${type} cases detected by check`, report).toBe(`${relevant.length}/${relevant.length} ${type} cases detected by check`);
  expect(failed.length, report).toBe(0);
}

// ---- the repository -------------------------------------------------------------------------

async function initRepo(dir: string): Promise<void> {
  const repo = await Repository.init(new FsStorage(dir), testPassword, { kdf: testKdf });
  await repo.close();
}

async function listObjectKeys(repo: string): Promise<string[]> {
  return [...(await hashFiles(repo)).keys()].filter((k) => !k.startsWith('tmp/')).sort();
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-corruption-'));
  pristine = path.join(tmp, 'pristine');
  src = path.join(tmp, 'src');
  await makeTree(src, {
    'a.bin': { type: 'file', random: 1200 * KiB },
    'notes.txt': 'first version of the notes\n'.repeat(50),
    sub: { type: 'dir', children: { 'c.bin': { type: 'file', random: 200 * KiB } } },
    emptydir: { type: 'dir' },
    'empty.txt': '',
  });
  await initRepo(pristine);
  await backupJson(pristine, [src]);
  // Second snapshot: every file changes (so the first data pack is not needed by the latest
  // snapshot), one is added; the empty directory's tree blob is shared with the first snapshot.
  await writeRandomFile(path.join(src, 'a.bin'), 1200 * KiB);
  await writeFile(path.join(src, 'notes.txt'), 'second version of the notes\n'.repeat(60));
  await writeRandomFile(path.join(src, 'sub', 'c.bin'), 200 * KiB);
  await writeRandomFile(path.join(src, 'd.bin'), 100 * KiB);
  latestId = (await backupJson(pristine, [src])).snapshot_id;

  // Classify every object, and find the packs the latest snapshot needs (library calls).
  const repo = await Repository.open(new FsStorage(pristine), testPassword);
  try {
    // One index view for every lookup: pack numbers are the view's own.
    const view = await repo.loadIndex();
    const packTypes = new Map<string, Set<number>>();
    view.forEachBlob((_id, loc) => {
      const key = packKey(view.packIdAt(loc.packIndex));
      const set = packTypes.get(key) ?? new Set<number>();
      set.add(loc.type);
      packTypes.set(key, set);
    });
    for (const key of await listObjectKeys(pristine)) {
      let type: ObjectType;
      if (key === 'config') type = 'config';
      else if (key.startsWith('keys/')) type = 'key file';
      else if (key.startsWith('index/')) type = 'index file';
      else if (key.startsWith('snapshots/')) type = 'snapshot';
      else if (packIdFromKey(key)) {
        const types = packTypes.get(key);
        if (!types) throw new Error(`pack ${key} is in no index`);
        type = types.has(BlobType.data) ? 'data pack' : 'tree pack';
      } else throw new Error(`unexpected object ${key} in the repository`);
      objects.set(key, type);
    }
    const useBlob = (id: Buffer) => {
      const loc = view.lookup(id);
      if (!loc) throw new Error(`blob ${idToHex(id)} is not indexed`);
      neededPacks.add(packKey(view.packIdAt(loc.packIndex)));
    };
    const walk = async (treeHex: string): Promise<void> => {
      useBlob(hexToId(treeHex));
      for (const node of (await repo.loadTree(treeHex, view)).nodes) {
        if (node.subtree) await walk(node.subtree);
        for (const hex of node.content ?? []) useBlob(hexToId(hex));
        for (const hex of node.contentLists ?? []) useBlob(hexToId(hex));
      }
    };
    await walk((await repo.loadSnapshot(latestId)).tree);
  } finally {
    await repo.close();
  }
  const count = (t: ObjectType) => [...objects.values()].filter((v) => v === t).length;
  // The repository has what the sweep is meant to cover.
  expect(count('config')).toBe(1);
  expect(count('key file')).toBe(1);
  expect(count('index file')).toBeGreaterThanOrEqual(2);
  expect(count('snapshot')).toBe(2);
  expect(count('data pack')).toBeGreaterThanOrEqual(2);
  expect(count('tree pack')).toBeGreaterThanOrEqual(2);
  // And the pristine repository is healthy.
  await tenderOk(['--repo', pristine, '--workers', '1', 'check', '--read-data']);
}, 300_000);

afterAll(async () => {
  if (results.length > 0) {
    const lines: string[] = [];
    lines.push(`corruption sweep (seed ${seed}): ${results.length} cases`);
    lines.push('');
    lines.push('per object type:');
    for (const type of objectTypes) {
      const cs = results.filter((r) => r.type === type);
      if (cs.length === 0) continue;
      const rel = cs.filter((c) => !c.harmless);
      const restoreOk = cs.filter((c) => c.restore === 'identical').length;
      const restoreFailed = cs.filter((c) => c.restore === 'failed, names object').length;
      lines.push(
        `  ${type.padEnd(11)} detected ${rel.filter((c) => c.detected).length}/${rel.length}` +
          (cs.length > rel.length ? ` (+${cs.length - rel.length} harmless)` : '') +
          `; restore identical ${restoreOk}, failed naming it ${restoreFailed}, other ${cs.length - restoreOk - restoreFailed}`,
      );
    }
    lines.push('');
    lines.push('per damage kind:');
    const kinds = [...new Set(results.map((r) => r.kind))];
    for (const kind of kinds) {
      const cs = results.filter((r) => r.kind === kind);
      const rel = cs.filter((c) => !c.harmless);
      lines.push(`  ${kind.padEnd(24)} detected ${rel.filter((c) => c.detected).length}/${rel.length}${cs.length > rel.length ? ` (+${cs.length - rel.length} harmless)` : ''}`);
    }
    lines.push('');
    lines.push('cases:');
    for (const r of results) {
      const needed = r.type.endsWith('pack') ? (neededPacks.has(r.object) ? ' [needed by latest]' : ' [not needed by latest]') : '';
      lines.push(
        `  ${r.failures.length ? 'FAIL' : 'ok  '} ${r.type.padEnd(10)} ${r.object.slice(0, 20)}…${needed} ${r.kind} (${r.detail}): check exit ${r.checkCode}${r.harmless ? ' (harmless)' : ''}, restore ${r.restore} (exit ${r.restoreCode})`,
      );
    }
    console.log(lines.join('\n'));
  }
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('damage to every object is detected, and restore never writes wrong data', () => {
  for (const type of objectTypes) {
    it(`${type}`, async () => {
      assertCases(type, await runCasesOf(type));
    }, 900_000);
  }
});

// ---- passwords and foreign keys ------------------------------------------------------------

async function copyPristine(name: string): Promise<string> {
  const dir = path.join(tmp, name);
  await cp(pristine, dir, { recursive: true, preserveTimestamps: true });
  return dir;
}

async function onlyKey(repo: string): Promise<string> {
  const names = await readdir(path.join(repo, 'keys'));
  expect(names).toHaveLength(1);
  return `keys/${names[0]}`;
}

/** A second repository, same password, with one small snapshot. */
async function otherRepository(name: string): Promise<{ repo: string; source: string; snapshot: string }> {
  const repo = path.join(tmp, name);
  const source = path.join(tmp, `${name}-src`);
  await makeTree(source, { 'other.bin': { type: 'file', random: 64 * KiB }, 'other.txt': 'another repository\n' });
  await initRepo(repo);
  const snapshot = (await backupJson(repo, [source])).snapshot_id;
  return { repo, source, snapshot };
}

async function fails(args: string[], code: number): Promise<{ message: string; hint: string | undefined; run: RunResult }> {
  const r = await runTender(args, { timeoutMs: 60_000 });
  expect(r.code, describeRun(args, r)).toBe(code);
  const e = errorLine(r);
  expect(e.hint, `a hint line in:\n${r.stderr}`).toBeDefined();
  return { ...e, run: r };
}

describe('passwords and key files', () => {
  it('wrong password: exit 12, one-line error with a hint, nothing changes', async () => {
    const repo = await copyPristine('wrong-password');
    const before = await hashFiles(repo);
    for (const command of [['check', '--read-data'], ['restore', 'latest', '--target', path.join(tmp, 'wp-out')]]) {
      const r = await runTender(['--repo', repo, ...command], { env: { TENDER_PASSWORD: 'not the password' } });
      expect(r.code, describeRun(command, r)).toBe(12);
      const { message, hint } = errorLine(r);
      expect(message).toMatch(/wrong password/);
      expect(message).toContain(repo);
      expect(hint).toMatch(/TENDER_PASSWORD/);
    }
    expectRepoUnchanged(before, await hashFiles(repo));
  });

  it('a key file copied from another repository (same password) does not open this one', async () => {
    const other = await otherRepository('foreign-key-other');
    const repo = await copyPristine('foreign-key');
    const own = await onlyKey(repo);
    const foreign = await onlyKey(other.repo);
    await rm(path.join(repo, own));
    await cp(path.join(other.repo, foreign), path.join(repo, foreign));
    const before = await hashFiles(repo);
    // Its repository ID is not this repository's: the repository has no key of its own, which
    // is damage to name (exit 1), not a wrong password.
    const { message } = await fails(['--repo', repo, 'check', '--read-data'], 1);
    expect(message).toMatch(/no usable key file/);
    expect(message).toContain(foreign);
    await fails(['--repo', repo, 'restore', 'latest', '--target', path.join(tmp, 'fk-out')], 1);
    expectRepoUnchanged(before, await hashFiles(repo));

    // Next to this repository's own key file it is simply not used: everything still works.
    const both = await copyPristine('foreign-key-both');
    await cp(path.join(other.repo, foreign), path.join(both, foreign));
    await tenderOk(['--repo', both, '--workers', '1', 'check', '--read-data']);
    const out = path.join(tmp, 'fk-both-out');
    await tenderOk(['--repo', both, '--workers', '1', '-q', 'restore', 'latest', '--target', out]);
    await assertSameTree(src, path.join(out, path.basename(src)));
  });

  it('a foreign key file whose plaintext repository field is forged to this repository does not open it', async () => {
    const other = await otherRepository('forged-key-other');
    const repo = await copyPristine('forged-key');
    const own = await onlyKey(repo);
    const ownJson = JSON.parse(await readFile(path.join(repo, own), 'utf8')) as { repository: string };
    const foreignJson = JSON.parse(await readFile(path.join(other.repo, await onlyKey(other.repo)), 'utf8')) as { repository: string };
    expect(foreignJson.repository).not.toBe(ownJson.repository);
    foreignJson.repository = ownJson.repository;
    const bytes = Buffer.from(JSON.stringify(foreignJson, null, 2) + '\n');
    const forgedKey = `keys/${createHash('sha256').update(bytes).digest('hex')}`;
    await rm(path.join(repo, own));
    await writeFile(path.join(repo, forgedKey), bytes);
    const before = await hashFiles(repo);
    // The forged file decrypts with the password, but the repository ID sealed inside it is the
    // other repository's: it must be refused as a wrong password, not used (the config would
    // then "not decrypt", or worse).
    const { message } = await fails(['--repo', repo, 'check', '--read-data'], 12);
    expect(message).toMatch(/wrong password/);
    await fails(['--repo', repo, 'restore', 'latest', '--target', path.join(tmp, 'forged-out')], 12);
    expectRepoUnchanged(before, await hashFiles(repo));
  });
});

// ---- a pack in the wrong repository ---------------------------------------------------------

describe('a pack copied into another repository', () => {
  it('is reported as unindexed or damaged, never decrypted, and changes nothing the other repository restores', async () => {
    const other = await otherRepository('foreign-pack-other');
    const pack = [...objects].find(([, t]) => t === 'data pack')![0];
    await mkdir(path.dirname(path.join(other.repo, pack)), { recursive: true });
    await cp(path.join(pristine, pack), path.join(other.repo, pack));

    // check (with and without --read-data): a warning about an unindexed pack, no damage, and
    // nothing from the foreign pack counted as blobs.
    for (const extra of [[], ['--read-data']]) {
      const r = await tenderOk(['--repo', other.repo, '--workers', '1', 'check', ...extra]);
      expect(r.stdout, describeRun(extra, r)).toMatch(/warning: 1 packs are in no index/);
      expect(r.stdout).not.toMatch(/damaged/);
    }

    // The library refuses to read its header with this repository's key.
    const repo = await Repository.open(new FsStorage(other.repo), testPassword);
    try {
      const id = Buffer.from(packIdFromKey(pack)!, 'hex');
      const size = (await stat(path.join(other.repo, pack))).size;
      const err = await repo.readPackHeader(id, size).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TenderError);
      expect((err as TenderError).code).toBe('TENDER_CORRUPT');
      expect((err as TenderError).message).toContain(pack);
    } finally {
      await repo.close();
    }

    // A backup's resume step reads unindexed packs when an interrupted run left its session
    // marker: it must skip this one, saying so.
    const more = path.join(tmp, 'foreign-pack-more');
    await makeTree(more, { 'x.txt': 'x\n' });
    const interrupted = Date.now() - 60_000;
    await mkdir(path.join(other.repo, 'sessions'), { recursive: true });
    await writeFile(path.join(other.repo, 'sessions', `${'ab'.repeat(16)}.${interrupted}.${interrupted}`), '{}');
    const b = await runTender(['--repo', other.repo, 'backup', more]);
    expect(b.code, describeRun(['backup'], b)).toBe(0);
    expect(b.stderr).toContain(`warning: ${pack} is damaged and was not indexed`);

    // repair index: the foreign pack is named as damaged and not indexed.
    const repair = await tenderOk(['--repo', other.repo, 'repair', 'index']);
    expect(repair.stdout).toContain(`damaged pack not indexed: ${pack}`);
    const after = await tenderOk(['--repo', other.repo, '--workers', '1', 'check', '--read-data']);
    expect(after.stdout).toMatch(/warning: 1 packs are in no index/);

    // The other repository's own snapshot still restores exactly.
    const out = path.join(tmp, 'foreign-pack-out');
    await tenderOk(['--repo', other.repo, '--workers', '1', '-q', 'restore', other.snapshot, '--target', out]);
    await assertSameTree(other.source, path.join(out, path.basename(other.source)));
  });
});
