/**
 * The Helm chart (charts/tender) and the plain manifests (deploy/), rendered and then checked two
 * ways:
 *
 * - by reading them: `helm lint` and `helm template` (helm built by scripts/helm.sh from the Go
 *   module proxy) with the default values and with a few value sets; the DaemonSet runs
 *   `tender agent` with flags the real CLI has (`node bin/tender.js agent --help`, which runs
 *   dist/: build first), every path a flag names is a mount of the right volume, the policy in
 *   the ConfigMap is accepted by the agent's own parser (dist/agent/policy.js), the probes hit
 *   the port the agent listens on, RBAC is exactly the least-privilege set;
 * - by the real kube-apiserver (test/setup/kube.ts, scripts/kube-test-cluster.sh): every rendered
 *   object is created there with fieldValidation=Strict (an unknown or misspelled field is an
 *   error, not a warning), so the API server's own schemas and validation judge them. The chart's
 *   objects are created for real, each value set in a namespace of its own under a release name
 *   of its own (cluster-scoped names carry the release name); deploy/'s objects, whose names are
 *   fixed, are sent as a server-side dry run (dryRun=All) into a fresh namespace. The RBAC of a
 *   created release is then asked (SubjectAccessReview) what its ServiceAccount may do.
 *
 * ServiceMonitor: the Prometheus Operator's CRD is not installed in the test API server, so the
 * test installs a minimal ServiceMonitor CRD (monitoring.coreos.com/v1, the fields the chart
 * renders, with the operator's patterns for durations and its enum for the scheme) and creates
 * the chart's ServiceMonitor against it. It validates field names, types and formats, not the
 * operator's full schema.
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import type { KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { testKubeConfig } from './helpers/kube.js';

const run = promisify(execFile);
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const chartDir = path.join(repoRoot, 'charts', 'tender');
const deployDir = path.join(repoRoot, 'deploy');
const tenderBin = path.join(repoRoot, 'bin', 'tender.js');
const read = (rel: string): string => fs.readFileSync(path.join(repoRoot, rel), 'utf8');
const packageJson = JSON.parse(read('package.json')) as { version: string };
/** The agent's own policy parser (dist/: build first): what it rejects, the agent would too. */
const { parsePolicy } = (await import(pathToFileURL(path.join(repoRoot, 'dist', 'agent', 'policy.js')).href)) as {
  parsePolicy: (text: string, source?: string) => Record<string, unknown>;
};

// ------------------------------------------------------------------ objects

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [k: string]: unknown;
}

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    fieldRef?: { fieldPath: string };
    secretKeyRef?: { name: string; key: string; optional?: boolean };
  };
}
interface Probe {
  httpGet?: { path: string; port: string | number; scheme?: string };
}
interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  ports?: Array<{ name?: string; containerPort: number }>;
  env?: EnvVar[];
  livenessProbe?: Probe;
  readinessProbe?: Probe;
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
interface Volume {
  name: string;
  hostPath?: { path: string; type?: string };
  emptyDir?: { sizeLimit?: string };
  configMap?: { name: string; items?: Array<{ key: string; path: string }> };
  secret?: { secretName: string; items?: Array<{ key: string; path: string }> };
}
interface PodSpec {
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  priorityClassName?: string;
  hostPID?: boolean;
  hostNetwork?: boolean;
  hostIPC?: boolean;
  nodeSelector?: Record<string, string>;
  tolerations?: Array<{ key?: string; operator?: string; value?: string; effect?: string }>;
  containers: Container[];
  volumes?: Volume[];
}
type DaemonSet = K8sObject & {
  spec: { selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string>; annotations?: Record<string, string> }; spec: PodSpec } };
};
interface Rule {
  apiGroups?: string[];
  resources?: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
  verbs: string[];
}

function parseDocs(text: string, where: string): K8sObject[] {
  return YAML.parseAllDocuments(text).flatMap((doc) => {
    if (doc.errors.length) throw new Error(`${where}: ${doc.errors[0]!.message}`);
    const o = doc.toJS() as K8sObject | null;
    return o ? [o] : [];
  });
}

/** The objects of deploy/ (what kustomization.yaml lists). */
const deployObjects = (): K8sObject[] =>
  fs
    .readdirSync(deployDir)
    .filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml')
    .flatMap((f) => parseDocs(fs.readFileSync(path.join(deployDir, f), 'utf8'), `deploy/${f}`));

const byKind = (objs: K8sObject[], kind: string): K8sObject[] => objs.filter((o) => o.kind === kind);
function only<T = K8sObject>(objs: K8sObject[], kind: string): T {
  const hits = byKind(objs, kind);
  expect(hits.map((h) => h.metadata.name), `exactly one ${kind}`).toHaveLength(1);
  return hits[0] as unknown as T;
}

// ------------------------------------------------------------------ the real CLI

/** Long options of `tender agent` → whether each takes a value, from its --help; undefined when there is no agent command. */
function agentOptions(): Map<string, boolean> | undefined {
  const top = execFileSync(process.execPath, [tenderBin, '--help'], { encoding: 'utf8', env: { ...process.env, COLUMNS: '200' } });
  if (!/^ {2}agent\b/m.test(top.split(/^Commands:/m)[1] ?? '')) return undefined;
  const help = execFileSync(process.execPath, [tenderBin, 'agent', '--help'], { encoding: 'utf8', env: { ...process.env, COLUMNS: '200' } });
  const options = new Map<string, boolean>();
  let section = '';
  for (const line of help.split('\n')) {
    const header = /^(\w[\w ]*):\s*$/.exec(line);
    if (header) {
      section = header[1]!;
      continue;
    }
    if (section !== 'Options') continue;
    const m = /^ {2}(?:-\w, )?(--[a-z][\w-]*)( <[^>]+>| \[[^\]]+\])?/.exec(line);
    if (m) options.set(m[1]!, !!m[2]);
  }
  // Global options (--repo, --ca-bundle, ...) are accepted after the command too.
  for (const line of top.split(/^Commands:/m)[0]!.split('\n')) {
    const m = /^ {2}(?:-\w, )?(--[a-z][\w-]*)( <[^>]+>| \[[^\]]+\])?/.exec(line);
    if (m && !options.has(m[1]!)) options.set(m[1]!, !!m[2]);
  }
  return options;
}

const cliAgent = agentOptions();
/** The flags the chart and deploy/ always pass to `tender agent`. */
const AGENT_FLAGS = ['--node-name', '--pods-dir', '--listen', '--config', '--state-dir', '--token-file'];

/** `--flag=value` / `--flag value` pairs of an argv (after the command). */
function flagsOf(args: string[]): Map<string, string | true> {
  const flags = new Map<string, string | true>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) flags.set(a.slice(0, eq), a.slice(eq + 1));
    else if (cliAgent?.get(a) && i + 1 < args.length) flags.set(a, args[++i]!);
    else flags.set(a, true);
  }
  return flags;
}

/** The image's ENTRYPOINT (exec form) of the final stage of the Dockerfile (stages inherit it from their base stage). */
function imageEntrypoint(): string[] {
  const byStage = new Map<string, string[] | undefined>();
  let stage = '';
  for (const line of read('Dockerfile').split('\n')) {
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$/i.exec(line);
    if (from) {
      stage = from[2] ?? `#${byStage.size}`;
      byStage.set(stage, byStage.get(from[1]!));
      continue;
    }
    const ep = /^ENTRYPOINT\s+(\[.*\])\s*$/.exec(line);
    if (ep) byStage.set(stage, JSON.parse(ep[1]!) as string[]);
  }
  return byStage.get(stage) ?? [];
}

/** Problems of `tender agent ARGS` against the real CLI: a missing command, unknown flags, a flag=value for a switch. */
function agentArgvProblems(args: string[]): string[] {
  if (!cliAgent) return ['the CLI has no `agent` command (node bin/tender.js --help; npm run build first)'];
  const problems: string[] = [];
  for (const a of args) {
    if (!a.startsWith('-')) continue;
    const name = a.split('=')[0]!;
    if (!cliAgent.has(name)) problems.push(`tender agent has no option ${name}`);
    else if (a.includes('=') && !cliAgent.get(name)) problems.push(`${name} takes no value`);
  }
  return problems;
}

/** `tender agent`'s arguments in a rendering's DaemonSet (after `agent`). */
const agentArgs = (objs: K8sObject[]): string[] => {
  const c = only<DaemonSet>(objs, 'DaemonSet').spec.template.spec.containers[0]!;
  return [...(c.command ?? imageEntrypoint()), ...(c.args ?? [])].slice(3);
};

// ------------------------------------------------------------------ what every rendering must be

interface Expect {
  namespace: string;
  /** existingSecret, when the credentials Secret is not the chart's. */
  credentialsSecret?: string;
  apiTokenSecret?: string;
  apiTokenKey?: string;
  listenPort?: number;
  podVolumePath?: string;
  stateHostPath?: string | null;
  priorityClassName?: string;
  /** Tolerations that must be there (besides nvidia.com/gpu, unless gpuToleration is false). */
  tolerations?: Array<Record<string, string>>;
  gpuToleration?: boolean;
  serviceMonitor?: boolean;
  /** The ClusterRole also gets namespaces (a namespaceSelector in the policy). */
  readNamespaces?: boolean;
  /** dataMover.enabled: the ClusterRole also grants what the Velero data mover does. */
  dataMover?: boolean;
}

const LEAST_PRIVILEGE: Rule[] = [
  { apiGroups: [''], resources: ['persistentvolumeclaims', 'persistentvolumes', 'pods'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: ['apps'], resources: ['replicasets'], verbs: ['get'] },
];

/** What the Velero data mover adds (docs/design.md, "Velero data mover"). */
const DATA_MOVER: Rule[] = [
  { apiGroups: ['velero.io'], resources: ['datauploads', 'datadownloads'], verbs: ['get', 'list', 'watch', 'update'] },
  { apiGroups: ['velero.io'], resources: ['deletebackuprequests'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: ['velero.io'], resources: ['backups'], verbs: ['get'] },
  { apiGroups: ['snapshot.storage.k8s.io'], resources: ['volumesnapshots'], verbs: ['get', 'create', 'delete'] },
  { apiGroups: ['snapshot.storage.k8s.io'], resources: ['volumesnapshotcontents'], verbs: ['get', 'create', 'update', 'delete'] },
  { apiGroups: [''], resources: ['pods'], verbs: ['create', 'delete'] },
  { apiGroups: [''], resources: ['persistentvolumeclaims'], verbs: ['create', 'update', 'delete'] },
  { apiGroups: [''], resources: ['persistentvolumes'], verbs: ['update', 'delete'] },
];

/** Rules as a set of (group, resource, verb) triples, so that how they are grouped does not matter. */
function ruleTriples(rules: Rule[]): string[] {
  const out = new Set<string>();
  for (const r of rules) {
    expect(r.resourceNames, 'no resourceNames').toBeUndefined();
    expect(r.nonResourceURLs, 'no nonResourceURLs').toBeUndefined();
    for (const g of r.apiGroups ?? []) for (const res of r.resources ?? []) for (const v of r.verbs) out.add(`${g}/${res}:${v}`);
  }
  return [...out].sort();
}

/**
 * The checks shared by every chart rendering and deploy/: returns the DaemonSet. `objs` are all
 * objects of the release (or of deploy/).
 */
function checkAgent(objs: K8sObject[], ex: Expect): DaemonSet {
  const ds = only<DaemonSet>(objs, 'DaemonSet');
  const pod = ds.spec.template.spec;
  for (const o of objs) {
    const clusterScoped = ['ClusterRole', 'ClusterRoleBinding', 'PriorityClass'].includes(o.kind);
    if (clusterScoped) expect(o.metadata.namespace, `${o.kind} ${o.metadata.name} is cluster-scoped`).toBeUndefined();
    else if (o.kind !== 'ServiceMonitor') expect(o.metadata.namespace, `${o.kind} ${o.metadata.name}`).toBe(ex.namespace);
  }
  // The selector picks the pods of the template.
  for (const [k, v] of Object.entries(ds.spec.selector.matchLabels)) expect(ds.spec.template.metadata.labels[k], `pod label ${k}`).toBe(v);

  expect(pod.containers).toHaveLength(1);
  const c = pod.containers[0]!;
  const mounts = c.volumeMounts ?? [];
  const volumes = pod.volumes ?? [];
  const volumeAt = (file: string) => {
    const m = mounts.filter((x) => file === x.mountPath || file.startsWith(x.mountPath + '/')).sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
    expect(m, `a volume mounted at or above ${file}`).toBeDefined();
    const v = volumes.find((x) => x.name === m!.name);
    expect(v, `volume ${m!.name}`).toBeDefined();
    return { mount: m!, volume: v!, rel: file === m!.mountPath ? '' : file.slice(m!.mountPath.length + 1) };
  };
  const env = new Map((c.env ?? []).map((e) => [e.name, e]));

  // ---- `tender agent` with flags the CLI has
  const argv = [...(c.command ?? imageEntrypoint()), ...(c.args ?? [])];
  expect(argv.slice(0, 2), 'node /app/bin/tender.js (the image ENTRYPOINT)').toEqual(['node', '/app/bin/tender.js']);
  expect(argv[2], 'the command').toBe('agent');
  const args = argv.slice(3);
  const flags = flagsOf(args);
  for (const f of AGENT_FLAGS) expect(flags.has(f), `tender agent ${f}`).toBe(true);
  expect(args.filter((a) => !a.startsWith('-')), 'no positional arguments').toEqual([]);
  // (That the CLI has these flags is checked once per rendering below: agentArgvProblems.)

  // ---- NODE_NAME from the downward API, passed on as --node-name
  expect(env.get('NODE_NAME')?.valueFrom?.fieldRef?.fieldPath, 'NODE_NAME from fieldRef spec.nodeName').toBe('spec.nodeName');
  expect(flags.get('--node-name')).toBe('$(NODE_NAME)');
  // Every $(VAR) in the args is a variable the container defines (else Kubernetes passes it verbatim).
  for (const a of args) for (const m of a.matchAll(/\$\((\w+)\)/g)) expect(env.has(m[1]!), `$(${m[1]}) is defined`).toBe(true);

  // ---- the kubelet pods dir: hostPath, read-only, HostToContainer, at --pods-dir
  const podsDir = flags.get('--pods-dir') as string;
  const pods = volumeAt(podsDir);
  expect(pods.rel).toBe('');
  expect(pods.volume.hostPath?.path).toBe(ex.podVolumePath ?? '/var/lib/kubelet/pods');
  expect(pods.mount.readOnly).toBe(true);
  expect(pods.mount.mountPropagation).toBe('HostToContainer');

  // ---- the state dir: writable, a hostPath (survives restarts) or an emptyDir
  const state = volumeAt(flags.get('--state-dir') as string);
  expect(state.rel).toBe('');
  expect(state.mount.readOnly ?? false, 'the state dir is writable').toBe(false);
  if (ex.stateHostPath === null) expect(state.volume.emptyDir).toBeDefined();
  else expect(state.volume.hostPath?.path).toBe(ex.stateHostPath ?? '/var/lib/tender');
  // Every other hostPath is read-only; no host namespaces.
  for (const v of volumes.filter((x) => x.hostPath && x.name !== state.volume.name)) {
    for (const m of mounts.filter((x) => x.name === v.name)) expect(m.readOnly, `${v.name} read-only`).toBe(true);
  }
  expect(pod.hostPID ?? false).toBe(false);
  expect(pod.hostNetwork ?? false).toBe(false);
  expect(pod.hostIPC ?? false).toBe(false);

  // ---- the policy: a key of a ConfigMap of the release, mounted as a directory (updates reach the pod)
  const config = volumeAt(flags.get('--config') as string);
  expect(config.volume.configMap, '--config is in a ConfigMap volume').toBeDefined();
  expect(config.mount.subPath, 'not a subPath mount: the kubelet would never update it').toBeUndefined();
  const cm = byKind(objs, 'ConfigMap').find((x) => x.metadata.name === config.volume.configMap!.name);
  expect(cm, `ConfigMap ${config.volume.configMap!.name}`).toBeDefined();
  const key = config.volume.configMap!.items?.find((i) => i.path === config.rel)?.key ?? config.rel;
  const policyText = (cm!.data as Record<string, string>)[key];
  expect(policyText, `ConfigMap key ${key}`).toBeDefined();
  expect(() => parsePolicy(policyText!, `ConfigMap ${cm!.metadata.name}`), 'the agent accepts the policy').not.toThrow();

  // ---- the API token and the repository password: files of Secret volumes
  const secretFile = (file: string, secretName: string, key: string) => {
    const s = volumeAt(file);
    expect(s.volume.secret?.secretName, `${file} comes from Secret ${secretName}`).toBe(secretName);
    expect(s.mount.readOnly).toBe(true);
    const item = s.volume.secret!.items?.find((i) => i.path === s.rel);
    expect(item?.key ?? s.rel, `${file} is key ${key}`).toBe(key);
  };
  const apiTokenSecret = ex.apiTokenSecret ?? byKind(objs, 'Secret').find((s) => /api-token$/.test(s.metadata.name))?.metadata.name;
  expect(apiTokenSecret, 'the API token Secret').toBeDefined();
  secretFile(flags.get('--token-file') as string, apiTokenSecret!, ex.apiTokenKey ?? 'token');
  const credentials = ex.credentialsSecret ?? byKind(objs, 'Secret').find((s) => !/api-token$/.test(s.metadata.name))?.metadata.name;
  expect(credentials, 'the credentials Secret').toBeDefined();
  const pwFile = env.get('TENDER_PASSWORD_FILE')?.value;
  expect(pwFile, 'TENDER_PASSWORD_FILE').toBeDefined();
  secretFile(pwFile!, credentials!, 'password');
  expect(env.has('TENDER_PASSWORD'), 'the password comes from a file, not a variable').toBe(false);
  for (const e of c.env ?? []) {
    const ref = e.valueFrom?.secretKeyRef;
    if (ref) expect(ref.name, `${e.name} from the credentials Secret`).toBe(credentials);
  }
  for (const name of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) expect(env.get(name)?.valueFrom?.secretKeyRef, name).toBeDefined();
  // Secrets the release makes have the keys the pod reads.
  for (const s of byKind(objs, 'Secret')) {
    const keys = new Set([...Object.keys((s.data as object) ?? {}), ...Object.keys((s.stringData as object) ?? {})]);
    for (const e of c.env ?? []) {
      const ref = e.valueFrom?.secretKeyRef;
      if (ref?.name === s.metadata.name && !ref.optional) expect(keys.has(ref.key), `Secret ${s.metadata.name} key ${ref.key}`).toBe(true);
    }
    if (s.metadata.name === apiTokenSecret) expect(keys.has(ex.apiTokenKey ?? 'token')).toBe(true);
  }

  // ---- the port: --listen, the container port, the probes
  const listen = flags.get('--listen') as string;
  const port = Number(/:(\d+)$/.exec(listen)?.[1]);
  expect(port, `--listen ${listen}`).toBe(ex.listenPort ?? 8085);
  const http = c.ports?.find((p) => p.containerPort === port);
  expect(http, `a container port ${port}`).toBeDefined();
  for (const [probe, p] of [
    ['livenessProbe', '/healthz'],
    ['readinessProbe', '/readyz'],
  ] as const) {
    const get = c[probe]?.httpGet;
    expect(get, `${probe}.httpGet`).toBeDefined();
    expect(get!.path).toBe(p);
    expect(get!.port === port || get!.port === http!.name, `${probe} port ${get!.port} is the agent's port ${port}`).toBe(true);
  }

  // ---- security context
  const sc = c.securityContext!;
  expect(sc.runAsUser).toBe(0);
  expect(sc.runAsNonRoot ?? false).toBe(false);
  expect(sc.privileged ?? false).toBe(false);
  expect(sc.allowPrivilegeEscalation).toBe(false);
  expect(sc.readOnlyRootFilesystem).toBe(true);
  expect(sc.capabilities?.drop).toEqual(['ALL']);
  expect(sc.capabilities?.add).toEqual(['DAC_READ_SEARCH']);

  // ---- resources, tolerations, priority
  expect(c.resources?.requests?.cpu).toBeDefined();
  expect(c.resources?.requests?.memory).toBeDefined();
  expect(c.resources?.limits?.memory).toBeDefined();
  if (ex.gpuToleration ?? true) {
    expect(pod.tolerations).toEqual(expect.arrayContaining([{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }]));
  }
  for (const t of ex.tolerations ?? []) expect(pod.tolerations).toEqual(expect.arrayContaining([t]));
  expect(pod.priorityClassName, 'priorityClassName').toBeDefined();
  if (ex.priorityClassName) {
    expect(pod.priorityClassName).toBe(ex.priorityClassName);
    expect(byKind(objs, 'PriorityClass'), 'no PriorityClass of its own').toEqual([]);
  } else {
    const pc = only<K8sObject & { value: number; preemptionPolicy?: string; globalDefault?: boolean }>(objs, 'PriorityClass');
    expect(pc.metadata.name).toBe(pod.priorityClassName);
    expect(pc.value, 'low: backups yield to training').toBeLessThanOrEqual(0);
    expect(pc.value, 'not expendable to the cluster autoscaler').toBeGreaterThanOrEqual(-10);
    expect(pc.preemptionPolicy).toBe('Never');
    expect(pc.globalDefault ?? false).toBe(false);
  }

  // ---- RBAC: exactly the least-privilege set, bound to the pod's ServiceAccount
  const role = only<K8sObject & { rules: Rule[] }>(objs, 'ClusterRole');
  const wanted = [
    ...LEAST_PRIVILEGE,
    ...(ex.readNamespaces ? [{ apiGroups: [''], resources: ['namespaces'], verbs: ['get'] }] : []),
    ...(ex.dataMover ? DATA_MOVER : []),
  ];
  expect(ruleTriples(role.rules)).toEqual(ruleTriples(wanted));
  expect(byKind(objs, 'Role'), 'no namespaced Role').toEqual([]);
  const binding = only<K8sObject & { roleRef: Record<string, string>; subjects: Array<Record<string, string>> }>(objs, 'ClusterRoleBinding');
  expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role.metadata.name });
  const sa = only(objs, 'ServiceAccount');
  expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: ex.namespace }]);
  expect(pod.serviceAccountName).toBe(sa.metadata.name);
  expect(pod.automountServiceAccountToken ?? true, 'the agent needs its API token').toBe(true);
  return ds;
}

// ------------------------------------------------------------------ helm

let helmBin = '';
let helmHome = '';

async function helm(args: string[]): Promise<string> {
  try {
    const { stdout } = await run(helmBin, args, {
      maxBuffer: 16 * 1024 * 1024,
      env: {
        ...process.env,
        HELM_CACHE_HOME: path.join(helmHome, 'cache'),
        HELM_CONFIG_HOME: path.join(helmHome, 'config'),
        HELM_DATA_HOME: path.join(helmHome, 'data'),
      },
    });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw new Error(`helm ${args.join(' ')}: ${e.stderr || e.stdout || e.message}`);
  }
}

function valuesFile(values: object): string {
  const f = path.join(helmHome, `values-${randomBytes(4).toString('hex')}.yaml`);
  fs.writeFileSync(f, YAML.stringify(values));
  return f;
}

async function render(values: object, opts: { release?: string; namespace?: string; apiVersions?: string[]; showNotes?: boolean } = {}): Promise<K8sObject[]> {
  const args = ['template', opts.release ?? 'tender', chartDir, '--namespace', opts.namespace ?? 'velero', '-f', valuesFile(values)];
  for (const v of opts.apiVersions ?? []) args.push('--api-versions', v);
  return parseDocs(await helm(args), 'helm template');
}

interface ValueSet {
  name: string;
  values: Record<string, unknown>;
  apiVersions?: string[];
  expect: Omit<Expect, 'namespace'>;
  /** Extra checks of the rendering. */
  check?: (objs: K8sObject[], ds: DaemonSet) => void;
}

const container = (ds: DaemonSet) => ds.spec.template.spec.containers[0]!;
const envOf = (ds: DaemonSet) => new Map((container(ds).env ?? []).map((e) => [e.name, e]));

const VALUE_SETS: ValueSet[] = [
  {
    name: 'defaults',
    values: {},
    expect: {},
    check: (objs, ds) => {
      expect(objs.map((o) => o.kind).sort()).toEqual(
        ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'DaemonSet', 'PriorityClass', 'Secret', 'Secret', 'Service', 'ServiceAccount'].sort(),
      );
      expect(container(ds).image).toBe(`registry.example.invalid/tender:${packageJson.version}`);
      expect(ds.spec.template.spec.nodeSelector).toEqual({ 'kubernetes.io/os': 'linux' });
      // No repository set: no TENDER_REPOSITORY (NOTES.txt warns), no AWS_REGION / endpoint.
      expect(envOf(ds).has('TENDER_REPOSITORY')).toBe(false);
      expect(envOf(ds).has('AWS_ENDPOINT_URL')).toBe(false);
      // The S3 keys are optional: without them the SDK's own chain (IRSA, pod identity) applies.
      expect(envOf(ds).get('AWS_ACCESS_KEY_ID')!.valueFrom!.secretKeyRef!.optional).toBe(true);
      // Annotation-based scraping when there is no ServiceMonitor.
      expect(ds.spec.template.metadata.annotations).toMatchObject({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': '8085', 'prometheus.io/path': '/metrics' });
      // The default policy is the one deploy/ ships.
      const deployCm = parseDocs(read('deploy/configmap.yaml'), 'deploy/configmap.yaml')[0]!;
      expect((only(objs, 'ConfigMap').data as Record<string, string>)['policy.yaml']).toBe((deployCm.data as Record<string, string>)['policy.yaml']);
    },
  },
  {
    name: 'existing secrets',
    values: {
      credentials: { existingSecret: 'my-tender-credentials', secretContents: { password: 'ignored' } },
      apiToken: { existingSecret: 'my-tender-api', key: 'bearer' },
      configuration: { repository: 's3://bucket/tender' },
    },
    expect: { credentialsSecret: 'my-tender-credentials', apiTokenSecret: 'my-tender-api', apiTokenKey: 'bearer' },
    check: (objs, ds) => {
      expect(byKind(objs, 'Secret'), 'the chart makes no Secret').toEqual([]);
      // Nothing of the chart's Secret to checksum.
      expect(ds.spec.template.metadata.annotations?.['checksum/secret']).toBeUndefined();
      expect(envOf(ds).get('TENDER_REPOSITORY')?.value).toBe('s3://bucket/tender');
    },
  },
  {
    name: 's3 credentials',
    values: {
      configuration: { repository: 's3://training-backups/tender', s3: { region: 'eu-west-1', endpoint: 'https://minio.example:9000' } },
      credentials: {
        secretContents: { password: 'correct horse', 'aws-access-key-id': 'AKIAEXAMPLE', 'aws-secret-access-key': 'secret/key+1' },
        extraEnvVars: { AWS_SESSION_TOKEN: 'session' },
      },
      apiToken: { value: 'a-fixed-token' },
    },
    expect: {},
    check: (objs, ds) => {
      const env = envOf(ds);
      expect(env.get('TENDER_REPOSITORY')?.value).toBe('s3://training-backups/tender');
      expect(env.get('AWS_REGION')?.value).toBe('eu-west-1');
      expect(env.get('AWS_ENDPOINT_URL')?.value).toBe('https://minio.example:9000');
      expect(env.get('AWS_SESSION_TOKEN')?.valueFrom?.secretKeyRef?.key).toBe('AWS_SESSION_TOKEN');
      const secrets = new Map(byKind(objs, 'Secret').map((s) => [s.metadata.name, s.data as Record<string, string>]));
      const creds = secrets.get('tender')!;
      const decoded = Object.fromEntries(Object.entries(creds).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]));
      expect(decoded).toEqual({
        password: 'correct horse',
        'aws-access-key-id': 'AKIAEXAMPLE',
        'aws-secret-access-key': 'secret/key+1',
        AWS_SESSION_TOKEN: 'session',
      });
      expect(Buffer.from(secrets.get('tender-api-token')!.token!, 'base64').toString()).toBe('a-fixed-token');
      // Pods restart when the credentials change.
      expect(ds.spec.template.metadata.annotations?.['checksum/secret']).toMatch(/^[0-9a-f]{64}$/);
    },
  },
  {
    name: 'serviceMonitor on',
    values: { metrics: { serviceMonitor: { enabled: true, additionalLabels: { release: 'kube-prometheus-stack' }, interval: '1m' } } },
    apiVersions: ['monitoring.coreos.com/v1/ServiceMonitor'],
    expect: { serviceMonitor: true },
    check: (objs, ds) => {
      const sm = only<K8sObject & { spec: { selector: { matchLabels: Record<string, string> }; namespaceSelector: { matchNames: string[] }; endpoints: Array<Record<string, string>> } }>(
        objs,
        'ServiceMonitor',
      );
      expect(sm.apiVersion).toBe('monitoring.coreos.com/v1');
      expect(sm.metadata.labels?.release).toBe('kube-prometheus-stack');
      const svc = only<K8sObject & { spec: { selector: Record<string, string>; ports: Array<{ name: string; port: number; targetPort: string | number }> } }>(objs, 'Service');
      // The ServiceMonitor selects the Service, by labels and port name; the Service selects the pods.
      for (const [k, v] of Object.entries(sm.spec.selector.matchLabels)) expect(svc.metadata.labels?.[k], `Service label ${k}`).toBe(v);
      expect(sm.spec.namespaceSelector.matchNames).toEqual([svc.metadata.namespace]);
      const ep = sm.spec.endpoints[0]!;
      expect(ep.path).toBe('/metrics');
      expect(ep.interval).toBe('1m');
      const port = svc.spec.ports.find((p) => p.name === ep.port);
      expect(port, `Service port ${ep.port}`).toBeDefined();
      const http = container(ds).ports!.find((p) => p.name === port!.targetPort || p.containerPort === port!.targetPort);
      expect(http?.containerPort).toBe(8085);
      for (const [k, v] of Object.entries(svc.spec.selector)) expect(ds.spec.template.metadata.labels[k], `pod label ${k}`).toBe(v);
      // No double scraping: no prometheus.io annotations next to a ServiceMonitor.
      expect(ds.spec.template.metadata.annotations?.['prometheus.io/scrape']).toBeUndefined();
    },
  },
  {
    name: 'custom tolerations and placement',
    values: {
      fullnameOverride: 'tender-agent',
      tolerations: [
        { key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' },
        { key: 'dedicated', operator: 'Equal', value: 'training', effect: 'NoExecute' },
      ],
      nodeSelector: { 'node.kubernetes.io/instance-type': 'p5.48xlarge' },
      priorityClassName: 'system-node-critical',
      podVolumePath: '/var/lib/k0s/kubelet/pods',
      stateDir: { hostPath: '', sizeLimit: '1Gi' },
      configuration: { listenPort: 9099, maxConcurrentRuns: 2 },
      resources: { requests: { cpu: '500m', memory: '1Gi' }, limits: { memory: '2Gi' } },
      podAnnotations: { 'example.com/team': 'ml-infra' },
    },
    expect: {
      tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'training', effect: 'NoExecute' }],
      priorityClassName: 'system-node-critical',
      podVolumePath: '/var/lib/k0s/kubelet/pods',
      stateHostPath: null,
      listenPort: 9099,
    },
    check: (objs, ds) => {
      expect(ds.metadata.name).toBe('tender-agent');
      // Helm merges a map value with the default one.
      expect(ds.spec.template.spec.nodeSelector).toEqual({ 'kubernetes.io/os': 'linux', 'node.kubernetes.io/instance-type': 'p5.48xlarge' });
      expect(flagsOf(container(ds).args!.slice(1)).get('--max-concurrent-runs')).toBe('2');
      // Merged with the default too: the default CPU limit stays.
      expect(container(ds).resources).toEqual({ requests: { cpu: '500m', memory: '1Gi' }, limits: { cpu: '2', memory: '2Gi' } });
      expect(ds.spec.template.metadata.annotations?.['example.com/team']).toBe('ml-infra');
      expect(only<K8sObject & { spec: { ports: Array<{ port: number }> } }>(objs, 'Service').spec.ports[0]!.port).toBe(9099);
      const state = ds.spec.template.spec.volumes!.find((v) => v.name === 'state')!;
      expect(state.emptyDir).toEqual({ sizeLimit: '1Gi' });
    },
  },
  {
    name: 'a namespaceSelector policy',
    values: {
      configuration: {
        policy: 'defaultVolumes: emptyDir\ninterval: 30m\nnamespaceSelector:\n  matchLabels: { tender.io/backup: "on" }\nexcludeNamespaces: [kube-system]\n',
        logLevel: 'debug',
      },
    },
    expect: { readNamespaces: true },
    check: (objs, ds) => {
      const policy = parsePolicy((only(objs, 'ConfigMap').data as Record<string, string>)['policy.yaml']!);
      expect(policy).toMatchObject({ defaultVolumes: 'emptyDir', schedule: { intervalMs: 30 * 60_000 }, namespaceSelector: { matchLabels: { 'tender.io/backup': 'on' } } });
      expect(envOf(ds).get('TENDER_LOG_LEVEL')?.value).toBe('debug');
    },
  },
  {
    name: 'without the GPU toleration',
    values: { tolerations: [], rbac: { create: true }, metrics: { enabled: false } },
    expect: { gpuToleration: false },
    check: (objs, ds) => {
      expect(ds.spec.template.spec.tolerations).toBeUndefined();
      expect(byKind(objs, 'Service')).toEqual([]);
      expect(ds.spec.template.metadata.annotations?.['prometheus.io/scrape']).toBeUndefined();
    },
  },
];

beforeAll(async () => {
  helmHome = fs.mkdtempSync(path.join(os.tmpdir(), 'tender-helm-'));
  // Builds helm the first time (minutes; .ci/run builds it before the tests).
  const { stdout } = await run('bash', [path.join(repoRoot, 'scripts', 'helm.sh'), 'path'], { timeout: 30 * 60_000, maxBuffer: 16 * 1024 * 1024 });
  helmBin = stdout.trim().split('\n').pop()!;
}, 30 * 60_000);

afterAll(() => {
  if (helmHome) fs.rmSync(helmHome, { recursive: true, force: true });
});

describe('charts/tender rendered by helm', () => {
  it('is helm v4, the pinned version', async () => {
    const pinned = /HELM_VERSION='(v[\d.]+)'/.exec(read('scripts/helm.sh'))![1]!;
    expect((await helm(['version', '--template', '{{.Version}}'])).trim()).toBe(pinned);
    expect(pinned).toMatch(/^v4\./);
  });

  it('Chart.yaml: apiVersion v2, appVersion is the package version', () => {
    const chart = YAML.parse(read('charts/tender/Chart.yaml')) as Record<string, string>;
    expect(chart.apiVersion).toBe('v2');
    expect(chart.name).toBe('tender');
    expect(chart.type).toBe('application');
    expect(chart.appVersion).toBe(packageJson.version);
    expect(chart.version).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('values.yaml follows the Velero chart where they overlap, and documents every top-level key', () => {
    const text = read('charts/tender/values.yaml');
    const values = YAML.parse(text) as Record<string, any>;
    expect(Object.keys(values.image).sort()).toEqual(expect.arrayContaining(['repository', 'tag', 'pullPolicy', 'digest', 'imagePullSecrets']));
    for (const k of ['podAnnotations', 'podLabels', 'tolerations', 'nodeSelector', 'affinity', 'priorityClassName', 'resources', 'podSecurityContext', 'containerSecurityContext', 'podVolumePath', 'extraVolumes', 'extraVolumeMounts', 'nameOverride', 'fullnameOverride']) {
      expect(values, k).toHaveProperty(k);
    }
    expect(values.credentials).toMatchObject({ existingSecret: '', secretContents: {}, extraEnvVars: {} });
    expect(values.configuration).toHaveProperty('extraArgs');
    expect(values.configuration).toHaveProperty('extraEnvVars');
    expect(values.metrics).toMatchObject({ enabled: true, serviceMonitor: { enabled: false, autodetect: true } });
    expect(values.rbac).toEqual({ create: true, readNamespaces: false });
    // A comment right above every top-level key.
    const lines = text.split('\n');
    for (const key of Object.keys(values)) {
      const at = lines.findIndex((l) => l.startsWith(`${key}:`));
      expect(lines[at - 1], `a comment above ${key}`).toMatch(/^#/);
    }
  });

  it('helm lint --strict passes with the defaults and with every value set', async () => {
    const out = await helm(['lint', chartDir, '--strict']);
    expect(out).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
    for (const set of VALUE_SETS) {
      const args = ['lint', chartDir, '--strict', '-f', valuesFile(set.values)];
      expect(await helm(args), set.name).toMatch(/0 chart\(s\) failed/);
    }
  });

  it('helm lint fails on a broken value (the check can fail)', async () => {
    await expect(helm(['lint', chartDir, '--strict', '--set', 'tolerations=oops'])).rejects.toThrow();
  });

  for (const set of VALUE_SETS) {
    it(`helm template (${set.name}): the agent, its mounts, probes, RBAC`, async () => {
      const objs = await render(set.values, set.apiVersions ? { apiVersions: set.apiVersions } : {});
      const ds = checkAgent(objs, { namespace: 'velero', ...set.expect });
      expect(byKind(objs, 'ServiceMonitor').length, 'ServiceMonitor').toBe(set.expect.serviceMonitor ? 1 : 0);
      set.check?.(objs, ds);
    });
  }

  it('every rendering, and deploy/, passes `tender agent` only flags the CLI has', async () => {
    const renderings: Array<[string, string[]]> = [];
    for (const set of VALUE_SETS) renderings.push([set.name, agentArgs(await render(set.values, set.apiVersions ? { apiVersions: set.apiVersions } : {}))]);
    renderings.push(['deploy/', agentArgs(deployObjects())]);
    // The check can fail.
    expect(agentArgvProblems(['--no-such-flag=1']).length).toBe(1);
    for (const [name, args] of renderings) {
      expect(args.length, name).toBeGreaterThan(0);
      expect(agentArgvProblems(args), `${name}: tender agent ${args.join(' ')}`).toEqual([]);
    }
    // The flags the chart relies on (see AGENT_FLAGS) all take a value.
    for (const f of AGENT_FLAGS) expect(cliAgent?.get(f), `tender agent ${f} <value>`).toBe(true);
  });

  it('a policy that is not a YAML map fails the install; rbac.readNamespaces grants get on namespaces', async () => {
    await expect(render({ configuration: { policy: '- defaultVolumes: all\n' } })).rejects.toThrow(/configuration.policy is not a YAML map/);
    await expect(render({ configuration: { policy: 'interval: [' } })).rejects.toThrow(/configuration.policy is not a YAML map/);
    checkAgent(await render({ rbac: { readNamespaces: true } }), { namespace: 'velero', readNamespaces: true });
  });

  it("dataMover.enabled: --data-mover flags the CLI has, TENDER_IMAGE is the agent's image, the data mover's RBAC", async () => {
    const objs = await render({ dataMover: { enabled: true, prepareTimeoutSeconds: 600 } });
    const ds = checkAgent(objs, { namespace: 'velero', dataMover: true });
    const args = agentArgs(objs);
    expect(args).toEqual(expect.arrayContaining(['--data-mover', '--velero-namespace=velero', '--data-mover-prepare-timeout=600']));
    expect(agentArgvProblems(args)).toEqual([]);
    expect(container(ds).env?.find((e) => e.name === 'TENDER_IMAGE')?.value).toBe(container(ds).image);
    expect(agentArgs(await render({ dataMover: { enabled: true, veleroNamespace: 'backup-system' } }))).toContain('--velero-namespace=backup-system');
    // Off by default: no flag, no variable, the read-only ClusterRole (checked by checkAgent).
    const plain = only<DaemonSet>(await render({}), 'DaemonSet');
    expect(agentArgs(await render({})).filter((a) => a.startsWith('--data-mover'))).toEqual([]);
    expect(container(plain).env?.some((e) => e.name === 'TENDER_IMAGE')).toBe(false);
  });

  it('the ServiceMonitor: only when the CRD is served or autodetect is off', async () => {
    const on = { metrics: { serviceMonitor: { enabled: true } } };
    expect(byKind(await render(on), 'ServiceMonitor')).toHaveLength(0);
    expect(byKind(await render(on, { apiVersions: ['monitoring.coreos.com/v1/ServiceMonitor'] }), 'ServiceMonitor')).toHaveLength(1);
    expect(byKind(await render({ metrics: { serviceMonitor: { enabled: true, autodetect: false } } }), 'ServiceMonitor')).toHaveLength(1);
    expect(byKind(await render({ metrics: { enabled: false, serviceMonitor: { enabled: true, autodetect: false } } }), 'ServiceMonitor')).toHaveLength(0);
  });

  it('the release name and namespace flow into every name and reference', async () => {
    const objs = await render({}, { release: 'backup', namespace: 'ml-infra' });
    checkAgent(objs, { namespace: 'ml-infra' });
    expect(only(objs, 'DaemonSet').metadata.name).toBe('backup-tender');
    // A release named like the chart does not repeat it.
    expect(only(await render({}, { release: 'tender' }), 'DaemonSet').metadata.name).toBe('tender');
  });

  it('the generated API token is random per install, and a given one is kept', async () => {
    const token = async (values: object) =>
      Buffer.from((byKind(await render(values), 'Secret').find((s) => s.metadata.name.endsWith('api-token'))!.data as Record<string, string>).token!, 'base64').toString();
    const [a, b] = [await token({}), await token({})];
    expect(a).toMatch(/^[A-Za-z0-9]{40}$/);
    expect(a).not.toBe(b);
    expect(await token({ apiToken: { value: 'mine' } })).toBe('mine');
  });

  it('NOTES.txt warns about what is missing', async () => {
    const notes = await helm(['install', 'tender', chartDir, '--dry-run=client', '--namespace', 'velero']);
    expect(notes).toMatch(/WARNING: configuration.repository is empty/);
    expect(notes).toMatch(/WARNING: no repository password/);
    expect(notes).toMatch(/WARNING: image.repository is the placeholder/);
    const fine = await helm([
      'install', 'tender', chartDir, '--dry-run=client', '--namespace', 'velero', '-f',
      valuesFile({ image: { repository: 'ghcr.io/example/tender' }, configuration: { repository: 's3://b/p' }, credentials: { existingSecret: 'x' } }),
    ]);
    expect(fine).not.toMatch(/WARNING/);
  });
});

describe('deploy/ (by the same checks as the chart)', () => {
  it('the DaemonSet runs `tender agent` with the mounts, probes and RBAC of the chart', () => {
    checkAgent(deployObjects(), { namespace: 'velero', credentialsSecret: 'tender-repository', apiTokenSecret: 'tender-api-token' });
  });
});

// ------------------------------------------------------------------ the real kube-apiserver

/**
 * A small raw client: KubeConfig (client-node) for the server and the TLS client certificate,
 * and plain JSON over HTTPS. Not KubernetesObjectApi.create: its typed serializer rebuilds known
 * kinds from its models, so an unknown or misspelled field is dropped before it is sent (the
 * server could not refuse it) and `x-kubernetes-*` schema keys of a CRD are lost.
 */
class Kube {
  private readonly discovery = new Map<string, Array<{ name: string; kind: string; namespaced: boolean }>>();

  constructor(private readonly kc: KubeConfig) {}

  async request(method: string, urlPath: string, body?: unknown): Promise<{ status: number; json: any; warnings: string[] }> {
    const url = new URL(this.kc.getCurrentCluster()!.server.replace(/\/+$/, '') + urlPath);
    const opts: https.RequestOptions = {
      method,
      hostname: url.hostname,
      port: url.port,
      path: url.pathname + url.search,
      headers: { Accept: 'application/json', ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    };
    await this.kc.applyToHTTPSOptions(opts);
    return new Promise((resolve, reject) => {
      const req = https.request(opts, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: any;
          try {
            json = JSON.parse(text);
          } catch {
            json = { message: text };
          }
          const w = res.headers.warning;
          resolve({ status: res.statusCode ?? 0, json, warnings: w === undefined ? [] : ([] as string[]).concat(w) });
        });
      });
      req.on('error', reject);
      req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${urlPath}: no answer in 30 s`)));
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }

  /** The URL path of a kind's collection (in a namespace when it is namespaced). */
  async collection(apiVersion: string, kind: string, namespace?: string): Promise<string> {
    const base = apiVersion.includes('/') ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
    let resources = this.discovery.get(apiVersion);
    if (!resources?.some((r) => r.kind === kind)) {
      const r = await this.request('GET', base);
      if (r.status !== 200) throw new Error(`discovery of ${apiVersion}: ${r.status} ${r.json.message ?? ''}`);
      resources = (r.json.resources as Array<{ name: string; kind: string; namespaced: boolean }>).filter((x) => !x.name.includes('/'));
      this.discovery.set(apiVersion, resources);
    }
    const res = resources.find((r) => r.kind === kind);
    if (!res) throw new Error(`the API server serves no ${kind} in ${apiVersion}`);
    if (res.namespaced && !namespace) throw new Error(`${kind} is namespaced: give a namespace`);
    return `${base}${res.namespaced ? `/namespaces/${namespace}` : ''}/${res.name}`;
  }

  /** POST with fieldValidation=Strict (an unknown field is an error, not a warning). */
  async create(obj: K8sObject | Record<string, any>, opts: { dryRun?: boolean } = {}): Promise<{ status: number; json: any; warnings: string[] }> {
    const o = obj as K8sObject;
    const q = new URLSearchParams({ fieldValidation: 'Strict', ...(opts.dryRun ? { dryRun: 'All' } : {}) });
    return this.request('POST', `${await this.collection(o.apiVersion, o.kind, o.metadata?.namespace)}?${q}`, o);
  }

  async get(apiVersion: string, kind: string, name: string, namespace?: string): Promise<{ status: number; json: any }> {
    return this.request('GET', `${await this.collection(apiVersion, kind, namespace)}/${name}`);
  }
}

const uid = () => randomBytes(3).toString('hex');


describe('deploy/datamover/ (the data mover overlay)', () => {
  it('grants what the chart grants with dataMover.enabled, to the agent, and passes flags the CLI has', () => {
    const dir = path.join(deployDir, 'datamover');
    const objs = parseDocs(fs.readFileSync(path.join(dir, 'rbac.yaml'), 'utf8'), 'deploy/datamover/rbac.yaml');
    const role = only<K8sObject & { rules: Rule[] }>(objs, 'ClusterRole');
    expect(ruleTriples(role.rules)).toEqual(ruleTriples(DATA_MOVER));
    const binding = only<K8sObject & { roleRef: Record<string, string>; subjects: Array<Record<string, string>> }>(objs, 'ClusterRoleBinding');
    expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role.metadata.name });
    const sa = only(deployObjects(), 'ServiceAccount');
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: 'velero' }]);
    const kustomization = YAML.parse(fs.readFileSync(path.join(dir, 'kustomization.yaml'), 'utf8')) as { resources: string[]; patches: Array<{ target: { kind: string; name: string }; patch: string }> };
    expect(kustomization.resources).toEqual(['../', 'rbac.yaml']);
    const ds = only<DaemonSet>(deployObjects(), 'DaemonSet');
    const ops = kustomization.patches.flatMap((p) => {
      expect(p.target).toEqual({ kind: 'DaemonSet', name: ds.metadata.name });
      return YAML.parse(p.patch) as Array<{ op: string; path: string; value: unknown }>;
    });
    const args = ops.filter((o) => o.path === '/spec/template/spec/containers/0/args/-').map((o) => o.value as string);
    expect(args).toEqual(['--data-mover', '--velero-namespace=velero']);
    expect(agentArgvProblems(args)).toEqual([]);
    const env = ops.filter((o) => o.path === '/spec/template/spec/containers/0/env/-').map((o) => o.value as { name: string });
    expect(env.map((e) => e.name)).toEqual(['TENDER_IMAGE']);
  });
});
describe('in the real kube-apiserver', () => {
  let kube: Kube;

  beforeAll(() => {
    kube = new Kube(testKubeConfig());
  });

  async function createNamespace(prefix: string): Promise<string> {
    const name = `${prefix}-${uid()}`;
    const r = await kube.create({ apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
    expect(r.status, `namespace ${name}: ${r.json.message}`).toBe(201);
    return name;
  }

  /**
   * Creates every object (cluster-scoped and referenced ones first); returns what the server
   * stored (or would store, on a dry run). Any refusal fails the test with the server's message.
   */
  async function createAll(objs: K8sObject[], opts: { dryRun?: boolean } = {}): Promise<K8sObject[]> {
    const order = ['CustomResourceDefinition', 'PriorityClass', 'ClusterRole', 'ClusterRoleBinding', 'ServiceAccount', 'ConfigMap', 'Secret', 'Service', 'DaemonSet', 'ServiceMonitor'];
    const sorted = [...objs].sort((a, b) => order.indexOf(a.kind) - order.indexOf(b.kind));
    const stored: K8sObject[] = [];
    for (const o of sorted) {
      const r = await kube.create(o, opts);
      const what = `${o.kind} ${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name}${opts.dryRun ? ' (dry run)' : ''}`;
      expect(r.status, `the API server refused ${what}: ${r.json.message}`).toBe(201);
      // Deprecated or dropped fields come back as warnings: none expected.
      expect(r.warnings, `warnings for ${what}`).toEqual([]);
      stored.push(r.json as K8sObject);
    }
    return stored;
  }

  /**
   * A minimal ServiceMonitor CRD (monitoring.coreos.com/v1, the fields the chart renders, with
   * the Prometheus Operator's duration pattern and scheme enum), Established before it returns.
   * Created once per API server; a CRD that is already there is kept.
   */
  async function ensureServiceMonitorCrd(): Promise<void> {
    const duration = { type: 'string', pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$' };
    const free = { type: 'object', 'x-kubernetes-preserve-unknown-fields': true };
    const crd = {
      apiVersion: 'apiextensions.k8s.io/v1',
      kind: 'CustomResourceDefinition',
      metadata: { name: 'servicemonitors.monitoring.coreos.com' },
      spec: {
        group: 'monitoring.coreos.com',
        scope: 'Namespaced',
        names: { kind: 'ServiceMonitor', listKind: 'ServiceMonitorList', plural: 'servicemonitors', singular: 'servicemonitor', categories: ['prometheus-operator'] },
        versions: [
          {
            name: 'v1',
            served: true,
            storage: true,
            schema: {
              openAPIV3Schema: {
                type: 'object',
                required: ['spec'],
                properties: {
                  apiVersion: { type: 'string' },
                  kind: { type: 'string' },
                  metadata: { type: 'object' },
                  spec: {
                    type: 'object',
                    required: ['selector'],
                    properties: {
                      jobLabel: { type: 'string' },
                      namespaceSelector: { type: 'object', properties: { any: { type: 'boolean' }, matchNames: { type: 'array', items: { type: 'string' } } } },
                      selector: {
                        type: 'object',
                        'x-kubernetes-map-type': 'atomic',
                        properties: {
                          matchLabels: { type: 'object', additionalProperties: { type: 'string' } },
                          matchExpressions: {
                            type: 'array',
                            items: {
                              type: 'object',
                              required: ['key', 'operator'],
                              properties: { key: { type: 'string' }, operator: { type: 'string' }, values: { type: 'array', items: { type: 'string' } } },
                            },
                          },
                        },
                      },
                      endpoints: {
                        type: 'array',
                        items: {
                          type: 'object',
                          properties: {
                            port: { type: 'string' },
                            targetPort: { 'x-kubernetes-int-or-string': true, anyOf: [{ type: 'integer' }, { type: 'string' }] },
                            path: { type: 'string' },
                            scheme: { type: 'string', enum: ['http', 'https', 'HTTP', 'HTTPS'] },
                            interval: duration,
                            scrapeTimeout: duration,
                            honorLabels: { type: 'boolean' },
                            tlsConfig: free,
                            relabelings: { type: 'array', items: free },
                            metricRelabelings: { type: 'array', items: free },
                          },
                        },
                      },
                    },
                  },
                },
              },
            },
          },
        ],
      },
    };
    const r = await kube.create(crd);
    expect([201, 409], `creating the ServiceMonitor CRD: ${r.json.message}`).toContain(r.status);
    const deadline = Date.now() + 60_000;
    for (;;) {
      const got = await kube.get('apiextensions.k8s.io/v1', 'CustomResourceDefinition', crd.metadata.name);
      const conditions = (got.json.status?.conditions ?? []) as Array<{ type: string; status: string }>;
      if (conditions.some((c) => c.type === 'Established' && c.status === 'True')) break;
      if (Date.now() > deadline) throw new Error('the ServiceMonitor CRD did not become Established within 60 s');
      await new Promise((res) => setTimeout(res, 200));
    }
    // Its URLs answer a moment after Established: wait until a list works.
    for (;;) {
      const list = await kube.request('GET', '/apis/monitoring.coreos.com/v1/servicemonitors').catch(() => ({ status: 0, json: {} }));
      if (list.status === 200) return;
      if (Date.now() > deadline) throw new Error(`ServiceMonitors cannot be listed: ${list.status}`);
      await new Promise((res) => setTimeout(res, 200));
    }
  }

  /** What the RBAC authorizer lets a ServiceAccount do (in another namespace, or cluster-wide). */
  async function can(namespace: string, sa: string, verb: string, resource: string, group = ''): Promise<boolean> {
    const r = await kube.create({
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SubjectAccessReview',
      metadata: {},
      spec: {
        user: `system:serviceaccount:${namespace}:${sa}`,
        groups: ['system:serviceaccounts', `system:serviceaccounts:${namespace}`, 'system:authenticated'],
        resourceAttributes: { verb, resource, group, namespace: 'some-other-namespace' },
      },
    });
    expect(r.status, r.json.message).toBe(201);
    return r.json.status.allowed === true;
  }

  for (const set of VALUE_SETS) {
    it(`creates the chart's objects (${set.name})`, async () => {
      const ns = await createNamespace('helm');
      const release = `t${uid()}`;
      // fullnameOverride fixes the names, and cluster-scoped names must be unique in the API server.
      const values = typeof set.values.fullnameOverride === 'string' ? { ...set.values, fullnameOverride: `${set.values.fullnameOverride}-${uid()}` } : set.values;
      const objs = await render(values, { release, namespace: ns, ...(set.apiVersions ? { apiVersions: set.apiVersions } : {}) });
      if (byKind(objs, 'ServiceMonitor').length) await ensureServiceMonitorCrd();
      const stored = await createAll(objs);
      expect(stored.map((o) => o.kind).sort()).toEqual(objs.map((o) => o.kind).sort());
      // The stored DaemonSet runs what was rendered: nothing dropped or rewritten by the server.
      const ds = only<DaemonSet>(stored, 'DaemonSet');
      const rendered = only<DaemonSet>(objs, 'DaemonSet');
      expect(container(ds).args).toEqual(container(rendered).args);
      expect(container(ds).volumeMounts).toEqual(container(rendered).volumeMounts);
      expect(container(ds).securityContext).toEqual(container(rendered).securityContext);
      expect(container(ds).env?.map((e) => e.name)).toEqual(container(rendered).env?.map((e) => e.name));
      checkAgent(stored, { namespace: ns, ...set.expect });
    });
  }

  it("the chart's ServiceAccount may read what the agent needs, and nothing else (SubjectAccessReview)", async () => {
    const ns = await createNamespace('helm-rbac');
    const objs = await render({}, { release: `r${uid()}`, namespace: ns });
    await createAll(objs);
    const sa = only(objs, 'ServiceAccount').metadata.name;
    for (const r of ['pods', 'persistentvolumeclaims', 'persistentvolumes']) {
      for (const v of ['get', 'list', 'watch']) expect(await can(ns, sa, v, r), `${v} ${r}`).toBe(true);
      for (const v of ['create', 'update', 'patch', 'delete', 'deletecollection']) expect(await can(ns, sa, v, r), `${v} ${r}`).toBe(false);
    }
    expect(await can(ns, sa, 'get', 'replicasets', 'apps')).toBe(true);
    for (const v of ['list', 'watch', 'update', 'delete']) expect(await can(ns, sa, v, 'replicasets', 'apps'), `${v} replicasets`).toBe(false);
    expect(await can(ns, sa, 'get', 'namespaces'), 'get namespaces (no namespaceSelector)').toBe(false);
    for (const [r, g] of [
      ['secrets', ''],
      ['configmaps', ''],
      ['nodes', ''],
      ['pods/exec', ''],
      ['deployments', 'apps'],
      ['datauploads', 'velero.io'],
    ] as const) {
      expect(await can(ns, sa, 'get', r, g), `get ${g}/${r}`).toBe(false);
    }
  });

  it('creates deploy/ as a server-side dry run (dryRun=All) in a fresh namespace', async () => {
    const ns = await createNamespace('deploy');
    const objs = deployObjects().map((o) => {
      // What `kubectl apply -k` (namespace: velero) does, to the fresh namespace instead.
      const copy = structuredClone(o);
      if (copy.metadata.namespace) copy.metadata.namespace = ns;
      if (copy.kind === 'ClusterRoleBinding') for (const s of copy.subjects as Array<{ namespace?: string }>) s.namespace = ns;
      return copy;
    });
    const stored = await createAll(objs, { dryRun: true });
    expect(stored.map((o) => o.kind).sort()).toEqual(objs.map((o) => o.kind).sort());
    checkAgent(stored, { namespace: ns, credentialsSecret: 'tender-repository', apiTokenSecret: 'tender-api-token' });
  });

  it('the API server does judge: a bad mount propagation, an unknown field and a bad scrape interval are refused', async () => {
    const ns = await createNamespace('helm-bad');
    const objs = await render({ metrics: { serviceMonitor: { enabled: true, autodetect: false } } }, { release: `b${uid()}`, namespace: ns });
    const ds = only<DaemonSet>(objs, 'DaemonSet');
    const badPropagation = structuredClone(ds);
    container(badPropagation).volumeMounts!.find((m) => m.name === 'host-pods')!.mountPropagation = 'Sideways';
    const r1 = await kube.create(badPropagation, { dryRun: true });
    expect(r1.status).toBe(422);
    expect(r1.json.message).toMatch(/mountPropagation/);
    const unknownField = structuredClone(ds) as DaemonSet & { spec: { template: { spec: PodSpec & { hostPods?: boolean } } } };
    unknownField.spec.template.spec.hostPods = true;
    const r2 = await kube.create(unknownField, { dryRun: true });
    expect(r2.status).toBe(400);
    expect(r2.json.message).toMatch(/unknown field "spec.template.spec.hostPods"/);
    await ensureServiceMonitorCrd();
    const sm = structuredClone(only<K8sObject & { spec: { endpoints: Array<Record<string, string>> } }>(objs, 'ServiceMonitor'));
    sm.spec.endpoints[0]!.interval = '30 seconds';
    const r3 = await kube.create(sm, { dryRun: true });
    expect(r3.status).toBe(422);
    expect(r3.json.message).toMatch(/interval/);
  });
});
