import type { CodecTransforms } from '../transform/blob-codec.js';
import type { MasterKeys } from '../transform/keys.js';
import type { HashedSpans, OpenResult } from './ops.js';
import type { RequestColumns } from './wire.js';

/** Messages between the pipeline and its worker threads (requests in columns: wire.ts). `buffer` is shared, never copied. */
export type CodecRequest =
  | { op: 'hash'; buffer: SharedArrayBuffer; spans: Uint32Array }
  | { op: 'seal'; buffer: SharedArrayBuffer; requests: RequestColumns }
  | { op: 'open'; buffer: SharedArrayBuffer; requests: RequestColumns };

export type WorkerRequest =
  /** The first message: the keys and the repository's codec settings. */
  | { op: 'init'; keys: MasterKeys; compressionLevel: number; transforms: CodecTransforms }
  | (CodecRequest & { seq: number })
  /** No more requests: the worker answers those already sent, then exits. */
  | { op: 'close' };

export type WorkerResponse =
  | { seq: number; op: 'hash'; hashed: HashedSpans }
  | { seq: number; op: 'seal'; sealed: Float64Array }
  | { seq: number; op: 'open'; opened: OpenResult[] }
  | { seq: number; op: 'error'; message: string };
