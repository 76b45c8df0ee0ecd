/**
 * XOR-delta for float tensor chunks (docs/design.md, "Delta blobs"). A changed tensor of a
 * training checkpoint keeps its sign, its exponent and the top of its mantissa from one version
 * to the next: plaintext XOR the previous version's plaintext has mostly-zero high byte planes,
 * which the byte-plane transform codes to little. The delta is kept only where a sample says it
 * codes clearly smaller than the chunk itself (deltaPays); otherwise the chunk is stored whole and
 * becomes the base of the next version's chunk.
 */

/**
 * The delta must be estimated at most this share of the whole chunk's coded size to be stored:
 * a delta that saves less is not worth a second blob read on restore, and storing the chunk whole
 * refreshes the base for the versions after it (bench/README.md measures the rule).
 */
export const deltaPaysBelow = 0.85;
/** Planes whose sampled entropy (bits per byte) reaches this are stored raw by planes.ts: cost 8. */
const rawPlaneBits = 7.7;
const sampleElements = 4096;
const sampleStripes = 8;

/**
 * Whether the delta of `plaintext` against `base` (same length) pays, from the order-0 entropy
 * of each byte plane in a sample of elements (stripes spread over the chunk): the estimated
 * plane-coded size of the XOR against that of the plaintext. Costs a few microseconds.
 */
export class DeltaEstimator {
  private readonly plain = new Uint32Array(256);
  private readonly xor = new Uint32Array(256);

  pays(plaintext: Uint8Array, base: Uint8Array, elementSize: number): boolean {
    const n = Math.floor(plaintext.length / elementSize);
    if (n === 0) return false;
    const stripe = Math.min(n, sampleElements / sampleStripes);
    const stripes = n <= stripe ? 1 : sampleStripes;
    const step = stripes === 1 ? 0 : Math.floor((n - stripe) / (stripes - 1));
    let plainBits = 0;
    let xorBits = 0;
    for (let p = 0; p < elementSize; p++) {
      this.plain.fill(0);
      this.xor.fill(0);
      for (let s = 0; s < stripes; s++) {
        const end = (s * step + stripe) * elementSize;
        for (let at = s * step * elementSize + p; at < end; at += elementSize) {
          const v = plaintext[at]!;
          this.plain[v]!++;
          this.xor[v ^ base[at]!]!++;
        }
      }
      plainBits += planeCost(this.plain, stripes * stripe);
      xorBits += planeCost(this.xor, stripes * stripe);
    }
    return xorBits < deltaPaysBelow * plainBits;
  }
}

function planeCost(histogram: Uint32Array, total: number): number {
  let bits = 0;
  for (let v = 0; v < 256; v++) {
    const c = histogram[v]!;
    if (c > 0) bits -= c * Math.log2(c / total);
  }
  const perByte = bits / total;
  return perByte < rawPlaneBits ? perByte : 8;
}
