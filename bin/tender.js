#!/usr/bin/env node
import { setFlagsFromString } from 'node:v8';
import { capYoungGeneration } from '../dist/util/young-generation.js';

// Grow the JS heap by 50% of what survives a full GC (V8's default goes up to 4×). A backup of
// many small files promotes short-lived per-file objects at a high rate, and with the default
// the heap held ~150 MB of garbage over ~30 MB of live objects; this halves it (1M files:
// peak RSS about 400 → 300 MB) at no measurable cost in time.
setFlagsFromString('--heap-growing-percent=50');

// The main thread's young generation: at most 2 × 8 MiB instead of V8's 2 × 16 MiB (set before
// the CLI's modules load, which would grow it first). A backup of 1M small files peaks ~20 MB
// lower for ~3 s more GC in ~95 s of CPU; 2 × 4 MiB took ~8 MB more for ~7 s (docs/design.md,
// "Memory of many small files").
capYoungGeneration(8);
const { main } = await import('../dist/cli/main.js');
const { interruptRunningOperations } = await import('../dist/util/interrupt.js');

// Ctrl-C or a pod's SIGTERM: running operations are cancelled and unwind (a backup indexes what
// it stored and removes its session marker); the command then ends with 130 / 143. A command that
// has not ended 3 s later is stopped anyway.
let interruptedWith;
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]]) {
  process.once(signal, () => {
    interruptedWith = code;
    if (!interruptRunningOperations(signal)) process.exit(code);
    setTimeout(() => process.exit(code), 3000).unref();
  });
}
// `tender ls latest | head`: a closed pipe ends the listing quietly, like other Unix tools.
process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});
const exitCode = await main(process.argv);
process.exitCode = interruptedWith ?? exitCode;
