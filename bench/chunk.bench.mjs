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
    reps: { type: 'string', default: '5' },
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
      join(root, 'src', 'transform', 'shuffle.ts'),
    ],
    { stdio: 'inherit' },
  );
  modDir = join(outDir, 'backup', 'chunk');
}
const { GearChunker, gearTable } = await import(pathToFileURL(join(modDir, 'fastcdc.js')).href);
const { defaultChunkerParams } = await import(pathToFileURL(join(modDir, '..', '..', 'repo', 'chunker-params.js')).href);
const { NativeGearChunker } = await import(pathToFileURL(join(modDir, 'native.js')).href);
const { shuffleBytes, unshufflePlanesBytes } = await import(pathToFileURL(join(modDir, '..', '..', 'transform', 'shuffle.js')).href);
const { loadNative, nativeUnavailableReason } = await import(pathToFileURL(join(modDir, '..', '..', 'util', 'native.js')).href);

const addon = loadNative();
if (!addon) {
  console.error(`native addon unavailable: ${nativeUnavailableReason()}`);
  process.exit(1);
}

const data = new Uint8Array(size);
for (let off = 0; off < size; off += 64 * MiB) randomFillSync(data, off, Math.min(64 * MiB, size - off));
const gear = gearTable(new TextEncoder().encode('bench seed'));

/**
 * Times each candidate `reps` times, interleaved (rep 1 of all, then rep 2 of all, ...) so that
 * background load hits them alike; returns the best time of each, in ms, and its result.
 */
function bestOf(candidates) {
  const res = candidates.map(() => ({ ms: Infinity, result: undefined }));
  for (let r = 0; r < reps; r++) {
    candidates.forEach(([, fn], i) => {
      const t0 = process.hrtime.bigint();
      const result = fn();
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      res[i].ms = Math.min(res[i].ms, ms);
      res[i].result = result;
    });
  }
  return res;
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
  const ts = new GearChunker(params, gear);
  const bytewise = new NativeGearChunker(params, gear, { addon, variant: 'bytewise' });
  const rolling2 = new NativeGearChunker(params, gear, { addon, variant: 'rolling2' });
  const candidates = [
    ['TS GearChunker.cut         ', () => walkCut(ts)],
    ['native cut    (bytewise)   ', () => walkCut(bytewise)],
    ['native cutAll (bytewise)   ', () => walkCutAll(bytewise)],
    ['native cut    (rolling2)   ', () => walkCut(rolling2)],
    ['native cutAll (rolling2)   ', () => walkCutAll(rolling2)],
  ];
  const res = bestOf(candidates);
  candidates.forEach(([label], i) => {
    if (res[i].result !== res[0].result) throw new Error(`${label.trim()}: chunk count differs from TS`);
    console.log(`  ${label} ${mbps(res[i].ms)} MB/s${i === 0 ? `  (${res[0].result} chunks)` : ''}`);
  });
}

const shuffleBytesLen = Math.min(size, 64 * MiB) + 3;
const src = data.subarray(0, shuffleBytesLen);
const dst = new Uint8Array(shuffleBytesLen);
console.log(`\nshuffle/unshuffle on ${(shuffleBytesLen / MiB).toFixed(0)} MiB`);
for (const es of [2, 4]) {
  // The planes of a contiguous shuffled buffer, as the decoder gathers them.
  const n = Math.floor(shuffleBytesLen / es);
  const planes = Array.from({ length: es }, (_, k) => src.subarray(k * n, (k + 1) * n));
  const tail = src.subarray(n * es);
  const candidates = [
    ['TS shuffle      ', () => shuffleBytes(src, dst, es)],
    ['native shuffle  ', () => addon.shuffle(src, dst, es)],
    ['TS unshuffle    ', () => unshufflePlanesBytes(planes, tail, dst, es)],
    ['native unshuffle', () => addon.unshufflePlanes(planes, tail, dst, es)],
  ];
  bestOf(candidates).forEach(({ ms }, i) => console.log(`  ${candidates[i][0]} es=${es}  ${mbps(ms, shuffleBytesLen)} MB/s`));
}
