/**
 * Ranged GETs over plain http whose body the socket reads straight into the caller's buffer
 * (net.Socket `onread`): no chunk per read, no copy, no garbage. Through the SDK, every 64 KiB of
 * a body is a fresh Buffer that is parsed, queued, copied and collected: restoring 1 GiB from a
 * MinIO on loopback cost ~3.8 s of main-thread CPU that way, ~0.25 s this way (user + sys).
 *
 * Only the expected answer is handled here: `206` with exactly the asked length. Anything else
 * (an error status, a cut connection, a timeout, an unexpected header) fails with DirectGetFailed
 * and the caller does the request again through the SDK, which classifies, reports and retries.
 */
import net from 'node:net';

/** Signs a GET (the S3 client's own SigV4 signer and credentials); returns the headers to send. */
export type SignGet = (request: { hostname: string; port: number; path: string; headers: Record<string, string> }) => Promise<Record<string, string>>;

export class DirectGetFailed extends Error {}

/** Bytes of response head read at a time, before the body starts. */
const headChunk = 16 * 1024;
/** A response head larger than this is not what a ranged GET returns. */
const maxHeadBytes = 64 * 1024;
/**
 * Connections kept open between reads, at most: the rest of a burst of concurrent reads closes
 * its connections, so a long-running process's open descriptors do not stay at the peak of its
 * busiest operation. A new connection to a plain-http endpoint costs a round trip, little beside
 * an 8 MiB read.
 */
const maxIdleConnections = 2;

export class DirectRangeReader {
  private readonly idle: Connection[] = [];
  private readonly all = new Set<Connection>();
  private closed = false;

  /** `host` and `port` to connect to; `hostHeader` as the endpoint URL spells them (`[::1]:9000`). */
  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly hostHeader: string,
    private readonly sign: SignGet,
    private readonly timeouts: { connectMs: number; idleMs: number },
  ) {}

  /** Reads bytes [offset, offset + into.length) of the object at `path` (URL path, encoded) into `into`. */
  async read(path: string, offset: number, into: Uint8Array): Promise<void> {
    if (this.closed) throw new DirectGetFailed('closed');
    const headers = await this.sign({
      hostname: this.host,
      port: this.port,
      path,
      headers: { host: this.hostHeader, range: `bytes=${offset}-${offset + into.length - 1}`, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' },
    });
    let head = `GET ${path} HTTP/1.1\r\n`;
    for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}\r\n`;
    const connection = this.idle.pop() ?? this.connect();
    const keep = await connection.get(`${head}\r\n`, into);
    if (keep && !this.closed && this.idle.length < maxIdleConnections) this.idle.push(connection);
    else connection.destroy();
  }

  close(): void {
    this.closed = true;
    for (const c of this.all) c.destroy();
  }

  private connect(): Connection {
    const connection = new Connection(this.host, this.port, this.timeouts, () => {
      this.all.delete(connection);
      const at = this.idle.indexOf(connection);
      if (at >= 0) this.idle.splice(at, 1);
    });
    this.all.add(connection);
    return connection;
  }
}

/** One keep-alive connection: one request at a time. */
class Connection {
  private readonly socket: net.Socket;
  private readonly scratch = Buffer.allocUnsafe(headChunk);
  /** The request under way: where its body goes, and how it ends. */
  private pending: { target: Uint8Array; resolve: (keep: boolean) => void; reject: (err: Error) => void } | undefined;
  /** The response head read so far (latin1), or undefined once the body started. */
  private head: string | undefined;
  private received = 0;
  private keepAlive = true;

  constructor(host: string, port: number, timeouts: { connectMs: number; idleMs: number }, onGone: () => void) {
    this.socket = net.connect({
      host,
      port,
      onread: {
        buffer: () => this.nextBuffer(),
        callback: (n: number, buf: Uint8Array) => {
          this.onBytes(n, buf);
          return true;
        },
      },
    });
    this.socket.setNoDelay(true);
    this.socket.setTimeout(timeouts.connectMs, () => this.socket.destroy(new DirectGetFailed('timed out')));
    this.socket.once('connect', () => this.socket.setTimeout(timeouts.idleMs));
    this.socket.on('error', (err) => this.end(new DirectGetFailed(err.message)));
    this.socket.on('close', () => {
      this.end(new DirectGetFailed('connection closed'));
      onGone();
    });
  }

  /** Sends `request` and reads the body into `target`; resolves with whether the connection may be reused. */
  get(request: string, target: Uint8Array): Promise<boolean> {
    this.head = '';
    this.received = 0;
    return new Promise<boolean>((resolve, reject) => {
      this.pending = { target, resolve, reject };
      this.socket.write(request, 'latin1');
    });
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Where the next read goes: the rest of the body in the target, else the scratch buffer. */
  private nextBuffer(): Uint8Array {
    const target = this.pending?.target;
    return target && this.head === undefined ? target.subarray(this.received) : this.scratch;
  }

  private onBytes(n: number, buf: Uint8Array): void {
    const target = this.pending?.target;
    // Bytes nobody asked for: the connection is out of step.
    if (!target) return void this.socket.destroy();
    if (this.head === undefined) {
      this.received += n;
    } else {
      const before = this.head.length;
      this.head += Buffer.from(buf.buffer, buf.byteOffset, n).toString('latin1');
      const end = this.head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (this.head.length > maxHeadBytes) this.abort('response head too large');
        return;
      }
      const head = this.head.slice(0, end);
      const problem = checkHead(head, target.length);
      if (problem) return this.abort(problem);
      const bodyStart = end + 4 - before;
      if (n - bodyStart > target.length) return this.abort('more bytes than announced');
      target.set(buf.subarray(bodyStart, n), 0);
      this.received = n - bodyStart;
      this.keepAlive = !/\r\nconnection:\s*close/i.test(head);
      this.head = undefined;
    }
    if (this.received === target.length) this.end(this.keepAlive);
  }

  /** Settles the request under way, if any: with whether to keep the connection, or failed. */
  private end(outcome: boolean | Error): void {
    const pending = this.pending;
    this.pending = undefined;
    if (!pending) return;
    if (outcome instanceof Error) pending.reject(outcome);
    else pending.resolve(outcome);
  }

  private abort(message: string): void {
    this.end(new DirectGetFailed(message));
    this.socket.destroy();
  }
}

/** Why a response head is not `206` with a body of exactly `length` bytes, or undefined. */
function checkHead(head: string, length: number): string | undefined {
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1];
  if (status !== '206') return `status ${status ?? 'unreadable'}`;
  if (/\r\ntransfer-encoding:/i.test(head)) return 'chunked body';
  const announced = /\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1];
  if (announced === undefined || Number(announced) !== length) return `content-length ${announced ?? 'missing'}, asked for ${length}`;
  return undefined;
}
