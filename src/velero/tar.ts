/**
 * A streaming reader of tar archives (POSIX ustar, with the pax `path` record and GNU long names,
 * which is what Go's archive/tar and GNU tar write). Entries come one at a time; a body is read
 * only when asked for, else skipped as it streams by, so memory is bounded by the largest body
 * read plus one chunk of the source, whatever the archive's size.
 */
import { TenderError } from '../errors/errors.js';

export type TarEntryKind = 'file' | 'directory' | 'other';

export interface TarEntry {
  /** The entry's path as stored (pax `path`, GNU long name, or ustar prefix + name). */
  path: string;
  kind: TarEntryKind;
  size: number;
  /** The whole body (call at most once, before asking for the next entry). */
  body(): Promise<Buffer>;
}

const BLOCK = 512;

/** Exactly-n-bytes reads over an async iterable of chunks. */
class ByteReader {
  readonly #it: AsyncIterator<Uint8Array>;
  readonly #chunks: Buffer[] = [];
  #available = 0;
  #done = false;
  /** Bytes consumed so far (for messages). */
  offset = 0;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  async #pull(): Promise<boolean> {
    if (this.#done) return false;
    const next = await this.#it.next();
    if (next.done) {
      this.#done = true;
      return false;
    }
    const b = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
    if (b.length > 0) {
      this.#chunks.push(b);
      this.#available += b.length;
    }
    return true;
  }

  /** n bytes, or undefined when the source ends before the first of them; throws when it ends inside. */
  async read(n: number): Promise<Buffer | undefined> {
    while (this.#available < n) {
      if (!(await this.#pull())) {
        if (this.#available === 0) return undefined;
        throw truncated(this.offset + this.#available);
      }
    }
    const parts: Buffer[] = [];
    let need = n;
    while (need > 0) {
      const head = this.#chunks[0]!;
      if (head.length <= need) {
        parts.push(head);
        this.#chunks.shift();
        need -= head.length;
      } else {
        parts.push(head.subarray(0, need));
        this.#chunks[0] = head.subarray(need);
        need = 0;
      }
    }
    this.#available -= n;
    this.offset += n;
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** Drop n bytes without holding them. */
  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.#available === 0 && !(await this.#pull())) throw truncated(this.offset);
      const head = this.#chunks[0];
      if (!head) continue;
      const take = Math.min(head.length, left);
      if (take === head.length) this.#chunks.shift();
      else this.#chunks[0] = head.subarray(take);
      this.#available -= take;
      this.offset += take;
      left -= take;
    }
  }
}

function truncated(offset: number): TenderError {
  return new TenderError('TENDER_CORRUPT', `the tar archive ends in the middle of an entry (after ${offset} bytes)`, {
    hint: 'the file is incomplete: download it again',
  });
}

function notTar(offset: number, why: string): TenderError {
  return new TenderError('TENDER_CORRUPT', `not a tar archive: the header at byte ${offset} ${why}`, {
    hint: 'a Velero backup is the gzip-compressed tar file backups/<name>/<name>.tar.gz of its storage location',
  });
}

function cString(b: Buffer, start: number, length: number): string {
  const field = b.subarray(start, start + length);
  const nul = field.indexOf(0);
  return field.subarray(0, nul < 0 ? field.length : nul).toString('utf8');
}

/** A numeric header field: octal text, or GNU base-256 when the high bit of the first byte is set. */
function numberField(b: Buffer, start: number, length: number, offset: number, what: string): number {
  const field = b.subarray(start, start + length);
  if ((field[0]! & 0x80) !== 0) {
    let value = field[0]! & 0x7f;
    for (let i = 1; i < field.length; i++) value = value * 256 + field[i]!;
    if (!Number.isSafeInteger(value)) throw notTar(offset, `has a ${what} too large to handle`);
    return value;
  }
  const text = cString(b, start, length).trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw notTar(offset, `has a malformed ${what} field ${JSON.stringify(text)}`);
  return parseInt(text, 8);
}

function checksumOk(header: Buffer, offset: number): boolean {
  const stored = numberField(header, 148, 8, offset, 'checksum');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]!;
  return sum === stored;
}

/** The `path` record of a pax extended header, if any (records: "LEN key=value\n"). */
function paxPath(body: Buffer): string | undefined {
  let pos = 0;
  let found: string | undefined;
  while (pos < body.length) {
    const space = body.indexOf(0x20, pos);
    if (space < 0) break;
    const len = parseInt(body.subarray(pos, space).toString('ascii'), 10);
    if (!Number.isSafeInteger(len) || len <= 0 || pos + len > body.length) break;
    const record = body.subarray(space + 1, pos + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0 && record.slice(0, eq) === 'path') found = record.slice(eq + 1);
    pos += len;
  }
  return found;
}

const padding = (size: number): number => (BLOCK - (size % BLOCK)) % BLOCK;

/** Limit for pax and GNU long-name bodies: a path, not data. */
const MAX_META_BODY = 1 << 20;

/**
 * The entries of a tar stream, in order. Ends at the end-of-archive blocks (or at the end of the
 * source right after an entry); a damaged header or a truncated entry is a TENDER_CORRUPT error.
 */
export async function* tarEntries(source: AsyncIterable<Uint8Array>): AsyncGenerator<TarEntry> {
  const reader = new ByteReader(source);
  let longName: string | undefined;
  let paxName: string | undefined;
  for (;;) {
    const at = reader.offset;
    const header = await reader.read(BLOCK);
    if (!header) return;
    if (header.every((x) => x === 0)) return;
    if (!checksumOk(header, at)) throw notTar(at, 'has a wrong checksum');
    const size = numberField(header, 124, 12, at, 'size');
    const type = String.fromCharCode(header[156]!);
    if (type === 'x' || type === 'L') {
      if (size > MAX_META_BODY) throw notTar(at, `has an extended header of ${size} bytes`);
      const body = (await reader.read(size)) ?? Buffer.alloc(0);
      await reader.skip(padding(size));
      if (type === 'x') paxName = paxPath(body) ?? paxName;
      else longName = cString(body, 0, body.length);
      continue;
    }
    if (type === 'g' || type === 'K') {
      await reader.skip(size + padding(size));
      continue;
    }
    let name = cString(header, 0, 100);
    const magic = header.subarray(257, 263).toString('latin1');
    if (magic === 'ustar\0') {
      const prefix = cString(header, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    const path = paxName ?? longName ?? name;
    paxName = longName = undefined;
    const kind: TarEntryKind = type === '0' || type === '\0' || type === '7' ? 'file' : type === '5' ? 'directory' : 'other';
    // Links, devices, directories and FIFOs have no body, whatever their size field says.
    const bodySize = '123456'.includes(type) ? 0 : size;
    let consumed = false;
    const entry: TarEntry = {
      path,
      kind,
      size: bodySize,
      body: async () => {
        if (consumed) throw new Error(`the body of tar entry ${path} was already read`);
        consumed = true;
        return (await reader.read(bodySize)) ?? Buffer.alloc(0);
      },
    };
    yield entry;
    if (!consumed) await reader.skip(bodySize);
    await reader.skip(padding(bodySize));
  }
}
