import { aadLabel, open, seal } from '../../crypto/aead.js';
import { FormatError } from '../binary.js';
import { isHexId } from '../ids.js';
import type { TransformName } from '../blob.js';

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
  /** What the chunks were and what each transform did with them (absent before this field existed). */
  transforms?: TransformSummary;
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

/**
 * Per kind of data (the file's checkpoint layout and the dtype of most of a chunk; "none" when
 * unknown): the bytes of the chunks read, those already stored (deduplicated), and per transform
 * the new blobs it stored. `stored` is the sealed size in the pack (payload + 28 bytes), so
 * Σ stored over every kind and transform = the summary's bytesStored. A transform saved
 * bytes − stored. Stage times are in milliseconds: read and chunk on the main thread;
 * hash and seal summed over the worker threads (a blob's time goes to its transform's sealMs); store: pack
 * uploads (data, tree and list packs) summed over the concurrent uploads.
 */
export interface TransformSummary {
  kinds: KindSummary[];
  stageMs: { read: number; chunk: number; hash: number; seal: number; store: number };
}

export interface KindSummary {
  layout: string;
  dtype: string;
  bytesIn: number;
  bytesDeduplicated: number;
  transforms: Record<TransformName, TransformFigures>;
}

export interface TransformFigures {
  blobs: number;
  bytes: number;
  stored: number;
  sealMs: number;
}

export function emptyKindSummary(layout: string, dtype: string): KindSummary {
  const figures = () => ({ blobs: 0, bytes: 0, stored: 0, sealMs: 0 });
  return { layout, dtype, bytesIn: 0, bytesDeduplicated: 0, transforms: { delta: figures(), planes: figures(), zstd: figures(), raw: figures() } };
}

/** Orders kinds by layout, then dtype. */
export const compareKinds = (a: KindSummary, b: KindSummary): number => a.layout.localeCompare(b.layout) || a.dtype.localeCompare(b.dtype);
/** How one backup path was quiesced around its read (docs/design.md, "Quiesce"). */
export interface SnapshotQuiesce {
  path: string;
  /** Every configured step (hooks, syncfs, fsfreeze) succeeded. */
  quiesced: boolean;
  /** Why not: one line per failed step. */
  reasons?: string[];
  /** How long the filesystem was frozen, when it was. */
  frozenMs?: number;
  /** The post-hook failed (the data is unaffected; the trainer may not have been told to go on). */
  postHookError?: string;
}

/** Fields a backup's hooks add to its snapshot. */
export type SnapshotAnnotations = Pick<Snapshot, 'quiesce'>;

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
  /** One entry per backup path that was quiesced; absent when no quiesce was asked for. */
  quiesce?: SnapshotQuiesce[];
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
    (s.quiesce !== undefined && !(Array.isArray(s.quiesce) && s.quiesce.every(isQuiesceEntry))) ||
    (s.checkpoints !== undefined && !(Array.isArray(s.checkpoints) && s.checkpoints.every(isCheckpointRecord)))
  ) {
    throw new FormatError('snapshot lacks required fields or has malformed ones');
  }
  return s;
}

function isQuiesceEntry(q: unknown): boolean {
  const e = q as SnapshotQuiesce;
  return (
    typeof e === 'object' &&
    e !== null &&
    typeof e.path === 'string' &&
    typeof e.quiesced === 'boolean' &&
    (e.reasons === undefined || (Array.isArray(e.reasons) && e.reasons.every((r) => typeof r === 'string'))) &&
    (e.frozenMs === undefined || (typeof e.frozenMs === 'number' && e.frozenMs >= 0)) &&
    (e.postHookError === undefined || typeof e.postHookError === 'string')
  );
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
