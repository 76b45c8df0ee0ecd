/**
 * The main thread's young generation stays at its cap while objects survive scavenges at a high
 * rate (what grows V8's semi-spaces), also after the worker pool has started (creating a worker's
 * isolate resets V8's growth factor for the whole process; the pool sets it again). Without the
 * cap the same program grows the young generation to V8's 2 × 16 MiB, so the test can fail.
 * Each case runs in a process of its own: the flags are process-wide, and vitest's own worker
 * must not run with them.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const dist = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist');
const MiB = 1024 * 1024;

/** Starts a pool of 2 workers, then keeps ~500k objects alive in rotation; prints the largest young generation seen. */
const program = (capMiB: number | undefined) => `
import { randomBytes } from 'node:crypto';
const { capYoungGeneration, youngGenerationBytes } = await import(${JSON.stringify(pathToFileURL(path.join(dist, 'util/young-generation.js')).href)});
const { createExecutor } = await import(${JSON.stringify(pathToFileURL(path.join(dist, 'workers/pool.js')).href)});
${capMiB === undefined ? '' : `capYoungGeneration(${capMiB});`}
const pool = createExecutor({ encryption: randomBytes(32), blobId: randomBytes(32), gearSeed: randomBytes(32) }, 1, 2);
// A round trip to each worker: both isolates exist (and reset the flag) before the allocations.
await Promise.all([0, 1].map(() => pool.hash(new SharedArrayBuffer(64), Uint32Array.of(0, 64))));
let largest = 0;
const kept = [];
for (let round = 0; round < 40; round++) {
  for (let i = 0; i < 50000; i++) kept.push({ n: i, s: 'file-' + i });
  if (kept.length > 500000) kept.splice(0, 250000);
  largest = Math.max(largest, youngGenerationBytes());
}
await pool.close();
console.log(JSON.stringify({ largest }));
`;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tender-young-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function largestYoungGeneration(capMiB?: number): Promise<number> {
  const script = path.join(dir, `cap-${capMiB ?? 'none'}.mjs`);
  await writeFile(script, program(capMiB));
  const { stdout } = await promisify(execFile)(process.execPath, [script], { timeout: 60_000 });
  return (JSON.parse(stdout.trim()) as { largest: number }).largest;
}

describe('young generation cap', () => {
  it('keeps the main thread at 2 × 4 MiB with workers running; without the cap it grows past it', async () => {
    expect(await largestYoungGeneration(4)).toBeLessThanOrEqual(2 * 4 * MiB);
    expect(await largestYoungGeneration()).toBeGreaterThan(2 * 4 * MiB);
  });

  it('holds a smaller cap too', async () => {
    expect(await largestYoungGeneration(1)).toBeLessThanOrEqual(2 * 1 * MiB);
  });
});
