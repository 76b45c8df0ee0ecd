/**
 * The storage a repository writes through: a backend wrapped in the small decorators of wrap/
 * (restic `backend/{retry,limiter}`, kopia `blob/{retrying,throttling,storagemetrics}`):
 *
 *   retry → metrics → limit → faults → backend
 *
 * - retry (on unless `retry: false`) is outermost, so each attempt is counted, paced and
 *   faulted like any other call;
 * - metrics (when given) counts every attempt: the requests and bytes that really went out;
 * - limit (when given) makes every attempt pay for its bytes;
 * - faults: only for tests (a FaultyStorage the caller configures through `faults`, or the
 *   TENDER_TEST_HOLD_* variables below).
 * Wrappers that are not asked for are not there at all.
 */
import { existsSync, writeFileSync } from 'node:fs';
import type { ByteBudget } from '../util/token-bucket.js';
import type { Storage } from './storage.js';
import { FaultyStorage } from './wrap/faults.js';
import { LimitStorage } from './wrap/limit.js';
import { MetricsStorage, type StorageMetrics } from './wrap/metrics.js';
import { type RetryOptions, RetryStorage } from './wrap/retry.js';

export interface StackOptions {
  /** Retry settings, or false for none (default: on, with wrap/retry.ts defaults). */
  retry?: RetryOptions | false;
  /** Counters to add this storage's operations to. */
  metrics?: StorageMetrics;
  /** Bandwidth budgets (e.g. TokenBucket), shared by whoever should share the bandwidth. */
  limits?: { upload?: ByteBudget; download?: ByteBudget };
  /** Cancels waits for a retry or for a budget (the operation's signal). */
  signal?: AbortSignal;
  /** Tests: configure fault injection on the backend (see wrap/faults.ts). */
  faults?: (faulty: FaultyStorage) => void;
  /** Where the TENDER_TEST_HOLD_* variables are read (default: process.env). */
  env?: NodeJS.ProcessEnv;
}

/** Wraps `backend` as `options` ask; see the order above. */
export function stackStorage(backend: Storage, options: StackOptions = {}): Storage {
  let s = backend;
  const faulty = options.faults || testHoldFromEnv(options.env ?? process.env) ? new FaultyStorage(s) : undefined;
  if (faulty) {
    options.faults?.(faulty);
    applyTestHold(faulty, options.env ?? process.env);
    s = faulty;
  }
  const { upload, download } = options.limits ?? {};
  if (upload || download) s = new LimitStorage(s, { upload, download, signal: options.signal });
  if (options.metrics) s = new MetricsStorage(s, options.metrics);
  if (options.retry !== false) s = new RetryStorage(s, { ...(options.signal ? { signal: options.signal } : {}), ...options.retry });
  return s;
}

/**
 * End-to-end tests of the CLI (test/faults/network.test.ts) stop a backup at a known point:
 *
 *   TENDER_TEST_HOLD_AFTER_PUTS=N   let the first N puts under data/ (packs) through, hold the rest
 *   TENDER_TEST_HOLD_GATE=PATH      until the file PATH exists.
 *
 * Once the N puts have finished and the next one waits, the file PATH.held is created: the test
 * waits for it, sets up its fault, then creates PATH. Read here and nowhere else.
 */
interface TestHold {
  after: number;
  gate: string;
}

function testHoldFromEnv(env: NodeJS.ProcessEnv): TestHold | undefined {
  const after = env.TENDER_TEST_HOLD_AFTER_PUTS;
  const gate = env.TENDER_TEST_HOLD_GATE;
  if (after === undefined || after === '' || !gate) return undefined;
  const n = Number(after);
  if (!Number.isSafeInteger(n) || n < 0) return undefined;
  return { after: n, gate };
}

function applyTestHold(faulty: FaultyStorage, env: NodeJS.ProcessEnv): void {
  const test = testHoldFromEnv(env);
  if (!test) return;
  const hold = faulty.hold({ op: 'put', prefix: 'data/', after: test.after });
  void hold.reached.then(() => {
    writeFileSync(`${test.gate}.held`, `${JSON.stringify({ pid: process.pid, after: test.after })}\n`);
    const poll = setInterval(() => {
      if (existsSync(test.gate)) hold.release();
    }, 20);
    // Opened here or by close(): stop polling either way, so the process can exit.
    void hold.released.then(() => clearInterval(poll));
  });
}
