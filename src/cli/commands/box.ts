import type { Command } from 'commander';
import { describeBox } from '../../polite/cgroup.js';
import { globalOptions, print, printJson } from '../context.js';
import { processBox } from '../polite.js';

export function registerBox(program: Command): void {
  program
    .command('box')
    .description('show the cgroup this process runs in, its CPU, memory and I/O limits, and how tender sizes itself to them')
    .action((_opts: unknown, command: Command) => {
      const g = globalOptions(command);
      const { box, sizing } = processBox();
      // --workers overrides what the box suggests, as it does for every command.
      const workers = g.workers ?? sizing.workers;
      if (g.json) printJson({ message_type: 'box', ...box, ...sizing, workers });
      else print(describeBox(box, { ...sizing, workers }));
    });
}
