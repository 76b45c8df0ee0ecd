#!/usr/bin/env node
import { main } from '../dist/cli/main.js';
import { runInterruptHandlers } from '../dist/util/interrupt.js';

// Ctrl-C or a pod's SIGTERM: let running work remove what it must (a backup indexes what it
// stored and removes its session marker), then exit 130 / 143.
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]]) {
  process.once(signal, () => {
    runInterruptHandlers(3000).finally(() => process.exit(code));
  });
}
// `tender ls latest | head`: a closed pipe ends the listing quietly, like other Unix tools.
process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});
process.exitCode = await main(process.argv);
