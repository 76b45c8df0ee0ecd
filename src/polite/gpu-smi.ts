import { type ChildProcess, spawn } from 'node:child_process';
import { systemErrorCode } from '../errors/errors.js';
import { checkTimeout, checkedSamples, settleWithin } from './gpu-common.js';
import type { GpuReader, GpuSample } from './gpu-reader.js';

export const nvidiaSmiArgs = ['--query-gpu=index,uuid,utilization.gpu', '--format=csv,noheader,nounits'] as const;

/** More output than this from one query is garbage (a line per GPU is ~60 bytes). */
const maxOutputBytes = 1 << 20;

export interface NvidiaSmiReaderOptions {
  /** The nvidia-smi to run: a name looked up on PATH (default nvidia-smi) or a path. */
  readonly command?: string;
  /** How long one nvidia-smi run may take; it is then killed (its whole process group). */
  readonly timeoutMs: number;
}

/** Runs `nvidia-smi --query-gpu=index,uuid,utilization.gpu --format=csv,noheader,nounits` per reading. */
export function nvidiaSmiReader(options: NvidiaSmiReaderOptions): GpuReader {
  return new NvidiaSmiReader(options.command ?? 'nvidia-smi', checkTimeout(options.timeoutMs, 'nvidia-smi reader'));
}

class NvidiaSmiReader implements GpuReader {
  readonly source = 'nvidia-smi';
  readonly #command: string;
  readonly #timeoutMs: number;
  /** A run that was killed but has not exited yet: stuck in the driver, where SIGKILL waits. */
  #unkillable: ChildProcess | undefined;

  constructor(command: string, timeoutMs: number) {
    this.#command = command;
    this.#timeoutMs = timeoutMs;
  }

  async read(signal?: AbortSignal): Promise<GpuSample[]> {
    if (this.#unkillable) {
      throw new Error(
        `${this.#command} (pid ${this.#unkillable.pid}) is still running after SIGKILL (stuck in the driver?): not starting another`,
      );
    }
    const stdout = await this.#run(signal);
    return checkedSamples(this.#command, parseNvidiaSmi(stdout, this.#command));
  }

  async close(): Promise<void> {}

  #run(signal?: AbortSignal): Promise<string> {
    const command = this.#command;
    // A process group of its own, so that a timeout kills what a wrapper script started too (a
    // child holding stdout open would otherwise keep the run alive).
    const child = spawn(command, nvidiaSmiArgs, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let closed = false;
    const killGroup = (): void => {
      if (closed || child.pid === undefined) return;
      if (child.exitCode === null && child.signalCode === null) {
        this.#unkillable = child;
        child.once('exit', () => {
          if (this.#unkillable === child) this.#unkillable = undefined;
        });
      }
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // the group is gone already
      }
    };
    const run = new Promise<string>((resolve, reject) => {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let bytes = 0;
      const collect = (into: Buffer[]) => (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > maxOutputBytes) {
          killGroup();
          reject(new Error(`${command} wrote more than ${maxOutputBytes} bytes: not a --query-gpu answer`));
          return;
        }
        into.push(chunk);
      };
      child.stdout.on('data', collect(out));
      child.stderr.on('data', collect(err));
      child.once('error', (e) => {
        const code = systemErrorCode(e);
        if (code === 'ENOENT') reject(new Error(`${command} not found${command.includes('/') ? '' : ' on PATH'}`));
        else if (code === 'EACCES') reject(new Error(`${command} is not executable`));
        else reject(new Error(`cannot run ${command}: ${e.message}`));
      });
      child.once('close', (code, killedBy) => {
        closed = true;
        const stdout = Buffer.concat(out).toString('utf8');
        if (code === 0) return resolve(stdout);
        const said = firstLine(Buffer.concat(err).toString('utf8')) || firstLine(stdout);
        reject(new Error(`${command} ${killedBy ? `was killed by ${killedBy}` : `exited with code ${code}`}${said ? `: ${said}` : ''}`));
      });
    });
    return settleWithin(
      run,
      this.#timeoutMs,
      () => {
        killGroup();
        return new Error(`${command} did not answer within ${this.#timeoutMs} ms (killed)`);
      },
      signal,
    ).finally(killGroup);
  }
}

function firstLine(text: string): string {
  return (text.split('\n').find((l) => l.trim() !== '') ?? '').trim().slice(0, 300);
}

/**
 * `index, uuid, utilization.gpu` per line (csv, noheader, nounits). Anything else is an error
 * naming the line: nvidia-smi says "[N/A]" or "[Not Supported]" where it has no value.
 */
export function parseNvidiaSmi(stdout: string, where = 'nvidia-smi'): GpuSample[] {
  const samples: GpuSample[] = [];
  const lines = stdout.split('\n');
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') return;
    const fields = line.split(',').map((f) => f.trim());
    const bad = (why: string): Error =>
      new Error(`${where} output line ${i + 1} ${why}: ${JSON.stringify(line.slice(0, 200))} (expected "index, uuid, utilization.gpu")`);
    if (fields.length !== 3) throw bad(`has ${fields.length} fields`);
    const [index, uuid, utilisation] = fields as [string, string, string];
    if (!/^\d{1,6}$/.test(index)) throw bad('has no GPU index');
    if (!/^\S+$/.test(uuid)) throw bad('has no UUID');
    if (!/^\d{1,3}$/.test(utilisation)) throw bad('has no utilisation percentage');
    samples.push({ index: Number(index), uuid, utilisation: Number(utilisation) });
  });
  return samples;
}
