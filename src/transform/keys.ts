/** The secrets every stage needs, unwrapped from a key file (see src/repo/keys.ts). */
export interface MasterKeys {
  /** AES-256-GCM key for all stored data. */
  encryption: Buffer;
  /** BLAKE3 key for blob IDs. */
  blobId: Buffer;
  /** Seed of the chunker's Gear table. */
  gearSeed: Buffer;
}
