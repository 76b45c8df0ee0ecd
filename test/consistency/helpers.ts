/**
 * Shared by the consistency suites: a small in-process repository (cheap KDF, small chunks and
 * packs, so a few MiB make many packs), the gate that stops a backup mid-file, and a line-based
 * child process (the writers run as processes of their own).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { Repository } from '../../src/repo/repository.js';
import { openStorage } from '../../src/storage/open.js';
import { FaultyStorage } from '../../src/storage/wrap/faults.js';
import { testPassword } from '../helpers/cli.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** A repository in `dir` (local), behind a FaultyStorage the test can hold puts at. */
export async function smallRepo(dir: string): Promise<{ repo: Repository; faulty: FaultyStorage }> {
  const faulty = new FaultyStorage(await openStorage(dir, {}));
  const repo = await Repository.init(faulty, testPassword, {
    kdf: { N: 1024, r: 8, p: 1 },
    workers: 2,
    packSize: MiB,
    chunker: { minSize: 32 * KiB, avgSize: 64 * KiB, maxSize: 256 * KiB },
  });
  return { repo, faulty };
}

/** A child process spoken to in JSON lines: `ask` writes one and resolves with the next line it prints. */
export class LineChild {
  private readonly lines: AsyncIterator<string>;
  readonly child: ChildProcess;
  private stderr = '';

  constructor(command: string, args: string[], cwd?: string) {
    this.child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], ...(cwd ? { cwd } : {}) });
    this.child.stderr!.on('data', (b: Buffer) => (this.stderr = (this.stderr + b.toString()).slice(-4000)));
    this.lines = createInterface({ input: this.child.stdout! })[Symbol.asyncIterator]();
  }

  /** The next line the child prints, parsed. */
  async next<T = Record<string, unknown>>(): Promise<T> {
    const r = await this.lines.next();
    if (r.done) throw new Error(`the child process ended; its stderr:\n${this.stderr}`);
    return JSON.parse(r.value) as T;
  }

  async ask<T = Record<string, unknown>>(command: unknown): Promise<T> {
    this.child.stdin!.write(`${JSON.stringify(command)}\n`);
    return this.next<T>();
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin!.end();
    await exited;
  }
}
