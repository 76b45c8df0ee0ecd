import type CliProgress from 'cli-progress';
import { createRequire } from 'node:module';

/**
 * Progress output: a bar on a terminal (files, bytes, MB/s, ETA), JSON lines with --json,
 * nothing otherwise. Updates are throttled; `done` prints the final line.
 */
export interface ProgressSample {
  filesDone: number;
  bytesDone: number;
  totalFiles?: number;
  totalBytes?: number;
  errors?: number;
}

export interface ProgressView {
  update(sample: ProgressSample): void;
  /** A line about the operation (reading throttled, and why): above the bar, a JSON line, or a plain line on stderr. */
  note(line: string, fields?: Record<string, unknown>): void;
  stop(): void;
}

const mb = (n: number) => (n / 1e6).toFixed(1);

/** `quiet`: notes are dropped too (mode 'none' because of --quiet, not for want of a terminal). */
export function createProgress(mode: 'tty' | 'json' | 'none', action: string, quiet = false): ProgressView {
  const started = Date.now();
  let last = 0;
  const rate = (bytes: number) => bytes / Math.max(0.001, (Date.now() - started) / 1000);
  if (mode === 'json') {
    return {
      update(s) {
        const now = Date.now();
        if (now - last < 1000) return;
        last = now;
        const seconds = (now - started) / 1000;
        const eta = s.totalBytes && s.bytesDone > 0 ? ((s.totalBytes - s.bytesDone) / rate(s.bytesDone)) : undefined;
        process.stdout.write(
          JSON.stringify({ message_type: 'status', action, seconds_elapsed: seconds, ...s, bytes_per_second: Math.round(rate(s.bytesDone)), ...(eta !== undefined ? { seconds_remaining: Math.round(eta) } : {}) }) + '\n',
        );
      },
      note(line, fields = {}) {
        process.stdout.write(JSON.stringify({ message_type: 'note', action, message: line, ...fields }) + '\n');
      },
      stop() {},
    };
  }
  if (mode === 'none') {
    return {
      update() {},
      note: quiet ? () => {} : (line) => process.stderr.write(`${line}\n`),
      stop() {},
    };
  }
  // Required only here: scripts and the bench (--json, --quiet) do not pay for loading the bar.
  const cliProgress = createRequire(import.meta.url)('cli-progress') as typeof CliProgress;
  const bar = new cliProgress.SingleBar(
    {
      format: `${action} [{bar}] {percentage}% | {files} files | {done}/{totalMb} MB | {speed} MB/s | ETA {eta_formatted}`,
      stream: process.stderr,
      hideCursor: true,
      etaBuffer: 50,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(1, 0, { files: 0, done: '0.0', totalMb: '?', speed: '0.0' });
  return {
    update(s) {
      const total = s.totalBytes ?? Math.max(s.bytesDone, 1);
      bar.setTotal(Math.max(total, 1));
      bar.update(s.bytesDone, {
        files: s.totalFiles ? `${s.filesDone}/${s.totalFiles}` : s.filesDone,
        done: mb(s.bytesDone),
        totalMb: s.totalBytes !== undefined ? mb(s.totalBytes) : '?',
        speed: mb(rate(s.bytesDone)),
      });
    },
    note(line) {
      // Clear the bar's line and write the note; the bar redraws below it at its next change.
      process.stderr.write(`\r\x1b[2K${line}\n`);
    },
    stop() {
      bar.stop();
    },
  };
}

export function progressMode(json: boolean, quiet: boolean): 'tty' | 'json' | 'none' {
  if (json) return 'json';
  if (quiet || !process.stderr.isTTY) return 'none';
  return 'tty';
}
