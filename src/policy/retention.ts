/**
 * Retention policy for `forget`: which snapshots to keep. Pure: snapshots in, decision out.
 * Rules (any rule keeping a snapshot keeps it), applied per group, newest first:
 *   last N        the N newest
 *   hourly…yearly the newest snapshot of each of the N most recent hours/days/… that have one (UTC)
 *   within D      every snapshot taken within D of the group's newest
 *   tags          every snapshot carrying any of these tags
 */
export interface RetentionPolicy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
  withinMs?: number;
  tags?: string[];
}

export interface PolicySnapshot {
  id: string;
  time: string;
  hostname: string;
  paths: string[];
  tags: string[];
}

export type GroupKey = 'host' | 'paths' | 'tags';

export interface RetentionDecision<S extends PolicySnapshot> {
  group: string;
  keep: Array<{ snapshot: S; reasons: string[] }>;
  remove: S[];
}

const buckets: Array<[keyof RetentionPolicy, (d: Date) => string]> = [
  ['hourly', (d) => d.toISOString().slice(0, 13)],
  ['daily', (d) => d.toISOString().slice(0, 10)],
  ['weekly', isoWeek],
  ['monthly', (d) => d.toISOString().slice(0, 7)],
  ['yearly', (d) => d.toISOString().slice(0, 4)],
];

export function isEmptyPolicy(p: RetentionPolicy): boolean {
  return !p.last && !p.hourly && !p.daily && !p.weekly && !p.monthly && !p.yearly && !p.withinMs && !p.tags?.length;
}

export function applyPolicy<S extends PolicySnapshot>(snapshots: readonly S[], policy: RetentionPolicy, groupBy: readonly GroupKey[]): RetentionDecision<S>[] {
  const groups = new Map<string, S[]>();
  for (const s of snapshots) {
    const key = groupKey(s, groupBy);
    groups.set(key, [...(groups.get(key) ?? []), s]);
  }
  return [...groups].map(([group, members]) => decide(group, members, policy));
}

function decide<S extends PolicySnapshot>(group: string, members: S[], policy: RetentionPolicy): RetentionDecision<S> {
  const sorted = [...members].sort((a, b) => b.time.localeCompare(a.time) || b.id.localeCompare(a.id));
  const remaining = new Map<string, number>(buckets.map(([name]) => [name, (policy[name] as number | undefined) ?? 0]));
  const lastBucket = new Map<string, string>();
  const newest = sorted[0] ? Date.parse(sorted[0].time) : 0;
  const decision: RetentionDecision<S> = { group, keep: [], remove: [] };
  sorted.forEach((s, i) => {
    const reasons: string[] = [];
    const time = new Date(s.time);
    if (policy.last && i < policy.last) reasons.push('last');
    for (const [name, bucketOf] of buckets) {
      const left = remaining.get(name)!;
      const bucket = bucketOf(time);
      if (left > 0 && lastBucket.get(name) !== bucket) {
        lastBucket.set(name, bucket);
        remaining.set(name, left - 1);
        reasons.push(name);
      }
    }
    if (policy.withinMs !== undefined && newest - time.getTime() <= policy.withinMs) reasons.push('within');
    if (policy.tags?.some((t) => s.tags.includes(t))) reasons.push('tag');
    if (reasons.length > 0) decision.keep.push({ snapshot: s, reasons });
    else decision.remove.push(s);
  });
  return decision;
}

function groupKey(s: PolicySnapshot, groupBy: readonly GroupKey[]): string {
  return JSON.stringify(
    groupBy.map((k) => (k === 'host' ? s.hostname : k === 'paths' ? [...s.paths].sort() : [...s.tags].sort())),
  );
}

function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86400000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

/** Parses durations: a sequence of <number><unit> with units s, min, h, d, w, mo, y ("1d12h", "30min"). */
export function parseDuration(text: string): number {
  const units: Record<string, number> = { s: 1000, min: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000, mo: 2_629_746_000, y: 31_556_952_000 };
  const re = /(\d+)(s|min|h|d|w|mo|y)/g;
  let total = 0;
  let consumed = 0;
  for (const m of text.matchAll(re)) {
    total += Number(m[1]) * units[m[2]!]!;
    consumed += m[0].length;
  }
  if (consumed !== text.length || consumed === 0) throw new Error(`bad duration ${JSON.stringify(text)}: use e.g. 30min, 12h, 7d, 2w, 6mo, 1y`);
  return total;
}
