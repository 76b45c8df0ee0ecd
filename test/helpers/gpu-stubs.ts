/**
 * Scripted GPU sources for the GPU-reader tests: a stub libnvidia-ml.so.1 compiled from
 * test/fixtures/nvml-stub.c with gcc, a fake nvidia-smi (a shell script), and a DCGM exporter (a
 * node:http server on 127.0.0.1). Each is scripted by the test while it runs.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { chmod, readFile, rename, writeFile } from 'node:fs/promises';
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from './cli.js';

const run = promisify(execFile);

/** Writes `text` to `file` atomically (a reader sees the old text or the new, never half). */
async function replaceFile(file: string, text: string): Promise<void> {
  await writeFile(`${file}.tmp`, text);
  await rename(`${file}.tmp`, file);
}

/** Resolves once `check` returns a value (polled every 10 ms: waits on an event, not a duration). */
export async function waitFor<T>(check: () => Promise<T | undefined>, what: string, safetyMs = 30_000): Promise<T> {
  const deadline = Date.now() + safetyMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function readOrEmpty(file: string): Promise<string> {
  return readFile(file, 'utf8').catch(() => '');
}

export interface NvmlStub {
  /** The library's path (its file name is libnvidia-ml.so.1). */
  readonly library: string;
  /** Replaces the script (see test/fixtures/nvml-stub.c for the lines); read again by every call. */
  script(lines: string[]): Promise<void>;
  /** The NVML functions that entered a scripted hang so far. */
  hung(): Promise<string[]>;
  /** Resolves when `fn` has entered its scripted hang. */
  waitForHang(fn: string): Promise<void>;
}

/** Compiles the stub into `dir` (its control file lives there too). */
export async function buildNvmlStub(dir: string): Promise<NvmlStub> {
  const control = path.join(dir, 'nvml-control');
  const library = path.join(dir, 'libnvidia-ml.so.1');
  await writeFile(control, '');
  await run('gcc', ['-shared', '-fPIC', '-O1', '-Wall', `-DSTUB_CONTROL="${control}"`, '-o', library, path.join(repoRoot, 'test/fixtures/nvml-stub.c')]);
  const hung = async (): Promise<string[]> => (await readOrEmpty(`${control}.hung`)).split('\n').filter(Boolean);
  return {
    library,
    script: (lines) => replaceFile(control, lines.map((l) => `${l}\n`).join('')),
    hung,
    waitForHang: (fn) => waitFor(async () => ((await hung()).includes(fn) ? true : undefined), `${fn} to hang`).then(() => undefined),
  };
}

export interface FakeNvidiaSmi {
  /** The executable's path. */
  readonly command: string;
  /** Replaces what the fake does: a shell script body run with nvidia-smi's arguments. */
  script(body: string): Promise<void>;
  /** The arguments of the last run (one per line). */
  lastArgs(): Promise<string[]>;
  /** A file the script may touch to say it got somewhere (e.g. `echo $$ > "$MARK"`); read with marker(). */
  readonly mark: string;
  marker(): Promise<string>;
}

/** A fake nvidia-smi in `dir` that records its arguments and runs the scripted body. */
export async function fakeNvidiaSmi(dir: string): Promise<FakeNvidiaSmi> {
  const command = path.join(dir, 'nvidia-smi');
  const body = path.join(dir, 'nvidia-smi-body.sh');
  const args = path.join(dir, 'nvidia-smi-args');
  const mark = path.join(dir, 'nvidia-smi-mark');
  await writeFile(
    command,
    `#!/bin/sh\nprintf '%s\\n' "$@" > '${args}'\nMARK='${mark}'; export MARK\nexec /bin/sh '${body}' "$@"\n`,
  );
  await chmod(command, 0o755);
  await writeFile(body, 'exit 0\n');
  return {
    command,
    script: (text) => replaceFile(body, text),
    lastArgs: async () => (await readOrEmpty(args)).split('\n').filter(Boolean),
    mark,
    marker: () => readOrEmpty(mark),
  };
}

export interface FakeDcgmExporter {
  readonly url: string;
  /** What GET /metrics answers next: a body (status 200), a status and body, or 'hang' (never answers). */
  serve(answer: string | { status: number; body: string } | 'hang'): void;
  /** Requests that arrived so far. */
  readonly requests: number;
  close(): Promise<void>;
}

export async function fakeDcgmExporter(): Promise<FakeDcgmExporter> {
  let answer: string | { status: number; body: string } | 'hang' = '';
  let requests = 0;
  const server: Server = createServer((_req, res) => {
    requests++;
    if (answer === 'hang') return; // the connection stays open, nothing is sent
    const { status, body } = typeof answer === 'string' ? { status: 200, body: answer } : answer;
    res.writeHead(status, { 'content-type': 'text/plain; version=0.0.4' }).end(body);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/metrics`,
    serve: (a) => {
      answer = a;
    },
    get requests() {
      return requests;
    },
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

/** DCGM exporter text for GPUs with these utilisations (as dcgm-exporter 3.x writes it). */
export function dcgmText(utilisations: number[]): string {
  const lines = [
    '# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).',
    '# TYPE DCGM_FI_DEV_SM_CLOCK gauge',
    ...utilisations.map((_, i) => `DCGM_FI_DEV_SM_CLOCK{gpu="${i}",UUID="GPU-d${i}",device="nvidia${i}",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 1980`),
    '# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).',
    '# TYPE DCGM_FI_DEV_GPU_UTIL gauge',
    ...utilisations.map((u, i) => `DCGM_FI_DEV_GPU_UTIL{gpu="${i}",UUID="GPU-d${i}",device="nvidia${i}",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} ${u}`),
  ];
  return `${lines.join('\n')}\n`;
}
