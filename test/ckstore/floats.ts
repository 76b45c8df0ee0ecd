/** Float tensors shaped like trained weights, reproducible from a seed (tests only). */

/** A small fast PRNG (mulberry32): the tests need reproducible values, not cryptographic ones. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n values ~N(0, std) (Box-Muller), as weights after training look. */
export function gaussianFloats(n: number, std: number, seed = 1): Float32Array {
  const random = prng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(random() || 1e-12)) * std;
    const angle = 2 * Math.PI * random();
    out[i] = r * Math.cos(angle);
    if (i + 1 < n) out[i + 1] = r * Math.sin(angle);
  }
  return out;
}

/** bf16 of fp32 values (the top half of each, truncated), little-endian. */
export function gaussianBf16(values: Float32Array): Buffer {
  const words = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = Buffer.allocUnsafe(values.length * 2);
  for (let i = 0; i < values.length; i++) out.writeUInt16LE(words[i]! >>> 16, 2 * i);
  return out;
}

/** IEEE fp16 of fp32 values (round toward zero; subnormals flushed to zero), little-endian. */
export function toFloat16(values: Float32Array): Buffer {
  const words = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = Buffer.allocUnsafe(values.length * 2);
  for (let i = 0; i < values.length; i++) {
    const w = words[i]!;
    const sign = (w >>> 16) & 0x8000;
    const exponent = ((w >>> 23) & 0xff) - 127 + 15;
    const half = exponent <= 0 ? sign : exponent >= 31 ? sign | 0x7c00 : sign | (exponent << 10) | ((w >>> 13) & 0x3ff);
    out.writeUInt16LE(half, 2 * i);
  }
  return out;
}
