import { randomBytes, scrypt as scryptCallback } from 'node:crypto';
import type { Identity } from '../util/operation.js';
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
  identity: Identity,
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
    hostname: identity.hostname,
    username: identity.username,
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
  let forThisRepository = 0;
  /** Key files that belong to another repository (or whose repository ID was damaged). */
  const foreign: string[] = [];
  for await (const { key } of storage.list('keys/')) {
    found++;
    let file: KeyFileJson;
    try {
      file = parseKeyFile(await storage.get(key));
    } catch (err) {
      if (err instanceof TenderError && err.code !== 'TENDER_NOT_FOUND') throw err;
      damaged.push(key);
      continue;
    }
    if (file.repository !== repositoryId) {
      foreign.push(key);
      continue;
    }
    forThisRepository++;
    const wrapping = await deriveKey(password, Buffer.from(file.kdf.salt, 'base64'), file.kdf);
    let secret: Buffer;
    try {
      secret = open(wrapping, Buffer.from(file.sealed, 'base64'), aadLabel('key'));
    } catch (err) {
      if (err instanceof DecryptError) continue;
      throw err;
    }
    const keys = parseMasterKeys(secret, repositoryId);
    if (!keys) {
      damaged.push(key);
      continue;
    }
    return { keys, keyFile: key };
  }
  const skipped = damaged.length > 0 ? `; damaged key files were skipped: ${damaged.join(', ')}` : '';
  if (found === 0 || forThisRepository === 0) {
    throw new TenderError(
      'TENDER_CORRUPT',
      found === 0
        ? `the repository at ${storage.location} has no key files`
        : `no usable key file of the repository at ${storage.location} matches its config (repository ${repositoryId})` +
          (foreign.length > 0 ? `; key files of other repositories: ${foreign.join(', ')}` : ''),
      { hint: `the config or keys/ are damaged or from another repository; restore them from a copy of the repository${skipped}` },
    );
  }
  throw new TenderError('TENDER_WRONG_PASSWORD', `wrong password for the repository at ${storage.location}`, {
    hint: `check TENDER_PASSWORD / TENDER_PASSWORD_FILE${skipped}`,
  });
}

const base64Pattern = /^[A-Za-z0-9+/]*={0,2}$/;

/** Parses and validates a key file; KDF parameters are bounded, so a tampered file cannot make opening hang. */
function parseKeyFile(bytes: Buffer): KeyFileJson {
  const bad = () => new Error('bad key file');
  let file: KeyFileJson;
  try {
    file = JSON.parse(bytes.toString('utf8')) as KeyFileJson;
  } catch {
    throw bad();
  }
  if (!file || typeof file !== 'object' || file.version !== 1 || typeof file.repository !== 'string' || typeof file.sealed !== 'string') throw bad();
  const kdf = file.kdf;
  if (!kdf || kdf.name !== 'scrypt' || typeof kdf.salt !== 'string' || !base64Pattern.test(kdf.salt) || !base64Pattern.test(file.sealed)) throw bad();
  const pow2 = Number.isInteger(kdf.N) && kdf.N >= 2 && (kdf.N & (kdf.N - 1)) === 0;
  if (!pow2 || kdf.N > 1 << 20 || !Number.isInteger(kdf.r) || kdf.r < 1 || kdf.r > 32 || !Number.isInteger(kdf.p) || kdf.p < 1 || kdf.p > 16) throw bad();
  return file;
}

function parseMasterKeys(secret: Buffer, repositoryId: string): MasterKeys | undefined {
  let s: Record<string, unknown>;
  try {
    s = JSON.parse(secret.toString('utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (!s || s.repository !== repositoryId) return undefined;
  const key = (v: unknown) => (typeof v === 'string' && base64Pattern.test(v) ? Buffer.from(v, 'base64') : Buffer.alloc(0));
  const keys = { encryption: key(s.encryption), blobId: key(s.blobId), gearSeed: key(s.gearSeed) };
  return keys.encryption.length === 32 && keys.blobId.length === 32 && keys.gearSeed.length === 32 ? keys : undefined;
}
