import path from 'node:path';
import { TenderError } from '../errors/errors.js';
import type { Repository } from '../repo/repository.js';
import type { Snapshot } from '../repo/snapshot/snapshot.js';

export interface SnapshotFilter {
  host?: string;
  tags?: string[];
  paths?: string[];
}

export interface SnapshotEntry {
  id: string;
  snapshot: Snapshot;
}

/** All snapshots matching the filter, oldest first. */
export async function listSnapshots(repo: Repository, filter: SnapshotFilter = {}): Promise<SnapshotEntry[]> {
  const entries: SnapshotEntry[] = [];
  for (const id of await repo.listSnapshotIds()) {
    const snapshot = await repo.loadListedSnapshot(id);
    if (snapshot && matches(snapshot, filter)) entries.push({ id, snapshot });
  }
  return entries.sort((a, b) => a.snapshot.time.localeCompare(b.snapshot.time) || a.id.localeCompare(b.id));
}

function matches(s: Snapshot, f: SnapshotFilter): boolean {
  if (f.host && s.hostname !== f.host) return false;
  if (f.tags?.length && !f.tags.every((t) => s.tags.includes(t))) return false;
  // Snapshots record absolute paths; a relative filter means the same path from here.
  if (f.paths?.length && !f.paths.every((p) => s.paths.includes(path.resolve(p)))) return false;
  return true;
}

/** `latest` (newest matching the filter) or a unique prefix of a snapshot ID. */
export async function selectSnapshot(repo: Repository, ref: string, filter: SnapshotFilter = {}): Promise<SnapshotEntry> {
  if (ref === 'latest') {
    const all = await listSnapshots(repo, filter);
    const newest = all.at(-1);
    if (!newest) {
      throw new TenderError('TENDER_SNAPSHOT_NOT_FOUND', 'no snapshot matches' + describeFilter(filter), {
        hint: 'list snapshots with `tender snapshots`',
      });
    }
    return newest;
  }
  if (!/^[0-9a-f]{4,64}$/.test(ref)) {
    throw new TenderError('TENDER_USAGE', `${JSON.stringify(ref)} is neither "latest" nor a snapshot ID (at least 4 hex digits)`);
  }
  const ids = (await repo.listSnapshotIds()).filter((id) => id.startsWith(ref));
  if (ids.length === 0) {
    throw new TenderError('TENDER_SNAPSHOT_NOT_FOUND', `no snapshot ${ref} in the repository`, { hint: 'list snapshots with `tender snapshots`' });
  }
  if (ids.length > 1) throw new TenderError('TENDER_USAGE', `snapshot prefix ${ref} is ambiguous (${ids.length} snapshots)`, { hint: 'give more digits' });
  return { id: ids[0]!, snapshot: await repo.loadSnapshot(ids[0]!) };
}

function describeFilter(f: SnapshotFilter): string {
  const parts = [f.host && `host ${f.host}`, f.tags?.length && `tags ${f.tags.join(',')}`, f.paths?.length && `paths ${f.paths.join(',')}`].filter(Boolean);
  return parts.length ? ` (${parts.join(', ')})` : '';
}
