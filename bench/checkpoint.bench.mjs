#!/usr/bin/env node
// Cost of src/checkpoint/ per file and per checkpoint, on generated data (no tensor bytes are
// read, so the numbers are header parsing, ZIP directory reads and syscalls):
//   - readFileLayout of a safetensors file with --tensors tensors (header ~100 bytes each);
//   - readFileLayout + fileCompleteness of a torch.save archive (test fixture, 8 storages);
//   - readFileLayout of a DCP shard (test fixture; .metadata decoded once, then cached);
//   - openForWriting (the F_SETLEASE probe) per call;
//   - findCheckpoints over --copies copies of the fixture trees (HF, Megatron, DeepSpeed, DCP).
// Prints a table (best of --reps).
//
//   npm run build && node bench/checkpoint.bench.mjs [--tensors 100000] [--copies 200] [--reps 3]
import { closeSync, cpSync, fstatSync, mkdirSync, mkdtempSync, openSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values: opts } = parseArgs({
  options: {
    tensors: { type: 'string', default: '100000' },
    copies: { type: 'string', default: '200' },
    reps: { type: 'string', default: '3' },
  },
});
const reps = Number(opts.reps);
const load = (rel) => import(pathToFileURL(join(root, 'dist', 'checkpoint', rel)).href);
const { readFileLayout } = await load('layout.js');
const { fileCompleteness, findCheckpoints } = await load('completeness.js');
const { openForWriting } = await load('lease.js');

const fixtures = join(root, 'test', 'fixtures', 'checkpoint');
const work = mkdtempSync(join(tmpdir(), 'tender-ckpt-bench-'));

/** Best wall time of fn over reps runs, in ms. */
async function best(fn) {
  let min = Infinity;
  for (let i = 0; i < reps; i++) {
    const start = process.hrtime.bigint();
    await fn();
    min = Math.min(min, Number(process.hrtime.bigint() - start) / 1e6);
  }
  return min;
}

async function onFile(path, fn) {
  const fd = openSync(path, 'r');
  try {
    return await fn(fd, fstatSync(fd).size);
  } finally {
    closeSync(fd);
  }
}

const rows = [];
try {
  // A safetensors file with many small tensors; the data region is sparse.
  const count = Number(opts.tensors);
  const header = {};
  for (let i = 0; i < count; i++) header[`model.layers.${i >> 4}.mlp.w${i & 15}.weight`] = { dtype: 'BF16', shape: [64, 8], data_offsets: [i * 1024, (i + 1) * 1024] };
  const json = Buffer.from(JSON.stringify(header));
  const st = join(work, 'many.safetensors');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(st, Buffer.concat([length, json]));
  truncateSync(st, 8 + json.length + count * 1024);
  let extents = 0;
  const stMs = await best(() => onFile(st, async (f, size) => (extents = (await readFileLayout(f, st, size)).extents.length)));
  rows.push([`safetensors layout, ${count} tensors (header ${(json.length / 2 ** 20).toFixed(1)} MiB)`, stMs, `${extents} extents`]);

  const pt = join(fixtures, 'files', 'model.pt');
  const n = 1000;
  const ptMs = await best(() => onFile(pt, async (f, size) => {
    for (let i = 0; i < n; i++) await readFileLayout(f, pt, size);
  }));
  rows.push(['torch.save layout (8 storages), per file', ptMs / n, '']);
  const ptcMs = await best(() => onFile(pt, async (f, size) => {
    for (let i = 0; i < n; i++) await fileCompleteness(f, pt, size);
  }));
  rows.push(['torch.save completeness (incl. lease probe), per file', ptcMs / n, '']);

  const shard = join(fixtures, 'dcp', '__0_0.distcp');
  const shardMs = await best(() => onFile(shard, async (f, size) => {
    for (let i = 0; i < n; i++) await readFileLayout(f, shard, size);
  }));
  rows.push(['DCP shard layout (2 tensor items), per file', shardMs / n, '']);

  const probes = 10000;
  const leaseMs = await best(async () => {
    for (let i = 0; i < probes; i++) openForWriting(pt);
  });
  rows.push(['openForWriting (F_SETLEASE probe), per call', leaseMs / probes, String(openForWriting(pt))]);

  const copies = Number(opts.copies);
  const tree = join(work, 'tree');
  for (let i = 0; i < copies; i++) {
    const at = join(tree, `run-${i}`);
    mkdirSync(at, { recursive: true });
    cpSync(join(fixtures, 'trees'), at, { recursive: true });
    cpSync(join(fixtures, 'dcp'), join(at, 'dcp', `step-${i}`), { recursive: true });
  }
  let found = [];
  const findMs = await best(async () => (found = await findCheckpoints(tree)));
  const files = found.reduce((a, c) => a + c.files.length, 0);
  rows.push([`findCheckpoints, ${found.length} checkpoints, ${files} files`, findMs, `${(findMs / files).toFixed(3)} ms/file`]);
} finally {
  rmSync(work, { recursive: true, force: true });
}

console.log(`| what | ms (best of ${reps}) | note |`);
console.log('|---|---:|---|');
for (const [what, ms, note] of rows) console.log(`| ${what} | ${ms < 1 ? ms.toFixed(4) : ms.toFixed(1)} | ${note} |`);
