/**
 * The API calls the data mover makes, with the concurrency rules of Velero's contract: DataUploads
 * and DataDownloads have no status subresource, so every status change replaces the whole object
 * at the resourceVersion it was read at (a conflict means someone else wrote first: read again).
 */
import { CoreV1Api, CustomObjectsApi, type KubeConfig, Watch } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { kubeErrorText, statusCode } from '../util/kube-errors.js';
import { type MoverObject, resources } from './contract.js';

export type Resource = (typeof resources)[keyof typeof resources];

export function isNotFound(err: unknown): boolean {
  return statusCode(err) === 404;
}

export class Kube {
  readonly core: CoreV1Api;
  readonly custom: CustomObjectsApi;

  constructor(readonly kubeConfig: KubeConfig) {
    this.core = kubeConfig.makeApiClient(CoreV1Api);
    this.custom = kubeConfig.makeApiClient(CustomObjectsApi);
  }

  async get<T>(r: Resource, namespace: string, name: string): Promise<T | undefined> {
    try {
      return (await this.custom.getNamespacedCustomObject({ ...r, namespace, name })) as T;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async getCluster<T>(r: Resource, name: string): Promise<T | undefined> {
    try {
      return (await this.custom.getClusterCustomObject({ ...r, name })) as T;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async list<T>(r: Resource, namespace: string): Promise<{ items: T[]; resourceVersion: string }> {
    const list = (await this.custom.listNamespacedCustomObject({ ...r, namespace })) as { items: T[]; metadata?: { resourceVersion?: string } };
    return { items: list.items, resourceVersion: list.metadata?.resourceVersion ?? '' };
  }

  /** Replace at the object's resourceVersion; undefined on a conflict (someone wrote first). */
  async replaceIfUnchanged<T extends { metadata: { name: string; namespace: string } }>(r: Resource, obj: T): Promise<T | undefined> {
    try {
      return (await this.custom.replaceNamespacedCustomObject({ ...r, namespace: obj.metadata.namespace, name: obj.metadata.name, body: obj })) as T;
    } catch (err) {
      if (statusCode(err) === 409) return undefined;
      throw err;
    }
  }

  /**
   * Read, change, replace; again on a conflict. `change` edits the fresh object in place and
   * returns false to leave it as it is. Resolves with the object written, or undefined when
   * `change` declined or the object is gone.
   */
  async update<T extends { metadata: { name: string; namespace: string } }>(
    r: Resource,
    namespace: string,
    name: string,
    change: (obj: T) => boolean,
  ): Promise<T | undefined> {
    for (;;) {
      const obj = await this.get<T>(r, namespace, name);
      if (!obj || !change(obj)) return undefined;
      const written = await this.replaceIfUnchanged(r, obj);
      if (written) return written;
    }
  }

  async createOrKeep<T>(create: () => Promise<T>): Promise<void> {
    try {
      await create();
    } catch (err) {
      if (statusCode(err) !== 409) throw err;
    }
  }

  async deleteIfAny(del: () => Promise<unknown>): Promise<void> {
    try {
      await del();
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}

/**
 * Take the object for this node: replace it at the resourceVersion it was read at, phase
 * Accepted, acceptedByNode, acceptedTimestamp. Velero's node-agents race for it the same way;
 * exactly one write succeeds. Resolves with the accepted object, or undefined if another won.
 */
export async function accept<T extends MoverObject>(kube: Kube, r: Resource, obj: T, node: string, now: Date): Promise<T | undefined> {
  const next = structuredClone(obj);
  next.status = { ...next.status, phase: 'Accepted', acceptedByNode: node, acceptedTimestamp: timestamp(now) };
  return kube.replaceIfUnchanged(r, next);
}

/** RFC 3339 in whole seconds, as metav1.Time writes it. */
export function timestamp(at: Date): string {
  return at.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export interface WatchLoopOptions {
  kubeConfig: KubeConfig;
  path: string;
  /** List everything (at start, after a watch ended, and every resyncMs); resolves with the list's resourceVersion. */
  list: () => Promise<string>;
  onEvent: (type: string, obj: unknown) => void;
  resyncMs: number;
  logger: Logger;
  what: string;
}

/**
 * List, then watch from the list's resourceVersion; when the watch ends or fails, list again
 * (after a backoff on errors, up to 30 s). A full list every resyncMs catches anything missed.
 */
export class WatchLoop {
  private stopped = false;
  private abort: AbortController | undefined;
  private timer: NodeJS.Timeout | undefined;
  private resync: NodeJS.Timeout | undefined;
  private failures = 0;

  constructor(private readonly o: WatchLoopOptions) {}

  start(): void {
    this.resync = setInterval(() => void this.relist(), this.o.resyncMs);
    this.resync.unref();
    void this.cycle();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.resync);
    clearTimeout(this.timer);
    this.abort?.abort();
  }

  /** List again now (the handler sees every object). */
  async relist(): Promise<void> {
    try {
      await this.o.list();
    } catch (err) {
      this.o.logger.warn({ err: kubeErrorText(err) }, `cannot list ${this.o.what}: ${kubeErrorText(err)}; the watch goes on`);
    }
  }

  private async cycle(): Promise<void> {
    if (this.stopped) return;
    try {
      const resourceVersion = await this.o.list();
      if (this.stopped) return;
      this.abort = await new Watch(this.o.kubeConfig).watch(
        this.o.path,
        { resourceVersion, allowWatchBookmarks: true, timeoutSeconds: 300 },
        (type, obj) => {
          this.failures = 0;
          if (type !== 'BOOKMARK' && type !== 'ERROR') this.o.onEvent(type, obj);
        },
        (err) => this.ended(err),
      );
    } catch (err) {
      this.ended(err);
    }
  }

  private ended(err: unknown): void {
    if (this.stopped) return;
    let delay = 0;
    if (err) {
      this.failures++;
      delay = Math.min(30_000, 500 * 2 ** Math.min(this.failures, 6));
      this.o.logger.warn({ err: kubeErrorText(err), retryInMs: delay }, `the watch of ${this.o.what} failed: ${kubeErrorText(err)}; again in ${delay} ms`);
    }
    this.timer = setTimeout(() => void this.cycle(), delay);
  }
}
