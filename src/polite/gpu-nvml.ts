import { type NativeNvmlSession, loadNative, nativeUnavailableReason } from '../util/native.js';
import { checkTimeout, checkedSamples, settleWithin } from './gpu-common.js';
import type { GpuReader, GpuSample } from './gpu-reader.js';

/** The name the NVIDIA driver installs libnvidia-ml under; the dynamic loader finds it. */
export const defaultNvmlLibrary = 'libnvidia-ml.so.1';

export interface NvmlReaderOptions {
  /** What to dlopen: a library name the dynamic loader resolves, or a path (default libnvidia-ml.so.1). */
  readonly library?: string;
  /** How long one NVML call (open, a reading, close) may take before the reader gives up on NVML. */
  readonly timeoutMs: number;
}

/**
 * NVML loaded into this process (native/src/nvml.cc: dlopen, nvmlInit_v2) on a thread of its own.
 * Rejects with what failed: the library missing, the driver not loaded (NVML's return code named),
 * or no answer within the timeout.
 */
export async function openNvmlReader(options: NvmlReaderOptions): Promise<GpuReader> {
  const library = options.library ?? defaultNvmlLibrary;
  const reader = new NvmlReader(newSession(library), library, checkTimeout(options.timeoutMs, 'NVML reader'));
  try {
    await reader.open();
  } catch (err) {
    await reader.close();
    throw err;
  }
  return reader;
}

function newSession(library: string): NativeNvmlSession {
  const addon = loadNative();
  if (!addon) throw new Error(`NVML is read through tender's native addon, which is unavailable: ${nativeUnavailableReason()}`);
  if (!addon.NvmlSession) throw new Error(addon.nvmlUnavailable ?? 'the native addon predates NVML support (rebuild it: npm run build:native)');
  return new addon.NvmlSession(library);
}

class NvmlReader implements GpuReader {
  readonly source = 'nvml';
  readonly #session: NativeNvmlSession;
  readonly #where: string;
  readonly #timeoutMs: number;
  /** Set when a call did not return in time: its thread is stuck in the driver for good. */
  #hung: Error | undefined;
  #closed = false;

  constructor(session: NativeNvmlSession, library: string, timeoutMs: number) {
    this.#session = session;
    this.#where = `NVML (${library})`;
    this.#timeoutMs = timeoutMs;
  }

  open(): Promise<void> {
    return this.#call(() => this.#session.open(), 'nvmlInit_v2');
  }

  async read(signal?: AbortSignal): Promise<GpuSample[]> {
    const gpus = await this.#call(() => this.#session.read(), 'a reading', signal);
    return checkedSamples(this.#where, gpus);
  }

  /** Never rejects: nvmlShutdown's complaints change nothing for a reader that is done. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#hung) return; // close() was queued behind the hung call when it timed out
    await settleWithin(this.#session.close(), this.#timeoutMs, () => new Error('nvmlShutdown did not return')).catch(() => undefined);
  }

  #call<T>(start: () => Promise<T>, what: string, signal?: AbortSignal): Promise<T> {
    if (this.#hung) return Promise.reject(this.#hung);
    if (this.#closed) return Promise.reject(new Error(`${this.#where}: the reader is closed`));
    return settleWithin(start(), this.#timeoutMs, () => this.#abandon(what), signal);
  }

  /**
   * A call did not return: later calls would queue behind it on the session's thread, so the reader
   * fails fast from now on, and the session is closed behind the hung call (it runs only if the
   * driver ever lets go).
   */
  #abandon(what: string): Error {
    this.#hung = new Error(
      `${this.#where} did not answer ${what} within ${this.#timeoutMs} ms: a call is hung in the driver, so NVML is no longer read`,
    );
    this.#closed = true;
    this.#session.close().catch(() => undefined);
    return this.#hung;
  }
}
