import { existsSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { CodecTransforms } from '../transform/blob-codec.js';
import type { MasterKeys } from '../transform/keys.js';
import { reapplyYoungGenerationCap } from '../util/young-generation.js';
import { CodecOps, type HashedSpans, type OpenRequest, type OpenResult, type SealRequest, type SealedResult } from './ops.js';
import type { CodecRequest, WorkerRequest, WorkerResponse } from './protocol.js';
import { decodeSealed, encodeOpens, encodeSeals } from './wire.js';

/** Where the pipeline's CPU work runs: worker threads, or this thread (workers: 0). */
export interface CodecExecutor {
  /** Blob IDs of the (offset, length) pairs of `buffer`. */
  hash(buffer: SharedArrayBuffer, spans: Uint32Array): Promise<HashedSpans>;
  seal(buffer: SharedArrayBuffer, requests: SealRequest[]): Promise<SealedResult[]>;
  open(buffer: SharedArrayBuffer, requests: OpenRequest[]): Promise<OpenResult[]>;
  close(): Promise<void>;
}

export function defaultWorkerCount(): number {
  return Math.max(1, Math.min(os.availableParallelism(), 8));
}

export function createExecutor(
  keys: MasterKeys,
  compressionLevel: number,
  workers = defaultWorkerCount(),
  transforms: CodecTransforms = {},
): CodecExecutor {
  return workers <= 0 ? new InlineExecutor(keys, compressionLevel, transforms) : new StartingWorkers(workers).start(keys, compressionLevel, transforms);
}

/**
 * Worker threads started before the repository's keys are known: a thread takes ~0.1 s of CPU
 * to start (an isolate, the codec's modules and addons), which then overlaps the key derivation
 * (scrypt, ~0.15 s on a libuv thread) instead of delaying the first chunks. `start` hands them
 * the keys; threads never started are closed with `close`.
 */
export class StartingWorkers {
  private readonly workers: PoolWorker[];
  private taken = false;

  constructor(count: number) {
    const script = workerScriptPath();
    this.workers = Array.from({ length: count }, () => new PoolWorker(script));
  }

  start(keys: MasterKeys, compressionLevel: number, transforms: CodecTransforms): CodecExecutor {
    if (this.taken) throw new Error('these worker threads were already started');
    this.taken = true;
    const init: WorkerRequest = { op: 'init', keys: { encryption: keys.encryption, blobId: keys.blobId, gearSeed: keys.gearSeed }, compressionLevel, transforms };
    for (const w of this.workers) w.worker.postMessage(init);
    return new WorkerPool(this.workers);
  }

  /** Ends threads that were never started (a wrong password, a repository that failed to open). */
  async close(): Promise<void> {
    if (this.taken) return;
    this.taken = true;
    await Promise.all(this.workers.map((w) => w.close()));
  }
}

class InlineExecutor implements CodecExecutor {
  private readonly ops: CodecOps;

  constructor(keys: MasterKeys, compressionLevel: number, transforms: CodecTransforms) {
    this.ops = new CodecOps(keys, compressionLevel, transforms);
  }

  async hash(buffer: SharedArrayBuffer, spans: Uint32Array): Promise<HashedSpans> {
    return this.ops.hash(new Uint8Array(buffer), spans);
  }

  async seal(buffer: SharedArrayBuffer, requests: SealRequest[]): Promise<SealedResult[]> {
    return this.ops.seal(new Uint8Array(buffer), requests);
  }

  async open(buffer: SharedArrayBuffer, requests: OpenRequest[]): Promise<OpenResult[]> {
    return this.ops.open(new Uint8Array(buffer), requests);
  }

  async close(): Promise<void> {}
}

interface Pending {
  resolve: (r: WorkerResponse) => void;
  reject: (e: Error) => void;
}

class PoolWorker {
  readonly worker: Worker;
  readonly pending = new Map<number, Pending>();
  /** Settles when the thread has ended, however it ended. */
  readonly exited: Promise<void>;

  constructor(script: string) {
    // A worker's JS objects are messages that die young (file data stays in shared buffers): a
    // 4 MiB young generation instead of V8's default 16+ MiB per semi-space. Restoring 200k small
    // files peaked at 177 MB instead of 205 MB, at the same speed; large files see no change.
    this.worker = new Worker(script, { resourceLimits: { maxYoungGenerationSizeMb: 4 } });
    // Creating the worker's isolate reset V8's semi-space growth factor for the whole process.
    this.worker.once('online', reapplyYoungGenerationCap);
    this.worker.on('message', (msg: WorkerResponse) => {
      const p = this.pending.get(msg.seq);
      if (!p) return;
      this.pending.delete(msg.seq);
      if (msg.op === 'error') p.reject(new Error(`worker failed: ${msg.message}`));
      else p.resolve(msg);
    });
    const failAll = (err: Error) => {
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    this.worker.on('error', failAll);
    this.exited = new Promise((resolve) => {
      this.worker.on('exit', (code) => {
        if (this.pending.size > 0) failAll(new Error(`worker thread exited with code ${code}`));
        resolve();
      });
    });
  }

  /**
   * Asks the thread to exit once it has answered every request sent so far, and waits for it.
   * Never `terminate()`: a thread stopped while it runs native code (loading an addon at start,
   * or inside a call) cannot take the exception that the call then raises.
   */
  close(): Promise<void> {
    this.worker.postMessage({ op: 'close' } satisfies WorkerRequest);
    return this.exited;
  }
}

class WorkerPool implements CodecExecutor {
  private seq = 0;
  private closed = false;

  /** Threads that have been sent their keys (StartingWorkers.start). */
  constructor(private readonly workers: PoolWorker[]) {}

  private send(request: CodecRequest): Promise<WorkerResponse> {
    if (this.closed) return Promise.reject(new Error('the worker pool is closed'));
    let target = this.workers[0]!;
    for (const w of this.workers) if (w.pending.size < target.pending.size) target = w;
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      target.pending.set(seq, { resolve, reject });
      target.worker.postMessage({ ...request, seq } satisfies WorkerRequest);
    });
  }

  async hash(buffer: SharedArrayBuffer, spans: Uint32Array): Promise<HashedSpans> {
    const r = await this.send({ op: 'hash', buffer, spans });
    return (r as Extract<WorkerResponse, { op: 'hash' }>).hashed;
  }

  async seal(buffer: SharedArrayBuffer, requests: SealRequest[]): Promise<SealedResult[]> {
    const r = await this.send({ op: 'seal', buffer, requests: encodeSeals(requests) });
    return decodeSealed((r as Extract<WorkerResponse, { op: 'seal' }>).sealed);
  }

  async open(buffer: SharedArrayBuffer, requests: OpenRequest[]): Promise<OpenResult[]> {
    const r = await this.send({ op: 'open', buffer, requests: encodeOpens(requests) });
    return (r as Extract<WorkerResponse, { op: 'open' }>).opened;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.close()));
  }
}

/** Workers must run built JavaScript: from src/ (under vitest) use the sibling dist/ build. */
function workerScriptPath(): string {
  const here = fileURLToPath(new URL('./worker.js', import.meta.url));
  if (existsSync(here)) return here;
  const built = here.replace(/([/\\])src([/\\]workers[/\\]worker\.js)$/, '$1dist$2');
  if (existsSync(built)) return built;
  throw new Error(`worker script not found at ${here} or ${built}: run \`npm run build\` first`);
}
