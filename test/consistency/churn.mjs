// A trainer's checkpoint writer, as a process of its own, for the consistency churn test. It
// saves checkpoints in every layout, over and over, the ways trainers do:
//   sft/model.safetensors      rewritten in place: truncate, then header and data in pieces
//   npy/array.npy              the same
//   pt/model.pt                torch.save to model.pt.tmp, then rename
//   dcp/step-N/                DCP: shards, then .metadata.tmp renamed to .metadata; old steps deleted
//   hf/checkpoint-N/           HF Trainer: written as tmp-checkpoint-N, then renamed; old ones deleted
// Every save of version V fills the tensor bytes it may change with V (u32 LE), so a copy that
// mixes two versions can be told apart. The fd of a file being written stays open while it is.
// Commands, one JSON line each on stdin: {"op":"pause"} stops in the middle of the next save and
// answers {"paused":LAYOUT} (what is on disk is half written); {"op":"resume"} answers
// {"resumed":true}; end of stdin stops it. It answers {"ready":true} once every layout exists.
import { closeSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep, setImmediate as yieldNow } from 'node:timers/promises';

const [fixtures, volume] = process.argv.slice(2);
const read = (rel) => readFileSync(path.join(fixtures, rel));
const sources = {
  safetensors: read('files/model.safetensors'),
  npy: read('files/array.npy'),
  torch: read('files/model.pt'),
  shards: [read('dcp/__0_0.distcp'), read('dcp/__1_0.distcp')],
  metadata: read('dcp/.metadata'),
  hf: Object.fromEntries(['model.safetensors', 'optimizer.pt', 'rng_state.pth', 'scheduler.pt', 'trainer_state.json'].map((n) => [n, read(`trees/hf/checkpoint-500/${n}`)])),
};

/** Where a safetensors file's tensor data starts. */
const safetensorsData = (b) => 8 + Number(b.readBigUInt64LE(0));
/** Where an npy file's data starts (v1: u16 header length at 8; v2/3: u32). */
const npyData = (b) => (b[6] === 1 ? 10 + b.readUInt16LE(8) : 12 + b.readUInt32LE(8));

/** A copy of `bytes` with [from, end) filled with the version. */
export function stamped(bytes, from, version) {
  const out = Buffer.from(bytes);
  for (let i = from; i + 4 <= out.length; i += 4) out.writeUInt32LE(version, i);
  return out;
}

let pauseWanted = false;
let onPaused;
let resume;

/** A point in the middle of a save: where a pause stops. */
async function midSave(layout) {
  await yieldNow();
  if (!pauseWanted) return;
  pauseWanted = false;
  await new Promise((resolve) => {
    resume = resolve;
    onPaused(layout);
  });
}

/** Writes `bytes` to `file` in four pieces, the fd open throughout, pausing between pieces. */
async function writeInPieces(file, bytes, layout, flags = 'w') {
  const fd = openSync(file, flags);
  try {
    const piece = Math.ceil(bytes.length / 4);
    for (let at = 0; at < bytes.length; at += piece) {
      // Pauses fall between pieces, never after the last: what a pause leaves is half written.
      if (at > 0) await midSave(layout);
      writeSync(fd, bytes, at, Math.min(piece, bytes.length - at), at);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Keeps the newest `keep` directories matching `pattern` under `dir`. */
async function rotate(dir, pattern, keep) {
  const steps = (await readdir(dir)).filter((n) => pattern.test(n)).sort((a, b) => Number(a.match(/\d+/)[0]) - Number(b.match(/\d+/)[0]));
  for (const old of steps.slice(0, -keep)) await rm(path.join(dir, old), { recursive: true, force: true });
}

const saves = {
  async safetensors(v) {
    const b = sources.safetensors;
    await writeInPieces(path.join(volume, 'sft', 'model.safetensors'), stamped(b, safetensorsData(b), v), 'safetensors');
  },
  async npy(v) {
    const b = sources.npy;
    await writeInPieces(path.join(volume, 'npy', 'array.npy'), stamped(b, npyData(b), v), 'npy');
  },
  async torch() {
    const file = path.join(volume, 'pt', 'model.pt');
    await writeInPieces(`${file}.tmp`, sources.torch, 'torch-zip');
    await rename(`${file}.tmp`, file);
  },
  async dcp(v) {
    const step = path.join(volume, 'dcp', `step-${v}`);
    await mkdir(step, { recursive: true });
    for (const [i, shard] of sources.shards.entries()) await writeInPieces(path.join(step, `__${i}_0.distcp`), stamped(shard, 0, v), 'dcp');
    await writeInPieces(path.join(step, '.metadata.tmp'), sources.metadata, 'dcp');
    await rename(path.join(step, '.metadata.tmp'), path.join(step, '.metadata'));
    await rotate(path.join(volume, 'dcp'), /^step-\d+$/, 2);
  },
  async hf(v) {
    const dir = path.join(volume, 'hf');
    const tmp = path.join(dir, `tmp-checkpoint-${v}`);
    await mkdir(tmp, { recursive: true });
    for (const [name, bytes] of Object.entries(sources.hf)) {
      const content =
        name === 'model.safetensors'
          ? stamped(bytes, safetensorsData(bytes), v)
          : name === 'trainer_state.json'
            ? Buffer.from(JSON.stringify({ ...JSON.parse(bytes.toString('utf8')), global_step: v }))
            : bytes;
      await writeInPieces(path.join(tmp, name), content, 'hf-trainer');
    }
    await rename(tmp, path.join(dir, `checkpoint-${v}`));
    await rotate(dir, /^checkpoint-\d+$/, 2);
  },
};

for (const d of ['sft', 'npy', 'pt', 'dcp', 'hf']) await mkdir(path.join(volume, d), { recursive: true });
let version = 1;
for (const save of Object.values(saves)) await save(version);
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);

let stopped = false;
const commands = (async () => {
  for await (const line of createInterface({ input: process.stdin })) {
    const cmd = JSON.parse(line);
    if (cmd.op === 'pause') {
      onPaused = (layout) => process.stdout.write(`${JSON.stringify({ paused: layout })}\n`);
      pauseWanted = true;
    } else if (cmd.op === 'resume') {
      resume?.();
      resume = undefined;
      process.stdout.write(`${JSON.stringify({ resumed: true })}\n`);
    }
  }
  stopped = true;
  resume?.();
})();

const order = Object.values(saves);
for (let i = 0; !stopped; i++) {
  if (i % order.length === 0) version++;
  await order[i % order.length](version);
  // A trainer computes between saves; this also leaves the test's CPU to the backups.
  await sleep(2);
}
await commands;
