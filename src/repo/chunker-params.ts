/** Content-defined chunking parameters, fixed per repository in its config (docs/design.md, "Chunking"). */
export interface ChunkerParams {
  minSize: number;
  avgSize: number;
  maxSize: number;
}

export const defaultChunkerParams: ChunkerParams = {
  minSize: 512 * 1024,
  avgSize: 1024 * 1024,
  maxSize: 8 * 1024 * 1024,
};

export function validateChunkerParams(params: ChunkerParams): void {
  const { minSize, avgSize, maxSize } = params;
  const pow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
  if (!(pow2(avgSize) && minSize >= 64 && minSize < avgSize && avgSize < maxSize && maxSize <= 64 * 1024 * 1024)) {
    throw new Error(`invalid chunker parameters ${JSON.stringify(params)}: need 64 ≤ min < avg (power of two) < max ≤ 64 MiB`);
  }
}
