import { TenderError } from '../errors/errors.js';
import { randomId, idToHex } from './ids.js';
import type { Storage } from '../storage/storage.js';
import type { Identity } from '../util/operation.js';
import type { Snapshot } from './snapshot/snapshot.js';

/**
 * Writer sessions: how prune knows which backups may still depend on data it plans to delete
 * (docs/design.md, "Garbage collection"). A backup stores `sessions/<id>.<startMs>.<beatMs>` when it
 * starts, replaces it with a fresh beat every `heartbeatMs`, and deletes it when it ends.
 * A session whose newest beat is older than prune's grace period is taken as dead.
 * TENDER_HEARTBEAT_MS shortens the beat (tests); prune's grace must exceed twice the beat.
 */
export const heartbeatMs = Number(process.env.TENDER_HEARTBEAT_MS) || 5 * 60_000;
/** A backup refuses to write its snapshot if its last successful heartbeat is older than this. */
export const maxBeatAgeMs = 2 * heartbeatMs;

export interface SessionInfo {
  id: string;
  startedMs: number;
  beatMs: number;
}

const sessionKeyPattern = /^sessions\/([0-9a-f]{32})\.(\d+)\.(\d+)$/;

export function sessionKey(s: SessionInfo): string {
  return `sessions/${s.id}.${s.startedMs}.${s.beatMs}`;
}

/** Live and stale sessions, newest beat per session. */
/** What sessions need of the repository (the Repository, narrowed). */
export interface SessionRepository {
  readonly storage: Storage;
  readonly identity: Identity;
  now(): number;
  storeSnapshot(snapshot: Snapshot): Promise<string>;
}

export async function listSessions(repo: Pick<SessionRepository, 'storage'>): Promise<SessionInfo[]> {
  const byId = new Map<string, SessionInfo>();
  for await (const { key } of repo.storage.list('sessions/')) {
    const m = sessionKeyPattern.exec(key);
    if (!m) continue;
    const s = { id: m[1]!, startedMs: Number(m[2]), beatMs: Number(m[3]) };
    const seen = byId.get(s.id);
    if (!seen || seen.beatMs < s.beatMs) byId.set(s.id, s);
  }
  return [...byId.values()];
}

export class WriterSession {
  private current: SessionInfo;
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> = Promise.resolve();
  private lapsed = false;
  private ending: Promise<void> | undefined;
  private committing: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly repo: SessionRepository,
    info: SessionInfo,
  ) {
    this.current = info;
  }

  /** Registers a session; call before loading the index or the deletion plans. */
  static async start(repo: SessionRepository): Promise<WriterSession> {
    const now = repo.now();
    const session = new WriterSession(repo, { id: idToHex(randomId()).slice(0, 32), startedMs: now, beatMs: now });
    await repo.storage.put(sessionKey(session.current), [session.markerBody()]);
    session.timer = setInterval(() => {
      session.beating = session.beating.then(() => session.beat()).catch(() => undefined);
    }, heartbeatMs);
    session.timer.unref();
    return session;
  }

  private async beat(): Promise<void> {
    const now = this.repo.now();
    // A beat that comes too late (the process was suspended, or storage unreachable) cannot
    // revive the session: a prune may already have taken it for dead and swept data it uses.
    if (now - this.current.beatMs > maxBeatAgeMs) this.lapsed = true;
    const next = { ...this.current, beatMs: now };
    await this.repo.storage.put(sessionKey(next), [this.markerBody()]);
    const previous = this.current;
    this.current = next;
    await this.repo.storage.delete(sessionKey(previous));
  }

  /** Who is writing, for a person looking at a marker that blocks a prune. */
  private markerBody(): Buffer {
    return Buffer.from(JSON.stringify({ host: this.repo.identity.hostname, pid: process.pid }));
  }

  get id(): string {
    return this.current.id;
  }

  get startedMs(): number {
    return this.current.startedMs;
  }

  /**
   * Stores the snapshot only while this session is alive, and keeps the session alive until it is
   * stored: an `end()` called meanwhile (Ctrl-C) waits for it before removing the marker. A
   * snapshot stored after the marker is gone would be covered by no session, and a prune sweeping
   * then could delete packs it uses. Returns the snapshot's ID.
   */
  async commit(snapshot: Snapshot): Promise<string> {
    if (this.ending) {
      throw new TenderError('TENDER_INTERRUPTED', 'the backup was interrupted before its snapshot was stored', {
        hint: 'the data stored so far is kept and indexed; run the backup again to finish it',
      });
    }
    this.assertAlive();
    const written = this.repo.storeSnapshot(snapshot);
    this.committing = written.catch(() => undefined);
    return written;
  }

  /**
   * Zombie guard: a writer that could not refresh its session for too long (suspended, partitioned)
   * may have been declared dead by a prune that then deleted data this run relies on.
   */
  private assertAlive(): void {
    const age = this.repo.now() - this.current.beatMs;
    if (this.lapsed || age > maxBeatAgeMs) {
      throw new TenderError('TENDER_STORAGE', `this backup could not refresh its session marker in time (it was suspended or cut off)`, {
        hint: 'a concurrent prune may have removed data this run deduplicated against; run the backup again',
      });
    }
  }

  /** Removes the marker once a snapshot write under way is done; later calls share the first. */
  end(): Promise<void> {
    this.ending ??= (async () => {
      clearInterval(this.timer);
      await this.committing;
      await this.beating;
      await this.repo.storage.delete(sessionKey(this.current));
    })();
    return this.ending;
  }
}
