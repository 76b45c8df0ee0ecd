#!/usr/bin/env node
import { main } from '../dist/cli/main.js';
import { runInterruptHandlers } from '../dist/util/interrupt.js';

// Ctrl-C: let running work remove what it must (a backup's session marker), then exit 130.
process.once('SIGINT', () => {
  runInterruptHandlers(3000).finally(() => process.exit(130));
});
// `tender ls latest | head`: a closed pipe ends the listing quietly, like other Unix tools.
process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});
process.exitCode = await main(process.argv);
