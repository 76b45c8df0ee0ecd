// A separate writer process for the torn-read tests. It reads one JSON command per line on stdin,
// does it to the file, and answers one JSON line on stdout once the change is on disk:
//   {"op":"overwrite","path":P,"seed":S}   rewrite every byte in place (same size, same inode)
//   {"op":"truncate","path":P,"size":N}    cut the file to N bytes
import { closeSync, fstatSync, fsyncSync, openSync, truncateSync, writeSync } from 'node:fs';
import { createInterface } from 'node:readline';

/** The bytes a seed stands for (the test computes the same). */
export function seeded(size, seed) {
  const out = Buffer.alloc(size);
  let a = seed >>> 0;
  for (let i = 0; i < size; i += 4) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    out.writeUInt32LE(a, i);
  }
  return out;
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop())) {
  for await (const line of createInterface({ input: process.stdin })) {
    const cmd = JSON.parse(line);
    if (cmd.op === 'overwrite') {
      const fd = openSync(cmd.path, 'r+');
      const size = fstatSync(fd).size;
      writeSync(fd, seeded(size, cmd.seed), 0, size, 0);
      fsyncSync(fd);
      closeSync(fd);
    } else if (cmd.op === 'truncate') {
      truncateSync(cmd.path, cmd.size);
    }
    process.stdout.write(`${JSON.stringify({ done: cmd.op })}\n`);
  }
}
