#!/usr/bin/env node
import { main } from '../dist/cli/main.js';

process.on('SIGINT', () => process.exit(130));
// `tender ls latest | head`: a closed pipe ends the listing quietly, like other Unix tools.
process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});
process.exitCode = await main(process.argv);
