#!/usr/bin/env node
// Micro-benchmark of the FastCDC boundary finder: TS GearChunker vs the native addon (cut per
// chunk, and batched cutAll, for both inner loops: 'bytewise' and 'rolling2'), plus the byte-plane
// shuffle. Prints MB/s (10^6 bytes per second, best of --reps runs) over one reused buffer.
//
//   npm run build:native && node bench/chunk.bench.mjs [--mib 256] [--reps 3] [--dist]
//
// By default it compiles just src/backup/chunk/{fastcdc,native}.ts into .tmp/bench-build/ (so it
// works while other parts of the tree do not compile); --dist uses dist/ from `npm run build`.
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values: opts } = parseArgs({
  options: {
    mib: { type: 'string', default: '256' },
    reps: { type: 'string', default: '3' },
    dist: { type: 'boolean', default: false },
  },
});
const MiB = 1024 * 1024;
const size = Number(opts.mib) * MiB;
const reps = Number(opts.reps);

let modDir = join(root, 'dist', 'backup', 'chunk');
if (!opts.dist) {
  const outDir = join(root, '.tmp', 'bench-build');
  execFileSync(
    process.execPath,
    [
      join(root, 'node_modules', 'typescript', 'bin', 'tsc'),
      '--outDir', outDir, '--rootDir', join(root, 'src'),
      '--module', 'NodeNext', '--moduleResolution', 'NodeNext', '--target', 'ES2022',
      '--strict', '--skipLibCheck', '--types', 'node',
      join(root, 'src', 'backup', 'chunk', 'native.ts'),
    ],
    { stdio: 'inherit' },
  );
  modDir = join(outDir, 'backup', 'chunk');
}
const { GearChunker, defaultChunkerParams, gearTable } = await import(pathToFileURL(join(modDir, 'fastcdc.js')).href);
const { NativeGearChunker, loadNative, nativeUnavailableReason, shuffleBytes, unshuffleBytes } = await import(
  pathToFileURL(join(modDir, 'native.js')).href
);

const addon = loadNative();
if (!addon) {
  console.error(`native addon unavailable: ${nativeUnavailableReason()}`);
  process.exit(1);
}

const data = new Uint8Array(size);
for (let off = 0; off < size; off += 64 * MiB) randomFillSync(data, off, Math.min(64 * MiB, size - off));
const gear = gearTable(new TextEncoder().encode('bench seed'));

function best(fn) {
  let bestMs = Infinity;
  let result;
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    result = fn();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    bestMs = Math.min(bestMs, ms);
  }
  return { ms: bestMs, result };
}

function walkCut(finder) {
  let n = 0;
  for (let pos = 0; pos < data.length; n++) pos += finder.cut(data, pos, data.length);
  return n;
}

function walkCutAll(chunker) {
  const out = new Uint32Array(4096);
  let n = 0;
  let pos = 0;
  for (;;) {
    const k = chunker.cutAll(data, pos, data.length, true, out);
    for (let i = 0; i < k; i++) pos += out[i];
    n += k;
    if (k < out.length) break;
  }
  return n;
}

const mbps = (ms, bytes = size) => ((bytes / 1e6) / (ms / 1e3)).toFixed(0).padStart(6);

console.log(`# ${cpus()[0]?.model ?? 'unknown CPU'}, node ${process.version}, ${size / MiB} MiB random data, best of ${reps}`);
const paramSets = [
  ['default 512K/1M/8M', defaultChunkerParams],
  ['64K/256K/1M', { minSize: 64 * 1024, avgSize: 256 * 1024, maxSize: 1024 * 1024 }],
  ['2K/8K/64K', { minSize: 2048, avgSize: 8192, maxSize: 65536 }],
];
for (const [name, params] of paramSets) {
  console.log(`\nchunker ${name}`);
  const ts = best(() => walkCut(new GearChunker(params, gear)));
  console.log(`  TS GearChunker.cut            ${mbps(ts.ms)} MB/s  (${ts.result} chunks)`);
  for (const variant of ['bytewise', 'rolling2']) {
    const chunker = new NativeGearChunker(params, gear, { addon, variant });
    const c = best(() => walkCut(chunker));
    const a = best(() => walkCutAll(chunker));
    if (c.result !== ts.result || a.result !== ts.result) throw new Error('chunk counts differ');
    console.log(`  native cut    (${variant.padEnd(8)})    ${mbps(c.ms)} MB/s`);
    console.log(`  native cutAll (${variant.padEnd(8)})    ${mbps(a.ms)} MB/s`);
  }
}

const shuffleBytesLen = Math.min(size, 64 * MiB) + 3;
const src = data.subarray(0, shuffleBytesLen);
const dst = new Uint8Array(shuffleBytesLen);
console.log(`\nshuffle/unshuffle on ${(shuffleBytesLen / MiB).toFixed(0)} MiB`);
for (const es of [2, 4]) {
  const rows = [
    ['TS shuffle    ', () => shuffleBytes(src, dst, es)],
    ['native shuffle', () => addon.shuffle(src, dst, es)],
    ['TS unshuffle    ', () => unshuffleBytes(src, dst, es)],
    ['native unshuffle', () => addon.unshuffle(src, dst, es)],
  ];
  for (const [label, fn] of rows) console.log(`  ${label.padEnd(16)} es=${es}  ${mbps(best(fn).ms, shuffleBytesLen)} MB/s`);
}
