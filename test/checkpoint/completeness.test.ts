/**
 * Completeness on real files and directories: every truncation point of a file in each format is
 * incomplete with a reason (fast-check over truncation lengths), whole files are complete; the
 * directory rules (DCP, Megatron, HF Trainer, DeepSpeed, tmp-then-rename) on complete and partial
 * trees copied from test/fixtures/checkpoint; a file held open for writing by a real child
 * process is incomplete through the lease probe.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rename, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type CheckpointDir, type Completeness, fileCompleteness, findCheckpoints } from '../../src/checkpoint/completeness.js';
import { readFileLayout } from '../../src/checkpoint/layout.js';
import { openForWriting } from '../../src/checkpoint/lease.js';
import { isTenderError } from '../../src/errors/errors.js';
import { copyFixture, fixture, tempDir, truncatedCopy, withFile } from './fixtures.js';

let tmp: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

let serial = 0;
/** A fresh directory under the suite's temporary directory. */
async function scratch(): Promise<string> {
  const dir = path.join(tmp.dir, `case-${serial++}`);
  await mkdir(dir, { recursive: true });
  return dir;
}

async function verdictOf(file: string): Promise<Completeness | undefined> {
  return withFile(file, (fd, size) => fileCompleteness(fd, file, size));
}

async function fixtureSize(rel: string): Promise<number> {
  return (await readFile(fixture(rel))).length;
}

describe('fileCompleteness: every truncation point is incomplete', () => {
  const files: [string, string][] = [
    ['files/model.safetensors', 'safetensors'],
    ['files/array.npy', 'npy'],
    ['files/array-v2.npy', 'npy'],
    ['files/model.pt', 'torch-zip'],
    ['trees/deepspeed/global_step10/mp_rank_00_model_states.pt', 'torch-zip'],
  ];
  for (const [rel, kind] of files) {
    it(`${rel}`, async () => {
      const size = await fixtureSize(rel);
      expect(await verdictOf(fixture(rel))).toEqual({ complete: true, kind });
      const dir = await scratch();
      await fc.assert(
        fc.asyncProperty(fc.nat({ max: size - 1 }), async (length) => {
          const file = await truncatedCopy(rel, dir, length);
          const verdict = await verdictOf(file);
          expect(verdict, `cut at ${length} of ${size}`).toMatchObject({ complete: false, kind });
          expect((verdict as { reason: string }).reason.length).toBeGreaterThan(5);
        }),
        // The ends are where formats are easiest to get wrong: always tried.
        { numRuns: 150, examples: [[0], [1], [size - 1], [Math.floor(size / 2)]] },
      );
    });
  }

  it('bytes appended after the end are incomplete too (the headers describe a shorter file)', async () => {
    for (const rel of ['files/model.safetensors', 'files/array.npy', 'files/model.pt']) {
      const dir = await scratch();
      const file = await copyFixture(rel, path.join(dir, path.basename(rel)));
      await writeFile(file, Buffer.alloc(3), { flag: 'a' });
      expect(await verdictOf(file), rel).toMatchObject({ complete: false });
    }
  });

  it('temporary names (tmp-then-rename, *.incomplete) are incomplete whatever they hold', async () => {
    const dir = await scratch();
    for (const name of ['model.safetensors.incomplete', 'model.pt.tmp', 'weights.npy.partial']) {
      const file = await copyFixture('files/model.safetensors', path.join(dir, name));
      expect(await verdictOf(file)).toMatchObject({ complete: false, kind: 'tmp-rename' });
    }
  });

  it('files in no known format: undefined', async () => {
    const dir = await scratch();
    const file = path.join(dir, 'config.json');
    await writeFile(file, '{"a": 1}');
    expect(await verdictOf(file)).toBeUndefined();
  });
});

describe('a file open for writing (lease probe)', () => {
  const nativeDisabled = process.env.TENDER_NATIVE === '0';
  let child: ChildProcess | undefined;
  const elsewhereDirs: string[] = [];
  afterEach(() => {
    child?.kill('SIGKILL');
    child = undefined;
  });
  afterAll(async () => {
    for (const dir of elsewhereDirs) await rm(dir, { recursive: true, force: true });
  });

  /** A child process that opens `file` for writing and holds it until its stdin closes. */
  async function holdOpenForWriting(file: string): Promise<ChildProcess> {
    const script = `const fd = require('fs').openSync(${JSON.stringify(file)}, 'r+'); process.stdout.write('open\\n'); process.stdin.resume(); process.stdin.on('end', () => { require('fs').closeSync(fd); process.exit(0); });`;
    const proc = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      proc.stdout!.once('data', () => resolve());
      proc.once('exit', (code) => reject(new Error(`the writer exited early (${code})`)));
    });
    return proc;
  }

  /**
   * A directory on a file system with leases: the suite's temporary directory, else /dev/shm
   * (tmpfs has them; some container overlay file systems do not).
   */
  async function leaseCapableDir(): Promise<string> {
    const dir = await scratch();
    if (nativeDisabled) return dir;
    for (const candidate of [dir, '/dev/shm']) {
      const probe = path.join(candidate, `lease-probe-${process.pid}`);
      try {
        await writeFile(probe, 'x');
        if (openForWriting(probe) === false) {
          if (candidate === dir) return dir;
          const elsewhere = await mkdtemp(path.join(candidate, 'tender-ckpt-'));
          elsewhereDirs.push(elsewhere);
          return elsewhere;
        }
      } catch {
        // not writable: try the next one
      } finally {
        await rm(probe, { force: true });
      }
    }
    throw new Error(`no directory here supports file leases (F_SETLEASE): tried ${dir} and /dev/shm`);
  }

  it('a whole safetensors file held open for writing by another process is incomplete until it is closed', async () => {
    const dir = await leaseCapableDir();
    const file = await copyFixture('files/model.safetensors', path.join(dir, 'model.safetensors'));
    expect(openForWriting(file)).toBe(nativeDisabled ? undefined : false);
    child = await holdOpenForWriting(file);
    if (nativeDisabled) {
      expect(openForWriting(file)).toBeUndefined();
      return;
    }
    expect(openForWriting(file)).toBe(true);
    expect(await verdictOf(file)).toEqual({ complete: false, kind: 'safetensors', reason: 'a process has the file open for writing' });
    // And a checkpoint directory holding it is incomplete.
    const ckpt = path.join(dir, 'checkpoint-500');
    await copyFixture('trees/hf/checkpoint-500', ckpt);
    const held = path.join(ckpt, 'trainer_state.json');
    const writer = await holdOpenForWriting(held);
    try {
      const [found] = await findCheckpoints(dir);
      expect(found!.verdict).toMatchObject({ complete: false, reason: 'trainer_state.json: a process has the file open for writing' });
    } finally {
      writer.kill('SIGKILL');
      await new Promise((resolve) => writer.once('exit', resolve));
    }
    const exited = new Promise((resolve) => child!.once('exit', resolve));
    child.stdin!.end();
    await exited;
    expect(openForWriting(file)).toBe(false);
    expect(await verdictOf(file)).toEqual({ complete: true, kind: 'safetensors' });
  });
});

/** findCheckpoints(root), as path (relative to root) → verdict. */
async function verdicts(root: string): Promise<Record<string, Completeness>> {
  const found = await findCheckpoints(root);
  return Object.fromEntries(found.map((c: CheckpointDir) => [path.relative(root, c.path), c.verdict]));
}

describe('DCP directories', () => {
  it('whole: complete, with every file listed', async () => {
    const root = await scratch();
    await copyFixture('dcp', path.join(root, 'step-1'));
    const found = await findCheckpoints(root);
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({ kind: 'dcp', verdict: { complete: true, kind: 'dcp' } });
    expect(found[0]!.files.map((f) => path.basename(f)).sort()).toEqual(['.metadata', '__0_0.distcp', '__1_0.distcp']);
  });

  const partial: [string, (dir: string) => Promise<void>, RegExp][] = [
    ['without .metadata (written last)', (d) => unlink(path.join(d, '.metadata')), /no \.metadata/],
    ['with .metadata.tmp (a save in progress)', (d) => rename(path.join(d, '.metadata'), path.join(d, '.metadata.tmp')), /metadata\.tmp/],
    ['with a missing shard', (d) => unlink(path.join(d, '__1_0.distcp')), /__1_0\.distcp named by \.metadata is missing/],
    ['with a short shard', (d) => truncate(path.join(d, '__0_0.distcp'), 1000), /__0_0\.distcp has 1000 bytes/],
    ['with a damaged .metadata', (d) => truncate(path.join(d, '.metadata'), 300), /\.metadata is damaged/],
  ];
  for (const [what, damage, reason] of partial) {
    it(`${what}: incomplete`, async () => {
      const root = await scratch();
      const dir = await copyFixture('dcp', path.join(root, 'step-1'));
      await damage(dir);
      const found = await findCheckpoints(root);
      expect(found).toHaveLength(1);
      expect(found[0]!.verdict.complete).toBe(false);
      expect((found[0]!.verdict as { reason: string }).reason).toMatch(reason);
    });
  }

  it('a shard in SerializationFormat.SAFETENSORS (one safetensors blob): whole by its own header', async () => {
    const root = await scratch();
    const dir = await copyFixture('dcp', path.join(root, 'step-1'));
    const header = Buffer.from(JSON.stringify({ 'model.w': { dtype: 'F32', shape: [1024], data_offsets: [0, 4096] } }));
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(header.length));
    const blob = Buffer.concat([length, header, Buffer.alloc(4096, 7)]);
    await writeFile(path.join(dir, '__0_0.distcp'), blob);
    expect((await verdicts(root))['step-1']).toEqual({ complete: true, kind: 'dcp' });
    const layout = await withFile(path.join(dir, '__0_0.distcp'), (fd, size) => readFileLayout(fd, path.join(dir, '__0_0.distcp'), size));
    expect(layout).toEqual({ kind: 'dcp-shard', extents: [{ name: 'model.w', dtype: 'F32', offset: 8 + header.length, length: 4096 }] });
    await writeFile(path.join(dir, '__0_0.distcp'), blob.subarray(0, blob.length - 1));
    expect((await verdicts(root))['step-1']).toMatchObject({ complete: false, reason: expect.stringMatching(/__0_0\.distcp has/) });
  });

  it('a shard of a whole checkpoint, cut anywhere: the directory is incomplete', async () => {
    const size = await fixtureSize('dcp/__1_0.distcp');
    const root = await scratch();
    const dir = await copyFixture('dcp', path.join(root, 'ckpt'));
    const original = await readFile(path.join(dir, '__1_0.distcp'));
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: size - 1 }), async (length) => {
        await writeFile(path.join(dir, '__1_0.distcp'), original.subarray(0, length));
        const [found] = await findCheckpoints(root);
        expect(found!.verdict, `cut at ${length}`).toMatchObject({ complete: false, kind: 'dcp' });
      }),
      { numRuns: 60, examples: [[0], [size - 1]] },
    );
  });
});

describe('Megatron-LM', () => {
  it('legacy format: complete when latest_checkpointed_iteration.txt records it, incomplete when it is newer or missing', async () => {
    const root = await scratch();
    await copyFixture('trees/megatron', root);
    const found = await findCheckpoints(root);
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({ kind: 'megatron', verdict: { complete: true } });
    expect(found[0]!.files).toContain(path.join(root, 'latest_checkpointed_iteration.txt'));

    await writeFile(path.join(root, 'latest_checkpointed_iteration.txt'), '50');
    expect((await verdicts(root))['iter_0000100']).toMatchObject({ complete: false, reason: expect.stringMatching(/newer than the 50/) });
    await rm(path.join(root, 'latest_checkpointed_iteration.txt'));
    expect((await verdicts(root))['iter_0000100']).toMatchObject({ complete: false, reason: expect.stringMatching(/no latest_checkpointed_iteration\.txt/) });
  });

  it('release/: complete when the tracker says release, incomplete when it names an iteration', async () => {
    const root = await scratch();
    await copyFixture('trees/megatron', root);
    await rename(path.join(root, 'iter_0000100'), path.join(root, 'release'));
    expect(await verdicts(root)).toEqual({ release: { complete: false, kind: 'megatron', reason: expect.stringMatching(/records "100", not release/) } });
    await writeFile(path.join(root, 'latest_checkpointed_iteration.txt'), 'release');
    expect(await verdicts(root)).toEqual({ release: { complete: true, kind: 'megatron' } });
  });

  it('legacy format with a truncated model_optim_rng.pt: incomplete', async () => {
    const root = await scratch();
    await copyFixture('trees/megatron', root);
    await truncate(path.join(root, 'iter_0000100/mp_rank_00/model_optim_rng.pt'), 900);
    expect((await verdicts(root))['iter_0000100']).toMatchObject({ complete: false, reason: expect.stringMatching(/^mp_rank_00\/model_optim_rng\.pt: /) });
  });

  it('torch_dist format: metadata.json plus a whole DCP directory; without metadata.json incomplete', async () => {
    const root = await scratch();
    const iter = await copyFixture('dcp', path.join(root, 'iter_0000200'));
    await writeFile(path.join(root, 'latest_checkpointed_iteration.txt'), '200\n');
    expect((await verdicts(root))['iter_0000200']).toMatchObject({ complete: false, reason: 'no metadata.json (written after the shards)' });
    await writeFile(path.join(iter, 'metadata.json'), JSON.stringify({ sharded_backend: 'torch_dist', sharded_backend_version: 1 }));
    expect((await verdicts(root))['iter_0000200']).toEqual({ complete: true, kind: 'megatron' });
    await unlink(path.join(iter, '__0_0.distcp'));
    expect((await verdicts(root))['iter_0000200']).toMatchObject({ complete: false, reason: expect.stringMatching(/missing/) });
  });
});

describe('HF Trainer', () => {
  async function hf(): Promise<{ root: string; ckpt: string }> {
    const root = await scratch();
    const ckpt = await copyFixture('trees/hf/checkpoint-500', path.join(root, 'checkpoint-500'));
    return { root, ckpt };
  }

  it('complete with trainer_state.json (written last) naming its step', async () => {
    const { root } = await hf();
    expect(await verdicts(root)).toEqual({ 'checkpoint-500': { complete: true, kind: 'hf-trainer' } });
  });

  it('partial: no trainer_state.json, another step in it, a truncated optimizer.pt, a missing index shard', async () => {
    let { root, ckpt } = await hf();
    await unlink(path.join(ckpt, 'trainer_state.json'));
    expect((await verdicts(root))['checkpoint-500']).toMatchObject({ complete: false, reason: expect.stringMatching(/no trainer_state\.json/) });

    ({ root, ckpt } = await hf());
    await writeFile(path.join(ckpt, 'trainer_state.json'), JSON.stringify({ global_step: 400 }));
    expect((await verdicts(root))['checkpoint-500']).toMatchObject({ complete: false, reason: expect.stringMatching(/global_step 400/) });

    ({ root, ckpt } = await hf());
    await truncate(path.join(ckpt, 'optimizer.pt'), 500);
    expect((await verdicts(root))['checkpoint-500']).toMatchObject({ complete: false, reason: expect.stringMatching(/^optimizer\.pt: /) });

    ({ root, ckpt } = await hf());
    await writeFile(path.join(ckpt, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'a.weight': 'model.safetensors', 'b.weight': 'model-00002-of-00002.safetensors' } }));
    expect((await verdicts(root))['checkpoint-500']).toMatchObject({ complete: false, reason: expect.stringMatching(/model-00002-of-00002\.safetensors.*missing/) });
  });

  it('tmp-checkpoint-N (tmp-then-rename) is incomplete', async () => {
    const root = await scratch();
    await copyFixture('trees/hf/checkpoint-500', path.join(root, 'tmp-checkpoint-500'));
    expect(await verdicts(root)).toEqual({ 'tmp-checkpoint-500': { complete: false, kind: 'tmp-rename', reason: expect.any(String) } });
  });

  it('with FSDP sharded states (DCP subfolders): the DCP rule applies to them', async () => {
    const { root, ckpt } = await hf();
    await copyFixture('dcp', path.join(ckpt, 'pytorch_model_fsdp_0'));
    expect((await verdicts(root))['checkpoint-500']).toEqual({ complete: true, kind: 'hf-trainer' });
    await unlink(path.join(ckpt, 'pytorch_model_fsdp_0/.metadata'));
    expect((await verdicts(root))['checkpoint-500']).toMatchObject({ complete: false, reason: expect.stringMatching(/^pytorch_model_fsdp_0: no \.metadata/) });
  });

  it('a checkpoint-N holding DCP files itself is a DCP checkpoint', async () => {
    const root = await scratch();
    await copyFixture('dcp', path.join(root, 'checkpoint-9'));
    expect(await verdicts(root)).toEqual({ 'checkpoint-9': { complete: true, kind: 'dcp' } });
  });

  it('with a DeepSpeed tag inside: the DeepSpeed rule applies to it', async () => {
    const { root, ckpt } = await hf();
    await copyFixture('trees/deepspeed/global_step10', path.join(ckpt, 'global_step500'));
    expect((await verdicts(root))['checkpoint-500']).toEqual({ complete: true, kind: 'hf-trainer' });
    await unlink(path.join(ckpt, 'global_step500/zero_pp_rank_1_mp_rank_00_optim_states.pt'));
    expect((await verdicts(root))['checkpoint-500']).toMatchObject({ complete: false, reason: expect.stringMatching(/^global_step500: zero_pp_rank_1/) });
  });
});

describe('DeepSpeed', () => {
  it('complete when every rank file its model states call for is there and whole', async () => {
    const root = await scratch();
    await copyFixture('trees/deepspeed', root);
    expect(await verdicts(root)).toEqual({ global_step10: { complete: true, kind: 'deepspeed' } });
  });

  it('`latest` is not trusted: it names the tag, yet a missing or truncated rank file makes it incomplete', async () => {
    const root = await scratch();
    await copyFixture('trees/deepspeed', root);
    expect((await readFile(path.join(root, 'latest'), 'utf8')).trim()).toBe('global_step10');
    await unlink(path.join(root, 'global_step10/zero_pp_rank_1_mp_rank_00_optim_states.pt'));
    expect((await verdicts(root)).global_step10).toMatchObject({
      complete: false,
      reason: 'zero_pp_rank_1_mp_rank_00_optim_states.pt is missing (dp_world_size 2, mp_world_size 1)',
    });
    await copyFixture('trees/deepspeed/global_step10/zero_pp_rank_0_mp_rank_00_optim_states.pt', path.join(root, 'global_step10/zero_pp_rank_1_mp_rank_00_optim_states.pt'));
    await truncate(path.join(root, 'global_step10/zero_pp_rank_1_mp_rank_00_optim_states.pt'), 1000);
    expect((await verdicts(root)).global_step10).toMatchObject({ complete: false, reason: expect.stringMatching(/^zero_pp_rank_1_mp_rank_00_optim_states\.pt: /) });
  });

  it('model states that cannot be read: incomplete', async () => {
    const root = await scratch();
    await copyFixture('trees/deepspeed', root);
    await truncate(path.join(root, 'global_step10/mp_rank_00_model_states.pt'), 100);
    expect((await verdicts(root)).global_step10).toMatchObject({ complete: false, reason: expect.stringMatching(/^mp_rank_00_model_states\.pt: /) });
  });
});

describe('findCheckpoints', () => {
  it('finds every kind in one tree, sorted by path, and stops on an aborted signal', async () => {
    const root = await scratch();
    await copyFixture('trees/hf', path.join(root, 'hf'));
    await copyFixture('trees/megatron', path.join(root, 'runs/megatron'));
    await copyFixture('trees/deepspeed', path.join(root, 'runs/ds'));
    await copyFixture('dcp', path.join(root, 'runs/dcp/step-7'));
    await copyFixture('dcp', path.join(root, 'runs/dcp/step-8.tmp'));
    // A temporary-looking folder that is no checkpoint is searched like any other.
    await copyFixture('trees/hf', path.join(root, 'tmp-scratch'));
    await mkdir(path.join(root, 'data/empty'), { recursive: true });
    await writeFile(path.join(root, 'data/readme.txt'), 'x');
    const found = await findCheckpoints(root);
    expect(found.map((c) => [path.relative(root, c.path), c.kind, c.verdict.complete])).toEqual([
      ['hf/checkpoint-500', 'hf-trainer', true],
      ['runs/dcp/step-7', 'dcp', true],
      ['runs/dcp/step-8.tmp', 'tmp-rename', false],
      ['runs/ds/global_step10', 'deepspeed', true],
      ['runs/megatron/iter_0000100', 'megatron', true],
      ['tmp-scratch/checkpoint-500', 'hf-trainer', true],
    ]);
    const controller = new AbortController();
    controller.abort();
    await expect(findCheckpoints(root, { signal: controller.signal })).rejects.toSatisfy((err) => isTenderError(err, 'TENDER_CANCELLED'));
  });

  it('a root that does not exist holds no checkpoints', async () => {
    expect(await findCheckpoints(path.join(tmp.dir, 'no-such-dir'))).toEqual([]);
  });
});
