/**
 * `tender backup` sent SIGTERM mid-run (a pod being stopped): it ends within 3 s with a clear
 * message, the repository checks clean, and the next run stores only what was not stored yet.
 * The backup is stopped at a known point, after its first pack is stored, by the test hold of
 * src/storage/stack.ts: no race with the clock.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { backupJson, describeRun, errorLine, runTender, startTender, tenderOk, writeRandomFile } from '../helpers/cli.js';

const MiB = 1024 * 1024;
const scratch: string[] = [];
afterAll(async () => {
  for (const dir of scratch) await rm(dir, { recursive: true, force: true });
});

async function until(condition: () => boolean, what: string, limitMs = 60_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('tender backup and SIGTERM', () => {
  it('exits within 3 s with a clear message; the repository checks clean; the next run stores only what is missing', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tender-sigterm-'));
    scratch.push(dir);
    const repo = path.join(dir, 'repo');
    const source = path.join(dir, 'ckpt');
    await mkdir(source);
    for (let i = 0; i < 3; i++) await writeRandomFile(path.join(source, `shard-${i}.bin`), 24 * MiB);
    await writeFile(path.join(source, 'latest'), 'step-100\n');
    await tenderOk(['--repo', repo, 'init']);

    const gate = path.join(dir, 'gate');
    const child = startTender(['--repo', repo, '--json', 'backup', source], {
      env: { TENDER_TEST_HOLD_AFTER_PUTS: '2', TENDER_TEST_HOLD_GATE: gate },
    });
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    child.stdout!.resume();
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
    // Two packs are stored, the third waits at the gate: the backup is mid-run.
    await until(() => existsSync(`${gate}.held`), 'the backup to store two packs');
    const sent = Date.now();
    child.kill('SIGTERM');
    await writeFile(gate, '');
    const { code, signal } = await exited;
    const took = Date.now() - sent;
    expect(signal, stderr).toBeNull();
    expect(code, stderr).toBe(143);
    expect(took, 'time from SIGTERM to exit').toBeLessThan(3000);
    const error = JSON.parse(stderr.trim().split('\n').at(-1)!) as { message_type: string; code: string; message: string; hint: string };
    expect(error).toMatchObject({ message_type: 'exit_error', code: 'TENDER_CANCELLED' });
    expect(error.message).toMatch(/cancelled.*SIGTERM/);
    expect(error.hint).toMatch(/stored so far is kept/);

    const checked = await runTender(['--repo', repo, 'check', '--read-data']);
    expect(checked.code, describeRun(['check'], checked)).toBe(0);
    expect(checked.stdout).toContain('no errors were found');

    // The packs stored before the signal are indexed: the next run does not upload them again.
    const next = await backupJson(repo, [source]);
    expect(next.bytesRead).toBe(72 * MiB + 9);
    expect(next.bytesAdded, 'bytes added by the run after the interrupted one').toBeLessThan(72 * MiB - 16 * MiB);
    const plain = await runTender(['--repo', repo, 'backup', source]);
    expect(plain.code).toBe(0);
    expect(() => errorLine(plain)).toThrow();
  }, 180_000);
});
