import { PerformanceObserver } from 'node:perf_hooks';
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';

/**
 * Caps the main thread's young generation. V8 fixes its maximum when the isolate is created,
 * from command-line flags only (`--max-semi-space-size`; by default the semi-spaces grow to 2 ×
 * 16 MiB), but it grows them step by step, each step by `--semi-space-growth-factor`, a flag it
 * reads at every step. So the cap grows them to their size at once (objects that survive
 * scavenges are what makes V8 grow them) and then sets the factor to 1: no further step.
 *
 * V8 shrinks the semi-spaces when allocation slows down (an idle agent); after each garbage
 * collection (a `gc` performance entry) the factor is 2 again while they are below the cap, so
 * a busy thread grows them back. Those entries arrive between event-loop turns, so a synchronous
 * run that regrows them can take one step past the cap. The flag is process-wide, and V8 sets it
 * back to 2 whenever it creates an isolate (a worker thread): whoever starts a worker calls
 * `reapplyYoungGenerationCap` once the worker is online. Workers size their own young generation
 * (`resourceLimits`); a factor of 1 only keeps theirs smaller.
 */
let capBytes: number | undefined;
let observer: PerformanceObserver | undefined;

/** Both semi-spaces at most `semiSpaceMiB` each, from now on. */
export function capYoungGeneration(semiSpaceMiB: number): void {
  capBytes = 2 * semiSpaceMiB * 1024 * 1024;
  growToCap(capBytes);
  reapplyYoungGenerationCap();
  if (observer) return;
  observer = new PerformanceObserver(() => reapplyYoungGenerationCap());
  observer.observe({ entryTypes: ['gc'] });
}

/** Sets the growth factor for the cap again (no-op without a cap). */
export function reapplyYoungGenerationCap(): void {
  if (capBytes === undefined) return;
  setFlagsFromString(`--semi-space-growth-factor=${youngGenerationBytes() >= capBytes ? 1 : 2}`);
}

/** Bytes the young generation's semi-spaces take now (both of them). */
export function youngGenerationBytes(): number {
  return getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_size ?? 0;
}

/**
 * Keeps arrays alive until V8 has grown the semi-spaces to `bytes`, doubling them each step and
 * checking after every 128 KiB, so no step goes past it (2 × 8 MiB: about 7 MB of arrays, which
 * are garbage once this returns, and 10–25 ms). V8's own maximum is lower under a small memory
 * limit (it sizes the heap to the cgroup's memory.max): once `bytes` more have been allocated
 * without the young generation growing, it has stopped, and so does this. Kept alive at most:
 * what reaching V8's maximum took plus `bytes` (a `tender box` in a 256 MiB cgroup was killed
 * when this kept allocating up to 16 × `bytes`).
 */
function growToCap(bytes: number): void {
  setFlagsFromString('--semi-space-growth-factor=2');
  const kept: number[][] = [];
  let size = youngGenerationBytes();
  for (let sinceGrowth = 0; size < bytes && sinceGrowth < bytes; sinceGrowth += 16 * 8192) {
    for (let i = 0; i < 16; i++) kept.push(new Array<number>(1024).fill(0));
    const now = youngGenerationBytes();
    if (now > size) {
      size = now;
      sinceGrowth = 0;
    }
  }
}
