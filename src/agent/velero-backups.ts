/**
 * emptyDir volumes with Velero: Velero backs up a pod's objects but not its emptyDir volumes
 * unless its own file-system backup is asked to; tender does it instead. This watches the
 * velero.io/v1 Backups in Velero's namespace; when one is InProgress, every protected emptyDir
 * volume of this node's pods that the Backup covers (backup-scope.ts) is queued for a backup whose
 * snapshot is tagged `velero.io/backup-name=<name>` and `velero.io/backup-uid=<uid>`. Once per
 * Backup UID: a Backup seen again (its status changes, the agent restarts) queues only the volumes
 * with no snapshot of that UID yet. On restore, an init container runs `tender restore
 * --velero-backup` into the fresh emptyDir (docs/design.md, "emptyDir volumes with Velero").
 *
 * The Backup CRD may be missing (Velero not installed yet) or the API server away: the list/watch
 * is retried with backoff, logged once per outage, and never ends the agent.
 */
import { CustomObjectsApi, type KubeConfig, type KubernetesListObject, ListWatch, Watch } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { type VeleroBackup, backupCoversPod } from '../velero/backup-scope.js';
import { kubeErrorText } from '../util/kube-errors.js';

export interface VeleroVolume {
  namespace: string;
  pod: string;
  volume: string;
  identity: string;
  podLabels: Record<string, string>;
}

export interface VeleroBackupsOptions {
  kubeConfig: KubeConfig;
  /** Velero's namespace (where its Backups are). */
  namespace: string;
  /** The protected emptyDir volumes of this node's pods now. */
  volumes: () => VeleroVolume[];
  /** The identities (snapshot hosts) that have a snapshot tagged with this Backup UID already. */
  backedUp: (uid: string) => Promise<Set<string>>;
  /** Queue a backup of the volume with these extra snapshot tags. */
  enqueue: (volume: VeleroVolume, tags: string[]) => void;
  logger: Logger;
  /** Retry delays after a failed list or watch. Default 1 s .. 60 s. */
  backoff?: { initialMs: number; maxMs: number };
}

/** Backup UIDs remembered as handled (a bound; older ones are checked against the repository again). */
const MAX_REMEMBERED = 1000;

export class VeleroBackups {
  readonly #o: VeleroBackupsOptions;
  readonly #handled = new Set<string>();
  #lw: ListWatch<VeleroBackup & { metadata: object }> | undefined;
  #chain: Promise<void> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  #attempt = 0;
  #stopped = false;
  #failing = false;

  constructor(options: VeleroBackupsOptions) {
    this.#o = options;
  }

  async start(): Promise<void> {
    const { kubeConfig, namespace } = this.#o;
    const api = kubeConfig.makeApiClient(CustomObjectsApi);
    const listFn = async (): Promise<KubernetesListObject<VeleroBackup & { metadata: object }>> => {
      const list = (await api.listNamespacedCustomObject({ group: 'velero.io', version: 'v1', namespace, plural: 'backups' })) as KubernetesListObject<
        VeleroBackup & { metadata: object }
      >;
      // A list that succeeds ends an outage (the watch's 'connect' comes before the list, so it cannot tell).
      if (this.#failing) this.#o.logger.info({ namespace }, 'watching Velero Backups again');
      this.#failing = false;
      this.#attempt = 0;
      return list;
    };
    const lw = new ListWatch<VeleroBackup & { metadata: object }>(`/apis/velero.io/v1/namespaces/${namespace}/backups`, new Watch(kubeConfig), listFn, false);
    lw.on('add', (b) => this.#seen(b));
    lw.on('update', (b) => this.#seen(b));
    lw.on('error', (err) => this.#onError(err));
    this.#lw = lw;
    try {
      await lw.start();
    } catch (err) {
      this.#onError(err);
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    await this.#lw?.stop().catch(() => undefined);
    await this.#chain;
  }

  #onError(err: unknown): void {
    if (this.#stopped) return;
    const e = err as { name?: string; type?: string } | null;
    if (e?.name === 'AbortError' || e?.type === 'aborted') return;
    const { initialMs, maxMs } = this.#o.backoff ?? { initialMs: 1000, maxMs: 60_000 };
    const delay = Math.min(maxMs, initialMs * 2 ** Math.min(this.#attempt++, 30));
    if (!this.#failing) {
      this.#failing = true;
      this.#o.logger.warn(
        { namespace: this.#o.namespace, err: kubeErrorText(err), retryInMs: delay },
        `cannot watch Velero Backups in namespace ${this.#o.namespace} (is Velero installed, and may the agent list backups.velero.io?); emptyDir volumes are not backed up with Velero backups until it can`,
      );
    }
    if (this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (!this.#stopped) this.#lw?.start().catch((err2: unknown) => this.#onError(err2));
    }, delay);
    this.#timer.unref();
  }

  #seen(backup: VeleroBackup): void {
    const uid = backup.metadata?.uid;
    if (!uid || backup.status?.phase !== 'InProgress' || this.#handled.has(uid)) return;
    this.#handled.add(uid);
    if (this.#handled.size > MAX_REMEMBERED) this.#handled.delete(this.#handled.values().next().value!);
    this.#chain = this.#chain.then(() => this.#handle(backup, uid)).catch((err: unknown) => {
      this.#handled.delete(uid);
      this.#o.logger.error({ backup: backup.metadata?.name, err: kubeErrorText(err) }, 'could not queue the emptyDir backups of a Velero backup');
    });
  }

  async #handle(backup: VeleroBackup, uid: string): Promise<void> {
    const name = backup.metadata?.name ?? '';
    const covered = this.#o.volumes().filter((v) => backupCoversPod(backup, { namespace: v.namespace, labels: v.podLabels }));
    if (covered.length === 0) {
      this.#o.logger.info({ backup: name, uid }, `Velero backup ${name} covers no protected emptyDir volume on this node`);
      return;
    }
    const done = await this.#o.backedUp(uid);
    if (this.#stopped) return;
    const tags = [`velero.io/backup-name=${name}`, `velero.io/backup-uid=${uid}`];
    for (const v of covered) {
      if (done.has(v.identity)) continue;
      this.#o.logger.info({ backup: name, uid, namespace: v.namespace, pod: v.pod, volume: v.volume }, `Velero backup ${name}: backing up emptyDir ${v.volume} of pod ${v.namespace}/${v.pod}`);
      this.#o.enqueue(v, tags);
    }
  }
}
