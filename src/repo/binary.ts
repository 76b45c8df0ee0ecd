import { idLength } from './ids.js';

/** Thrown by decoders on malformed input; callers turn it into a TENDER_CORRUPT error naming the object. */
export class FormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FormatError';
  }
}

/** Bounds-checked little-endian reader: malformed input fails with FormatError, never reads past the end. */
export class BinaryReader {
  private pos = 0;

  constructor(private readonly buf: Buffer) {}

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number, what: string): void {
    if (n > this.remaining) throw new FormatError(`truncated while reading ${what}`);
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  id(what: string): Buffer {
    this.need(idLength, what);
    const v = this.buf.subarray(this.pos, this.pos + idLength);
    this.pos += idLength;
    return v;
  }

  /** A count of records of `recordSize` bytes that must fit in what is left (no huge allocations). */
  count(recordSize: number, what: string): number {
    const n = this.u32(what);
    if (n * recordSize > this.remaining) throw new FormatError(`${what} ${n} exceeds the data`);
    return n;
  }

  end(what: string): void {
    if (this.remaining !== 0) throw new FormatError(`${this.remaining} unexpected bytes after ${what}`);
  }
}

export class BinaryWriter {
  private readonly buf: Buffer;
  private pos = 0;

  constructor(size: number) {
    this.buf = Buffer.alloc(size);
  }

  u8(v: number): this {
    this.buf[this.pos++] = v;
    return this;
  }

  u32(v: number): this {
    this.buf.writeUInt32LE(v, this.pos);
    this.pos += 4;
    return this;
  }

  id(v: Uint8Array): this {
    this.buf.set(v.subarray(0, idLength), this.pos);
    this.pos += idLength;
    return this;
  }

  finish(): Buffer {
    if (this.pos !== this.buf.length) throw new Error(`BinaryWriter: wrote ${this.pos} of ${this.buf.length} bytes`);
    return this.buf;
  }
}
