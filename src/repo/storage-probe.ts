import type { Storage } from '../storage/storage.js';

/** Whether any repository object other than the config is stored at this location. */
export async function holdsRepositoryObjects(storage: Storage): Promise<boolean> {
  for (const prefix of ['keys/', 'snapshots/', 'index/', 'data/']) {
    for await (const _ of storage.list(prefix)) return true;
  }
  return false;
}
