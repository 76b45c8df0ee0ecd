import { dcgmReader } from './gpu-dcgm.js';
import { defaultNvmlLibrary, openNvmlReader } from './gpu-nvml.js';
import type { GpuReader, GpuSample } from './gpu-reader.js';
import { nvidiaSmiReader } from './gpu-smi.js';

export type GpuSourceKind = GpuReader['source'];

export interface GpuSourceOptions {
  /**
   * The sources to try, in this order; the first that gives a reading is used. Default: NVML, then
   * nvidia-smi, then the DCGM exporter when `dcgmUrl` is set.
   */
  readonly sources?: readonly GpuSourceKind[];
  /** The library NVML is loaded from (default libnvidia-ml.so.1, found by the dynamic loader). */
  readonly nvmlLibrary?: string;
  /** The nvidia-smi to run (default: nvidia-smi on PATH). */
  readonly nvidiaSmi?: string;
  /** A DCGM exporter's metrics URL, e.g. http://127.0.0.1:9400/metrics. */
  readonly dcgmUrl?: string;
  /** The limit on every call into a source: opening it, each reading. */
  readonly timeoutMs: number;
  /** Gets the one line saying which source was found, or that none was (a pino Logger fits). */
  readonly logger: { info(fields: Record<string, unknown>, message: string): void };
}

/** The reader that was found, and what it found, for startup logs and metrics. */
export interface FoundGpuReader extends GpuReader {
  /** E.g. "NVML (libnvidia-ml.so.1): 2 GPUs (GPU-… 3%, GPU-… 0%)". */
  readonly description: string;
  /** How many GPUs the first reading saw. */
  readonly gpus: number;
}

/** Which source to use, as a user names it (the CLI's --gpu-source, the agent's gpuSource). */
export type GpuSourceChoice = Pick<GpuSourceOptions, 'sources' | 'nvmlLibrary' | 'nvidiaSmi' | 'dcgmUrl'>;

const choiceSyntax = 'nvml[=LIBRARY], nvidia-smi[=PATH] or dcgm=URL';

/** `nvml[=LIBRARY]`, `nvidia-smi[=PATH]` or `dcgm=URL`: that source only. */
export function parseGpuSource(text: string): GpuSourceChoice {
  const eq = text.indexOf('=');
  const kind = eq < 0 ? text : text.slice(0, eq);
  const value = eq < 0 ? undefined : text.slice(eq + 1);
  if (value === '') throw new Error(`${JSON.stringify(text)} names nothing after "=" (expected ${choiceSyntax})`);
  switch (kind) {
    case 'nvml':
      return { sources: ['nvml'], ...(value !== undefined ? { nvmlLibrary: value } : {}) };
    case 'nvidia-smi':
      return { sources: ['nvidia-smi'], ...(value !== undefined ? { nvidiaSmi: value } : {}) };
    case 'dcgm':
      if (value === undefined) throw new Error(`dcgm needs the exporter's URL, e.g. dcgm=http://127.0.0.1:9400/metrics`);
      if (!/^https?:\/\/./.test(value)) throw new Error(`${JSON.stringify(value)} is not an http(s) URL of a DCGM exporter`);
      return { sources: ['dcgm'], dcgmUrl: value };
    default:
      throw new Error(`${JSON.stringify(text)} is not a GPU source (expected ${choiceSyntax})`);
  }
}

/**
 * The limit on each call into a GPU source that the CLI and the agent use: under the governor's
 * own limit on a reading (2 s), so that a hung NVML call is reported by the reader, which then
 * stops calling NVML, rather than cut off by the governor.
 */
export const gpuSourceTimeoutMs = 1500;

const sourceLabel: Record<GpuSourceKind, string> = { nvml: 'NVML', 'nvidia-smi': 'nvidia-smi', dcgm: 'DCGM' };

/**
 * The first source that opens and gives one good reading, or null when none does: logged once,
 * at info, with why each source failed ("no GPU found (NVML: …; nvidia-smi: …): GPU backoff is
 * off"). Every try is bounded by timeoutMs, so a hung driver costs startup that long, not more.
 */
export async function openGpuReader(options: GpuSourceOptions): Promise<FoundGpuReader | null> {
  const sources = options.sources ?? (options.dcgmUrl ? ['nvml', 'nvidia-smi', 'dcgm'] : ['nvml', 'nvidia-smi']);
  const failures: string[] = [];
  for (const source of sources) {
    let reader: GpuReader | undefined;
    try {
      reader = await open(source, options);
      const samples = await reader.read();
      const found = describedReader(reader, `${sourceLabel[source]} (${whereFrom(source, options)}): ${describeSamples(samples)}`, samples.length);
      const tried = failures.length ? ` (${failures.join('; ')})` : '';
      options.logger.info({ gpuSource: source, gpus: samples.length }, `GPU utilisation from ${found.description}${tried}`);
      return found;
    } catch (err) {
      await reader?.close();
      failures.push(`${sourceLabel[source]}: ${(err as Error).message}`);
    }
  }
  options.logger.info({ gpuSource: null }, `no GPU found (${failures.join('; ')}): GPU backoff is off`);
  return null;
}

function open(source: GpuSourceKind, options: GpuSourceOptions): Promise<GpuReader> {
  switch (source) {
    case 'nvml':
      return openNvmlReader({ library: options.nvmlLibrary, timeoutMs: options.timeoutMs });
    case 'nvidia-smi':
      return Promise.resolve(nvidiaSmiReader({ command: options.nvidiaSmi, timeoutMs: options.timeoutMs }));
    case 'dcgm':
      if (!options.dcgmUrl) return Promise.reject(new Error('no exporter URL configured'));
      return Promise.resolve(dcgmReader({ url: options.dcgmUrl, timeoutMs: options.timeoutMs }));
  }
}

function whereFrom(source: GpuSourceKind, options: GpuSourceOptions): string {
  switch (source) {
    case 'nvml':
      return options.nvmlLibrary ?? defaultNvmlLibrary;
    case 'nvidia-smi':
      return options.nvidiaSmi ?? 'nvidia-smi';
    case 'dcgm':
      return options.dcgmUrl!;
  }
}

/** "2 GPUs (GPU-aaa 12%, GPU-bbb 0%)" */
export function describeSamples(samples: readonly GpuSample[]): string {
  const each = samples.map((s) => `${s.uuid ?? `#${s.index}`} ${s.utilisation}%`);
  return `${samples.length} GPU${samples.length === 1 ? '' : 's'} (${each.join(', ')})`;
}

function describedReader(reader: GpuReader, description: string, gpus: number): FoundGpuReader {
  return {
    source: reader.source,
    description,
    gpus,
    read: (signal) => reader.read(signal),
    close: () => reader.close(),
  };
}
