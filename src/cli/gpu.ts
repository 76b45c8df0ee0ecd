import { type Command, Option } from 'commander';
import { TenderError } from '../errors/errors.js';
import type { GpuReader } from '../polite/gpu-reader.js';
import { type GpuSourceChoice, gpuSourceTimeoutMs, openGpuReader, parseGpuSource } from '../polite/gpu-source.js';

const gpuSourceHint = 'e.g. --gpu-source nvml, --gpu-source nvidia-smi=/usr/bin/nvidia-smi or --gpu-source dcgm=http://127.0.0.1:9400/metrics';

export function addGpuSourceOption(command: Command): Command {
  return command.addOption(
    new Option('--gpu-source <source>', 'where --gpu-backoff reads GPU utilisation: nvml[=LIBRARY], nvidia-smi[=PATH] or dcgm=URL (default: NVML, else nvidia-smi)').argParser(
      (v: string) => {
        try {
          return parseGpuSource(v);
        } catch (err) {
          throw new TenderError('TENDER_USAGE', `--gpu-source: ${(err as Error).message}`, { hint: gpuSourceHint });
        }
      },
    ),
  );
}

/**
 * The GPU reader --gpu-backoff needs: undefined without --gpu-backoff, or when no source works
 * (`say` gets the one line saying why, and which source was found otherwise).
 */
export async function gpuReaderFor(opts: { gpuBackoff?: number; gpuSource?: GpuSourceChoice }, say: (line: string) => void): Promise<GpuReader | undefined> {
  if (opts.gpuBackoff === undefined) {
    if (opts.gpuSource) throw new TenderError('TENDER_USAGE', '--gpu-source needs --gpu-backoff', { hint: 'add --gpu-backoff PERCENT, e.g. --gpu-backoff 80' });
    return undefined;
  }
  const reader = await openGpuReader({ ...opts.gpuSource, timeoutMs: gpuSourceTimeoutMs, logger: { info: (_fields, message) => say(message) } });
  return reader ?? undefined;
}
