/**
 * The layers of src/ (.dependency-cruiser.cjs): dependency-cruiser over src/ finds no forbidden
 * import, and nothing above the repository reaches into a repository's storage. The rules
 * themselves are checked on a small fixture tree that breaks each of them once.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/cli.js';

const run = promisify(execFile);
const depcruiseBin = path.join(repoRoot, 'node_modules/dependency-cruiser/bin/dependency-cruise.mjs');
const config = path.join(repoRoot, '.dependency-cruiser.cjs');

interface Violation {
  rule: { name: string };
  from: string;
  to: string;
  cycle?: Array<{ name: string }>;
}
interface CruiseResult {
  modules: Array<{ source: string; dependencies: Array<{ resolved: string; couldNotResolve: boolean }> }>;
  summary: { violations: Violation[]; totalCruised: number };
}

/** depcruise with the project's rules over `dir`/src, as JSON. */
async function cruise(dir: string): Promise<CruiseResult> {
  let stdout: string;
  try {
    ({ stdout } = await run(process.execPath, [depcruiseBin, 'src', '--config', config, '--output-type', 'json'], {
      cwd: dir,
      maxBuffer: 64 << 20,
      timeout: 120_000,
    }));
  } catch (err) {
    // It exits non-zero when it finds violations; the JSON is on stdout all the same.
    const e = err as { stdout?: string; stderr?: string; message: string };
    if (!e.stdout) throw new Error(`depcruise failed: ${e.stderr || e.message}`);
    stdout = e.stdout;
  }
  return JSON.parse(stdout) as CruiseResult;
}

function describeViolation(v: Violation): string {
  const via = v.cycle?.length ? ` (cycle: ${[v.from, ...v.cycle.map((c) => c.name)].join(' → ')})` : '';
  return `${v.rule.name}: ${v.from} → ${v.to}${via}`;
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && entry.name.endsWith('.ts')) out.push(path.join(entry.parentPath, entry.name));
  }
  return out;
}

describe('import boundaries of src/', () => {
  it('no import breaks a layer rule (.dependency-cruiser.cjs)', { timeout: 120_000 }, async () => {
    const result = await cruise(repoRoot);
    // The rules mean something only if imports resolve (the .js → .ts mapping of NodeNext).
    const unresolved = result.modules.flatMap((m) => m.dependencies.filter((d) => d.couldNotResolve).map((d) => `${m.source} → ${d.resolved}`));
    expect(unresolved, 'imports dependency-cruiser could not resolve').toEqual([]);
    expect(result.summary.totalCruised).toBeGreaterThan(50);
    const open = result.modules.find((m) => m.source === 'src/storage/open.ts');
    expect(open?.dependencies.map((d) => d.resolved)).toContain('src/storage/fs.ts');

    const violations = result.summary.violations.map(describeViolation).sort();
    expect(violations, `forbidden imports:\n  ${violations.join('\n  ')}\n`).toEqual([]);
  });

  it('nothing outside src/repo/ and src/storage/ uses a repository\'s storage (`.storage.`)', async () => {
    const src = path.join(repoRoot, 'src');
    const found: string[] = [];
    for (const file of await filesUnder(src)) {
      const rel = path.relative(repoRoot, file).split(path.sep).join('/');
      if (rel.startsWith('src/repo/') || rel.startsWith('src/storage/')) continue;
      const lines = (await readFile(file, 'utf8')).split('\n');
      lines.forEach((line, i) => {
        // Kubernetes API group names (storage.k8s.io, snapshot.storage.k8s.io) are no storage access.
        if (line.replace(/\bstorage\.k8s\.io\b/g, '').includes('.storage.')) found.push(`${rel}:${i + 1}: ${line.trim()}`);
      });
    }
    expect(found, `storage reached around the repository:\n  ${found.join('\n  ')}\n`).toEqual([]);
  });
});

describe('the layer rules catch what they forbid (fixture tree)', () => {
  let fixture: string;
  afterAll(async () => {
    if (fixture) await rm(fixture, { recursive: true, force: true });
  });

  /** file → its imports (paths relative to the fixture root); each line of `cases` breaks one rule. */
  const cases: Array<{ rule: string; from: string; to: string }> = [
    { rule: 'errors-imports-nothing', from: 'src/errors/errors.ts', to: 'src/util/a.ts' },
    { rule: 'util-only-errors', from: 'src/util/a.ts', to: 'src/storage/s.ts' },
    { rule: 'crypto-only-util', from: 'src/crypto/c.ts', to: 'src/backup/chunk.ts' },
    { rule: 'transform-only-crypto', from: 'src/transform/t.ts', to: 'src/repo/r.ts' },
    { rule: 'workers-only-transform', from: 'src/workers/w.ts', to: 'src/storage/s.ts' },
    { rule: 'storage-only-util', from: 'src/storage/s.ts', to: 'src/crypto/c.ts' },
    { rule: 'repo-not-operations', from: 'src/repo/r.ts', to: 'src/backup/b.ts' },
    { rule: 'checkpoint-only-util', from: 'src/checkpoint/k.ts', to: 'src/repo/r.ts' },
    { rule: 'operations-not-storage', from: 'src/restore/x.ts', to: 'src/storage/s.ts' },
    { rule: 'operations-not-cli-agent', from: 'src/prune/p.ts', to: 'src/cli/main.ts' },
    { rule: 'cli-only-agent-entry', from: 'src/cli/main.ts', to: 'src/agent/state.ts' },
    { rule: 'agent-not-cli', from: 'src/agent/agent.ts', to: 'src/cli/args.ts' },
    { rule: 'velero-agent-level', from: 'src/velero/v.ts', to: 'src/agent/state.ts' },
    { rule: 'layer-unknown', from: 'src/model/m.ts', to: 'src/errors/errors.ts' },
    { rule: 'src-not-test-code', from: 'src/check/k.ts', to: 'test/helpers/h.ts' },
    { rule: 'no-circular', from: 'src/snapshots/one.ts', to: 'src/snapshots/two.ts' },
  ];
  // Allowed imports, which must not be reported.
  // Allowed imports, which must not be reported (in files of their own, so that they close no cycle).
  const allowed: Array<{ from: string; to: string }> = [
    { from: 'src/cli/ok.ts', to: 'src/agent/agent.ts' },
    { from: 'src/backup/ok.ts', to: 'src/repo/ok.ts' },
    { from: 'src/backup/ok.ts', to: 'src/restore/ok.ts' },
    { from: 'src/repo/ok.ts', to: 'src/storage/ok.ts' },
    { from: 'src/repo/ok.ts', to: 'src/workers/ok.ts' },
    { from: 'src/storage/ok.ts', to: 'src/util/ok.ts' },
    { from: 'src/transform/ok.ts', to: 'src/crypto/ok.ts' },
    { from: 'src/agent/ok.ts', to: 'src/storage/ok.ts' },
    { from: 'src/util/ok.ts', to: 'src/errors/ok.ts' },
    { from: 'src/backup/ok.ts', to: 'src/checkpoint/ok.ts' },
    { from: 'src/checkpoint/ok.ts', to: 'src/util/ok.ts' },
    { from: 'src/velero/ok.ts', to: 'src/storage/open.ts' },
    { from: 'src/velero/ok.ts', to: 'src/backup/ok.ts' },
    { from: 'src/agent/ok.ts', to: 'src/velero/ok.ts' },
  ];

  it('reports each broken rule once, and nothing that is allowed', { timeout: 120_000 }, async () => {
    fixture = await mkdtemp(path.join(os.tmpdir(), 'tender-boundaries-'));
    const imports = new Map<string, string[]>();
    const add = (from: string, to: string) => imports.set(from, [...(imports.get(from) ?? []), to]);
    for (const c of [...cases, ...allowed]) {
      add(c.from, c.to);
      if (!imports.has(c.to)) imports.set(c.to, []);
    }
    add('src/snapshots/two.ts', 'src/snapshots/one.ts');
    for (const [file, tos] of imports) {
      const abs = path.join(fixture, file);
      await mkdir(path.dirname(abs), { recursive: true });
      const lines = tos.map((to, i) => {
        let rel = path.relative(path.dirname(file), to).replace(/\.ts$/, '.js');
        if (!rel.startsWith('.')) rel = `./${rel}`;
        return `import * as m${i} from '${rel}';\nexport const u${i} = m${i};`;
      });
      await writeFile(abs, `${lines.join('\n')}\nexport const here = ${JSON.stringify(file)};\n`);
    }
    await writeFile(
      path.join(fixture, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', strict: true }, include: ['src/**/*.ts'] }),
    );
    const result = await cruise(fixture);
    // A cycle is reported from whichever of its modules comes first: say it from one.ts.
    const got = result.summary.violations
      .map((v) => (v.rule.name === 'no-circular' && v.from === 'src/snapshots/two.ts' ? { ...v, from: v.to, to: v.from } : v))
      .map((v) => `${v.rule.name}: ${v.from} → ${v.to}`)
      .sort();
    const want = cases.map((c) => `${c.rule}: ${c.from} → ${c.to}`).sort();
    expect(got).toEqual(want);
  });
});
