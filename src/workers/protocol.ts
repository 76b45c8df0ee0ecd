import type { HashedSpans, OpenRequest, OpenResult, SealRequest, SealedResult } from './ops.js';

/** Messages between the pipeline and its worker threads. `buffer` is shared, never copied. */
export type CodecRequest =
  | { op: 'hash'; buffer: SharedArrayBuffer; spans: Uint32Array }
  | { op: 'seal'; buffer: SharedArrayBuffer; requests: SealRequest[] }
  | { op: 'open'; buffer: SharedArrayBuffer; requests: OpenRequest[] };

export type WorkerRequest =
  | (CodecRequest & { seq: number })
  /** No more requests: the worker answers those already sent, then exits. */
  | { op: 'close' };

export type WorkerResponse =
  | { seq: number; op: 'hash'; hashed: HashedSpans }
  | { seq: number; op: 'seal'; sealed: SealedResult[] }
  | { seq: number; op: 'open'; opened: OpenResult[] }
  | { seq: number; op: 'error'; message: string };
