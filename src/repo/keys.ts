import { randomBytes, scrypt as scryptCallback } from 'node:crypto';
import os from 'node:os';
import { promisify } from 'node:util';
import { DecryptError, aadLabel, open, seal } from '../crypto/aead.js';
import { TenderError } from '../errors/errors.js';
import type { Storage } from '../storage/storage.js';
import type { MasterKeys } from '../transform/keys.js';
import { idToHex, storedObjectId } from './ids.js';

const scrypt = promisify(scryptCallback) as (
  password: string,
  salt: Buffer,
  keylen: number,
  options: { N: number; r: number; p: number; maxmem: number },
) => Promise<Buffer>;

/**
 * Key file (keys/<sha256 of its bytes>), JSON:
 *   { version, created, hostname, username, repository, kdf: {name:"scrypt", N, r, p, salt},
 *     sealed: base64(seal(scrypt(password), masterKeysJSON, "tender:key")) }
 * masterKeysJSON = { repository, encryption, blobId, gearSeed } (base64 32-byte secrets).
 * Any number of key files may wrap the same master keys (one per password).
 */
export interface KdfParams {
  N: number;
  r: number;
  p: number;
}

export const defaultKdf: KdfParams = { N: 1 << 15, r: 8, p: 1 };

interface KeyFileJson {
  version: 1;
  created: string;
  hostname: string;
  username: string;
  repository: string;
  kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string };
  sealed: string;
}

export function newMasterKeys(): MasterKeys {
  return { encryption: randomBytes(32), blobId: randomBytes(32), gearSeed: randomBytes(32) };
}

async function deriveKey(password: string, salt: Buffer, kdf: KdfParams): Promise<Buffer> {
  return scrypt(password, salt, 32, { ...kdf, maxmem: 256 * kdf.N * kdf.r + 1024 * 1024 });
}

/** Writes a new key file that wraps `keys` under `password`; returns its storage key. */
export async function addKey(
  storage: Storage,
  repositoryId: string,
  keys: MasterKeys,
  password: string,
  kdf: KdfParams = defaultKdf,
): Promise<string> {
  const salt = randomBytes(32);
  const wrapping = await deriveKey(password, salt, kdf);
  const secret = JSON.stringify({
    repository: repositoryId,
    encryption: keys.encryption.toString('base64'),
    blobId: keys.blobId.toString('base64'),
    gearSeed: keys.gearSeed.toString('base64'),
  });
  const file: KeyFileJson = {
    version: 1,
    created: new Date().toISOString(),
    hostname: os.hostname(),
    username: os.userInfo().username,
    repository: repositoryId,
    kdf: { name: 'scrypt', ...kdf, salt: salt.toString('base64') },
    sealed: seal(wrapping, Buffer.from(secret), aadLabel('key')).toString('base64'),
  };
  const bytes = Buffer.from(JSON.stringify(file, null, 2) + '\n');
  const key = `keys/${idToHex(storedObjectId([bytes]))}`;
  await storage.put(key, [bytes]);
  return key;
}

export interface UnlockedKey {
  keys: MasterKeys;
  /** Storage key of the key file the password opened. */
  keyFile: string;
}

/** Tries the password on every key file of the repository. */
export async function unlock(storage: Storage, repositoryId: string, password: string): Promise<UnlockedKey> {
  const damaged: string[] = [];
  let found = 0;
  for await (const { key } of storage.list('keys/')) {
    found++;
    let file: KeyFileJson;
    try {
      file = JSON.parse((await storage.get(key)).toString('utf8')) as KeyFileJson;
      if (file.version !== 1 || file.kdf?.name !== 'scrypt' || typeof file.sealed !== 'string') throw new Error('bad key file');
    } catch (err) {
      if (err instanceof TenderError && err.code !== 'TENDER_NOT_FOUND') throw err;
      damaged.push(key);
      continue;
    }
    if (file.repository !== repositoryId) continue;
    const wrapping = await deriveKey(password, Buffer.from(file.kdf.salt, 'base64'), file.kdf);
    let secret: Buffer;
    try {
      secret = open(wrapping, Buffer.from(file.sealed, 'base64'), aadLabel('key'));
    } catch (err) {
      if (err instanceof DecryptError) continue;
      throw err;
    }
    const s = JSON.parse(secret.toString('utf8')) as Record<string, string>;
    if (s.repository !== repositoryId) continue;
    const keys: MasterKeys = {
      encryption: Buffer.from(s.encryption!, 'base64'),
      blobId: Buffer.from(s.blobId!, 'base64'),
      gearSeed: Buffer.from(s.gearSeed!, 'base64'),
    };
    return { keys, keyFile: key };
  }
  if (found === 0) {
    throw new TenderError('TENDER_CORRUPT', `the repository at ${storage.location} has no key files`, {
      hint: 'the keys/ folder was deleted or not copied; restore it from a copy of the repository',
    });
  }
  throw new TenderError('TENDER_WRONG_PASSWORD', `wrong password for the repository at ${storage.location}`, {
    hint:
      'check TENDER_PASSWORD / TENDER_PASSWORD_FILE' +
      (damaged.length > 0 ? `; damaged key files were skipped: ${damaged.join(', ')}` : ''),
  });
}
