/**
 * A source of per-GPU utilisation (NVML, nvidia-smi or a DCGM exporter). Shared contract between
 * the readers (src/polite/gpu-*.ts) and the politeness governor.
 */
export interface GpuSample {
  /** The GPU's index as its source numbers it. */
  readonly index: number;
  /** GPU UUID (GPU-xxxxxxxx-…) when the source gives one. */
  readonly uuid?: string;
  /** Busy percentage over the source's last sample period, 0..100. */
  readonly utilisation: number;
}

export interface GpuReader {
  readonly source: 'nvml' | 'nvidia-smi' | 'dcgm';
  /**
   * One reading of every visible GPU. Settles within the reader's timeout whatever the driver,
   * binary or endpoint does (a hung call, garbage): rejects with an Error saying what failed.
   */
  read(signal?: AbortSignal): Promise<GpuSample[]>;
  close(): Promise<void>;
}
