/**
 * Retention policy (src/policy/retention.ts) on crafted timestamps, and the `forget` CLI around it:
 * keep-last, hourly/daily/weekly/monthly/yearly buckets (UTC, ISO weeks), keep-within, keep-tag,
 * grouping, reasons, durations, and the usage errors of `forget`.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type GroupKey, type PolicySnapshot, type RetentionPolicy, applyPolicy, isEmptyPolicy, parseDuration } from '../../src/policy/retention.js';
import { errorLine, jsonLines } from '../helpers/cli.js';
import { backup, initRepo, listSnapshotsJson, openRepository, snapshotIds, tender, tenderExpect } from './helpers.js';

let counter = 0;
function snap(time: string, extra: Partial<PolicySnapshot> = {}): PolicySnapshot {
  counter++;
  return { id: extra.id ?? `s${String(counter).padStart(4, '0')}-${time}`, time, hostname: 'h1', paths: ['/data'], tags: [], ...extra };
}

/** Applies the policy to one group and returns kept times (newest first) with reasons, and removed times. */
function decide(snapshots: PolicySnapshot[], policy: RetentionPolicy, groupBy: GroupKey[] = ['host', 'paths']) {
  const decisions = applyPolicy(snapshots, policy, groupBy);
  expect(decisions).toHaveLength(1);
  const d = decisions[0]!;
  return {
    keep: d.keep.map((k) => k.snapshot.time),
    reasons: Object.fromEntries(d.keep.map((k) => [k.snapshot.time, k.reasons])),
    remove: d.remove.map((r) => r.time),
  };
}

/** Every snapshot ends up in exactly one of keep/remove. */
function expectPartition(snapshots: PolicySnapshot[], policy: RetentionPolicy, groupBy: GroupKey[]) {
  const decisions = applyPolicy(snapshots, policy, groupBy);
  const seen = decisions.flatMap((d) => [...d.keep.map((k) => k.snapshot.id), ...d.remove.map((r) => r.id)]);
  expect([...seen].sort()).toEqual(snapshots.map((s) => s.id).sort());
}

/** Fisher-Yates with a fixed sequence, so input order never matters to the result. */
function shuffled<T>(items: T[]): T[] {
  const out = [...items];
  let x = 12345;
  for (let i = out.length - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const j = x % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

describe('applyPolicy', () => {
  it('keep-last keeps the N newest, whatever the input order', () => {
    const times = ['2024-05-01T10:00:00.000Z', '2024-05-02T10:00:00.000Z', '2024-05-03T10:00:00.000Z', '2024-05-04T10:00:00.000Z', '2024-05-05T10:00:00.000Z'];
    const snaps = shuffled(times.map((t) => snap(t)));
    const r = decide(snaps, { last: 3 });
    expect(r.keep).toEqual([times[4], times[3], times[2]]);
    expect(r.remove).toEqual([times[1], times[0]]);
    for (const t of r.keep) expect(r.reasons[t!]).toEqual(['last']);
    // More than there are: everything is kept.
    expect(decide(snaps, { last: 50 }).remove).toEqual([]);
    expectPartition(snaps, { last: 3 }, ['host', 'paths']);
  });

  it('keep-last breaks ties of equal times by ID, deterministically', () => {
    const t = '2024-05-01T10:00:00.000Z';
    const snaps = [snap(t, { id: 'aaaa' }), snap(t, { id: 'cccc' }), snap(t, { id: 'bbbb' })];
    const d = applyPolicy(snaps, { last: 1 }, ['host'])[0]!;
    expect(d.keep.map((k) => k.snapshot.id)).toEqual(['cccc']);
    expect(d.remove.map((r) => r.id)).toEqual(['bbbb', 'aaaa']);
  });

  it('hourly keeps the newest snapshot of each of the N most recent hours that have one', () => {
    const times = [
      '2024-05-01T10:05:00.000Z',
      '2024-05-01T10:40:00.000Z',
      '2024-05-01T11:10:00.000Z',
      '2024-05-01T11:59:59.999Z',
      // no snapshot in hour 12: it does not use up a bucket
      '2024-05-01T13:00:00.000Z',
    ];
    const r = decide(shuffled(times.map((t) => snap(t))), { hourly: 3 });
    expect(r.keep).toEqual(['2024-05-01T13:00:00.000Z', '2024-05-01T11:59:59.999Z', '2024-05-01T10:40:00.000Z']);
    expect(r.remove).toEqual(['2024-05-01T11:10:00.000Z', '2024-05-01T10:05:00.000Z']);
    expect(Object.values(r.reasons)).toEqual([['hourly'], ['hourly'], ['hourly']]);
    // Two buckets: hour 10 loses.
    expect(decide(times.map((t) => snap(t)), { hourly: 2 }).keep).toEqual(['2024-05-01T13:00:00.000Z', '2024-05-01T11:59:59.999Z']);
  });

  it('daily buckets are UTC days: one millisecond across midnight is another day', () => {
    const times = ['2024-03-01T00:00:00.000Z', '2024-03-01T12:00:00.000Z', '2024-03-01T23:59:59.999Z', '2024-03-02T00:00:00.000Z', '2024-03-04T08:00:00.000Z'];
    const r = decide(times.map((t) => snap(t)), { daily: 3 });
    expect(r.keep).toEqual(['2024-03-04T08:00:00.000Z', '2024-03-02T00:00:00.000Z', '2024-03-01T23:59:59.999Z']);
    expect(r.remove).toEqual(['2024-03-01T12:00:00.000Z', '2024-03-01T00:00:00.000Z']);
  });

  it('weekly uses ISO weeks: the days around new year belong to the week of their Thursday', () => {
    // 2020-12-31 is a Thursday: Mon 2020-12-28 … Sun 2021-01-03 is 2020-W53; Mon 2021-01-04 starts 2021-W01.
    const a = ['2020-12-27T12:00:00.000Z', '2020-12-28T00:00:00.000Z', '2021-01-01T12:00:00.000Z', '2021-01-03T23:59:59.999Z', '2021-01-04T00:00:00.000Z'];
    const ra = decide(a.map((t) => snap(t)), { weekly: 3 });
    expect(ra.keep).toEqual(['2021-01-04T00:00:00.000Z', '2021-01-03T23:59:59.999Z', '2020-12-27T12:00:00.000Z']);
    expect(ra.remove).toEqual(['2021-01-01T12:00:00.000Z', '2020-12-28T00:00:00.000Z']);

    // 2025-01-01 is a Wednesday: Mon 2024-12-30 already belongs to 2025-W01; Sun 2024-12-29 is 2024-W52.
    const b = ['2024-12-29T23:59:59.999Z', '2024-12-30T00:00:00.000Z', '2025-01-01T00:00:00.000Z', '2025-01-05T23:00:00.000Z'];
    const rb = decide(b.map((t) => snap(t)), { weekly: 5 });
    expect(rb.keep).toEqual(['2025-01-05T23:00:00.000Z', '2024-12-29T23:59:59.999Z']);
    expect(rb.remove).toEqual(['2025-01-01T00:00:00.000Z', '2024-12-30T00:00:00.000Z']);

    // 2015-W53 runs Mon 2015-12-28 … Sun 2016-01-03; 2016-01-04 starts 2016-W01.
    const c = ['2015-12-28T06:00:00.000Z', '2016-01-03T06:00:00.000Z', '2016-01-04T06:00:00.000Z'];
    expect(decide(c.map((t) => snap(t)), { weekly: 10 }).keep).toEqual(['2016-01-04T06:00:00.000Z', '2016-01-03T06:00:00.000Z']);

    // 2026 has 53 ISO weeks (it starts on a Thursday): Fri 2027-01-01 is 2026-W53, like Thu 2026-12-31.
    const d = ['2026-12-28T01:00:00.000Z', '2026-12-31T01:00:00.000Z', '2027-01-01T01:00:00.000Z', '2027-01-03T01:00:00.000Z', '2027-01-04T01:00:00.000Z'];
    const rd = decide(d.map((t) => snap(t)), { weekly: 10 });
    expect(rd.keep).toEqual(['2027-01-04T01:00:00.000Z', '2027-01-03T01:00:00.000Z']);

    // 2018-12-31 (Monday) is 2019-W01, together with Sunday 2019-01-06; 2018-12-30 is 2018-W52.
    const e = ['2018-12-30T10:00:00.000Z', '2018-12-31T10:00:00.000Z', '2019-01-06T10:00:00.000Z'];
    expect(decide(e.map((t) => snap(t)), { weekly: 10 }).keep).toEqual(['2019-01-06T10:00:00.000Z', '2018-12-30T10:00:00.000Z']);
  });

  it('weekly: week 1 and week 52 of the same calendar year are different buckets, week 53 of last year and week 1 too', () => {
    // Same ISO week number in different ISO years must not collide: 2019-W01 vs 2020-W01.
    const times = ['2019-01-02T00:00:00.000Z', '2020-01-01T00:00:00.000Z'];
    expect(decide(times.map((t) => snap(t)), { weekly: 5 }).keep).toEqual(['2020-01-01T00:00:00.000Z', '2019-01-02T00:00:00.000Z']);
  });

  it('monthly and yearly buckets, leap day and the last millisecond of a year included', () => {
    const m = ['2024-01-31T23:59:59.999Z', '2024-02-01T00:00:00.000Z', '2024-02-29T12:00:00.000Z', '2024-03-01T00:00:00.000Z'];
    const rm_ = decide(m.map((t) => snap(t)), { monthly: 3 });
    expect(rm_.keep).toEqual(['2024-03-01T00:00:00.000Z', '2024-02-29T12:00:00.000Z', '2024-01-31T23:59:59.999Z']);
    expect(rm_.remove).toEqual(['2024-02-01T00:00:00.000Z']);

    const y = ['2022-05-05T00:00:00.000Z', '2023-12-31T23:59:59.999Z', '2024-01-01T00:00:00.000Z', '2024-06-01T00:00:00.000Z'];
    const ry = decide(y.map((t) => snap(t)), { yearly: 2 });
    expect(ry.keep).toEqual(['2024-06-01T00:00:00.000Z', '2023-12-31T23:59:59.999Z']);
    expect(ry.remove).toEqual(['2024-01-01T00:00:00.000Z', '2022-05-05T00:00:00.000Z']);
  });

  it('keep-within is relative to the newest snapshot of the group, inclusive', () => {
    const newest = Date.parse('2020-06-10T12:00:00.000Z');
    const day = 86_400_000;
    const at = (ms: number) => new Date(ms).toISOString();
    const times = [at(newest), at(newest - day), at(newest - 2 * day), at(newest - 2 * day - 1), at(newest - 30 * day)];
    const r = decide(times.map((t) => snap(t)), { withinMs: 2 * day });
    expect(r.keep).toEqual(times.slice(0, 3));
    expect(r.remove).toEqual(times.slice(3));
    for (const t of r.keep) expect(r.reasons[t!]).toEqual(['within']);
  });

  it('keep-tag keeps every snapshot with any of the tags, however old', () => {
    const snaps = [
      snap('2024-01-01T00:00:00.000Z', { tags: ['release'] }),
      snap('2024-01-02T00:00:00.000Z', { tags: ['nightly'] }),
      snap('2024-01-03T00:00:00.000Z', { tags: ['nightly', 'pinned'] }),
      snap('2024-01-04T00:00:00.000Z', { tags: [] }),
    ];
    // Grouped by host only, so the tags do not split the group.
    const r = decide(snaps, { tags: ['release', 'pinned'] }, ['host']);
    expect(r.keep).toEqual(['2024-01-03T00:00:00.000Z', '2024-01-01T00:00:00.000Z']);
    expect(r.remove).toEqual(['2024-01-04T00:00:00.000Z', '2024-01-02T00:00:00.000Z']);
    expect(Object.values(r.reasons)).toEqual([['tag'], ['tag']]);
  });

  it('lists every rule that keeps a snapshot, in rule order', () => {
    const snaps = [
      snap('2023-06-01T00:00:00.000Z'),
      snap('2024-06-01T10:00:00.000Z', { tags: ['x'] }),
      snap('2024-06-02T09:00:00.000Z'),
      snap('2024-06-02T10:30:00.000Z', { tags: ['x'] }),
    ];
    const r = decide(snaps, { last: 1, hourly: 1, daily: 2, weekly: 1, monthly: 1, yearly: 2, withinMs: 3_600_000 * 2, tags: ['x'] }, ['host']);
    expect(r.reasons).toEqual({
      '2024-06-02T10:30:00.000Z': ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly', 'within', 'tag'],
      '2024-06-02T09:00:00.000Z': ['within'],
      '2024-06-01T10:00:00.000Z': ['daily', 'tag'],
      '2023-06-01T00:00:00.000Z': ['yearly'],
    });
    expect(r.remove).toEqual([]);
    // Without keep-within, the 09:00 snapshot has no reason left.
    const r2 = decide(snaps, { last: 1, hourly: 1, daily: 2, weekly: 1, monthly: 1, yearly: 2, tags: ['x'] }, ['host']);
    expect(r2.remove).toEqual(['2024-06-02T09:00:00.000Z']);
  });

  it('groups by host, by paths (order-insensitive), by tags (order-insensitive), or not at all', () => {
    const snaps = [
      snap('2024-01-01T00:00:00.000Z', { hostname: 'a', paths: ['/x', '/y'], tags: ['t1', 't2'] }),
      snap('2024-01-02T00:00:00.000Z', { hostname: 'a', paths: ['/y', '/x'], tags: ['t2', 't1'] }),
      snap('2024-01-03T00:00:00.000Z', { hostname: 'b', paths: ['/x', '/y'], tags: [] }),
      snap('2024-01-04T00:00:00.000Z', { hostname: 'b', paths: ['/z'], tags: ['t1', 't2'] }),
      snap('2024-01-05T00:00:00.000Z', { hostname: 'a', paths: ['/z'], tags: [] }),
    ];
    const keptBy = (groupBy: GroupKey[]) =>
      applyPolicy(snaps, { last: 1 }, groupBy)
        .map((d) => ({ group: JSON.parse(d.group) as unknown, keep: d.keep.map((k) => k.snapshot.time), removed: d.remove.length }))
        .sort((p, q) => {
          const [a, b] = [JSON.stringify(p.group), JSON.stringify(q.group)];
          return a < b ? -1 : a > b ? 1 : 0;
        });

    expect(keptBy(['host'])).toEqual([
      { group: ['a'], keep: ['2024-01-05T00:00:00.000Z'], removed: 2 },
      { group: ['b'], keep: ['2024-01-04T00:00:00.000Z'], removed: 1 },
    ]);
    expect(keptBy(['paths'])).toEqual([
      { group: [['/x', '/y']], keep: ['2024-01-03T00:00:00.000Z'], removed: 2 },
      { group: [['/z']], keep: ['2024-01-05T00:00:00.000Z'], removed: 1 },
    ]);
    expect(keptBy(['tags'])).toEqual([
      { group: [['t1', 't2']], keep: ['2024-01-04T00:00:00.000Z'], removed: 2 },
      { group: [[]], keep: ['2024-01-05T00:00:00.000Z'], removed: 1 },
    ]);
    expect(keptBy(['host', 'paths'])).toHaveLength(4);
    expect(keptBy([])).toEqual([{ group: [], keep: ['2024-01-05T00:00:00.000Z'], removed: 4 }]);
    for (const g of [['host'], ['paths'], ['tags'], ['host', 'paths', 'tags'], []] as GroupKey[][]) {
      expectPartition(snaps, { last: 1 }, g);
      expectPartition(snaps, { daily: 2, tags: ['t1'] }, g);
    }
  });

  it('has no groups for no snapshots, and knows an empty policy', () => {
    expect(applyPolicy([], { last: 3 }, ['host'])).toEqual([]);
    expect(isEmptyPolicy({})).toBe(true);
    expect(isEmptyPolicy({ tags: [] })).toBe(true);
    expect(isEmptyPolicy({ last: 0, daily: 0 })).toBe(true);
    expect(isEmptyPolicy({ tags: ['x'] })).toBe(false);
    expect(isEmptyPolicy({ withinMs: 1000 })).toBe(false);
    expect(isEmptyPolicy({ yearly: 1 })).toBe(false);
    // An empty policy applied by the library removes everything: the CLI must refuse it (below).
    expect(applyPolicy([snap('2024-01-01T00:00:00.000Z')], {}, ['host'])[0]!.keep).toEqual([]);
  });
});

describe('parseDuration', () => {
  it('parses sequences of number+unit', () => {
    expect(parseDuration('5s')).toBe(5_000);
    expect(parseDuration('30min')).toBe(30 * 60_000);
    expect(parseDuration('12h')).toBe(12 * 3_600_000);
    expect(parseDuration('1d12h')).toBe(36 * 3_600_000);
    expect(parseDuration('1h30min')).toBe(90 * 60_000);
    expect(parseDuration('7d')).toBe(7 * 86_400_000);
    expect(parseDuration('2w')).toBe(14 * 86_400_000);
    expect(parseDuration('6mo')).toBe(6 * 2_629_746_000);
    expect(parseDuration('1y')).toBe(31_556_952_000);
    expect(parseDuration('1y2mo3w4d5h6min7s')).toBe(31_556_952_000 + 2 * 2_629_746_000 + 3 * 604_800_000 + 4 * 86_400_000 + 5 * 3_600_000 + 6 * 60_000 + 7_000);
  });

  it.each(['', '5', 'h', '1m', '1.5h', '-1d', ' 1d', '1d ', '1x', '1dd', 'd1', '1 d', '1D', '1hour', '10 min'])('rejects %j', (text) => {
    expect(() => parseDuration(text)).toThrow(/bad duration/);
  });
});

describe('forget (CLI) and the retention policy', () => {
  let tmp: string;
  let repo: string;
  let tree: string;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'tender-retention-'));
    repo = path.join(tmp, 'repo');
    await initRepo(repo);
    const dir = path.join(tmp, 'data');
    await mkdir(dir);
    await writeFile(path.join(dir, 'f.txt'), 'retention\n');
    await backup(repo, [dir]);
    tree = (await listSnapshotsJson(repo))[0]!.tree;
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('`tender forget` with neither IDs nor a policy is a usage error (exit 2) and removes nothing', async () => {
    const before = await snapshotIds(repo);
    for (const args of [[], ['--keep-last', '0'], ['--group-by', 'host'], ['--dry-run'], ['--prune']]) {
      const r = await tender(['--repo', repo, 'forget', ...args]);
      expect(r.code, `forget ${args.join(' ')}: ${r.stderr}`).toBe(2);
      if (args.length === 0) {
        const e = errorLine(r);
        expect(e.message).toMatch(/no snapshots and no policy/);
        expect(e.hint).toMatch(/--keep-/);
      }
    }
    expect(await snapshotIds(repo)).toEqual(before);
  });

  it('other forget usage errors exit 2 and remove nothing', async () => {
    const before = await snapshotIds(repo);
    const cases = [
      [before[0]!.slice(0, 8), '--keep-last', '1'],
      ['--keep-within', '3 days'],
      ['--keep-within', '1.5d'],
      ['--keep-last', '1', '--group-by', 'host,planet'],
      ['--keep-last', '-1'],
      ['--keep-daily', 'many'],
    ];
    for (const args of cases) {
      const r = await tender(['--repo', repo, 'forget', ...args]);
      expect(r.code, `forget ${args.join(' ')}: ${r.stderr}`).toBe(2);
    }
    expect(await snapshotIds(repo)).toEqual(before);
  });

  it('applies the policy per group to snapshots with crafted times, lists reasons, and --dry-run removes nothing', async () => {
    // Snapshots with chosen times and hosts, all pointing at the real tree of the backup above.
    const r = await openRepository(repo);
    const crafted: Record<string, { host: string; time: string }> = {};
    try {
      const base = { version: 1 as const, username: 'root', paths: ['/crafted'], tags: [], tree, program: 'test' };
      const specs = [
        { host: 'alpha', time: '2020-12-27T12:00:00.000Z' },
        { host: 'alpha', time: '2020-12-31T12:00:00.000Z' },
        { host: 'alpha', time: '2021-01-03T23:00:00.000Z' },
        { host: 'alpha', time: '2021-01-04T01:00:00.000Z' },
        { host: 'beta', time: '2021-01-01T00:00:00.000Z' },
        { host: 'beta', time: '2021-01-02T00:00:00.000Z' },
      ];
      // Snapshots are stored only inside a writer session.
      const session = await r.startSession();
      try {
        for (const s of specs) crafted[await session.commit({ ...base, hostname: s.host, time: s.time })] = s;
      } finally {
        await session.end();
      }
    } finally {
      await r.close();
    }
    const ids = Object.keys(crafted);
    const before = await snapshotIds(repo);
    const dry = await tenderExpect(['--repo', repo, '--json', 'forget', '--path', '/crafted', '--keep-weekly', '2', '--group-by', 'host', '--dry-run']);
    const groups = jsonLines(dry.stdout).filter((l) => l.message_type === 'forget_group') as Array<{ group: string[]; keep: Array<{ id: string; reasons: string[] }>; remove: string[] }>;
    const byHost = Object.fromEntries(groups.map((g) => [g.group[0], g]));
    expect(Object.keys(byHost).sort()).toEqual(['alpha', 'beta']);
    const timeOf = (id: string) => crafted[id]!.time;
    // alpha: 2021-W01 (Jan 4) and 2020-W53 (newest of Dec 28 … Jan 3 is Jan 3); Dec 27 (2020-W52) and Dec 31 go.
    expect(byHost.alpha!.keep.map((k) => [timeOf(k.id), k.reasons])).toEqual([
      ['2021-01-04T01:00:00.000Z', ['weekly']],
      ['2021-01-03T23:00:00.000Z', ['weekly']],
    ]);
    expect(byHost.alpha!.remove.map(timeOf)).toEqual(['2020-12-31T12:00:00.000Z', '2020-12-27T12:00:00.000Z']);
    // beta: both in 2020-W53: only the newest is kept.
    expect(byHost.beta!.keep.map((k) => timeOf(k.id))).toEqual(['2021-01-02T00:00:00.000Z']);
    expect(byHost.beta!.remove.map(timeOf)).toEqual(['2021-01-01T00:00:00.000Z']);
    expect(await snapshotIds(repo), '--dry-run removes nothing').toEqual(before);

    await tenderExpect(['--repo', repo, '--quiet', 'forget', '--path', '/crafted', '--keep-weekly', '2', '--group-by', 'host']);
    const after = await snapshotIds(repo);
    const removed = [...byHost.alpha!.remove, ...byHost.beta!.remove];
    expect(after).toEqual(before.filter((id) => !removed.includes(id)).sort());
    // Snapshots outside the --path filter were not considered.
    expect(after.filter((id) => !ids.includes(id))).toEqual(before.filter((id) => !ids.includes(id)));
  });

  it('a usage error in the prune options of `forget --prune` is reported before any snapshot is removed', async () => {
    // Two snapshots in one group, so --keep-last 1 would remove one.
    await backup(repo, [path.join(tmp, 'data')], ['--force']);
    const before = await snapshotIds(repo);
    for (const graceArg of ['1s', 'soon']) {
      const r = await tender(['--repo', repo, 'forget', '--keep-last', '1', '--prune', '--grace', graceArg]);
      expect(r.code, r.stderr).toBe(2);
      expect(await snapshotIds(repo), `forget --prune --grace ${graceArg} failed with a usage error, yet removed snapshots`).toEqual(before);
    }
  });
});
