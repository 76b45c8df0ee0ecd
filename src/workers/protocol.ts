import type { OpenRequest, OpenResult, SealRequest, SealedResult } from './ops.js';

/** Messages between the pipeline and its worker threads. `buffer` is shared, never copied. */
export type WorkerRequest =
  | { seq: number; op: 'seal'; buffer: SharedArrayBuffer; requests: SealRequest[] }
  | { seq: number; op: 'open'; buffer: SharedArrayBuffer; requests: OpenRequest[] };

export type WorkerResponse =
  | { seq: number; op: 'seal'; sealed: SealedResult[] }
  | { seq: number; op: 'open'; opened: OpenResult[] }
  | { seq: number; op: 'error'; message: string };
