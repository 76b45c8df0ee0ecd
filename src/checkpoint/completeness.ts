import { type Dir, type Dirent, opendirSync } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { throwIfCancelled } from '../util/operation.js';
import { TimeSlice } from '../util/time-slice.js';
import { DCP_METADATA, isDcpShardName, readDcpMetadata } from './dcp.js';
import { isNpyName, looksLikeNpy } from './npy.js';
import { type FileHeaders, readFileHeaders } from './layout.js';
import { openForWriting } from './lease.js';
import { PickleError } from './pickle.js';
import { readAt } from './read-at.js';
import { isSafetensorsName, looksLikeSafetensors, parseSafetensors } from './safetensors.js';
import { isTorchName, looksLikeZip, readTorchArchive } from './torch-zip.js';

/**
 * Whether checkpoints are whole: the rules per layout are in docs/design.md, "Checkpoint layouts
 * and completeness". Only what is proven whole is labelled complete: anything that cannot be
 * read or checked is incomplete, with the reason.
 */

export type Completeness =
  | { readonly complete: true; readonly kind: string }
  | { readonly complete: false; readonly kind: string; readonly reason: string };

export interface CheckpointDir {
  /** Path of the checkpoint directory. */
  readonly path: string;
  readonly kind: 'dcp' | 'megatron' | 'hf-trainer' | 'deepspeed' | 'tmp-rename';
  readonly verdict: Completeness;
  /** The files that belong to it (absolute paths). */
  readonly files: readonly string[];
}

/** Names that tmp-then-rename writers give a file before its final rename. */
const TEMPORARY_FILE = /\.(incomplete|tmp|partial)$/;
/**
 * Directory names of the tmp-then-rename pattern: HF Trainer's `tmp-checkpoint-N`, Orbax's
 * `<name>.orbax-checkpoint-tmp-<n>`, and `tmp-*` / `*.tmp` / `*.incomplete` / `*.partial`; the
 * group is the final name.
 */
const TEMPORARY_DIR = /^tmp-(.+)$|^(.+)\.(?:tmp|incomplete|partial)$/;
const ORBAX_TEMPORARY_DIR = /\.orbax-checkpoint-tmp-\d+$/;
/** Final names of checkpoint directories (HF Trainer, Megatron, DeepSpeed, common `step-N`). */
const CHECKPOINT_NAME = /^(checkpoint-\d+|iter_\d+|global_step\d+|step[-_]?\d+)$/;

/**
 * File formats (safetensors, torch.save zip incl. ZIP64, npy): undefined when the file is none of
 * them. `headers`: a parse of the same file at this size already made (the caller vouches that
 * the file did not change since); otherwise the headers are read now.
 */
export async function fileCompleteness(fd: number, filePath: string, size: number, headers?: FileHeaders): Promise<Completeness | undefined> {
  if (TEMPORARY_FILE.test(basename(filePath))) {
    return { complete: false, kind: 'tmp-rename', reason: 'a temporary name: the writer renames the file when it is done' };
  }
  const { parsed } = headers?.size === size ? headers : await readFileHeaders(fd, filePath, size);
  if (!parsed) return undefined;
  if (!parsed.ok) return { complete: false, kind: parsed.kind, reason: parsed.reason };
  const kind = parsed.layout.kind;
  if (parsed.expectedSize !== size) {
    return { complete: false, kind, reason: `the headers describe ${parsed.expectedSize} bytes, the file has ${size}` };
  }
  if (openForWriting(filePath)) return { complete: false, kind, reason: 'a process has the file open for writing' };
  return { complete: true, kind };
}

/** The kinds of checkpoint directory. */
type DirKind = CheckpointDir['kind'];

/** Bounds of findCheckpoints: how deep it looks for checkpoints, and within one. */
const MAX_SEARCH_DEPTH = 32;
const MAX_CHECKPOINT_DEPTH = 8;
const MAX_CHECKPOINT_FILES = 1_000_000;

const MEGATRON_TRACKER = 'latest_checkpointed_iteration.txt';
/** Megatron's folder for a released checkpoint (the tracker then says `release`). */
const MEGATRON_RELEASE = 'release';
const TRAINER_STATE = 'trainer_state.json';
const DEEPSPEED_STATES = /(model_states|optim_states)\.pt$/;
const DCP_SHARD = /^__\d+_\d+\.distcp$/;

/** A file name only DCP directories have. */
function isDcpFile(name: string): boolean {
  return name === DCP_METADATA || name === `${DCP_METADATA}.tmp` || DCP_SHARD.test(name);
}

/** Directory-level checkpoints under root (bounded walk, memory independent of file count beyond the result). */
export async function findCheckpoints(root: string, options: { signal?: AbortSignal } = {}): Promise<CheckpointDir[]> {
  const found: CheckpointDir[] = [];
  await search(root, 0, found, options.signal, new TimeSlice(searchSliceMs));
  return found.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** The search lists directories synchronously; it lets the event loop run this often (an agent serves HTTP meanwhile). */
const searchSliceMs = 5;

async function search(dir: string, depth: number, found: CheckpointDir[], signal: AbortSignal | undefined, slice: TimeSlice): Promise<void> {
  if (signal) throwIfCancelled(signal);
  await slice.yieldIfDue();
  const kind = await classify(dir);
  if (kind) {
    found.push(await evaluate(dir, kind, signal));
    return;
  }
  if (depth >= MAX_SEARCH_DEPTH) return;
  for (const entry of dirEntries(dir)) {
    if (entry.isDirectory()) await search(join(dir, entry.name), depth + 1, found, signal, slice);
  }
}

/**
 * The entries of a directory, read synchronously in batches: memory stays independent of how many
 * entries it has, and no promise is made per entry (`for await` over fs/promises' opendir cost
 * about 11 µs per entry, 0.25 s per search of a 20,000-file tree). A directory that vanished or
 * cannot be read yields nothing: it holds no checkpoint we could label.
 */
function* dirEntries(dir: string): Generator<Dirent> {
  let handle: Dir;
  try {
    handle = opendirSync(dir, { bufferSize: 256 });
  } catch (err) {
    if (['ENOENT', 'ENOTDIR', 'EACCES', 'EPERM'].includes((err as NodeJS.ErrnoException).code ?? '')) return;
    throw err;
  }
  try {
    for (let entry = handle.readSync(); entry !== null; entry = handle.readSync()) yield entry;
  } finally {
    handle.closeSync();
  }
}

/**
 * A directory is a checkpoint by its name (Megatron's `iter_N`, HF Trainer's `checkpoint-N`) or
 * its files (DeepSpeed's states, DCP's metadata and shards). A temporary name (tmp-then-rename)
 * marks it a partial one only when the final name or the files say checkpoint: a user's
 * `tmp-data/` is searched like any other directory.
 */
async function classify(dir: string): Promise<DirKind | undefined> {
  const name = basename(dir);
  if (ORBAX_TEMPORARY_DIR.test(name)) return 'tmp-rename';
  const temporary = TEMPORARY_DIR.exec(name);
  const finalName = temporary ? (temporary[1] ?? temporary[2]!) : name;
  const byContent = classifyByContent(dir);
  if (temporary && (CHECKPOINT_NAME.test(finalName) || byContent)) return 'tmp-rename';
  if (/^iter_\d+$/.test(name) || (name === MEGATRON_RELEASE && (await isFile(join(dirname(dir), MEGATRON_TRACKER))))) return 'megatron';
  // A `checkpoint-N` holding DCP or DeepSpeed files itself is one of those (HF Trainer keeps
  // them in subfolders).
  return byContent ?? (/^checkpoint-\d+$/.test(name) ? 'hf-trainer' : undefined);
}

function classifyByContent(dir: string): 'deepspeed' | 'dcp' | undefined {
  let dcp = false;
  for (const entry of dirEntries(dir)) {
    if (!entry.isFile()) continue;
    if (DEEPSPEED_STATES.test(entry.name)) return 'deepspeed';
    if (isDcpFile(entry.name)) dcp = true;
  }
  return dcp ? 'dcp' : undefined;
}

const incomplete = (kind: string, reason: string): Completeness => ({ complete: false, kind, reason });

async function evaluate(dir: string, kind: DirKind, signal: AbortSignal | undefined): Promise<CheckpointDir> {
  const listing = await listFiles(dir, signal);
  const files = [...listing.files];
  let verdict: Completeness;
  if (listing.overflow) verdict = incomplete(kind, `more than ${MAX_CHECKPOINT_FILES} files: not checked`);
  else if (kind === 'tmp-rename') verdict = incomplete(kind, 'a temporary name: the writer renames the directory when it is done');
  else if (kind === 'dcp') verdict = await dcpVerdict(dir, files, kind);
  else if (kind === 'deepspeed') verdict = await deepspeedVerdict(dir, files);
  else if (kind === 'megatron') {
    const tracker = join(dirname(dir), MEGATRON_TRACKER);
    verdict = await megatronVerdict(dir, files, tracker);
    if (await isFile(tracker)) files.push(tracker);
  } else verdict = await hfTrainerVerdict(dir, files);
  return { path: dir, kind, verdict, files };
}

/** Every regular file under dir (bounded depth and count), sorted. */
async function listFiles(dir: string, signal: AbortSignal | undefined): Promise<{ files: string[]; overflow: boolean }> {
  const files: string[] = [];
  const walk = async (at: string, depth: number): Promise<boolean> => {
    if (signal) throwIfCancelled(signal);
    for (const entry of dirEntries(at)) {
      const path = join(at, entry.name);
      if (entry.isFile()) {
        if (files.length >= MAX_CHECKPOINT_FILES) return false;
        files.push(path);
      } else if (entry.isDirectory() && depth < MAX_CHECKPOINT_DEPTH && !(await walk(path, depth + 1))) return false;
    }
    return true;
  };
  const complete = await walk(dir, 0);
  return { files: files.sort(), overflow: !complete };
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/**
 * Every file whole: recognised formats by fileCompleteness, every other file (and DCP shards,
 * checked against `.metadata` instead) by the open-for-writing probe. The first problem found.
 */
async function filesWhole(dir: string, files: readonly string[], kind: string): Promise<Completeness | undefined> {
  for (const path of files) {
    const name = relative(dir, path);
    if (DCP_SHARD.test(basename(path))) {
      if (openForWriting(path)) return incomplete(kind, `${name}: a process has the file open for writing`);
      continue;
    }
    let handle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return incomplete(kind, `${name} vanished while it was checked`);
      throw err;
    }
    try {
      const { size } = await handle.stat();
      const verdict = await fileCompleteness(handle.fd, path, size);
      if (verdict && !verdict.complete) return incomplete(kind, `${name}: ${verdict.reason}`);
      if (!verdict && openForWriting(path)) return incomplete(kind, `${name}: a process has the file open for writing`);
    } finally {
      await handle.close();
    }
  }
  return undefined;
}

/**
 * torch.distributed.checkpoint: `.metadata` (written last, by rename from `.metadata.tmp`) is
 * there and readable, no `.metadata.tmp` beside it, and every shard it names exists with exactly
 * the size its items end at.
 */
async function dcpVerdict(dir: string, files: readonly string[], kind: string): Promise<Completeness> {
  if (files.includes(join(dir, `${DCP_METADATA}.tmp`))) return incomplete(kind, `${DCP_METADATA}.tmp is there: a save is in progress`);
  const metadata = await readDcpMetadata(dir);
  if (!metadata.ok) return incomplete(kind, metadata.reason);
  const ends = new Map<string, number>();
  for (const item of metadata.items) ends.set(item.relativePath, Math.max(ends.get(item.relativePath) ?? 0, item.offset + item.length));
  for (const [shard, end] of ends) {
    let size: number;
    try {
      size = (await stat(join(dir, shard))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return incomplete(kind, `shard ${shard} named by ${DCP_METADATA} is missing`);
      throw err;
    }
    if (size !== end && !(end < size && (await wholeSafetensorsBlob(join(dir, shard))))) {
      return incomplete(kind, `shard ${shard} has ${size} bytes, ${DCP_METADATA} says ${end}`);
    }
  }
  return (await filesWhole(dir, files, kind)) ?? { complete: true, kind };
}

/**
 * A shard written with SerializationFormat.SAFETENSORS is one safetensors blob whose items
 * `.metadata` places inside it: whole when the blob's own header says so.
 */
async function wholeSafetensorsBlob(path: string): Promise<boolean> {
  const handle = await open(path, 'r');
  try {
    const { size } = await handle.stat();
    if (!looksLikeSafetensors(await readAt(handle.fd, 0, 16))) return false;
    const blob = await parseSafetensors(handle.fd, size);
    return blob.ok && blob.expectedSize === size;
  } finally {
    await handle.close();
  }
}

/**
 * Megatron-LM (megatron/training/checkpointing.py): `iter_NNNNNNN/` is whole once rank 0 has
 * written its iteration to `latest_checkpointed_iteration.txt` beside it (after every rank
 * saved), and its contents pass: torch_dist format: `metadata.json` (written after the shards)
 * plus a whole DCP directory; legacy format: `mp_rank_*` folders with whole torch.save files.
 */
async function megatronVerdict(dir: string, files: readonly string[], tracker: string): Promise<Completeness> {
  const kind = 'megatron';
  let recorded: string;
  try {
    recorded = (await readFile(tracker, 'utf8')).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return incomplete(kind, `no ${MEGATRON_TRACKER} beside it (written once every rank saved)`);
    throw err;
  }
  if (basename(dir) === MEGATRON_RELEASE) {
    if (recorded !== MEGATRON_RELEASE) return incomplete(kind, `${MEGATRON_TRACKER} records ${JSON.stringify(recorded.slice(0, 40))}, not release`);
  } else if (recorded !== MEGATRON_RELEASE) {
    const iteration = Number(/^iter_(\d+)$/.exec(basename(dir))![1]);
    if (!/^\d+$/.test(recorded)) return incomplete(kind, `${MEGATRON_TRACKER} holds ${JSON.stringify(recorded.slice(0, 40))}, not an iteration`);
    if (iteration > Number(recorded)) return incomplete(kind, `iteration ${iteration} is newer than the ${recorded} in ${MEGATRON_TRACKER}: still being written`);
  }
  const names = new Set(files.map((f) => relative(dir, f)));
  const distributed = names.has('metadata.json');
  if (distributed) {
    try {
      const config = JSON.parse(await readFile(join(dir, 'metadata.json'), 'utf8')) as unknown;
      if (typeof config !== 'object' || config === null) return incomplete(kind, 'metadata.json is not a JSON object');
    } catch (err) {
      if (err instanceof SyntaxError) return incomplete(kind, 'metadata.json is not valid JSON');
      throw err;
    }
    if ([...names].some(isDcpFile)) return dcpVerdict(dir, files, kind);
  } else {
    if ([...names].some(isDcpFile)) return incomplete(kind, 'no metadata.json (written after the shards)');
    if (![...names].some((n) => /^mp_rank_\d+(_\d+)?\/model_optim_rng\.pt$/.test(n))) return incomplete(kind, 'neither metadata.json nor mp_rank_*/model_optim_rng.pt');
  }
  return (await filesWhole(dir, files, kind)) ?? { complete: true, kind };
}

/**
 * HF Trainer (transformers Trainer._save_checkpoint): `checkpoint-N/` gets the model, optimizer,
 * scheduler and RNG files, then `trainer_state.json` last. Whole when trainer_state.json parses
 * with global_step N, every file a `*.index.json` weight_map names exists, every file in a known
 * format is whole, and a DeepSpeed tag folder inside passes the DeepSpeed rule.
 */
async function hfTrainerVerdict(dir: string, files: readonly string[]): Promise<Completeness> {
  const kind = 'hf-trainer';
  const names = new Set(files.map((f) => relative(dir, f)));
  if (!names.has(TRAINER_STATE)) return incomplete(kind, `no ${TRAINER_STATE} (the Trainer writes it last)`);
  const state = await readJson(join(dir, TRAINER_STATE));
  if (typeof state === 'string') return incomplete(kind, `${TRAINER_STATE}: ${state}`);
  const step = Number(/^checkpoint-(\d+)$/.exec(basename(dir))![1]);
  const recorded = (state as { global_step?: unknown }).global_step;
  if (recorded !== step) return incomplete(kind, `${TRAINER_STATE} has global_step ${JSON.stringify(recorded)}, the folder is step ${step}`);
  for (const index of [...names].filter((n) => n.endsWith('.index.json'))) {
    const json = await readJson(join(dir, index));
    if (typeof json === 'string') return incomplete(kind, `${index}: ${json}`);
    const weightMap = (json as { weight_map?: unknown }).weight_map;
    if (typeof weightMap !== 'object' || weightMap === null) return incomplete(kind, `${index} has no weight_map`);
    for (const shard of new Set(Object.values(weightMap as Record<string, unknown>))) {
      if (typeof shard !== 'string' || !names.has(join(dirname(index), shard))) return incomplete(kind, `${index} names ${JSON.stringify(shard)}, which is missing`);
    }
  }
  // Subfolders in other layouts: DeepSpeed tags (`global_stepN`), FSDP sharded states saved
  // with DCP (`pytorch_model_fsdp_0/`, `optimizer_0/`).
  const subfolders = new Set(
    [...names].filter((n) => n.includes('/') && (DEEPSPEED_STATES.test(basename(n)) || isDcpFile(basename(n)))).map((n) => join(dir, dirname(n))),
  );
  for (const sub of subfolders) {
    const subFiles = files.filter((f) => dirname(f) === sub);
    const deepspeed = subFiles.some((f) => DEEPSPEED_STATES.test(basename(f)));
    const verdict = deepspeed ? await deepspeedVerdict(sub, subFiles) : await dcpVerdict(sub, subFiles, 'dcp');
    if (!verdict.complete) return incomplete(kind, `${relative(dir, sub)}: ${verdict.reason}`);
  }
  return (await filesWhole(dir, files, kind)) ?? { complete: true, kind };
}

async function readJson(path: string): Promise<object | string> {
  try {
    const value = JSON.parse(await readFile(path, 'utf8')) as unknown;
    return typeof value === 'object' && value !== null ? value : 'not a JSON object';
  } catch (err) {
    if (err instanceof SyntaxError) return 'not valid JSON';
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
    throw err;
  }
}

/**
 * DeepSpeed (deepspeed/runtime/engine.py save_checkpoint): a tag folder with
 * `[zero_pp_rank_D_]mp_rank_MM_model_states.pt` and, with ZeRO,
 * `[bf16_]zero_pp_rank_D_mp_rank_MM_optim_states.pt`. `latest` is written by rank 0 before the
 * final barrier, so it proves nothing about other ranks and is not used: the tag is whole when
 * its model states name dp_world_size and mp_world_size, a model-states file exists for every
 * mp rank (for every dp rank too under ZeRO-3), an optimizer-states file for every (dp, mp) pair
 * once any exists, and every torch.save file in it is whole.
 */
async function deepspeedVerdict(dir: string, files: readonly string[]): Promise<Completeness> {
  const kind = 'deepspeed';
  const names = new Set(files.filter((f) => dirname(f) === dir).map((f) => basename(f)));
  const modelStates = [...names].filter((n) => /^(zero_pp_rank_\d+_)?mp_rank_\d+_model_states\.pt$/.test(n)).sort();
  if (modelStates.length === 0) return incomplete(kind, 'no mp_rank_*_model_states.pt');
  const sizes = await worldSizes(join(dir, modelStates[0]!));
  if (typeof sizes === 'string') return incomplete(kind, `${modelStates[0]}: ${sizes}`);
  const { dp, mp } = sizes;
  const pad = (n: number): string => String(n).padStart(2, '0');
  const zero3 = modelStates[0]!.startsWith('zero_pp_rank_');
  for (let m = 0; m < mp; m++) {
    if (!zero3 && !names.has(`mp_rank_${pad(m)}_model_states.pt`)) return incomplete(kind, `mp_rank_${pad(m)}_model_states.pt is missing`);
    for (let d = 0; zero3 && d < dp; d++) {
      const name = `zero_pp_rank_${d}_mp_rank_${pad(m)}_model_states.pt`;
      if (!names.has(name)) return incomplete(kind, `${name} is missing`);
    }
  }
  const optim = [...names].find((n) => n.endsWith('optim_states.pt'));
  if (optim) {
    const prefix = optim.startsWith('bf16_') ? 'bf16_' : '';
    for (let m = 0; m < mp; m++) {
      for (let d = 0; d < dp; d++) {
        const name = `${prefix}zero_pp_rank_${d}_mp_rank_${pad(m)}_optim_states.pt`;
        if (!names.has(name)) return incomplete(kind, `${name} is missing (dp_world_size ${dp}, mp_world_size ${mp})`);
      }
    }
  }
  return (await filesWhole(dir, files, kind)) ?? { complete: true, kind };
}

/** dp_world_size and mp_world_size from a model-states file's data.pkl, or why not. */
async function worldSizes(path: string): Promise<{ dp: number; mp: number } | string> {
  const handle = await open(path, 'r');
  try {
    const { size } = await handle.stat();
    const read = await readTorchArchive(handle.fd, 0, size);
    if (!read.ok) return read.reason;
    const root = read.archive.pickle;
    if (root instanceof PickleError) return root.message;
    if (!(root instanceof Map)) return 'data.pkl is not a dict';
    const dp = root.get('dp_world_size');
    const mp = root.get('mp_world_size');
    if (!Number.isSafeInteger(dp) || !Number.isSafeInteger(mp) || (dp as number) < 1 || (mp as number) < 1 || (dp as number) * (mp as number) > 1 << 20) {
      return 'no usable dp_world_size / mp_world_size';
    }
    return { dp: dp as number, mp: mp as number };
  } finally {
    await handle.close();
  }
}

/**
 * Whether fileCompleteness may have a verdict for a file of this name whose first bytes are
 * `head` (16, or the whole file if shorter): the same name and magic tests parseFile dispatches
 * on, without a read. A backup holds the first bytes already and skips the check's reads for the
 * many files that are no checkpoint (a tree of small files would pay a read per file otherwise).
 */
export function mayHaveFileVerdict(filePath: string, head: Uint8Array): boolean {
  const bytes = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  return (
    TEMPORARY_FILE.test(basename(filePath)) ||
    isDcpShardName(filePath) ||
    isSafetensorsName(filePath) ||
    isNpyName(filePath) ||
    isTorchName(filePath) ||
    looksLikeSafetensors(bytes) ||
    looksLikeNpy(bytes) ||
    looksLikeZip(bytes)
  );
}
