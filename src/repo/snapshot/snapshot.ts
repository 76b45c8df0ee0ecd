import { aadLabel, open, seal } from '../../crypto/aead.js';
import { FormatError } from '../binary.js';
import { isHexId } from '../ids.js';

/**
 * Snapshot object (snapshots/<sha256 of the stored bytes>): sealed JSON with AAD "tender:snapshot".
 * Immutable; written last, after every pack and index it depends on.
 */
export interface SnapshotSummary {
  files: number;
  dirs: number;
  /** Files read (new or changed) and files taken from the parent snapshot unread. */
  filesRead: number;
  filesUnchanged: number;
  bytesRead: number;
  totalBytes: number;
  blobsAdded: number;
  bytesAdded: number;
  /** Bytes stored for those blobs (after compression and encryption). */
  bytesStored: number;
  errors: number;
  durationMs: number;
  /** Files stored labelled `torn` / `incomplete` (absent in snapshots written before the labels). */
  filesTorn?: number;
  filesIncomplete?: number;
  /** Files read again because they changed while they were read. */
  rereads?: number;
}

/** A checkpoint directory found in the backup, with its verdict for the stored copy. */
export interface CheckpointRecord {
  /** Its path in the snapshot, as `tender ls` prints it (`/<root name>/…`). */
  path: string;
  /** dcp, megatron, hf-trainer, deepspeed, tmp-rename. */
  kind: string;
  /** True only if the stored files form a complete checkpoint (checked before and after reading). */
  complete: boolean;
  /** With `complete: false`: why. */
  reason?: string;
  /** Left out of the snapshot (`--incomplete skip`): none of its files are stored. */
  skipped?: boolean;
}

export interface Snapshot {
  version: 1;
  time: string;
  hostname: string;
  username: string;
  paths: string[];
  tags: string[];
  /** Root tree: one node per backed-up path, named by the path's base name. */
  tree: string;
  parent?: string;
  program: string;
  summary?: SnapshotSummary;
  /** Checkpoint directories found in the backed-up paths (absent: none, or an older snapshot). */
  checkpoints?: CheckpointRecord[];
}

export function encodeSnapshot(encryptionKey: Uint8Array, snapshot: Snapshot): Buffer {
  return seal(encryptionKey, Buffer.from(JSON.stringify(snapshot)), aadLabel('snapshot'));
}

/** Throws DecryptError or FormatError. */
export function decodeSnapshot(encryptionKey: Uint8Array, stored: Buffer): Snapshot {
  const plain = open(encryptionKey, stored, aadLabel('snapshot'));
  let s: Snapshot;
  try {
    s = JSON.parse(plain.toString('utf8')) as Snapshot;
  } catch {
    throw new FormatError('snapshot is not valid JSON');
  }
  const strings = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === 'string');
  if (
    !s ||
    typeof s !== 'object' ||
    s.version !== 1 ||
    typeof s.time !== 'string' ||
    Number.isNaN(Date.parse(s.time)) ||
    typeof s.tree !== 'string' ||
    !isHexId(s.tree) ||
    typeof s.hostname !== 'string' ||
    typeof s.username !== 'string' ||
    !strings(s.paths) ||
    !strings(s.tags) ||
    (s.parent !== undefined && (typeof s.parent !== 'string' || !isHexId(s.parent))) ||
    (s.checkpoints !== undefined && !(Array.isArray(s.checkpoints) && s.checkpoints.every(isCheckpointRecord)))
  ) {
    throw new FormatError('snapshot lacks required fields or has malformed ones');
  }
  return s;
}

function isCheckpointRecord(c: CheckpointRecord): boolean {
  return (
    !!c &&
    typeof c === 'object' &&
    typeof c.path === 'string' &&
    typeof c.kind === 'string' &&
    typeof c.complete === 'boolean' &&
    (c.reason === undefined || typeof c.reason === 'string') &&
    (c.skipped === undefined || c.skipped === true)
  );
}
