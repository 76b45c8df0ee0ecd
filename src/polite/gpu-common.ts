import type { GpuSample } from './gpu-reader.js';

/**
 * What the GPU readers share: the deadline on every call into a source, and the checks on what a
 * source reports (a source is outside tender's control and may answer anything).
 */

/**
 * Settles as `work` does, unless `timeoutMs` passes first (rejects with `timedOut()`, which may also
 * stop the work) or `signal` aborts (rejects with its reason). `work` is left running either way:
 * a call hung in a driver cannot be stopped, only abandoned.
 */
export function settleWithin<T>(work: Promise<T>, timeoutMs: number, timedOut: () => Error, signal?: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal?.aborted) {
      work.catch(() => undefined);
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      finish();
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      finish();
      reject(timedOut());
    }, timeoutMs);
    const finish = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        finish();
        resolve(value);
      },
      (err: unknown) => {
        finish();
        reject(err);
      },
    );
  });
}

export function checkTimeout(timeoutMs: number, what: string): number {
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new RangeError(`${what}: timeoutMs must be a positive number of milliseconds, not ${timeoutMs}`);
  return timeoutMs;
}

/**
 * One reading checked: at least one GPU, indexes unique, utilisations percentages. `where` names
 * the source in the error ("nvidia-smi", "NVML (libnvidia-ml.so.1)").
 */
export function checkedSamples(where: string, samples: readonly GpuSample[]): GpuSample[] {
  if (samples.length === 0) throw new Error(`${where} lists no GPU`);
  const seen = new Set<number>();
  for (const s of samples) {
    if (!Number.isSafeInteger(s.index) || s.index < 0) throw new Error(`${where} numbers a GPU ${s.index} (not an index)`);
    if (seen.has(s.index)) throw new Error(`${where} lists GPU ${s.index} twice`);
    seen.add(s.index);
    if (!(s.utilisation >= 0 && s.utilisation <= 100)) {
      throw new Error(`${where} reports utilisation ${s.utilisation} for GPU ${s.index} (not a percentage 0..100)`);
    }
    if (s.uuid !== undefined && !/^[\x21-\x7e]{1,95}$/.test(s.uuid)) {
      throw new Error(`${where} reports a UUID for GPU ${s.index} that is not printable text: ${JSON.stringify(s.uuid.slice(0, 100))}`);
    }
  }
  return [...samples].sort((a, b) => a.index - b.index);
}
