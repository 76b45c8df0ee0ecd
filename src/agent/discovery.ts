/**
 * Discovery: the volumes of this node's pods that the policy protects, each with its directory on
 * the node (or the problem that stands in the way), its stable identity and tags, and its schedule.
 *
 * The pods come from a list+watch of `spec.nodeName=<node>` (client-node's ListWatch). An error
 * of the list or the watch (API server restarting, unreachable, 5xx, ...) is logged, counted and
 * retried with exponential backoff; in the meantime the last known pods stay protected. Watches
 * ask the server to end them every few minutes, and a watchdog starts afresh a watch that has
 * gone silent for longer than that (a connection a network failure left hanging). PVCs, PVs,
 * ReplicaSets and Namespaces are read on demand and cached. Nothing here throws out of a callback
 * or a timer: every failure is logged with the pod and volume it concerns.
 *
 * Every `resyncMs` all pods are evaluated again (a volume mounted since, a PVC bound since, a new
 * policy). Call refresh() to do that at once, e.g. when the config file changed.
 *
 * Events:
 *   'change' ({ added, updated, removed }: ProtectedVolume lists), after each batch of changes
 *   'watch-error' (err), each time the list or watch of pods failed (already logged and counted)
 */
import { EventEmitter } from 'node:events';
import {
  CoreV1Api,
  ListWatch,
  Watch,
  type KubeConfig,
  type KubernetesListObject,
  type V1Pod,
  type V1Volume,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { kubeErrorText, statusCode } from '../util/kube-errors.js';
import { OwnerResolver, volumeIdentity, volumeTags, type Owner } from './identity.js';
import { podInScope, podPolicy, type AgentPolicy, type PodQuiesce, type Schedule } from './policy.js';
import { checkVolumePath, claimName, locateVolume, readMountPoints, type ResolvedClaim } from './volumes.js';

export interface ProtectedVolume {
  /** `namespace/pod/volume` */
  key: string;
  namespace: string;
  pod: string;
  podUid: string;
  volume: string;
  /** The snapshot host: a stable identity across pod restarts (see identity.ts). */
  identity: string;
  /** `k8s.namespace=...` etc., for every snapshot of this volume. */
  tags: string[];
  /** The directory to back up, when it is there. */
  path?: string;
  /** Why there is no path (not mounted, PVC unbound, a secret volume, ...), for the user. */
  problem?: string;
  schedule: Schedule;
  /** The quiesce protocol the pod's annotations ask for. */
  quiesce?: PodQuiesce;
  /** The pod's IP (an http hook with an empty host calls it). */
  podIP?: string;
  /** Back it up as soon as a new checkpoint in it is complete (tender.io/trigger: checkpoint). */
  onCheckpoint?: true;
}

export interface DiscoveryChange {
  added: ProtectedVolume[];
  updated: ProtectedVolume[];
  removed: ProtectedVolume[];
}

export interface DiscoveryOptions {
  kubeConfig: KubeConfig;
  nodeName: string;
  /** The kubelet's pods directory as the agent sees it (--pods-dir). */
  podsDir: string;
  /** The policy in force (read at each evaluation, so a reloaded config applies). */
  policy: () => AgentPolicy;
  logger: Logger;
  /** Evaluate every pod again this often. Default 60 s. */
  resyncMs?: number;
  /** Check that CSI/NFS/... volume directories are mount points. Default true (tests turn it off). */
  checkMounts?: boolean;
  /**
   * The server ends each watch after this long; the watchdog starts afresh a watch silent for this
   * plus min(this, 30 s). Default 300.
   */
  watchTimeoutSeconds?: number;
  /** Retry delays after a failed list or watch: from initialMs, doubling, up to maxMs. Default 1 s .. 30 s. */
  backoff?: { initialMs: number; maxMs: number };
  /** How long a bound PVC → PV (and a Namespace's labels) is cached. Default 10 min. */
  cacheTtlMs?: number;
}

export interface DiscoveryStats {
  /** The first list of pods succeeded (volumes() reflects the API server). */
  synced: boolean;
  pods: number;
  volumes: number;
  /** Volumes with a problem instead of a path. */
  volumeProblems: number;
  /** Failed lists/watches of pods. */
  watchErrors: number;
  /** Watches started again after an error or a silence. */
  watchRestarts: number;
  /** Failed reads of PVCs, PVs, ReplicaSets, Namespaces. */
  apiErrors: number;
  /** Malformed pod annotations seen (each distinct problem once per pod). */
  annotationErrors: number;
}

interface PodEntry {
  uid: string;
  volumes: ProtectedVolume[];
  /** The annotation errors last logged, to log each once. */
  errors: string;
}

/** A Watch that asks the server to end each watch after a while, sends bookmarks, and reports activity. */
class TimedWatch extends Watch {
  constructor(
    config: KubeConfig,
    private readonly timeoutSeconds: number,
    private readonly onActivity: () => void,
  ) {
    super(config);
  }

  override async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    try {
      return await super.watch(
        path,
        { ...queryParams, timeoutSeconds: this.timeoutSeconds, allowWatchBookmarks: true },
        (phase, obj, w) => {
          this.onActivity();
          callback(phase, obj, w);
        },
        done,
      );
    } catch (err) {
      // Watch.watch rejects (instead of calling done) when the credentials cannot be applied, e.g.
      // an unreadable token file; ListWatch would let that rejection go unhandled.
      done(err);
      return new AbortController();
    }
  }
}

const podKey = (ns: string, name: string): string => `${ns}/${name}`;

function sameVolume(a: ProtectedVolume, b: ProtectedVolume): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export class Discovery extends EventEmitter {
  readonly #opts: DiscoveryOptions;
  readonly #log: Logger;
  readonly #core: CoreV1Api;
  readonly #owners: OwnerResolver;
  readonly #fieldSelector: string;
  readonly #watchTimeoutS: number;
  readonly #cacheTtlMs: number;

  /** Latest pod objects from the watch, by namespace/name. */
  readonly #pods = new Map<string, V1Pod>();
  /** What was worked out for each pod. */
  readonly #entries = new Map<string, PodEntry>();
  readonly #dirty = new Set<string>();
  #all = false;
  #draining: Promise<void> | undefined;

  readonly #claims = new Map<string, { resolved: ResolvedClaim; at: number }>();
  readonly #namespaces = new Map<string, { labels: Record<string, string>; at: number }>();

  #lw: ListWatch<V1Pod> | undefined;
  #gen = 0;
  #stopped = true;
  #attempt = 0;
  #lastErrorAt = 0;
  #lastActivity = 0;
  #restartTimer: NodeJS.Timeout | undefined;
  #resyncTimer: NodeJS.Timeout | undefined;
  #watchdog: NodeJS.Timeout | undefined;
  #synced = false;
  readonly #counters = { watchErrors: 0, watchRestarts: 0, apiErrors: 0, annotationErrors: 0 };

  constructor(opts: DiscoveryOptions) {
    super();
    this.#opts = opts;
    this.#log = opts.logger;
    this.#core = opts.kubeConfig.makeApiClient(CoreV1Api);
    this.#owners = new OwnerResolver({
      kubeConfig: opts.kubeConfig,
      logger: opts.logger,
      onApiError: () => this.#counters.apiErrors++,
    });
    this.#fieldSelector = `spec.nodeName=${opts.nodeName}`;
    this.#watchTimeoutS = opts.watchTimeoutSeconds ?? 300;
    this.#cacheTtlMs = opts.cacheTtlMs ?? 600_000;
  }

  /**
   * Start watching. Resolves once the first list of pods has been evaluated, or has failed (then
   * the watch keeps retrying in the background: see stats().synced). Never rejects.
   */
  async start(): Promise<void> {
    if (!this.#stopped) return;
    this.#stopped = false;
    const resyncMs = this.#opts.resyncMs ?? 60_000;
    this.#resyncTimer = setInterval(() => this.#markAll(), resyncMs);
    this.#resyncTimer.unref();
    // The server ends each watch after watchTimeoutSeconds; silence well past that is a dead connection.
    const silenceMs = (this.#watchTimeoutS + Math.min(30, this.#watchTimeoutS)) * 1000;
    this.#watchdog = setInterval(
      () => {
        if (this.#stopped || this.#restartTimer || Date.now() - this.#lastActivity < silenceMs) return;
        this.#log.warn(
          { node: this.#opts.nodeName, silentForMs: Date.now() - this.#lastActivity },
          'no word from the API server on the pod watch; starting it afresh',
        );
        void this.#newInformer();
      },
      Math.min(30_000, silenceMs / 2),
    );
    this.#watchdog.unref();
    await this.#newInformer();
    await this.idle();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#gen++;
    for (const t of [this.#restartTimer, this.#resyncTimer, this.#watchdog]) if (t) clearTimeout(t);
    this.#restartTimer = this.#resyncTimer = this.#watchdog = undefined;
    const lw = this.#lw;
    this.#lw = undefined;
    await lw?.stop().catch(() => undefined);
    await this.idle();
  }

  /** The protected volumes of this node's pods, with a path or a problem each. */
  volumes(): ProtectedVolume[] {
    return [...this.#entries.values()].flatMap((e) => e.volumes);
  }

  /** The pod object as last seen by the watch. */
  pod(namespace: string, name: string): V1Pod | undefined {
    return this.#pods.get(podKey(namespace, name));
  }

  find(namespace: string, pod: string, volume: string): ProtectedVolume | undefined {
    return this.#entries.get(podKey(namespace, pod))?.volumes.find((v) => v.volume === volume);
  }

  /** Evaluate every pod again now (e.g. the policy changed); resolves when done. */
  async refresh(): Promise<void> {
    this.#markAll();
    await this.idle();
  }

  /** Resolves when every change seen so far has been evaluated. */
  async idle(): Promise<void> {
    while (this.#draining) await this.#draining;
  }

  stats(): DiscoveryStats {
    const all = this.volumes();
    return {
      synced: this.#synced,
      pods: this.#pods.size,
      volumes: all.length,
      volumeProblems: all.filter((v) => v.problem !== undefined).length,
      ...this.#counters,
    };
  }

  // -------------------------------------------------------------------------------------------
  // The pod watch

  /** Start a fresh ListWatch (at start, and when the watchdog finds the current one silent). */
  async #newInformer(): Promise<void> {
    const gen = ++this.#gen;
    const old = this.#lw;
    this.#lw = undefined;
    if (old) {
      this.#counters.watchRestarts++;
      await old.stop().catch(() => undefined);
    }
    if (this.#stopped || gen !== this.#gen) return;
    this.#lastActivity = Date.now();
    const current = (): boolean => !this.#stopped && gen === this.#gen;
    const listFn = async (): Promise<KubernetesListObject<V1Pod>> => {
      const list = await this.#core.listPodForAllNamespaces({ fieldSelector: this.#fieldSelector });
      if (!current()) throw new Error('superseded');
      this.#onList(list.items);
      return list;
    };
    const watch = new TimedWatch(this.#opts.kubeConfig, this.#watchTimeoutS, () => {
      if (current()) this.#onActivity();
    });
    const lw = new ListWatch<V1Pod>('/api/v1/pods', watch, listFn, false, undefined, this.#fieldSelector);
    const guard =
      <A extends unknown[]>(what: string, fn: (...a: A) => void) =>
      (...a: A): void => {
        if (!current()) return;
        try {
          fn(...a);
        } catch (err) {
          this.#log.error({ err }, `internal error in the pod watch (${what})`);
        }
      };
    lw.on('add', guard('add', (pod: V1Pod) => this.#onPod(pod)));
    lw.on('update', guard('update', (pod: V1Pod) => this.#onPod(pod)));
    lw.on('delete', guard('delete', (pod: V1Pod) => this.#onDelete(pod)));
    lw.on('connect', guard('connect', () => this.#onConnect()));
    lw.on('error', guard('error', (err: unknown) => this.#onWatchError(err)));
    this.#lw = lw;
    try {
      await lw.start();
    } catch (err) {
      // Only our own callbacks could throw here, and they are guarded; be safe anyway.
      guard('start', (e: unknown) => this.#onWatchError(e))(err);
    }
  }

  #onActivity(): void {
    this.#lastActivity = Date.now();
    this.#attempt = 0;
  }

  #onConnect(): void {
    this.#lastActivity = Date.now();
    if (Date.now() - this.#lastErrorAt > 60_000) this.#attempt = 0;
  }

  #onList(items: V1Pod[]): void {
    this.#onActivity();
    const present = new Set(items.map((p) => podKey(p.metadata?.namespace ?? '', p.metadata?.name ?? '')));
    // Pods that went away while the watch was down (a new ListWatch does not know to report them).
    for (const key of this.#pods.keys()) {
      if (!present.has(key)) {
        this.#pods.delete(key);
        this.#mark(key);
      }
    }
    if (!this.#synced) {
      this.#synced = true;
      this.#log.info({ node: this.#opts.nodeName, pods: items.length }, 'listed the pods of this node');
    }
  }

  #onPod(pod: V1Pod): void {
    const key = podKey(pod.metadata?.namespace ?? '', pod.metadata?.name ?? '');
    this.#pods.set(key, pod);
    this.#mark(key);
  }

  #onDelete(pod: V1Pod): void {
    const key = podKey(pod.metadata?.namespace ?? '', pod.metadata?.name ?? '');
    const known = this.#pods.get(key);
    if (known && known.metadata?.uid !== pod.metadata?.uid) return; // a newer pod of the same name
    this.#pods.delete(key);
    this.#mark(key);
  }

  #onWatchError(err: unknown): void {
    if (this.#stopped) return;
    const e = err as { name?: string; type?: string } | null;
    if (e?.name === 'AbortError' || e?.type === 'aborted') return; // our own stop()
    this.#counters.watchErrors++;
    this.#lastErrorAt = Date.now();
    const { initialMs, maxMs } = this.#opts.backoff ?? { initialMs: 1000, maxMs: 30_000 };
    const cap = Math.min(maxMs, initialMs * 2 ** Math.min(this.#attempt, 30));
    const delay = Math.round(cap / 2 + (Math.random() * cap) / 2);
    this.#attempt++;
    this.#log.warn(
      { node: this.#opts.nodeName, err: kubeErrorText(err), attempt: this.#attempt, retryInMs: delay },
      'listing or watching the pods of this node failed; the last known pods stay protected',
    );
    this.emit('watch-error', err);
    if (this.#restartTimer) return;
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = undefined;
      if (this.#stopped) return;
      const lw = this.#lw;
      if (!lw) return;
      this.#counters.watchRestarts++;
      this.#lastActivity = Date.now();
      // The ListWatch is idle after an error: starting it again lists (or watches from the last
      // resourceVersion) with its cache intact. Its errors come back through #onWatchError.
      lw.start().catch((err2: unknown) => this.#onWatchError(err2));
    }, delay);
    this.#restartTimer.unref();
  }

  // -------------------------------------------------------------------------------------------
  // Evaluation

  #mark(key: string): void {
    this.#dirty.add(key);
    this.#kick();
  }

  #markAll(): void {
    this.#all = true;
    this.#kick();
  }

  #kick(): void {
    if (this.#draining) return;
    this.#draining = this.#drain()
      .catch((err: unknown) => this.#log.error({ err }, 'internal error while evaluating pods'))
      .finally(() => {
        this.#draining = undefined;
        // Something marked between the last loop check and here.
        if (this.#dirty.size > 0 || this.#all) this.#kick();
      });
  }

  async #drain(): Promise<void> {
    // Let a burst of watch events (the first list) queue up first.
    await new Promise<void>((r) => setImmediate(r));
    while (this.#dirty.size > 0 || this.#all) {
      const keys = new Set(this.#dirty);
      if (this.#all) {
        for (const k of this.#pods.keys()) keys.add(k);
        for (const k of this.#entries.keys()) keys.add(k);
      }
      this.#dirty.clear();
      this.#all = false;
      const checkMounts = this.#opts.checkMounts !== false;
      const mountPoints = checkMounts ? await readMountPoints() : undefined;
      const change: DiscoveryChange = { added: [], updated: [], removed: [] };
      for (const key of keys) {
        let volumes: ProtectedVolume[] | undefined;
        try {
          volumes = await this.#evaluate(key, checkMounts, mountPoints);
        } catch (err) {
          this.#log.error({ err, pod: key }, 'internal error while evaluating a pod; its volumes are left as they were');
          continue;
        }
        if (volumes === undefined) continue; // keep what there was
        this.#apply(key, volumes, change);
      }
      if (change.added.length + change.updated.length + change.removed.length > 0) {
        this.emit('change', change);
      }
    }
  }

  #apply(key: string, volumes: ProtectedVolume[], change: DiscoveryChange): void {
    const before = this.#entries.get(key);
    const old = new Map((before?.volumes ?? []).map((v) => [v.key, v]));
    for (const v of volumes) {
      const prev = old.get(v.key);
      old.delete(v.key);
      if (!prev || prev.podUid !== v.podUid) {
        if (prev) change.removed.push(prev);
        change.added.push(v);
      } else if (!sameVolume(prev, v)) {
        change.updated.push(v);
      } else {
        continue;
      }
      if (v.problem !== undefined && v.problem !== prev?.problem) {
        this.#log.warn(
          { namespace: v.namespace, pod: v.pod, volume: v.volume, problem: v.problem },
          'volume cannot be backed up',
        );
      } else if (v.path !== undefined && prev?.problem !== undefined) {
        this.#log.info({ namespace: v.namespace, pod: v.pod, volume: v.volume, path: v.path }, 'volume can be backed up now');
      }
    }
    change.removed.push(...old.values());
    const pod = this.#pods.get(key);
    if (volumes.length === 0 && !pod) {
      this.#entries.delete(key);
    } else {
      this.#entries.set(key, { uid: pod?.metadata?.uid ?? '', volumes, errors: before?.errors ?? '' });
    }
  }

  /**
   * The protected volumes of one pod now, or undefined to leave them as they are (the API server
   * could not say whether the pod is in scope).
   */
  async #evaluate(
    key: string,
    checkMounts: boolean,
    mountPoints: Set<string> | undefined,
  ): Promise<ProtectedVolume[] | undefined> {
    const pod = this.#pods.get(key);
    const phase = pod?.status?.phase;
    if (!pod || phase === 'Succeeded' || phase === 'Failed') return [];
    const ns = pod.metadata?.namespace ?? '';
    const name = pod.metadata?.name ?? '';
    const uid = pod.metadata?.uid ?? '';
    const policy = this.#opts.policy();

    let nsLabels: Record<string, string> | undefined;
    if (policy.namespaceSelector) {
      nsLabels = await this.#namespaceLabels(ns);
      if (nsLabels === undefined) return undefined;
    }
    if (!podInScope(pod, policy, nsLabels)) return [];

    const pp = podPolicy(pod, policy);
    this.#reportAnnotationErrors(key, uid, pp.errors);
    if (pp.volumes.length === 0) return [];

    const owner: Owner = await this.#owners.owner(pod);
    const specVolumes = new Map((pod.spec?.volumes ?? []).map((v) => [v.name, v]));
    const claims = new Map<string, ResolvedClaim>();
    for (const sel of pp.volumes) {
      const vol = specVolumes.get(sel.name)!;
      const claim = sel.problem ? undefined : claimName(pod, vol);
      if (claim !== undefined && !claims.has(claim)) claims.set(claim, await this.#resolveClaim(ns, claim));
    }

    const out: ProtectedVolume[] = [];
    for (const sel of pp.volumes) {
      const vol: V1Volume = specVolumes.get(sel.name)!;
      let result;
      if (sel.problem) {
        result = { ok: false as const, reason: sel.problem };
      } else {
        const loc = locateVolume(pod, vol, this.#opts.podsDir, claims);
        result = await checkVolumePath(loc, { podsDir: this.#opts.podsDir, checkMounts, mountPoints });
      }
      out.push({
        key: `${ns}/${name}/${vol.name}`,
        namespace: ns,
        pod: name,
        podUid: uid,
        volume: vol.name,
        identity: volumeIdentity(pod, vol, owner),
        tags: volumeTags(pod, vol, owner, this.#opts.nodeName),
        ...(result.ok ? { path: result.path } : { problem: result.reason }),
        schedule: { ...pp.schedule },
        ...(pp.quiesce ? { quiesce: pp.quiesce } : {}),
        ...(pod.status?.podIP ? { podIP: pod.status.podIP } : {}),
        ...(pp.onCheckpoint ? { onCheckpoint: true as const } : {}),
      });
    }
    return out;
  }

  #reportAnnotationErrors(key: string, uid: string, errors: string[]): void {
    const entry = this.#entries.get(key);
    const sig = `${uid}\n${errors.join('\n')}`;
    if (entry && entry.errors === sig) return;
    const before = new Set(entry && entry.uid === uid ? entry.errors.split('\n').slice(1) : []);
    for (const message of errors) {
      if (before.has(message)) continue;
      this.#counters.annotationErrors++;
      this.#log.error({ pod: key, error: message }, 'malformed pod annotation');
    }
    if (entry) entry.errors = sig;
    else this.#entries.set(key, { uid, volumes: [], errors: sig });
  }

  /** A PVC and its PV, cached while bound; looked up again while unbound or missing. */
  async #resolveClaim(ns: string, claim: string): Promise<ResolvedClaim> {
    const key = `${ns}/${claim}`;
    const hit = this.#claims.get(key);
    if (hit && hit.resolved.pv && Date.now() - hit.at < this.#cacheTtlMs) return hit.resolved;
    let resolved: ResolvedClaim;
    try {
      const pvc = await this.#readOrUndefined(() => this.#core.readNamespacedPersistentVolumeClaim({ name: claim, namespace: ns }));
      const pvName = pvc?.spec?.volumeName;
      const pv = pvName ? await this.#readOrUndefined(() => this.#core.readPersistentVolume({ name: pvName })) : undefined;
      resolved = { ...(pvc ? { pvc } : {}), ...(pv ? { pv } : {}) };
    } catch (err) {
      this.#counters.apiErrors++;
      this.#log.warn({ namespace: ns, pvc: claim, err: kubeErrorText(err) }, 'could not read a PersistentVolumeClaim or its PersistentVolume');
      // While the API server is away, what was known stands.
      if (hit) return hit.resolved;
      return { error: kubeErrorText(err) };
    }
    this.#claims.set(key, { resolved, at: Date.now() });
    return resolved;
  }

  async #readOrUndefined<T>(read: () => Promise<T>): Promise<T | undefined> {
    try {
      return await read();
    } catch (err) {
      if (statusCode(err) === 404) return undefined;
      throw err;
    }
  }

  /** A Namespace's labels (cached), or undefined when they cannot be read. */
  async #namespaceLabels(ns: string): Promise<Record<string, string> | undefined> {
    const hit = this.#namespaces.get(ns);
    if (hit && Date.now() - hit.at < this.#cacheTtlMs) return hit.labels;
    try {
      const obj = await this.#core.readNamespace({ name: ns });
      const labels = obj.metadata?.labels ?? {};
      this.#namespaces.set(ns, { labels, at: Date.now() });
      return labels;
    } catch (err) {
      this.#counters.apiErrors++;
      this.#log.warn({ namespace: ns, err: kubeErrorText(err) }, 'could not read the labels of a namespace for namespaceSelector');
      return hit?.labels;
    }
  }
}
