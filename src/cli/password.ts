import { readFile } from 'node:fs/promises';
import { execSync } from 'node:child_process';
import { openSync, closeSync, readSync, writeSync } from 'node:fs';
import { TenderError } from '../errors/errors.js';

/** Where a password may come from: a file option, then a file variable, then a variable, then a prompt. */
export interface PasswordSource {
  file?: string | undefined;
  fileVariable: string;
  variable: string;
}

export const repositoryPassword = (file: string | undefined): PasswordSource => ({
  file,
  fileVariable: 'TENDER_PASSWORD_FILE',
  variable: 'TENDER_PASSWORD',
});

/**
 * Reads a password: e.g. --password-file / TENDER_PASSWORD_FILE, then TENDER_PASSWORD, then a
 * prompt on the terminal. Never from the command line (it would show in `ps`).
 */
export async function readPassword(source: PasswordSource, purpose: 'open' | 'new'): Promise<string> {
  const file = source.file ?? process.env[source.fileVariable];
  if (file) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw new TenderError('TENDER_NO_PASSWORD', `cannot read the password file ${file}: ${(err as Error).message}`, {
        hint: `fix the password file option or ${source.fileVariable}`,
      });
    }
    const password = text.replace(/\r?\n$/, '');
    if (password === '') throw new TenderError('TENDER_NO_PASSWORD', `the password file ${file} is empty`);
    return password;
  }
  const env = process.env[source.variable];
  if (env !== undefined && env !== '') return env;
  const first = promptHidden(purpose === 'new' ? 'new repository password: ' : 'repository password: ', source);
  if (purpose === 'new') {
    const again = promptHidden('repeat password: ', source);
    if (again !== first) throw new TenderError('TENDER_USAGE', 'the passwords do not match');
  }
  if (first === '') throw new TenderError('TENDER_NO_PASSWORD', 'an empty password is not allowed');
  return first;
}

/** Reads a line from the controlling terminal with echo off. */
function promptHidden(question: string, source: PasswordSource): string {
  let fd: number;
  try {
    fd = openSync('/dev/tty', 'r+');
  } catch {
    throw new TenderError('TENDER_NO_PASSWORD', 'no password given and no terminal to ask for one', {
      hint: `set ${source.fileVariable} (or ${source.variable})`,
    });
  }
  try {
    writeSync(fd, question);
    const restore = execSync('stty -g < /dev/tty').toString().trim();
    execSync('stty -echo < /dev/tty');
    try {
      const buf = Buffer.alloc(1024);
      let line = '';
      for (;;) {
        const n = readSync(fd, buf, 0, buf.length, null);
        if (n <= 0) break;
        line += buf.subarray(0, n).toString('utf8');
        if (line.includes('\n')) break;
      }
      return line.replace(/\r?\n[\s\S]*$/, '');
    } finally {
      execSync(`stty ${restore} < /dev/tty`);
      writeSync(fd, '\n');
    }
  } finally {
    closeSync(fd);
  }
}
