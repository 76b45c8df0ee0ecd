// A stand-in for a training job's data path, for bench/polite.mjs: at a steady rate it reads a
// block of its dataset from the disk (the pages are dropped after each read, so every read goes
// to the disk, as a dataset larger than memory would) and writes a smaller block (logs,
// activations spilled, a checkpoint shard), fdatasync every 16 operations. Each operation's
// latency is recorded; the schedule is open-loop (an operation late by more than one period
// is counted as missed, so a slow disk shows as lost throughput, not just as latency).
//
//   node bench/polite-trainer.mjs --file DATA --out FILE --ops 50 --block 1MiB --write 256KiB
//                                 --seconds 30 [--phases 10:10]   (busy:idle seconds)
//
// Prints one JSON line at the end: ops done, seconds busy, read MiB/s while busy, p50/p99/max
// latency (ms). Ends early on SIGTERM with the same line.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const size = (s) => {
  const m = /^(\d+(?:\.\d+)?)(KiB|MiB|GiB)?$/.exec(s);
  return Math.round(Number(m[1]) * { KiB: 1024, MiB: 2 ** 20, GiB: 2 ** 30, undefined: 1 }[m[2]]);
};
const file = args.file;
const out = args.out;
const opsPerSecond = Number(args.ops ?? 50);
const block = size(args.block ?? '1MiB');
const writeBlock = size(args.write ?? '256KiB');
const seconds = Number(args.seconds ?? 30);
const [busyS, idleS] = (args.phases ?? `${seconds}:0`).split(':').map(Number);

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const { loadNative } = await import(path.join(root, 'dist/util/native.js'));
const addon = loadNative();
if (!addon?.dropPages) throw new Error('the trainer needs the native addon (npm run build:native) to drop pages after reading');

const fd = fs.openSync(file, 'r');
const fileSize = fs.fstatSync(fd).size;
const wfd = fs.openSync(out, 'w');
const buf = Buffer.allocUnsafe(block);
const wbuf = Buffer.alloc(writeBlock, 0x5a);
const pages = Math.ceil(block / 4096) + 1;
const notCached = new Uint8Array(pages);

const latencies = [];
let missed = 0;
let readOffset = 0;
let writeOffset = 0;
let busyMs = 0;
let stop = false;
process.on('SIGTERM', () => (stop = true));

const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const started = performance.now();
const period = 1000 / opsPerSecond;
let op = 0;
while (!stop && performance.now() - started < seconds * 1000) {
  const phaseStart = performance.now();
  let next = phaseStart;
  while (!stop && performance.now() - phaseStart < busyS * 1000 && performance.now() - started < seconds * 1000) {
    const now = performance.now();
    if (now > next + period) {
      // Late by more than a period: those slots are lost.
      missed += Math.floor((now - next) / period);
      next = now;
    }
    await sleep(next - now);
    const t0 = performance.now();
    if (readOffset + block > fileSize) readOffset = 0;
    fs.readSync(fd, buf, 0, block, readOffset);
    addon.dropPages(fd, readOffset, block, notCached.subarray(0, addon.residentPages(fd, readOffset, block).length));
    readOffset += block;
    fs.writeSync(wfd, wbuf, 0, writeBlock, writeOffset);
    writeOffset = (writeOffset + writeBlock) % (256 * 2 ** 20);
    if (++op % 16 === 0) fs.fdatasyncSync(wfd);
    latencies.push(performance.now() - t0);
    next += period;
  }
  busyMs += performance.now() - phaseStart;
  if (idleS > 0 && !stop) await sleep(Math.min(idleS * 1000, seconds * 1000 - (performance.now() - started)));
}
fs.closeSync(fd);
fs.closeSync(wfd);
latencies.sort((a, b) => a - b);
const q = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : 0);
process.stdout.write(
  JSON.stringify({
    ops: latencies.length,
    missed,
    busySeconds: busyMs / 1000,
    readMiBps: (latencies.length * block) / 2 ** 20 / (busyMs / 1000),
    p50ms: q(0.5),
    p99ms: q(0.99),
    maxMs: latencies.at(-1) ?? 0,
  }) + '\n',
);
