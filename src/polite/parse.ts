/**
 * The politeness settings as people write them on the command line, in the agent's config and in
 * its API: byte sizes (`200MiB`, `1G`, `1.5GiB`, `500k`), pressure thresholds
 * (`io=20,cpu=50,memory=10`, percentages of wall time some task was stalled) and GPU
 * thresholds (`80`). Each parser throws an Error naming the value and what is wrong; callers add
 * where the value came from.
 */

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  t: 1e12,
  tb: 1e12,
  ki: 2 ** 10,
  kib: 2 ** 10,
  mi: 2 ** 20,
  mib: 2 ** 20,
  gi: 2 ** 30,
  gib: 2 ** 30,
  ti: 2 ** 40,
  tib: 2 ** 40,
};

/** `200MiB`, `1G` (10^9), `1.5GiB`, `4096` → bytes (a whole number > 0). A rate is written as its bytes per second. */
export function parseByteSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)(?:\/s)?\s*$/.exec(text);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new Error(`${JSON.stringify(text)} is not a size: use a number with an optional unit, e.g. 200MiB, 1G, 512k (k/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024)`);
  }
  const bytes = Math.round(Number(m[1]) * unit);
  if (!(bytes > 0) || !Number.isSafeInteger(bytes)) throw new Error(`${JSON.stringify(text)} is not a size: it must be more than 0 bytes and less than 8 PiB`);
  return bytes;
}

/** The resources whose pressure (PSI) can slow tender down. */
export const PRESSURE_RESOURCES = ['io', 'cpu', 'memory'] as const;
export type PressureResource = (typeof PRESSURE_RESOURCES)[number];

/** Per resource: back off while more than this percentage of wall time some task was stalled on it. */
export type PressureThresholds = Partial<Record<PressureResource, number>>;

/** `io=20,cpu=50,memory=10` → thresholds in percent (0 < t ≤ 100). */
export function parsePressureThresholds(text: string): PressureThresholds {
  const out: PressureThresholds = {};
  const items = text.split(',').map((s) => s.trim());
  if (items.length === 0 || items.some((s) => s === '')) throw new Error(`${JSON.stringify(text)} is not a list of RESOURCE=PERCENT, e.g. io=20,cpu=50,memory=10`);
  for (const item of items) {
    const m = /^([a-z]+)\s*=\s*(\d+(?:\.\d+)?)%?$/.exec(item);
    if (!m) throw new Error(`${JSON.stringify(item)} is not RESOURCE=PERCENT (e.g. io=20)`);
    const resource = m[1] as PressureResource;
    if (!PRESSURE_RESOURCES.includes(resource)) throw new Error(`unknown resource ${JSON.stringify(m[1])} in ${JSON.stringify(item)} (known: ${PRESSURE_RESOURCES.join(', ')})`);
    if (out[resource] !== undefined) throw new Error(`${resource} is given twice in ${JSON.stringify(text)}`);
    out[resource] = parsePercent(m[2]!, item);
  }
  return out;
}

/** `80` or `80%` → 80 (0 < p ≤ 100). */
export function parsePercent(text: string, what = text): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*%?\s*$/.exec(text);
  const p = m ? Number(m[1]) : NaN;
  if (!(p > 0 && p <= 100)) throw new Error(`${JSON.stringify(what)}: the percentage must be a number above 0 and at most 100`);
  return p;
}
