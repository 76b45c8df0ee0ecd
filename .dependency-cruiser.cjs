/**
 * Which way imports may point inside src/ (docs: .scratch/engine-api.md "Layers"; STYLE.md §4).
 * Lowest layer first:
 *
 *   errors/                      nothing from src/
 *   util/                        errors
 *   crypto/                      util, errors
 *   transform/                   crypto, util, errors
 *   workers/                     transform, crypto, util, errors
 *   storage/                     util, errors  (knows nothing of repositories)
 *   repo/                        storage, transform, crypto, workers, util, errors
 *   operations: backup/ restore/ prune/ check/ policy/ snapshots/
 *                                repo and everything under it except storage/ (only the
 *                                repository touches storage objects), and each other
 *   velero/                      the Velero data-mover controller, at the agent's level: operations,
 *                                repo, storage/open, util, errors; never agent/ or cli/ (the agent
 *                                composes it and hands it the run queue)
 *   cli/ agent/                  anything; cli/ may use agent/ only through its entry
 *                                (agent/agent.ts), agent/ never uses cli/
 *
 * Plus: no import cycles; src/ never imports test code, vitest or a devDependency at run time.
 * Run by hand: `npm run lint:deps`; test/boundaries.test.ts runs it with the tests.
 */
const known = 'errors|util|crypto|transform|workers|storage|repo|backup|restore|prune|check|policy|snapshots|velero|cli|agent';
const operations = 'backup|restore|prune|check|policy|snapshots';

/** A rule: files under `from` may import from src/ only what is under `allowed` (folder names). */
function onlyImports(name, from, allowed, comment) {
  return {
    name,
    comment,
    severity: 'error',
    from: { path: `^src/(${from})/` },
    to: { path: '^src/', pathNot: `^src/(${allowed})/` },
  };
}

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'Import cycles: one of the modules belongs in a lower layer, or the shared part in a module of its own.',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
    onlyImports('errors-imports-nothing', 'errors', 'errors', 'errors/ is the bottom layer: it imports nothing else from src/.'),
    onlyImports('util-only-errors', 'util', 'util|errors', 'util/ may import errors/ only.'),
    onlyImports('crypto-only-util', 'crypto', 'crypto|util|errors', 'crypto/ sits on util/ and errors/ only.'),
    onlyImports('transform-only-crypto', 'transform', 'transform|crypto|util|errors', 'transform/ may use crypto/, util/, errors/.'),
    onlyImports('workers-only-transform', 'workers', 'workers|transform|crypto|util|errors', 'workers/ may use transform/, crypto/, util/, errors/.'),
    onlyImports('storage-only-util', 'storage', 'storage|util|errors', 'storage/ knows nothing of repositories: util/ and errors/ only.'),
    onlyImports(
      'repo-not-operations',
      'repo',
      'repo|storage|transform|crypto|workers|util|errors',
      'repo/ may use storage/, transform/, crypto/, workers/, util/, errors/; never an operation, cli/ or agent/.',
    ),
    {
      name: 'operations-not-cli-agent',
      comment: 'Operations are a library: cli/, agent/ and velero/ call them, never the other way.',
      severity: 'error',
      from: { path: `^src/(${operations})/` },
      to: { path: '^src/(cli|agent|velero)/' },
    },
    {
      name: 'velero-agent-level',
      comment: 'velero/ is a controller the agent composes: operations, repo, storage/open, util, errors; never agent/, cli/ or the storage backends.',
      severity: 'error',
      from: { path: '^src/velero/' },
      to: { path: '^src/', pathNot: `^src/(velero|${operations}|repo|util|errors)/|^src/storage/open[.]ts$` },
    },
    {
      name: 'operations-not-storage',
      comment: 'Only the repository touches storage objects: operations go through repo/.',
      severity: 'error',
      from: { path: `^src/(${operations})/` },
      to: { path: '^src/storage/' },
    },
    {
      name: 'cli-only-agent-entry',
      comment: 'cli/ may start the agent through its entry (agent/agent.ts), not reach into its internals.',
      severity: 'error',
      from: { path: '^src/cli/' },
      to: { path: '^src/agent/', pathNot: '^src/agent/(agent|index)[.]ts$' },
    },
    {
      name: 'agent-not-cli',
      comment: 'agent/ is a composition root of its own: operations, repo, storage/open, util, errors; never cli/.',
      severity: 'error',
      from: { path: '^src/agent/' },
      to: { path: '^src/cli/' },
    },
    {
      name: 'layer-unknown',
      comment: 'A folder under src/ that is in no layer: add it to .dependency-cruiser.cjs.',
      severity: 'error',
      from: { path: '^src/[^/]+/', pathNot: `^src/(${known})/` },
      to: {},
    },
    {
      name: 'src-not-test-code',
      comment: 'Shipped code (dist/) never imports tests, test helpers or the test runner.',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(test|bench)/|(^|/)node_modules/(vitest|@vitest|vite|vite-node|fast-check)/' },
    },
    {
      name: 'src-not-dev-dependencies',
      comment: 'A devDependency is not installed in production: src/ may not import one at run time.',
      severity: 'error',
      from: { path: '^src/' },
      to: { dependencyTypes: ['npm-dev'], dependencyTypesNot: ['type-only'] },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|native/build)/' },
    // Type-only imports count: a layer that needs another's types depends on it.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
    },
    moduleSystems: ['es6', 'cjs'],
  },
};
