import { DecryptError, aadLabel, open, seal } from '../crypto/aead.js';
import { TenderError } from '../errors/errors.js';
import { type ChunkerParams, validateChunkerParams } from './chunker-params.js';
import type { Storage } from '../storage/storage.js';
import { holdsRepositoryObjects } from './storage-probe.js';

/**
 * The `config` object: {"version":N,"repository":ID,"sealed":base64(seal(config body, "tender:config"))}.
 * `version` and `repository` are readable without a password (to report a newer format or to pick
 * the key file); the sealed body is the authority and must repeat both.
 *
 * Version 1: blobs are raw or zstd. Version 2 adds `transforms`, the blob transforms its writers
 * may use ("planes": byte-plane blobs): a version-1 tender refuses it as a newer format instead
 * of reading a plane blob as damage. A version-1 repository stays version 1: this tender writes
 * no transformed blob into it, so older clients sharing it keep reading everything.
 * Version 3 adds the transform "delta" (XOR-delta blobs against a base blob, which index entries
 * and pack headers name): a version-2 tender refuses it as a newer format. "delta" needs "planes".
 */
export const formatVersion = 3;
export const configKey = 'config';

/** Blob transforms a version-2/3 repository may name; an unknown one is refused, never ignored. */
export const knownTransforms = ['planes', 'delta'] as const;
export type Transform = (typeof knownTransforms)[number];

export interface RepositoryConfig {
  version: number;
  repository: string;
  created: string;
  chunker: ChunkerParams;
  /** zstd level for blobs; 0 = store raw. */
  compressionLevel: number;
  /** Target size of a pack file in bytes. */
  packSize: number;
  /** Version 2 and 3: blob transforms writers may use. */
  transforms?: Transform[];
}

/** The format version a repository with these transforms needs. */
export const versionFor = (transforms: readonly Transform[]): number => (transforms.includes('delta') ? 3 : transforms.length > 0 ? 2 : 1);


interface ConfigEnvelope {
  version: number;
  repository: string;
  sealed: string;
}

export function encodeConfig(encryptionKey: Uint8Array, config: RepositoryConfig): Buffer {
  const envelope: ConfigEnvelope = {
    version: config.version,
    repository: config.repository,
    sealed: seal(encryptionKey, Buffer.from(JSON.stringify(config)), aadLabel('config')).toString('base64'),
  };
  return Buffer.from(JSON.stringify(envelope, null, 2) + '\n');
}

/** Reads the plaintext envelope: the first thing any command does. */
export async function readConfigEnvelope(storage: Storage): Promise<ConfigEnvelope> {
  let bytes: Buffer;
  try {
    bytes = await storage.get(configKey);
  } catch (err) {
    if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') {
      if (await holdsRepositoryObjects(storage)) {
        throw new TenderError('TENDER_REPO_NOT_FOUND', `the config object of the repository at ${storage.location} is missing`, {
          hint: 'restore the config from a copy of the repository; a new init here could not read the existing data',
        });
      }
      throw new TenderError('TENDER_REPO_NOT_FOUND', `there is no repository at ${storage.location}`, {
        hint: 'check --repo / TENDER_REPOSITORY, or create one with `tender init`',
      });
    }
    throw err;
  }
  let envelope: ConfigEnvelope;
  try {
    envelope = JSON.parse(bytes.toString('utf8')) as ConfigEnvelope;
  } catch {
    throw corruptConfig(storage, 'is not valid JSON');
  }
  if (
    !envelope ||
    typeof envelope !== 'object' ||
    typeof envelope.version !== 'number' ||
    typeof envelope.repository !== 'string' ||
    typeof envelope.sealed !== 'string'
  ) {
    throw corruptConfig(storage, 'lacks version, repository or sealed');
  }
  if (envelope.version > formatVersion) {
    throw new TenderError(
      'TENDER_REPO_VERSION',
      `the repository at ${storage.location} has format version ${envelope.version}; this tender reads up to version ${formatVersion}`,
      { hint: 'upgrade tender to a release that supports this format' },
    );
  }
  return envelope;
}

export function openConfig(storage: Storage, encryptionKey: Uint8Array, envelope: ConfigEnvelope): RepositoryConfig {
  let config: RepositoryConfig;
  try {
    config = JSON.parse(open(encryptionKey, Buffer.from(envelope.sealed, 'base64'), aadLabel('config')).toString('utf8'));
  } catch (err) {
    if (err instanceof DecryptError || err instanceof SyntaxError) throw corruptConfig(storage, 'does not decrypt with the repository key');
    throw err;
  }
  if (!config || typeof config !== 'object' || config.version !== envelope.version || config.repository !== envelope.repository) {
    throw corruptConfig(storage, 'envelope does not match its sealed body');
  }
  const level = config.compressionLevel;
  if (!Number.isInteger(level) || level < 0 || level > 22) throw corruptConfig(storage, `has an invalid compression level ${JSON.stringify(level)}`);
  if (!Number.isInteger(config.packSize) || config.packSize < 1024 * 1024 || config.packSize > 1024 * 1024 * 1024) {
    throw corruptConfig(storage, `has an invalid pack size ${JSON.stringify(config.packSize)}`);
  }
  if (config.version >= 2) {
    const transforms: unknown = config.transforms;
    if (!Array.isArray(transforms) || transforms.some((t) => typeof t !== 'string')) {
      throw corruptConfig(storage, `has an invalid transform list ${JSON.stringify(transforms)}`);
    }
    const unknown = transforms.find((t) => !(knownTransforms as readonly string[]).includes(t));
    if (unknown !== undefined) {
      throw new TenderError('TENDER_REPO_VERSION', `the repository at ${storage.location} uses the blob transform "${unknown}", which this tender does not know`, {
        hint: 'upgrade tender to a release that supports this format',
      });
    }
    if (transforms.includes('delta') && (config.version < 3 || !transforms.includes('planes'))) {
      throw corruptConfig(storage, `names the transform "delta" ${config.version < 3 ? `in format version ${config.version}` : 'without "planes"'}`);
    }
  } else if (config.transforms !== undefined) {
    throw corruptConfig(storage, 'names transforms in format version 1');
  }
  try {
    if (!config.chunker || typeof config.chunker !== 'object') throw new Error('has no chunker parameters');
    validateChunkerParams(config.chunker);
  } catch (err) {
    throw corruptConfig(storage, (err as Error).message);
  }
  return config;
}

function corruptConfig(storage: Storage, problem: string): TenderError {
  return new TenderError('TENDER_CORRUPT', `the config of the repository at ${storage.location} ${problem}`, {
    hint: 'the config object is damaged; restore it from a copy of the repository (the data is unreadable without it)',
  });
}
