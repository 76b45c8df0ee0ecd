/**
 * The agent's HTTP API (node:http, no framework).
 *
 *   POST   /v1/runs            {"namespace","pod","volume"} → 202 + the run record (its `id`)
 *   GET    /v1/runs            ?namespace=&pod=&volume=&state=  → {"runs": [...]}, newest first
 *   GET    /v1/runs/{id}       → the run record
 *   DELETE /v1/runs/{id}       → cancel: 202 (running: stopping) or 200 (was queued)
 *   GET    /v1/volumes         → {"volumes": [...]}: the protected volumes of this node
 *   GET    /v1/limits          → the read/upload limits and backoff in force, what reading does now, the cgroup box
 *   PUT    /v1/limits          {"readLimit"?, "uploadLimit"?}: "200MiB", bytes/s, or null (none) → 200 + as GET;
 *                              they hold for every run until the config's politeness section changes
 *   GET    /metrics            Prometheus text format
 *   GET    /healthz            200 while the process serves
 *   GET    /readyz             200 when the repository is open and pods are watched; else 503 + why
 *
 * Errors are JSON, `{"error": "...", "hint"?: "..."}`, naming what was not found or which
 * field is wrong. POST, PUT and DELETE need `Authorization: Bearer TOKEN` when a token is
 * configured; without a token they are served only on a loopback address: listening on any
 * other address without a token serves the read-only endpoints and refuses mutations (403).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { TenderError } from '../errors/errors.js';
import type { Rate } from '../polite/budget.js';
import { parseByteSize } from '../polite/parse.js';
import type { AgentMetrics } from './metrics.js';
import { type RunVolume, type Runner, describeVolume } from './runs.js';
import type { RunState } from './state.js';

/** The volume fields the API needs (discovery's ProtectedVolume has them). */
export interface HttpVolume extends RunVolume {
  path?: string;
  problem?: string;
}

export interface Readiness {
  ready: boolean;
  /** Why not ready, one line each. */
  reasons: string[];
}

export interface AgentHttpOptions {
  /** `HOST:PORT`, `:PORT` (every address) or `PORT`; `[::1]:PORT` for IPv6. */
  listen: string;
  runner: Runner;
  volumes: {
    find(namespace: string, pod: string, volume: string): HttpVolume | undefined;
    /** For GET /v1/volumes: each volume with whatever the agent adds (next due time, last success). */
    list(): unknown[];
  };
  readiness: () => Readiness;
  metrics: AgentMetrics;
  token?: TokenSource;
  nodeName: string;
  logger: Logger;
  /** The politeness limits (GET/PUT /v1/limits); without it the endpoint answers 404. */
  limits?: {
    get(): unknown;
    set(change: { readLimit?: Rate; uploadLimit?: Rate }): unknown;
  };
}

export interface ListenAddress {
  /** undefined: every address. */
  host: string | undefined;
  port: number;
}

export function parseListen(listen: string): ListenAddress {
  const bad = () =>
    new TenderError('TENDER_USAGE', `--listen ${JSON.stringify(listen)} is not an address`, {
      hint: 'use HOST:PORT, :PORT (every address) or [::1]:PORT, e.g. 127.0.0.1:8085',
    });
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d+)$/.exec(listen.trim()) ?? /^()()(\d+)$/.exec(listen.trim());
  if (!m) throw bad();
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw bad();
  const host = m[1] ?? m[2];
  return { host: host === '' || host === undefined ? undefined : host, port };
}

export function isLoopback(host: string | undefined): boolean {
  if (host === undefined) return false;
  const h = host.toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h === '::ffff:127.0.0.1';
}

/**
 * The API token, read from a file (a mounted Secret). The file is read again when it changes
 * (checked at most every `recheckMs`), so a rotated Secret takes effect without a restart.
 */
export class TokenSource {
  private token = '';
  private mtimeMs = -1;
  private checkedAt = 0;

  private constructor(
    readonly file: string,
    private readonly recheckMs: number,
  ) {}

  static async open(file: string, recheckMs = 5000): Promise<TokenSource> {
    const source = new TokenSource(file, recheckMs);
    await source.reload();
    return source;
  }

  private async reload(): Promise<void> {
    let text: string;
    let mtimeMs: number;
    try {
      mtimeMs = (await stat(this.file)).mtimeMs;
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      throw new TenderError('TENDER_USAGE', `cannot read the API token file ${this.file}: ${(err as Error).message}`, {
        hint: 'fix --token-file / TENDER_AGENT_TOKEN_FILE (a file holding the bearer token, e.g. a mounted Secret)',
      });
    }
    const token = text.trim();
    if (token === '') {
      throw new TenderError('TENDER_USAGE', `the API token file ${this.file} is empty`, { hint: 'put the bearer token in it' });
    }
    this.token = token;
    this.mtimeMs = mtimeMs;
  }

  async current(): Promise<string> {
    const now = Date.now();
    if (now - this.checkedAt >= this.recheckMs) {
      this.checkedAt = now;
      try {
        if ((await stat(this.file)).mtimeMs !== this.mtimeMs) await this.reload();
      } catch {
        // Mid-rotation or gone: keep the token we have.
      }
    }
    return this.token;
  }

  async matches(candidate: string): Promise<boolean> {
    const digest = (s: string) => createHash('sha256').update(s).digest();
    return timingSafeEqual(digest(candidate), digest(await this.current()));
  }
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly hint?: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const maxBodyBytes = 64 * 1024;
const runStates: ReadonlySet<string> = new Set<RunState>(['queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted']);

export class AgentHttpServer {
  private readonly server: http.Server;
  readonly address: ListenAddress;
  /** How mutations are guarded: a token, loopback only, or refused (no token, not loopback). */
  readonly mutations: 'token' | 'loopback' | 'refused';

  constructor(private readonly options: AgentHttpOptions) {
    this.address = parseListen(options.listen);
    this.mutations = options.token ? 'token' : isLoopback(this.address.host) ? 'loopback' : 'refused';
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        options.logger.error({ err: (err as Error).message, method: req.method, url: req.url }, 'HTTP request failed');
        if (!res.headersSent) sendJson(res, 500, { error: `internal error: ${(err as Error).message}` });
        else res.destroy();
      });
    });
    this.server.requestTimeout = 30_000;
    this.server.headersTimeout = 15_000;
    this.server.keepAliveTimeout = 5_000;
  }

  /** Starts listening; resolves with the address and port actually bound (port 0 → a free one). */
  async start(): Promise<{ host: string; port: number }> {
    if (this.mutations === 'refused') {
      this.options.logger.warn(
        { listen: this.options.listen },
        `no API token (--token-file / TENDER_AGENT_TOKEN_FILE): POST and DELETE are refused on ${this.options.listen}; they are served without a token only on a loopback address (e.g. --listen 127.0.0.1:8085)`,
      );
    }
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        reject(
          new TenderError('TENDER_USAGE', `cannot listen on ${this.options.listen}: ${err.message}`, {
            hint: err.code === 'EADDRINUSE' ? 'another process uses that port: choose another with --listen' : 'check --listen',
          }),
        );
      };
      this.server.once('error', onError);
      this.server.listen({ port: this.address.port, ...(this.address.host !== undefined ? { host: this.address.host } : {}) }, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
    const a = this.server.address() as AddressInfo;
    this.options.logger.info({ address: a.address, port: a.port, mutations: this.mutations }, `HTTP API listening on ${a.address}:${a.port}`);
    return { host: a.address, port: a.port };
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
      setTimeout(() => this.server.closeAllConnections(), 1000).unref();
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://agent');
    const method = req.method ?? 'GET';
    const parts = url.pathname.split('/').filter((p) => p !== '');
    try {
      if (url.pathname === '/healthz') return this.only(method, ['GET', 'HEAD'], () => sendJson(res, 200, { status: 'ok' }));
      if (url.pathname === '/readyz') {
        return this.only(method, ['GET', 'HEAD'], () => {
          const r = this.options.readiness();
          sendJson(res, r.ready ? 200 : 503, r.ready ? { ready: true } : { ready: false, reasons: r.reasons });
        });
      }
      if (url.pathname === '/metrics') {
        this.only(method, ['GET'], () => undefined);
        const text = await this.options.metrics.text();
        res.writeHead(200, { 'content-type': this.options.metrics.contentType, 'cache-control': 'no-store' });
        res.end(text);
        return;
      }
      if (parts[0] === 'v1' && parts[1] === 'volumes' && parts.length === 2) {
        return this.only(method, ['GET'], () => sendJson(res, 200, { node: this.options.nodeName, volumes: this.options.volumes.list() }));
      }
      if (parts[0] === 'v1' && parts[1] === 'limits' && parts.length === 2 && this.options.limits) {
        if (method === 'PUT') return await this.setLimits(req, res);
        return this.only(method, ['GET', 'PUT'], () => sendJson(res, 200, this.options.limits!.get()));
      }
      if (parts[0] === 'v1' && parts[1] === 'runs' && parts.length === 2) {
        if (method === 'POST') return await this.createRun(req, res);
        return this.only(method, ['GET', 'POST'], () => this.listRuns(url, res));
      }
      if (parts[0] === 'v1' && parts[1] === 'runs' && parts.length === 3) {
        const id = decodeURIComponent(parts[2]!);
        if (method === 'DELETE') return await this.cancelRun(req, res, id);
        return this.only(method, ['GET', 'DELETE'], () => {
          const run = this.options.runner.get(id);
          if (!run) throw new HttpError(404, `no run ${JSON.stringify(id)} on node ${this.options.nodeName}`, 'GET /v1/runs lists the runs this agent remembers');
          sendJson(res, 200, run);
        });
      }
      throw new HttpError(404, `no such endpoint: ${method} ${url.pathname}`, 'endpoints: /v1/runs, /v1/runs/{id}, /v1/volumes, /v1/limits, /metrics, /healthz, /readyz');
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      sendJson(res, err.status, { error: err.message, ...(err.hint ? { hint: err.hint } : {}) }, err.headers);
    }
  }

  private only(method: string, allowed: string[], then: () => void): void {
    if (!allowed.includes(method)) {
      throw new HttpError(405, `method ${method} is not allowed here (allowed: ${allowed.join(', ')})`, undefined, { allow: allowed.join(', ') });
    }
    then();
  }

  /** Throws 401/403 unless the request may change something. */
  private async authorize(req: IncomingMessage): Promise<void> {
    if (this.mutations === 'loopback') return;
    const who = { remote: req.socket.remoteAddress, method: req.method, url: req.url };
    if (this.mutations === 'refused') {
      this.options.metrics.error('auth');
      this.options.logger.warn(who, 'refused a mutating request: no API token is configured and the agent listens beyond loopback');
      throw new HttpError(
        403,
        `${req.method} is disabled: the agent has no API token and listens on ${this.options.listen}, not only on loopback`,
        'configure a token (--token-file or TENDER_AGENT_TOKEN_FILE, from a Secret) and send it as "Authorization: Bearer TOKEN"',
      );
    }
    const header = req.headers.authorization;
    const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!m) {
      this.options.metrics.error('auth');
      this.options.logger.warn(who, 'refused a mutating request without a bearer token');
      throw new HttpError(401, 'this request needs "Authorization: Bearer TOKEN"', 'the token is in the agent\'s token Secret (--token-file)', {
        'www-authenticate': 'Bearer realm="tender-agent"',
      });
    }
    if (!(await this.options.token!.matches(m[1]!))) {
      this.options.metrics.error('auth');
      this.options.logger.warn(who, 'refused a mutating request with a wrong bearer token');
      throw new HttpError(403, 'the bearer token is wrong', 'use the token from the agent\'s token Secret (--token-file)');
    }
  }

  private async createRun(req: IncomingMessage, res: ServerResponse): Promise<void> {
    await this.authorize(req);
    const body = await readJsonBody(req);
    const field = (name: string): string => {
      const v = body[name];
      if (v === undefined) throw new HttpError(400, `field "${name}" is missing`, 'send {"namespace": "...", "pod": "...", "volume": "..."}');
      if (typeof v !== 'string' || v.trim() === '') throw new HttpError(400, `field "${name}" must be a non-empty string`);
      return v;
    };
    const namespace = field('namespace');
    const pod = field('pod');
    const volumeName = field('volume');
    const volume = this.options.volumes.find(namespace, pod, volumeName);
    const what = describeVolume({ namespace, pod, volume: volumeName });
    if (!volume) {
      throw new HttpError(404, `no protected ${what} on node ${this.options.nodeName}`, 'GET /v1/volumes lists the volumes this agent protects (the pod must run on this node, and the volume be selected by its annotations or the policy)');
    }
    if (volume.problem !== undefined && volume.path === undefined) {
      this.options.metrics.error('volume');
      throw new HttpError(409, `${what} cannot be backed up: ${volume.problem}`);
    }
    const readiness = this.options.readiness();
    if (!readiness.ready) {
      throw new HttpError(503, `the agent is not ready: ${readiness.reasons.join('; ')}`, 'GET /readyz says why; the agent retries by itself');
    }
    const result = this.options.runner.enqueue(volume, 'api');
    if (result.outcome === 'full') throw new HttpError(429, `the run queue is full (${result.queued} runs waiting)`, 'try again later');
    sendJson(res, 202, result.run, { location: `/v1/runs/${encodeURIComponent(result.run.id)}` });
  }

  private listRuns(url: URL, res: ServerResponse): void {
    const q = url.searchParams;
    const state = q.get('state');
    if (state !== null && !runStates.has(state)) throw new HttpError(400, `query "state" must be one of ${[...runStates].join(', ')}`);
    const runs = this.options.runner
      .list()
      .filter((r) => (q.get('namespace') ?? r.namespace) === r.namespace && (q.get('pod') ?? r.pod) === r.pod && (q.get('volume') ?? r.volume) === r.volume && (state ?? r.state) === r.state);
    sendJson(res, 200, { runs });
  }

  private async setLimits(req: IncomingMessage, res: ServerResponse): Promise<void> {
    await this.authorize(req);
    const body = await readJsonBody(req);
    const hint = 'send {"readLimit": "200MiB", "uploadLimit": "100MiB"}: a size per second with a unit, a number of bytes per second, or null for no limit';
    const unknown = Object.keys(body).filter((k) => k !== 'readLimit' && k !== 'uploadLimit');
    if (unknown.length > 0) throw new HttpError(400, `unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => JSON.stringify(k)).join(', ')} (known: "readLimit", "uploadLimit")`, hint);
    if (Object.keys(body).length === 0) throw new HttpError(400, 'nothing to change: the body names no limit', hint);
    const change: { readLimit?: Rate; uploadLimit?: Rate } = {};
    for (const key of ['readLimit', 'uploadLimit'] as const) {
      if (!(key in body)) continue;
      const v = body[key];
      if (v === null) change[key] = undefined;
      else if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) change[key] = v;
      else if (typeof v === 'string') {
        try {
          change[key] = parseByteSize(v);
        } catch (err) {
          throw new HttpError(400, `field "${key}": ${(err as Error).message}`, hint);
        }
      } else throw new HttpError(400, `field "${key}" must be a size such as "200MiB", a positive whole number of bytes per second, or null`, hint);
    }
    sendJson(res, 200, this.options.limits!.set(change));
  }

  private async cancelRun(req: IncomingMessage, res: ServerResponse, id: string): Promise<void> {
    await this.authorize(req);
    const result = this.options.runner.cancel(id, `cancelled by DELETE /v1/runs/${id}`);
    switch (result.outcome) {
      case 'unknown':
        throw new HttpError(404, `no run ${JSON.stringify(id)} on node ${this.options.nodeName}`, 'GET /v1/runs lists the runs this agent remembers');
      case 'finished':
        throw new HttpError(409, `run ${id} has already finished (${result.run.state})`);
      case 'cancelling':
        return sendJson(res, 202, result.run);
      case 'cancelled':
        return sendJson(res, 200, result.run);
    }
  }
}

async function readJsonBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBodyBytes) throw new HttpError(413, `the request body is larger than ${maxBodyBytes} bytes`);
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') throw new HttpError(400, 'the request body is empty: send a JSON object', 'send {"namespace": "...", "pod": "...", "volume": "..."}');
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `the request body is not JSON: ${(err as Error).message}`);
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new HttpError(400, 'the request body must be a JSON object');
  return body as Record<string, unknown>;
}

function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(value) + '\n';
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...headers });
  res.end(text);
}
