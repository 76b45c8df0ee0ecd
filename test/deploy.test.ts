/**
 * The container and Kubernetes files (Dockerfile, .dockerignore, docker-compose.yml, deploy/)
 * checked by parsing them: there is no Docker engine here to run them (test/helm.test.ts also
 * sends deploy/ to a real kube-apiserver, as a server-side dry run). Every CLI
 * command and flag they use is checked against the real CLI (`node bin/tender.js [cmd] --help`,
 * which runs dist/: build first), every environment variable against what the source reads, and
 * every path the image promises against what its build stage makes.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { minimatch } from 'minimatch';
import { describe, expect, it } from 'vitest';
import YAML from 'yaml';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tenderBin = path.join(repoRoot, 'bin', 'tender.js');
const read = (rel: string): string => fs.readFileSync(path.join(repoRoot, rel), 'utf8');
const packageJson = JSON.parse(read('package.json')) as { version: string; scripts: Record<string, string> };

type Argv = string[];

// ------------------------------------------------------------------ the real CLI

interface CliLevel {
  /** Long and short flags → whether the flag takes a value. */
  options: Map<string, boolean>;
  /** Subcommand names (empty for a leaf command). */
  commands: string[];
}

const helpCache = new Map<string, CliLevel>();

/** Options and subcommands of `tender ...path`, from its --help output. */
function cliLevel(cmdPath: string[]): CliLevel {
  const key = cmdPath.join(' ');
  const cached = helpCache.get(key);
  if (cached) return cached;
  const help = execFileSync(process.execPath, [tenderBin, ...cmdPath, '--help'], { encoding: 'utf8', env: { ...process.env, COLUMNS: '200' } });
  const options = new Map<string, boolean>();
  const commands: string[] = [];
  let section = '';
  for (const line of help.split('\n')) {
    const header = /^(\w[\w ]*):\s*$/.exec(line);
    if (header) {
      section = header[1]!;
      continue;
    }
    if (section === 'Options') {
      const m = /^ {2}(?:(-\w), )?(--[a-z][\w-]*)?( <[^>]+>| \[[^\]]+\])?/.exec(line);
      if (m && (m[1] || m[2])) {
        const takesValue = !!m[3];
        if (m[1]) options.set(m[1], takesValue);
        if (m[2]) options.set(m[2], takesValue);
      }
    } else if (section === 'Commands') {
      const m = /^ {2}([a-z][\w-]*)(?: |$)/.exec(line);
      if (m && m[1] !== 'help') commands.push(m[1]!);
    }
  }
  const level = { options, commands };
  helpCache.set(key, level);
  return level;
}

/**
 * Problems with `tender ARGV` (ARGV without `tender` itself): unknown commands and flags. Global
 * options are accepted before and after the command (commander's default); `--help` anywhere.
 */
function tenderArgvProblems(argv: Argv): string[] {
  const problems: string[] = [];
  const global = cliLevel([]);
  let cmdPath: string[] = [];
  let level = global;
  let sawHelp = false;
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i]!;
    if (tok === '--help' || tok === '-h') {
      sawHelp = true;
      continue;
    }
    if (tok.startsWith('-') && tok !== '-') {
      const name = tok.split('=')[0]!;
      const takesValue = level.options.get(name) ?? global.options.get(name);
      if (takesValue === undefined) problems.push(`unknown option ${name} for "${['tender', ...cmdPath].join(' ')}"`);
      else if (takesValue && !tok.includes('=')) i++;
      continue;
    }
    if (level.commands.length > 0) {
      if (!level.commands.includes(tok)) {
        problems.push(`unknown command "tender ${[...cmdPath, tok].join(' ')}" (have: ${level.commands.join(', ')})`);
        return problems;
      }
      cmdPath = [...cmdPath, tok];
      level = cliLevel(cmdPath);
    }
    // Otherwise a positional argument of a leaf command.
  }
  if (!sawHelp && level.commands.length > 0) problems.push(`"tender ${cmdPath.join(' ')}" needs a subcommand`);
  return problems;
}

describe('the CLI model used below', () => {
  it('reads commands and options from --help', () => {
    const top = cliLevel([]);
    expect(top.commands).toEqual(expect.arrayContaining(['init', 'backup', 'snapshots', 'restore', 'key']));
    expect(top.options.get('--repo')).toBe(true);
    expect(top.options.get('--json')).toBe(false);
    expect(tenderArgvProblems(['--quiet', 'backup', '--tag', 'x', '/data'])).toEqual([]);
    expect(tenderArgvProblems(['key', 'passwd'])).toEqual([]);
    // The checks must be able to fail.
    expect(tenderArgvProblems(['no-such-command'])).toHaveLength(1);
    expect(tenderArgvProblems(['backup', '--no-such-flag', '/data'])).toHaveLength(1);
    expect(tenderArgvProblems(['key'])).toHaveLength(1);
  });
});

// ------------------------------------------------------------------ environment variables

/** Variables tender's source reads (process.env.X, env.X on an alias of process.env, password sources). */
function variablesReadBySource(): Set<string> {
  const names = new Set<string>();
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) {
        const text = fs.readFileSync(p, 'utf8');
        for (const re of [
          /process\.env\.([A-Z][A-Z0-9_]*)/g,
          /process\.env\[\s*['"]([A-Z][A-Z0-9_]*)['"]\s*\]/g,
          /\benv\.([A-Z][A-Z0-9_]*)/g,
          /\b(?:fileVariable|variable):\s*'([A-Z][A-Z0-9_]*)'/g,
          // commander: new Option(...).env('NAME')
          /\.env\(\s*['"]([A-Z][A-Z0-9_]*)['"]\s*\)/g,
        ]) {
          for (const m of text.matchAll(re)) names.add(m[1]!);
        }
      }
    }
  };
  walk(path.join(repoRoot, 'src'));
  return names;
}

/** TENDER_* and AWS_* variables the README documents (the AWS SDK reads the credentials itself). */
function variablesDocumented(): Set<string> {
  return new Set([...read('README.md').matchAll(/`((?:TENDER|AWS)_[A-Z0-9_]+)`/g)].map((m) => m[1]!));
}

const sourceVars = variablesReadBySource();
const knownVars = new Set([...sourceVars, ...variablesDocumented()]);

describe('environment variables tender reads', () => {
  it('include the ones the container files set', () => {
    for (const v of ['TENDER_REPOSITORY', 'TENDER_PASSWORD', 'TENDER_PASSWORD_FILE', 'AWS_ENDPOINT_URL', 'AWS_REGION']) {
      expect(sourceVars, `src/ should read ${v}`).toContain(v);
    }
    for (const v of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) expect(knownVars, `README should document ${v}`).toContain(v);
    expect(knownVars).not.toContain('TENDER_REPO');
  });
});

// ------------------------------------------------------------------ shell scripts

/** Words of a shell command line: quotes removed, redirections dropped. Enough for our scripts. */
function shellWords(text: string): string[] {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === "'") {
      const end = text.indexOf("'", i + 1);
      cur += text.slice(i + 1, end);
      i = end;
      inWord = true;
    } else if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') {
        if (text[j] === '\\') j++;
        cur += text[j];
        j++;
      }
      i = j;
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (inWord) words.push(cur);
  const out: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    if (/^\d*[<>]+&?$/.test(w)) i++; // "> file": drop both
    else if (!/^\d*[<>]/.test(w)) out.push(w);
  }
  return out;
}

/** The simple commands of a script, split at newlines, ;, &&, || and |. */
function shellCommands(script: string): string[][] {
  return script
    .split(/\n|;|&&|\|\||\|/)
    .map((s) => shellWords(s.trim()))
    .filter((w) => w.length > 0);
}

const TENDER_IN_IMAGE = '/app/bin/tender.js';

/** `tender ARGS` out of a command line (`tender ...`, `node /app/bin/tender.js ...`), else undefined. */
function tenderArgs(argv: Argv): Argv | undefined {
  if (argv[0] === 'tender' || argv[0] === '/usr/local/bin/tender') return argv.slice(1);
  if ((argv[0] === 'node' || argv[0] === '/usr/local/bin/node') && argv[1] === TENDER_IN_IMAGE) return argv.slice(2);
  return undefined;
}

/** All `tender` invocations in a container command line (directly or inside `sh -c SCRIPT`). */
function tenderInvocations(argv: Argv): Argv[] {
  if (/^(\/bin\/)?(ba)?sh$/.test(argv[0] ?? '') && /^-\w*c\w*$/.test(argv[1] ?? '')) {
    return shellCommands(argv[2] ?? '').flatMap((c) => {
      const t = tenderArgs(c);
      return t ? [t] : [];
    });
  }
  const t = tenderArgs(argv);
  return t ? [t] : [];
}

// ------------------------------------------------------------------ Dockerfile

interface Instruction {
  cmd: string;
  args: string;
  line: number;
}

interface Stage {
  base: string;
  name: string | undefined;
  index: number;
  instructions: Instruction[];
}

/** Dockerfile → stages of instructions (continuation lines joined, comments dropped). */
function parseDockerfile(text: string): Stage[] {
  const instructions: Instruction[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let line = lines[i]!;
    if (/^\s*(#|$)/.test(line)) continue;
    while (/\\\s*$/.test(line) && i + 1 < lines.length) {
      i++;
      if (/^\s*#/.test(lines[i]!)) continue; // comment lines inside a continuation are skipped
      line = line.replace(/\\\s*$/, ' ') + lines[i]!.trim();
    }
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(line);
    if (!m) throw new Error(`Dockerfile:${start + 1}: cannot parse ${JSON.stringify(line)}`);
    instructions.push({ cmd: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start + 1 });
  }
  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.cmd === 'FROM') {
      const words = ins.args.split(/\s+/).filter((w) => !w.startsWith('--'));
      const as = words.findIndex((w) => w.toUpperCase() === 'AS');
      stages.push({ base: words[0]!, name: as >= 0 ? words[as + 1] : undefined, index: stages.length, instructions: [] });
    } else {
      if (stages.length === 0) throw new Error(`Dockerfile:${ins.line}: ${ins.cmd} before FROM`);
      stages.at(-1)!.instructions.push(ins);
    }
  }
  return stages;
}

/** Exec form (JSON array) or shell form of ENTRYPOINT/CMD/RUN. */
function execForm(args: string): Argv {
  if (args.startsWith('[')) return JSON.parse(args) as Argv;
  return ['/bin/sh', '-c', args];
}

interface CopyInstruction {
  from: string | undefined;
  sources: string[];
  dest: string;
}

function parseCopy(args: string): CopyInstruction {
  let from: string | undefined;
  const words: string[] = [];
  for (const w of args.startsWith('[') ? (JSON.parse(args) as string[]) : args.split(/\s+/)) {
    const f = /^--from=(.+)$/.exec(w);
    if (f) from = f[1];
    else if (!w.startsWith('--')) words.push(w);
  }
  return { from, sources: words.slice(0, -1), dest: words.at(-1)! };
}

class Dockerfile {
  constructor(readonly stages: Stage[]) {}

  stage(nameOrIndex: string | number): Stage | undefined {
    return typeof nameOrIndex === 'number' ? this.stages[nameOrIndex] : this.stages.find((s) => s.name === nameOrIndex);
  }

  /** The stage a stage is built FROM, when that is a stage of this file. */
  parent(stage: Stage): Stage | undefined {
    return this.stages.slice(0, stage.index).find((s) => s.name === stage.base);
  }

  /** The stage chain, the stage first. */
  chain(stage: Stage): Stage[] {
    const out: Stage[] = [];
    for (let s: Stage | undefined = stage; s; s = this.parent(s)) out.push(s);
    return out;
  }

  /** The external image a stage ultimately starts from. */
  baseImage(stage: Stage): string {
    return this.chain(stage).at(-1)!.base;
  }

  /** The last value of an instruction along the stage chain (USER, ENTRYPOINT, CMD, WORKDIR...). */
  effective(stage: Stage, cmd: string): Instruction | undefined {
    for (const s of this.chain(stage)) {
      const hit = s.instructions.filter((i) => i.cmd === cmd).at(-1);
      if (hit) return hit;
    }
    return undefined;
  }

  /** The working directory at each instruction of a stage. */
  workdirAt(stage: Stage, ins: Instruction): string {
    let wd = '/';
    const parent = this.parent(stage);
    if (parent) wd = parent.instructions.length ? this.workdirAt(parent, parent.instructions.at(-1)!) : '/';
    for (const i of stage.instructions) {
      if (i.cmd === 'WORKDIR') wd = path.posix.resolve(wd, i.args);
      if (i === ins) break;
    }
    return wd;
  }

  runs(stage: Stage): string[] {
    return this.chain(stage)
      .reverse()
      .flatMap((s) => s.instructions.filter((i) => i.cmd === 'RUN').map((i) => i.args));
  }

  /**
   * Where an absolute path of a stage's file system comes from: a file of the build context
   * (repo-relative), a RUN of some stage (`run`), or nothing this file puts there (undefined).
   */
  provenance(stage: Stage, abs: string): { context: string } | { run: string; stage: Stage } | undefined {
    const produced = producedBy(this, stage, abs);
    for (const s of this.chain(stage)) {
      for (const ins of [...s.instructions].reverse()) {
        if (ins.cmd !== 'COPY' && ins.cmd !== 'ADD') continue;
        const c = parseCopy(ins.args);
        const wd = this.workdirAt(s, ins);
        const dest = path.posix.resolve(wd, c.dest);
        const destIsDir = c.dest.endsWith('/') || c.dest === '.' || c.sources.length > 1;
        for (const src of c.sources) {
          // A directory's contents go to dest; a file goes to dest, or into it when dest is a
          // directory (--from sources are taken as files there: their type is not known here).
          const srcIsDir = !c.from && fs.statSync(path.join(repoRoot, src)).isDirectory();
          const target = destIsDir && !srcIsDir ? path.posix.join(dest, path.posix.basename(src)) : dest;
          const within = abs === target ? '' : abs.startsWith(target + '/') ? abs.slice(target.length + 1) : undefined;
          if (within === undefined) continue;
          if (c.from) {
            const from = this.stage(c.from) ?? this.stage(Number(c.from));
            if (!from) return undefined;
            return this.provenance(from, path.posix.join(path.posix.resolve('/', src), within));
          }
          return { context: path.posix.join(src.replace(/\/+$/, ''), within) };
        }
      }
      if (produced && produced.stage === s) return produced;
    }
    return produced;
  }
}

/**
 * What the RUN steps of a stage chain produce, from package.json and the configuration it
 * names: `npm ci`/`npm install` makes node_modules and runs the "install" script (node-gyp
 * --directory D → D/build/Release/<target>.node, or <target> for an executable) and "prepare"; `npm run S` runs script S; `tsc -p
 * F` writes F's outDir. The last RUN that writes the path is its producer.
 */
function producedBy(df: Dockerfile, stage: Stage, abs: string): { run: string; stage: Stage } | undefined {
  let producer: { run: string; stage: Stage } | undefined;
  for (const s of df.chain(stage).reverse()) {
    for (const ins of s.instructions) {
      if (ins.cmd !== 'RUN') continue;
      const wd = df.workdirAt(s, ins);
      const outputs: string[] = [];
      const scriptOutputs = (script: string | undefined): void => {
        if (!script) return;
        const gyp = /node-gyp rebuild --directory (\S+)/.exec(script);
        if (gyp) {
          const gypText = read(path.join(gyp[1]!, 'binding.gyp'));
          // An addon target builds <target>.node; one of "type": "executable" builds <target>.
          for (const t of gypText.matchAll(/"target_name":\s*"([\w-]+)"(,\s*"type":\s*"(\w+)")?/g)) {
            outputs.push(path.posix.join(gyp[1]!, 'build', 'Release', t[3] === 'executable' ? t[1]! : `${t[1]}.node`));
          }
        }
        const tsc = /\btsc -p (\S+)/.exec(script);
        if (tsc) outputs.push((JSON.parse(read(tsc[1]!)) as { compilerOptions: { outDir: string } }).compilerOptions.outDir);
      };
      if (/\bnpm (ci|install)\b/.test(ins.args)) {
        outputs.push('node_modules');
        scriptOutputs(packageJson.scripts.install);
        scriptOutputs(packageJson.scripts.prepare);
      }
      for (const m of ins.args.matchAll(/\bnpm run ([\w:-]+)/g)) scriptOutputs(packageJson.scripts[m[1]!]);
      for (const out of outputs) {
        const o = path.posix.resolve(wd, out);
        if (abs === o || abs.startsWith(o + '/')) producer = { run: ins.args, stage: s };
      }
    }
  }
  return producer;
}

const dockerfile = new Dockerfile(parseDockerfile(read('Dockerfile')));
const finalStage = dockerfile.stages.at(-1)!;

function imageArgv(stage: Stage): Argv {
  const ep = dockerfile.effective(stage, 'ENTRYPOINT');
  const cmd = dockerfile.effective(stage, 'CMD');
  return [...(ep ? execForm(ep.args) : []), ...(cmd ? execForm(cmd.args) : [])];
}

function isRootUser(user: string | undefined): boolean {
  return user === undefined || /^(root|0)(:.*)?$/.test(user.trim());
}

const dockerignore = read('.dockerignore')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'));
const ignoredByDocker = (rel: string): boolean => {
  let ignored = false;
  for (const pattern of dockerignore) {
    const neg = pattern.startsWith('!');
    const p = pattern.replace(/^!/, '').replace(/^\/+|\/+$/g, '');
    const parts = rel.split('/');
    const hit = parts.some((_, i) => minimatch(parts.slice(0, i + 1).join('/'), p, { dot: true }));
    if (hit) ignored = !neg;
  }
  return ignored;
};

describe('Dockerfile', () => {
  it('is a multi-stage build: node:20-bookworm builds, node:20-bookworm-slim runs', () => {
    expect(dockerfile.stages.length).toBeGreaterThanOrEqual(2);
    const build = dockerfile.stage('build');
    expect(build, 'a stage named "build"').toBeDefined();
    expect(build!.base).toBe('node:20-bookworm');
    expect(dockerfile.baseImage(finalStage)).toBe('node:20-bookworm-slim');
    for (const s of dockerfile.stages) {
      if (dockerfile.parent(s)) continue;
      expect(s.base, `FROM ${s.base} must name a tag`).toMatch(/:[\w][\w.-]*$|@sha256:/);
      expect(s.base).not.toMatch(/:latest$/);
    }
  });

  it('builds with the toolchain, npm ci, npm run build, then prunes dev dependencies', () => {
    const runs = dockerfile.runs(dockerfile.stage('build')!).join('\n');
    for (const tool of ['python3', 'make', 'g++']) expect(runs).toMatch(new RegExp(`apt-get install[^\\n]*\\s${tool.replace('+', '\\+')}(\\s|$)`));
    const at = (re: RegExp) => runs.search(re);
    expect(at(/\bnpm ci\b/)).toBeGreaterThanOrEqual(0);
    expect(at(/\bnpm run build\b/)).toBeGreaterThan(at(/\bnpm ci\b/));
    expect(at(/\bnpm prune --omit=dev\b/)).toBeGreaterThan(at(/\bnpm run build\b/));
  });

  it('copies from the context only files that exist and that .dockerignore lets through', () => {
    let n = 0;
    for (const s of dockerfile.stages) {
      for (const ins of s.instructions.filter((i) => i.cmd === 'COPY' || i.cmd === 'ADD')) {
        const c = parseCopy(ins.args);
        if (c.from) continue;
        for (const src of c.sources) {
          n++;
          expect(fs.existsSync(path.join(repoRoot, src)), `Dockerfile:${ins.line}: ${src} is not in the repository`).toBe(true);
          expect(ignoredByDocker(src.replace(/\/+$/, '')), `Dockerfile:${ins.line}: ${src} is excluded by .dockerignore`).toBe(false);
        }
      }
    }
    expect(n).toBeGreaterThan(0);
  });

  it('copies --from the build stage only paths that the build stage makes', () => {
    const copies = dockerfile.stages.flatMap((s) =>
      s.instructions.filter((i) => i.cmd === 'COPY' && parseCopy(i.args).from).map((i) => ({ s, i, c: parseCopy(i.args) })),
    );
    expect(copies.length).toBeGreaterThan(0);
    const kinds = new Set<string>();
    for (const { i, c } of copies) {
      const from = dockerfile.stage(c.from!);
      expect(from, `Dockerfile:${i.line}: no stage ${c.from}`).toBeDefined();
      for (const src of c.sources) {
        const abs = path.posix.resolve(dockerfile.workdirAt(from!, from!.instructions.at(-1)!), src);
        const p = dockerfile.provenance(from!, abs);
        expect(p, `Dockerfile:${i.line}: nothing in stage ${c.from} makes ${abs}`).toBeDefined();
        if (p && 'context' in p) {
          expect(fs.existsSync(path.join(repoRoot, p.context)), `Dockerfile:${i.line}: ${abs} comes from ${p.context}, missing`).toBe(true);
          kinds.add(`context:${p.context}`);
        } else if (p) {
          kinds.add(`run:${p.run}`);
        }
      }
    }
    // dist/ (tsc) and the native addon (node-gyp, at npm ci) are made by RUN steps.
    expect([...kinds].some((k) => k.startsWith('run:') && k.includes('npm run build'))).toBe(true);
    expect([...kinds].some((k) => k.startsWith('run:') && k.includes('npm ci'))).toBe(true);
  });

  it('puts package.json, dist, bin, node_modules and the native addon where tender looks for them', () => {
    // packageRoot() is the folder of tender's package.json; the addon is ADDON_RELATIVE_PATH below it.
    const nativeTs = read('src/util/native.ts');
    const rel = /ADDON_RELATIVE_PATH = join\(([^)]*)\)/.exec(nativeTs);
    expect(rel, 'ADDON_RELATIVE_PATH in src/util/native.ts').not.toBeNull();
    const addonRel = path.posix.join(...[...rel![1]!.matchAll(/'([^']+)'/g)].map((m) => m[1]!));
    const appRoot = path.posix.dirname(TENDER_IN_IMAGE); // /app/bin
    const pkgRoot = path.posix.dirname(appRoot);
    const expectations: Array<[string, (p: ReturnType<Dockerfile['provenance']>) => boolean]> = [
      [`${pkgRoot}/package.json`, (p) => !!p && 'context' in p && p.context === 'package.json'],
      [`${pkgRoot}/bin/tender.js`, (p) => !!p && 'context' in p && p.context === 'bin/tender.js'],
      [`${pkgRoot}/dist/cli/main.js`, (p) => !!p && 'run' in p],
      [`${pkgRoot}/node_modules/commander`, (p) => !!p && 'run' in p && /npm ci/.test(p.run)],
      [`${pkgRoot}/${addonRel}`, (p) => !!p && 'run' in p && /npm ci/.test(p.run)],
    ];
    for (const [abs, ok] of expectations) {
      expect(ok(dockerfile.provenance(finalStage, abs)), `${abs} in the final image`).toBe(true);
    }
    // The same files exist in a local build (npm install + npm run build).
    expect(fs.existsSync(path.join(repoRoot, 'dist', 'cli', 'main.js'))).toBe(true);
    expect(fs.existsSync(path.join(repoRoot, addonRel))).toBe(true);
    expect(read('bin/tender.js')).toContain('../dist/cli/main.js');
  });

  it('runs tender as a non-root user by default, with a valid default command', () => {
    const user = dockerfile.effective(finalStage, 'USER')?.args;
    expect(isRootUser(user), `final USER is ${user ?? '(none: root)'}`).toBe(false);
    const ep = execForm(dockerfile.effective(finalStage, 'ENTRYPOINT')!.args);
    expect(ep).toEqual(['node', TENDER_IN_IMAGE]);
    expect(fs.existsSync(path.join(repoRoot, 'bin', 'tender.js'))).toBe(true);
    const argv = imageArgv(finalStage);
    const invocations = tenderInvocations(argv);
    expect(invocations).toHaveLength(1);
    expect(tenderArgvProblems(invocations[0]!)).toEqual([]);
    // `tender` on PATH, for sh -c scripts.
    expect(dockerfile.runs(finalStage).join('\n')).toMatch(new RegExp(`ln -s ${TENDER_IN_IMAGE} /usr/local/bin/tender\\b`));
  });

  it('carries OCI labels that agree with package.json', () => {
    const labels = new Map<string, string>();
    for (const s of dockerfile.chain(finalStage)) {
      for (const ins of s.instructions.filter((i) => i.cmd === 'LABEL')) {
        for (const m of ins.args.matchAll(/([\w.-]+)=("(?:[^"\\]|\\.)*"|\S+)/g)) labels.set(m[1]!, m[2]!.replace(/^"|"$/g, ''));
      }
    }
    expect(labels.get('org.opencontainers.image.title')).toBe('tender');
    expect(labels.get('org.opencontainers.image.version')).toBe(packageJson.version);
    expect(labels.get('org.opencontainers.image.licenses')).toBe((JSON.parse(read('package.json')) as { license: string }).license);
    expect([...labels.keys()].every((k) => k.startsWith('org.opencontainers.image.'))).toBe(true);
  });

  it('.dockerignore keeps build outputs, local data and .git out of the context', () => {
    for (const p of ['node_modules', 'dist', 'native/build', '.tmp', 'bench/.data', 'bench/results', '.git']) {
      expect(ignoredByDocker(p), p).toBe(true);
    }
    expect(ignoredByDocker('src/cli/main.ts')).toBe(false);
    expect(ignoredByDocker('native/src/addon.cc')).toBe(false);
  });
});

// ------------------------------------------------------------------ docker-compose.yml

interface ComposeService {
  image?: string;
  build?: string | { context?: string; target?: string };
  command?: string | string[];
  entrypoint?: string | string[];
  environment?: Record<string, string | number | null> | string[];
  ports?: Array<string | { target: number; published?: string | number }>;
  depends_on?: string[] | Record<string, { condition?: string }>;
  healthcheck?: { test: string | string[] };
  volumes?: Array<string | { target: string }>;
  profiles?: string[];
}

const compose = YAML.parse(read('docker-compose.yml')) as { services: Record<string, ComposeService>; volumes?: Record<string, unknown> };
const services = compose.services;

/** Compose interpolation with an empty environment: ${VAR:-default}, ${VAR-default}, ${VAR}, $$. */
function interpolate(value: string): string {
  return value.replace(/\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)/g, (m, _v, def) => (m === '$$' ? '$' : (def ?? '')));
}

/** The runtime command of a service, with $$ turned into $ (what the container gets). */
const asArgv = (v: string | string[] | undefined): Argv | undefined =>
  v === undefined ? undefined : (Array.isArray(v) ? v : shellWords(v)).map((w) => w.replace(/\$\$/g, '$'));

function serviceStage(svc: ComposeService): Stage | undefined {
  if (!svc.build) return undefined;
  const target = typeof svc.build === 'object' ? svc.build.target : undefined;
  return target ? dockerfile.stage(target) : finalStage;
}

function serviceArgv(svc: ComposeService): Argv {
  const stage = serviceStage(svc);
  const ep = asArgv(svc.entrypoint) ?? (stage ? execForm(dockerfile.effective(stage, 'ENTRYPOINT')?.args ?? '[]') : []);
  const cmd = asArgv(svc.command) ?? (stage && svc.entrypoint === undefined ? execForm(dockerfile.effective(stage, 'CMD')?.args ?? '[]') : []);
  return [...ep, ...cmd];
}

function serviceEnv(svc: ComposeService): Map<string, string> {
  const env = new Map<string, string>();
  if (Array.isArray(svc.environment)) {
    for (const kv of svc.environment) {
      const i = kv.indexOf('=');
      env.set(i < 0 ? kv : kv.slice(0, i), i < 0 ? '' : kv.slice(i + 1));
    }
  } else {
    for (const [k, v] of Object.entries(svc.environment ?? {})) env.set(k, v === null ? '' : String(v));
  }
  return env;
}

function portOf(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port || (u.protocol === 'https:' ? 443 : 80)) };
}

function bucketOf(repo: string): string {
  const m = /^s3:\/\/([^/]+)/.exec(repo);
  if (!m) throw new Error(`not an s3:// repository: ${repo}`);
  return m[1]!;
}

/** bench/run.mjs's options (parseArgs) → whether each takes a value. */
function benchOptions(): Map<string, boolean> {
  const text = read('bench/run.mjs');
  const block = /parseArgs\(\{\s*options:\s*\{([\s\S]*?)\n\s*\},\s*\n\s*\}\)/.exec(text);
  if (!block) throw new Error('bench/run.mjs: parseArgs options not found');
  return new Map([...block[1]!.matchAll(/^\s*'?([a-z][\w-]*)'?:\s*\{\s*type:\s*'(string|boolean)'/gm)].map((m) => [`--${m[1]}`, m[2] === 'string']));
}

describe('docker-compose.yml', () => {
  it('has the services, with pinned images or a build of this Dockerfile', () => {
    expect(Object.keys(services)).toEqual(expect.arrayContaining(['minio', 'createbucket', 'tender-backup', 'tender-bench']));
    for (const [name, svc] of Object.entries(services)) {
      expect(svc.image ?? svc.build, `${name}: image or build`).toBeDefined();
      if (svc.image) {
        expect(svc.image, `${name}: image must name a tag or digest`).toMatch(/:[\w][\w.-]*$|@sha256:[0-9a-f]{64}$/);
        expect(svc.image, `${name}: no latest`).not.toMatch(/:latest$/);
      }
      if (svc.build) {
        const target = typeof svc.build === 'object' ? svc.build.target : undefined;
        if (target) expect(dockerfile.stage(target), `${name}: build target ${target}`).toBeDefined();
        const ctx = typeof svc.build === 'string' ? svc.build : (svc.build.context ?? '.');
        expect(path.resolve(repoRoot, ctx)).toBe(repoRoot);
      }
    }
    expect(services.minio!.image).toMatch(/^quay\.io\/minio\/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ$/);
    expect(services.createbucket!.image).toMatch(/^(quay\.io\/)?minio\/mc:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ$/);
  });

  it('MinIO publishes the ports the other services use, and has a health check', () => {
    const minio = services.minio!;
    const argv = asArgv(minio.command)!;
    expect(argv.slice(0, 2)).toEqual(['server', '/data']);
    const flag = (f: string): string | undefined => (argv.includes(f) ? argv[argv.indexOf(f) + 1] : undefined);
    const apiPort = Number((flag('--address') ?? ':9000').split(':').at(-1));
    const consolePort = Number(flag('--console-address')!.split(':').at(-1));
    const published = (minio.ports ?? []).map((p) => (typeof p === 'string' ? Number(p.split(':').at(-1)) : p.target));
    expect(published).toEqual(expect.arrayContaining([apiPort, consolePort]));
    const env = serviceEnv(minio);
    expect(env.has('MINIO_ROOT_USER') && env.has('MINIO_ROOT_PASSWORD')).toBe(true);
    expect(interpolate(env.get('MINIO_ROOT_PASSWORD')!).length, 'MinIO needs a root password of 8+ characters').toBeGreaterThanOrEqual(8);

    const test = ([] as string[]).concat(minio.healthcheck!.test).join(' ');
    expect(test).toMatch(/\bmc ready local\b|curl .*\/minio\/health\/live/);

    // The endpoint the other services use: the minio service on its API port.
    const endpoint = serviceEnv(services['tender-backup']!).get('AWS_ENDPOINT_URL')!;
    expect(portOf(endpoint)).toEqual({ host: 'minio', port: apiPort });
    const script = serviceArgv(services.createbucket!).join(' ');
    const urls = [...script.matchAll(/https?:\/\/[^\s"']+/g)].map((m) => m[0]);
    expect(urls.length).toBeGreaterThan(0);
    for (const u of urls) expect(portOf(u)).toEqual({ host: 'minio', port: apiPort });
  });

  it('createbucket makes the bucket of the tender repository with the MinIO credentials', () => {
    const argv = serviceArgv(services.createbucket!);
    expect(argv.slice(0, 2)).toEqual(['/bin/sh', '-ec']);
    const cmds = shellCommands(argv[2]!);
    const alias = cmds.find((c) => c[0] === 'mc' && c[1] === 'alias' && c[2] === 'set');
    const mb = cmds.find((c) => c[0] === 'mc' && c[1] === 'mb');
    expect(alias, 'mc alias set').toBeDefined();
    expect(mb, 'mc mb').toBeDefined();
    expect(mb).toContain('--ignore-existing');
    const aliasName = alias![3]!;
    const repo = serviceEnv(services['tender-backup']!).get('TENDER_REPOSITORY')!;
    expect(mb!.at(-1)).toBe(`${aliasName}/${bucketOf(repo)}`);
    // Credentials: the shell variables it uses are set, to MinIO's root user.
    const env = serviceEnv(services.createbucket!);
    for (const m of argv[2]!.matchAll(/\$(\w+)/g)) expect(env.has(m[1]!), `createbucket sets ${m[1]}`).toBe(true);
    expect(interpolate(env.get('MINIO_ROOT_USER')!)).toBe(interpolate(serviceEnv(services.minio!).get('MINIO_ROOT_USER')!));
  });

  it('the services start in order: MinIO healthy, then the bucket, then tender', () => {
    const dep = (svc: string) => services[svc]!.depends_on as Record<string, { condition?: string }>;
    expect(services.minio!.depends_on).toBeUndefined();
    expect(dep('createbucket').minio?.condition).toBe('service_healthy');
    expect(services.minio!.healthcheck).toBeDefined();
    expect(dep('tender-backup').createbucket?.condition).toBe('service_completed_successfully');
    expect(services['tender-bench']!.profiles).toEqual(['bench']);
    for (const [name, svc] of Object.entries(services)) {
      if (!svc.depends_on || Array.isArray(svc.depends_on)) continue;
      for (const target of Object.keys(svc.depends_on)) expect(services[target], `${name} depends on ${target}`).toBeDefined();
    }
  });

  it('tender-backup sets the variables tender reads, consistent with MinIO', () => {
    const svc = services['tender-backup']!;
    const env = serviceEnv(svc);
    for (const name of env.keys()) expect(knownVars, `${name} is not read by tender`).toContain(name);
    for (const name of ['TENDER_REPOSITORY', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_ENDPOINT_URL', 'AWS_REGION']) {
      expect(env.has(name), name).toBe(true);
    }
    expect(env.has('TENDER_PASSWORD') || env.has('TENDER_PASSWORD_FILE')).toBe(true);
    expect(env.get('TENDER_REPOSITORY')).toBe('s3://tender/repo');
    const minio = serviceEnv(services.minio!);
    expect(interpolate(env.get('AWS_ACCESS_KEY_ID')!)).toBe(interpolate(minio.get('MINIO_ROOT_USER')!));
    expect(interpolate(env.get('AWS_SECRET_ACCESS_KEY')!)).toBe(interpolate(minio.get('MINIO_ROOT_PASSWORD')!));
    // A default password must say that it is one.
    if (env.has('TENDER_PASSWORD')) expect(interpolate(env.get('TENDER_PASSWORD')!)).toMatch(/change-?me/i);
    const lines = read('docker-compose.yml').split('\n');
    const at = lines.findIndex((l) => /^\s*TENDER_PASSWORD(_FILE)?:/.test(l));
    expect(lines.slice(Math.max(0, at - 3), at + 1).join('\n'), 'a "change me" next to the password').toMatch(/change me/i);
  });

  it('tender-backup runs existing commands: init only when there is no repository, then backup /data', () => {
    const svc = services['tender-backup']!;
    const argv = serviceArgv(svc);
    const invocations = tenderInvocations(argv);
    expect(invocations.length).toBeGreaterThanOrEqual(3);
    for (const inv of invocations) expect(tenderArgvProblems(inv), `tender ${inv.join(' ')}`).toEqual([]);
    const commandOf = (inv: Argv) => inv.find((w) => !w.startsWith('-'));
    const script = argv[2]!;
    // `tender init` fails on an existing repository: it must only run when `tender snapshots` failed.
    expect(script).toMatch(/tender snapshots(?:[^\n|&;]|\d?>&\d)*\|\|\s*tender init/);
    const names = invocations.map(commandOf);
    expect(names.indexOf('backup')).toBeGreaterThan(names.indexOf('init'));
    const backup = invocations.find((i) => commandOf(i) === 'backup')!;
    expect(backup.at(-1)).toBe('/data');
    const mounts = (svc.volumes ?? []).map((v) => (typeof v === 'string' ? interpolate(v).split(':')[1] : v.target));
    expect(mounts).toContain('/data');
    // `tender` is on PATH in the image the service builds.
    expect(dockerfile.runs(serviceStage(svc)!).join('\n')).toMatch(/\/usr\/local\/bin\/tender\b/);
  });

  it('tender-bench runs bench/run.mjs with flags it has, tender only, on a local repository', () => {
    const svc = services['tender-bench']!;
    const stage = serviceStage(svc)!;
    expect(stage, 'tender-bench builds a stage of the Dockerfile').toBeDefined();
    const argv = serviceArgv(svc);
    expect(argv.slice(0, 2)).toEqual(['node', '/app/bench/run.mjs']);
    // bench/run.mjs is in that image, with the tender build it runs.
    const p = dockerfile.provenance(stage, '/app/bench/run.mjs');
    expect(p && 'context' in p ? p.context : undefined).toBe('bench/run.mjs');
    expect(fs.existsSync(path.join(repoRoot, 'bench/run.mjs'))).toBe(true);
    expect(dockerfile.provenance(stage, '/app/dist/cli/main.js')).toBeDefined();
    const options = benchOptions();
    const args = argv.slice(2);
    const values = new Map<string, string>();
    for (let i = 0; i < args.length; i++) {
      const takesValue = options.get(args[i]!);
      expect(takesValue, `bench/run.mjs has no option ${args[i]}`).toBeDefined();
      if (takesValue) values.set(args[i]!, args[++i]!);
    }
    expect(values.get('--tools')).toBe('tender');
    expect(read('bench/tools.mjs')).toMatch(/TOOLS = \[[^\]]*'tender'/);
    // --backend minio would start a private MinIO built with Go (scripts/minio.sh): not in the image.
    expect(values.get('--backend')).toBe('local');
    const dataDir = values.get('--data-dir');
    const mounts = (svc.volumes ?? []).map((v) => (typeof v === 'string' ? v.split(':')[1] : v.target));
    if (dataDir) expect(mounts).toContain(dataDir);
    // The same defaults are in the image, so `docker run tender-bench` works too.
    const cmd = execForm(dockerfile.effective(stage, 'CMD')!.args);
    for (let i = 0; i < cmd.length; i++) if (cmd[i]!.startsWith('--')) expect(options.has(cmd[i]!), cmd[i]).toBe(true);
  });

  it('names only volumes it declares', () => {
    for (const [name, svc] of Object.entries(services)) {
      for (const v of svc.volumes ?? []) {
        if (typeof v !== 'string') continue;
        const src = interpolate(v).split(':')[0]!;
        if (src.startsWith('.') || src.startsWith('/')) {
          expect(fs.existsSync(path.resolve(repoRoot, src)), `${name}: bind mount ${src}`).toBe(true);
        } else {
          expect(compose.volumes ?? {}, `${name}: volume ${src}`).toHaveProperty(src);
        }
      }
    }
  });
});

// ------------------------------------------------------------------ deploy/

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  [k: string]: unknown;
}

const deployDir = path.join(repoRoot, 'deploy');
const manifestFiles = fs
  .readdirSync(deployDir)
  .filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml')
  .sort();
const manifests: Array<K8sObject & { file: string }> = manifestFiles.flatMap((file) =>
  YAML.parseAllDocuments(fs.readFileSync(path.join(deployDir, file), 'utf8')).map((doc) => {
    if (doc.errors.length) throw new Error(`deploy/${file}: ${doc.errors[0]!.message}`);
    return { ...(doc.toJS() as K8sObject), file };
  }),
);
const kustomization = YAML.parse(fs.readFileSync(path.join(deployDir, 'kustomization.yaml'), 'utf8')) as {
  namespace?: string;
  resources: string[];
  images?: Array<{ name: string; newName?: string; newTag?: string }>;
};

const one = <T = K8sObject>(kind: string): T => {
  const hits = manifests.filter((m) => m.kind === kind);
  expect(hits, `exactly one ${kind}`).toHaveLength(1);
  return hits[0] as unknown as T;
};

interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: Array<{
    name: string;
    value?: string;
    valueFrom?: { secretKeyRef?: { name: string; key: string; optional?: boolean }; fieldRef?: { fieldPath: string } };
  }>;
  ports?: Array<{ name?: string; containerPort: number }>;
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  readinessProbe?: { httpGet?: { path: string; port: string | number } };
  envFrom?: Array<{ secretRef?: { name: string } }>;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: {
    runAsUser?: number;
    runAsNonRoot?: boolean;
    privileged?: boolean;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    capabilities?: { add?: string[]; drop?: string[] };
  };
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean; mountPropagation?: string; subPath?: string }>;
}

interface PodSpec {
  serviceAccountName?: string;
  priorityClassName?: string;
  hostPID?: boolean;
  hostNetwork?: boolean;
  tolerations?: Array<{ key?: string; operator?: string; value?: string; effect?: string }>;
  containers: Container[];
  volumes?: Array<{
    name: string;
    hostPath?: { path: string };
    secret?: { secretName: string; items?: Array<{ key: string; path: string }> };
    configMap?: { name: string; items?: Array<{ key: string; path: string }> };
    emptyDir?: object;
  }>;
}

const daemonSet = () => one<K8sObject & { spec: { template: { spec: PodSpec } } }>('DaemonSet');
const podSpec = () => daemonSet().spec.template.spec;
const agent = () => {
  const containers = podSpec().containers;
  expect(containers).toHaveLength(1);
  return containers[0]!;
};

/** The container's argv after `tender` (image ENTRYPOINT + args), and its `--flag=value` / `--flag value` pairs. */
function agentArgv(): { argv: Argv; flags: Map<string, string> } {
  const c = agent();
  const ep = execForm(dockerfile.effective(finalStage, 'ENTRYPOINT')!.args);
  const argv = [...(c.command ?? ep), ...(c.args ?? (c.command ? [] : execForm(dockerfile.effective(finalStage, 'CMD')!.args)))];
  expect(argv.slice(0, 2)).toEqual(['node', TENDER_IN_IMAGE]);
  const rest = argv.slice(2);
  const flags = new Map<string, string>();
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) flags.set(a.slice(0, eq), a.slice(eq + 1));
    else if (i + 1 < rest.length && !rest[i + 1]!.startsWith('-')) flags.set(a, rest[++i]!);
    else flags.set(a, '');
  }
  return { argv: rest, flags };
}

/** The mount at or above FILE, its volume, and FILE relative to the mount. */
function volumeAt(file: string) {
  const mount = (agent().volumeMounts ?? [])
    .filter((m) => file === m.mountPath || file.startsWith(m.mountPath + '/'))
    .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
  expect(mount, `a volume mounted at or above ${file}`).toBeDefined();
  const volume = podSpec().volumes?.find((v) => v.name === mount!.name);
  expect(volume, `volume ${mount!.name}`).toBeDefined();
  return { mount: mount!, volume: volume!, rel: file === mount!.mountPath ? '' : file.slice(mount!.mountPath.length + 1) };
}

const secretKeys = () =>
  new Map(
    manifests
      .filter((m) => m.kind === 'Secret')
      .map((s) => [s.metadata.name, new Set([...Object.keys((s.data as object) ?? {}), ...Object.keys((s.stringData as object) ?? {})])]),
  );

describe('deploy/', () => {
  it('has the PriorityClass, ServiceAccount, RBAC, ConfigMap, Secret templates and DaemonSet, in the velero namespace', () => {
    expect(manifests.map((m) => m.kind).sort()).toEqual(
      ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'DaemonSet', 'PriorityClass', 'Secret', 'Secret', 'ServiceAccount'].sort(),
    );
    for (const m of manifests) {
      if (['ClusterRole', 'ClusterRoleBinding', 'PriorityClass'].includes(m.kind)) expect(m.metadata.namespace, `${m.kind} is cluster-scoped`).toBeUndefined();
      else expect(m.metadata.namespace, `${m.kind} ${m.metadata.name}`).toBe('velero');
    }
    expect(kustomization.namespace).toBe('velero');
  });

  it('binds the ClusterRole to the ServiceAccount the DaemonSet runs as', () => {
    const sa = one('ServiceAccount');
    const role = one('ClusterRole');
    const binding = one<K8sObject & { roleRef: { kind: string; name: string; apiGroup: string }; subjects: Array<{ kind: string; name: string; namespace: string }> }>(
      'ClusterRoleBinding',
    );
    expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role.metadata.name });
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: sa.metadata.namespace }]);
    expect(podSpec().serviceAccountName).toBe(sa.metadata.name);
  });

  it('the ClusterRole is exactly: get/list/watch pods, PVCs, PVs; get ReplicaSets', () => {
    const rules = one<K8sObject & { rules: Array<{ apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }> }>('ClusterRole').rules;
    const triples = new Set<string>();
    for (const r of rules) {
      expect(r.resourceNames).toBeUndefined();
      for (const g of r.apiGroups) for (const res of r.resources) for (const v of r.verbs) triples.add(`${g}/${res}:${v}`);
    }
    const expected = [
      ...['pods', 'persistentvolumeclaims', 'persistentvolumes'].flatMap((r) => ['get', 'list', 'watch'].map((v) => `/${r}:${v}`)),
      'apps/replicasets:get',
    ];
    expect([...triples].sort()).toEqual(expected.sort());
  });

  it('the DaemonSet runs `tender agent` with flags the CLI has', () => {
    const { argv, flags } = agentArgv();
    expect(argv[0], 'the command').toBe('agent');
    const invocations = tenderInvocations(['node', TENDER_IN_IMAGE, ...argv]);
    expect(invocations).toHaveLength(1);
    expect(cliLevel([]).commands, 'the CLI has an `agent` command (npm run build first)').toContain('agent');
    expect(tenderArgvProblems(invocations[0]!)).toEqual([]);
    for (const f of ['--node-name', '--pods-dir', '--listen', '--config', '--state-dir', '--token-file']) expect(flags.has(f), f).toBe(true);
    // No placeholder left.
    expect(fs.readFileSync(path.join(deployDir, 'daemonset.yaml'), 'utf8')).not.toMatch(/TODO|--help/);
  });

  it('NODE_NAME comes from the downward API and is passed as --node-name', () => {
    const env = new Map((agent().env ?? []).map((e) => [e.name, e]));
    expect(env.get('NODE_NAME')?.valueFrom?.fieldRef?.fieldPath).toBe('spec.nodeName');
    const { argv, flags } = agentArgv();
    expect(flags.get('--node-name')).toBe('$(NODE_NAME)');
    // Kubernetes expands $(VAR) only for variables the container defines.
    for (const a of argv) for (const m of a.matchAll(/\$\((\w+)\)/g)) expect(env.has(m[1]!), `$(${m[1]})`).toBe(true);
  });

  it('the kubelet pods directory is mounted read-only with HostToContainer propagation at --pods-dir', () => {
    const spec = podSpec();
    const { flags } = agentArgv();
    const pods = volumeAt(flags.get('--pods-dir')!);
    expect(pods.rel).toBe('');
    expect(pods.volume.hostPath?.path).toBe('/var/lib/kubelet/pods');
    expect(pods.mount.readOnly).toBe(true);
    expect(pods.mount.mountPropagation).toBe('HostToContainer');
    // The state dir is the one writable hostPath; every other hostPath is read-only. No host namespaces.
    const state = volumeAt(flags.get('--state-dir')!);
    expect(state.rel).toBe('');
    expect(state.mount.readOnly ?? false).toBe(false);
    expect(state.volume.hostPath?.path).toBe('/var/lib/tender');
    for (const v of spec.volumes ?? []) {
      if (!v.hostPath || v.name === state.volume.name) continue;
      for (const m of agent().volumeMounts?.filter((x) => x.name === v.name) ?? []) expect(m.readOnly, `${v.name} read-only`).toBe(true);
    }
    expect(spec.hostPID ?? false).toBe(false);
    expect(spec.hostNetwork ?? false).toBe(false);
  });

  it('--config is the ConfigMap policy, mounted as a directory so that edits reach the pod', async () => {
    const { flags } = agentArgv();
    const cfg = volumeAt(flags.get('--config')!);
    expect(cfg.volume.configMap, 'a ConfigMap volume').toBeDefined();
    expect(cfg.mount.subPath, 'no subPath: the kubelet never updates those').toBeUndefined();
    const cm = one<K8sObject & { data: Record<string, string> }>('ConfigMap');
    expect(cfg.volume.configMap!.name).toBe(cm.metadata.name);
    const text = cm.data[cfg.rel];
    expect(text, `ConfigMap key ${cfg.rel}`).toBeDefined();
    // The agent's own parser accepts it (dist/: build first), and it is the default policy:
    // every setting is there as a comment, none is set.
    const { parsePolicy, DEFAULT_POLICY } = (await import(pathToFileURL(path.join(repoRoot, 'dist', 'agent', 'policy.js')).href)) as {
      parsePolicy: (text: string, source?: string) => unknown;
      DEFAULT_POLICY: unknown;
    };
    expect(parsePolicy(text!, 'deploy/configmap.yaml')).toEqual(DEFAULT_POLICY);
    expect(YAML.parse(text!) ?? {}).toEqual({});
    for (const key of ['defaultVolumes', 'interval', 'schedule', 'namespaces', 'excludeNamespaces', 'podSelector', 'namespaceSelector', 'maxConcurrentRuns', 'cacheNeutral']) {
      expect(text, `${key} documented`).toMatch(new RegExp(`^# ${key}:`, 'm'));
    }
  });

  it('--token-file is a key of the API token Secret; probes hit --listen on /healthz and /readyz', () => {
    const { flags } = agentArgv();
    const tok = volumeAt(flags.get('--token-file')!);
    expect(tok.volume.secret?.secretName).toBe('tender-api-token');
    expect(tok.mount.readOnly).toBe(true);
    const item = tok.volume.secret!.items?.find((i) => i.path === tok.rel);
    expect(secretKeys().get('tender-api-token')!.has(item?.key ?? tok.rel)).toBe(true);
    const port = Number(/:(\d+)$/.exec(flags.get('--listen')!)?.[1]);
    expect(port).toBe(8085);
    const named = agent().ports?.find((p) => p.containerPort === port);
    expect(named, `container port ${port}`).toBeDefined();
    for (const [probe, p] of [
      ['livenessProbe', '/healthz'],
      ['readinessProbe', '/readyz'],
    ] as const) {
      const get = agent()[probe]?.httpGet;
      expect(get?.path, probe).toBe(p);
      expect(get!.port === port || get!.port === named!.name, `${probe} port`).toBe(true);
    }
  });

  it('the DaemonSet tolerates GPU nodes, asks for modest resources, and has a low priority that never preempts', () => {
    const spec = podSpec();
    expect(spec.tolerations).toEqual(expect.arrayContaining([expect.objectContaining({ key: 'nvidia.com/gpu', effect: 'NoSchedule' })]));
    const gpu = spec.tolerations!.find((t) => t.key === 'nvidia.com/gpu')!;
    expect(gpu.operator === 'Exists' || gpu.value !== undefined).toBe(true);
    const r = agent().resources!;
    expect(r.requests?.cpu).toBeDefined();
    expect(r.requests?.memory).toBeDefined();
    expect(r.limits?.memory).toBeDefined();
    const pc = one<K8sObject & { value: number; preemptionPolicy?: string; globalDefault?: boolean }>('PriorityClass');
    expect(spec.priorityClassName).toBe(pc.metadata.name);
    expect(pc.metadata.name).toMatch(/low/i);
    expect(pc.value).toBeLessThanOrEqual(0);
    expect(pc.value, 'not below the cluster autoscaler expendable cut-off').toBeGreaterThanOrEqual(-10);
    expect(pc.preemptionPolicy).toBe('Never');
    expect(pc.globalDefault ?? false).toBe(false);
  });

  it('the container runs as root with only DAC_READ_SEARCH, unprivileged, on a read-only root', () => {
    const sc = agent().securityContext!;
    expect(sc.runAsUser).toBe(0);
    expect(sc.runAsNonRoot ?? false).toBe(false);
    expect(sc.privileged ?? false).toBe(false);
    expect(sc.allowPrivilegeEscalation).toBe(false);
    expect(sc.readOnlyRootFilesystem).toBe(true);
    expect(sc.capabilities?.drop).toContain('ALL');
    expect(sc.capabilities?.add).toEqual(['DAC_READ_SEARCH']);
    // deploy/README.md explains why.
    expect(fs.readFileSync(path.join(deployDir, 'README.md'), 'utf8')).toMatch(/DAC_READ_SEARCH[\s\S]*readOnlyRootFilesystem/);
  });

  it('the container image is pinned, and the kustomization rewrites that image', () => {
    const image = agent().image;
    expect(image).toMatch(/:[\w][\w.-]*$|@sha256:/);
    expect(image).not.toMatch(/:latest$/);
    const name = image.replace(/[:@].*$/, '');
    const entry = kustomization.images?.find((i) => i.name === name);
    expect(entry, `kustomization images: entry for ${name}`).toBeDefined();
    expect(entry!.newTag ?? image.split(':').at(-1)).toBe(packageJson.version);
  });

  it('environment: variables tender reads, from keys the Secrets have', () => {
    const c = agent();
    const secrets = secretKeys();
    const env = new Map((c.env ?? []).map((e) => [e.name, e]));
    const argvVars = new Set(agentArgv().argv.flatMap((a) => [...a.matchAll(/\$\((\w+)\)/g)].map((m) => m[1]!)));
    for (const e of c.env ?? []) {
      expect(knownVars.has(e.name) || argvVars.has(e.name), `${e.name} is neither read by tender nor passed in its args`).toBe(true);
      const ref = e.valueFrom?.secretKeyRef;
      if (ref) {
        expect(secrets.get(ref.name), `Secret ${ref.name} in deploy/`).toBeDefined();
        expect(secrets.get(ref.name)!.has(ref.key), `Secret ${ref.name} has no key ${ref.key} (for ${e.name})`).toBe(true);
      }
    }
    for (const f of c.envFrom ?? []) if (f.secretRef) expect(secrets.has(f.secretRef.name)).toBe(true);
    for (const name of ['TENDER_REPOSITORY', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) expect(env.has(name), name).toBe(true);
    expect(env.get('TENDER_REPOSITORY')!.valueFrom?.secretKeyRef).toBeDefined();
    for (const v of podSpec().volumes ?? []) {
      if (!v.secret) continue;
      expect(secrets.get(v.secret.secretName), `Secret ${v.secret.secretName}`).toBeDefined();
      for (const item of v.secret.items ?? []) expect(secrets.get(v.secret.secretName)!.has(item.key), `Secret key ${item.key}`).toBe(true);
    }
    // The password file is a key of a mounted Secret.
    const pwFile = env.get('TENDER_PASSWORD_FILE')?.value;
    expect(pwFile, 'TENDER_PASSWORD_FILE').toBeDefined();
    const pw = volumeAt(pwFile!);
    expect(pw.volume.secret, `${pw.mount.name} is a Secret volume`).toBeDefined();
    expect(pw.volume.secret!.items ? pw.volume.secret!.items.some((i) => i.path === pw.rel) : secrets.get(pw.volume.secret!.secretName)!.has(pw.rel)).toBe(true);
    expect(env.has('TENDER_PASSWORD'), 'the password comes from a file, not a variable').toBe(false);
  });

  it('the Secrets are templates: every value is a placeholder', () => {
    const secrets = manifests.filter((m) => m.kind === 'Secret') as Array<K8sObject & { stringData?: Record<string, string>; data?: Record<string, string> }>;
    expect(secrets.map((s) => s.metadata.name).sort()).toEqual(['tender-api-token', 'tender-repository']);
    for (const secret of secrets) {
      expect(secret.data).toBeUndefined();
      const values = Object.values(secret.stringData ?? {});
      expect(values.length).toBeGreaterThan(0);
      for (const v of values) expect(v).toMatch(/CHANGE-ME/);
    }
  });

  it('kustomization.yaml lists every manifest file, and only those', () => {
    expect([...kustomization.resources].sort()).toEqual(manifestFiles);
    for (const r of kustomization.resources) expect(fs.existsSync(path.join(deployDir, r)), r).toBe(true);
  });

  const kubectl = (() => {
    try {
      execFileSync('kubectl', ['version', '--client'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  })();
  it.skipIf(!kubectl)(`kubectl kustomize builds deploy/${kubectl ? '' : ' (SKIPPED: no kubectl on PATH)'}`, () => {
    const out = execFileSync('kubectl', ['kustomize', deployDir], { encoding: 'utf8' });
    const kinds = YAML.parseAllDocuments(out).map((d) => (d.toJS() as K8sObject).kind);
    expect(kinds.sort()).toEqual(manifests.map((m) => m.kind).sort());
  });
});
