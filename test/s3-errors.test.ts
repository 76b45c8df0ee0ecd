/**
 * S3 backend failure handling: bad settings give clear errors that name the setting to fix, and
 * transient failures (resets, 503 SlowDown, stalls, a MinIO restart) are retried until they pass.
 * Runs against the shared test MinIO, a private MinIO started here, and small loopback fakes.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  CreateBucketCommand,
  ListMultipartUploadsCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TenderError } from '../src/errors/errors.js';
import { S3Storage, s3RequestCounts, type S3Tuning } from '../src/storage/s3.js';
import { applyS3TestEnv, s3TestOptions, s3TestUrl } from './helpers/s3.js';
import { freePort, startMinio, stopMinio } from './setup/minio.js';

const run = promisify(execFile);

/** Short retries so the failing cases finish quickly. */
const fast: Partial<S3Tuning> = { maxAttempts: 4, retryBudgetMs: 0, baseDelayMs: 5, maxDelayMs: 20 };

const storages: S3Storage[] = [];
function storage(url: string, options: { s3Endpoint?: string; caBundle?: string }, tuning: Partial<S3Tuning> = {}): S3Storage {
  const s = new S3Storage(url, options, tuning);
  storages.push(s);
  return s;
}
afterEach(async () => {
  await Promise.all(storages.splice(0).map((s) => s.close()));
});

async function failure(p: Promise<unknown>): Promise<TenderError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(TenderError);
    return err as TenderError;
  }
  throw new Error('expected the operation to fail');
}

async function drain(it: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of it) {
    // just consume
  }
}

function text(err: TenderError): string {
  return `${err.message}\n${err.hint ?? ''}`;
}

function sha(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
  });
}

describe('S3 settings errors against MinIO', () => {
  it('wrong access key: TENDER_STORAGE_AUTH naming AWS_ACCESS_KEY_ID, without the secret', async () => {
    const secret = 'wrong-secret-must-not-be-printed';
    const s = storage(s3TestUrl('auth'), s3TestOptions(), { ...fast, credentials: { accessKeyId: 'no-such-key', secretAccessKey: secret } });
    for (const op of [() => s.put('config', [Buffer.from('x')]), () => s.get('config'), () => s.stat('config'), () => drain(s.list(''))]) {
      const err = await failure(op());
      expect(err.code).toBe('TENDER_STORAGE_AUTH');
      expect(text(err)).toContain('AWS_ACCESS_KEY_ID');
      expect(text(err)).not.toContain(secret);
    }
    // Not retried: a bad key does not get better.
    expect(s.stats.retries).toBe(0);
  });

  it('wrong secret from the environment: TENDER_STORAGE_AUTH', async () => {
    const url = s3TestUrl('auth-env');
    const options = s3TestOptions(); // (sets the right secret, so take it first)
    const saved = process.env.AWS_SECRET_ACCESS_KEY;
    process.env.AWS_SECRET_ACCESS_KEY = 'not-the-secret';
    try {
      const s = storage(url, options, fast);
      const err = await failure(s.put('config', [Buffer.from('x')]));
      expect(err.code).toBe('TENDER_STORAGE_AUTH');
      expect(err.message).toContain('SignatureDoesNotMatch');
      expect(text(err)).toContain('AWS_SECRET_ACCESS_KEY');
      expect(text(err)).not.toContain('not-the-secret');
    } finally {
      process.env.AWS_SECRET_ACCESS_KEY = saved;
    }
  });

  it('missing bucket: TENDER_STORAGE_CONFIG naming the bucket, for every operation', async () => {
    const s = storage('s3://tender-no-such-bucket/repo', s3TestOptions(), fast);
    const ops: Array<() => Promise<unknown>> = [
      () => s.put('config', [Buffer.from('x')]),
      () => s.get('config'),
      () => s.stat('config'),
      () => drain(s.list('')),
      () => s.delete('config'),
    ];
    for (const op of ops) {
      const err = await failure(op());
      expect(err.code).toBe('TENDER_STORAGE_CONFIG');
      expect(err.message).toContain('tender-no-such-bucket');
      expect(err.hint).toMatch(/create the bucket/);
    }
  });

  it('unreachable endpoint: TENDER_STORAGE_CONFIG naming AWS_ENDPOINT_URL after bounded retries', async () => {
    applyS3TestEnv();
    const port = await freePort(); // closed again: connections are refused
    const s = storage('s3://tender-test/unreachable', { s3Endpoint: `http://127.0.0.1:${port}` }, fast);
    const started = Date.now();
    const err = await failure(s.put('config', [Buffer.from('x')]));
    expect(err.code).toBe('TENDER_STORAGE_CONFIG');
    expect(text(err)).toContain('AWS_ENDPOINT_URL');
    expect(text(err)).toContain('--s3-endpoint');
    expect(err.message).toContain('gave up after 4 attempts');
    expect(s.stats.puts).toBe(4);
    expect(s.stats.retries).toBe(3);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('lists every page', async () => {
    const s = storage(s3TestUrl('pages'), s3TestOptions(), { listPageSize: 5 });
    const keys = Array.from({ length: 12 }, (_, i) => `index/${String(i).padStart(2, '0')}`);
    await Promise.all(keys.map((k) => s.put(k, [Buffer.from(k)])));
    const listed: string[] = [];
    for await (const o of s.list('index/')) listed.push(o.key);
    expect(listed.sort()).toEqual(keys);
    expect(s.stats.lists).toBe(3);
  });

  it('counts requests and bytes', async () => {
    const before = s3RequestCounts();
    const s = storage(s3TestUrl('counts'), s3TestOptions());
    await s.put('data/00/a', [Buffer.alloc(1000)]);
    await s.put('data/00/a', [Buffer.alloc(1000)]); // exists: a request, but no bytes counted
    await s.get('data/00/a', { offset: 10, length: 100 });
    expect(s.stats).toMatchObject({ puts: 2, gets: 1, bytesUp: 1000, bytesDown: 100, retries: 0 });
    const after = s3RequestCounts();
    expect(after.puts - before.puts).toBeGreaterThanOrEqual(2);
    expect(after.bytesDown - before.bytesDown).toBeGreaterThanOrEqual(100);
  });

  it('multipart: concurrent uploads of one key store it once and leave no upload behind', async () => {
    const url = s3TestUrl('multipart');
    const s = storage(url, s3TestOptions(), { multipartThreshold: 6 * 1024 * 1024, partSize: 5 * 1024 * 1024 });
    const bodies = [randomBytes(11 * 1024 * 1024), randomBytes(11 * 1024 * 1024)];
    const key = 'data/ab/big';
    const results = await Promise.all(bodies.map((b) => s.put(key, [b.subarray(0, 3), b.subarray(3)])));
    expect(results.sort()).toEqual(['exists', 'stored']);
    const got = await s.get(key);
    expect(bodies.map(sha)).toContain(sha(got));
    const env = applyS3TestEnv();
    const admin = new S3Client({
      region: env.region,
      endpoint: env.endpoint,
      forcePathStyle: true,
      credentials: { accessKeyId: env.accessKeyId, secretAccessKey: env.secretAccessKey },
    });
    try {
      const uploads = await admin.send(new ListMultipartUploadsCommand({ Bucket: env.bucket, Prefix: s.prefix }));
      expect(uploads.Uploads ?? []).toEqual([]);
    } finally {
      admin.destroy();
    }
  });
});

/** A loopback HTTP(S) server answering every request with one canned S3 response. */
async function cannedServer(
  respond: (req: http.IncomingMessage, res: http.ServerResponse) => void,
  tls?: { key: Buffer; cert: Buffer },
): Promise<{ endpoint: string; requests: () => number; close: () => Promise<void> }> {
  let n = 0;
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    n++;
    req.resume();
    req.on('end', () => respond(req, res));
  };
  const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
  const port = await listen(server);
  return {
    endpoint: `${tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    requests: () => n,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function s3Error(status: number, code: string, message: string, headers: Record<string, string> = {}) {
  return (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`;
    res.writeHead(status, { 'Content-Type': 'application/xml', ...headers });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
}

describe('S3 error classification (canned responses)', () => {
  const cases = [
    {
      name: 'wrong region (AuthorizationHeaderMalformed)',
      respond: s3Error(400, 'AuthorizationHeaderMalformed', "the region 'us-east-1' is wrong; expecting 'eu-west-1'"),
      code: 'TENDER_STORAGE_CONFIG',
      attempts: 1,
      says: ['AWS_REGION', 'eu-west-1'],
    },
    {
      name: 'wrong region (PermanentRedirect)',
      respond: s3Error(301, 'PermanentRedirect', 'use the right endpoint', { 'x-amz-bucket-region': 'eu-central-1' }),
      code: 'TENDER_STORAGE_CONFIG',
      attempts: 1,
      says: ['AWS_REGION', 'eu-central-1'],
    },
    {
      name: 'access denied',
      respond: s3Error(403, 'AccessDenied', 'Access Denied.'),
      code: 'TENDER_STORAGE_AUTH',
      attempts: 1,
      says: ['AWS_ACCESS_KEY_ID'],
    },
    {
      name: 'persistent 500 InternalError',
      respond: s3Error(500, 'InternalError', 'We encountered an internal error.'),
      code: 'TENDER_STORAGE',
      attempts: 4,
      says: ['InternalError', 'gave up after 4 attempts'],
    },
    {
      name: 'persistent 503 SlowDown',
      respond: s3Error(503, 'SlowDown', 'Please reduce your request rate.'),
      code: 'TENDER_STORAGE',
      attempts: 4,
      says: ['SlowDown'],
    },
    {
      name: '429 throttling',
      respond: s3Error(429, 'TooManyRequests', 'slow down'),
      code: 'TENDER_STORAGE',
      attempts: 4,
      says: ['429'],
    },
    {
      name: 'other 4xx (not retried)',
      respond: s3Error(400, 'InvalidArgument', 'bad argument'),
      code: 'TENDER_STORAGE',
      attempts: 1,
      says: ['InvalidArgument'],
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const server = await cannedServer(c.respond);
      try {
        const s = storage('s3://tender-test/canned', { s3Endpoint: server.endpoint }, {
          ...fast,
          credentials: { accessKeyId: 'k', secretAccessKey: 's' },
        });
        const err = await failure(s.put('config', [Buffer.from('x')]));
        expect(err.code).toBe(c.code);
        for (const word of c.says) expect(text(err)).toContain(word);
        expect(server.requests()).toBe(c.attempts);
        expect(s.stats.puts).toBe(c.attempts);
      } finally {
        await server.close();
      }
    });
  }

  it('ranged get that comes back short is an error, not a short buffer', async () => {
    const server = await cannedServer((_req, res) => {
      res.writeHead(206, { 'Content-Length': '10', 'Content-Range': 'bytes 0-9/10' });
      res.end(Buffer.alloc(10));
    });
    try {
      const s = storage('s3://tender-test/short', { s3Endpoint: server.endpoint }, { ...fast, credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
      const err = await failure(s.get('data/x', { offset: 0, length: 100 }));
      expect(err.code).toBe('TENDER_STORAGE');
      expect(err.message).toContain('returned 10 bytes');
    } finally {
      await server.close();
    }
  });

  it('TLS with an unknown CA: TENDER_STORAGE_CONFIG naming AWS_CA_BUNDLE; --ca-bundle fixes it', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tender-tls-'));
    try {
      const keyPath = path.join(dir, 'key.pem');
      const certPath = path.join(dir, 'cert.pem');
      await run('openssl', [
        'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
        '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyPath, '-out', certPath,
      ]);
      const tls = { key: await readFile(keyPath), cert: await readFile(certPath) };
      const server = await cannedServer((_req, res) => {
        res.writeHead(200, { ETag: '"0"' });
        res.end();
      }, tls);
      try {
        const creds = { ...fast, credentials: { accessKeyId: 'k', secretAccessKey: 's' } };
        const bad = storage('s3://tender-test/tls', { s3Endpoint: server.endpoint }, creds);
        const err = await failure(bad.put('config', [Buffer.from('x')]));
        expect(err.code).toBe('TENDER_STORAGE_CONFIG');
        expect(text(err)).toContain('AWS_CA_BUNDLE');
        expect(text(err)).toContain('--ca-bundle');
        expect(bad.stats.retries).toBe(0);

        const good = storage('s3://tender-test/tls', { s3Endpoint: server.endpoint, caBundle: certPath }, creds);
        expect(await good.put('config', [Buffer.from('x')])).toBe('stored');
      } finally {
        await server.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

type ProxyAction = 'pass' | 'reset' | 'slowdown' | 'stall';

/** A TCP proxy on 127.0.0.1 in front of `target`; `plan(n)` decides what connection n (1-based) gets. */
async function startProxy(target: URL, plan: (n: number) => ProxyAction) {
  const counts: Record<ProxyAction, number> = { pass: 0, reset: 0, slowdown: 0, stall: 0 };
  const sockets = new Set<net.Socket>();
  let n = 0;
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    const action = plan(++n);
    counts[action]++;
    if (action === 'pass') {
      const upstream = net.connect(Number(target.port), target.hostname);
      sockets.add(upstream);
      upstream.on('close', () => sockets.delete(upstream));
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
      client.pipe(upstream).pipe(client);
      return;
    }
    if (action === 'stall') return; // accept, read nothing, answer nothing
    client.once('data', () => {
      if (action === 'reset') {
        client.resetAndDestroy();
      } else {
        const body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>';
        client.end(
          `HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        );
      }
    });
  });
  const port = await listen(server);
  return {
    endpoint: `http://127.0.0.1:${port}`,
    counts,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

describe('S3 retries through a faulty proxy', () => {
  const retrying: Partial<S3Tuning> = { maxAttempts: 8, retryBudgetMs: 0, baseDelayMs: 5, maxDelayMs: 50, idleTimeoutMs: 400 };
  const cases: Array<{ name: string; plan: (n: number) => ProxyAction; action: ProxyAction }> = [
    { name: 'connection resets', plan: (n) => (n <= 3 ? 'reset' : 'pass'), action: 'reset' },
    { name: '503 SlowDown answers', plan: (n) => (n <= 3 ? 'slowdown' : 'pass'), action: 'slowdown' },
    { name: 'stalled connections (idle timeout)', plan: (n) => (n <= 2 ? 'stall' : 'pass'), action: 'stall' },
  ];
  for (const c of cases) {
    it(`retries ${c.name} and then succeeds`, async () => {
      const env = applyS3TestEnv();
      const url = s3TestUrl('proxy');
      const proxy = await startProxy(new URL(env.endpoint), c.plan);
      try {
        const s = storage(url, { s3Endpoint: proxy.endpoint }, retrying);
        const body = randomBytes(300_000);
        expect(await s.put('data/aa/x', [body.subarray(0, 1000), body.subarray(1000)])).toBe('stored');
        const injected = proxy.counts[c.action];
        expect(injected).toBeGreaterThanOrEqual(2);
        expect(s.stats.retries).toBe(injected);
        expect(s.stats.puts).toBe(injected + 1);
        expect((await s.get('data/aa/x')).equals(body)).toBe(true);
        // Read back directly from MinIO too: the object is whole.
        const direct = storage(url, s3TestOptions());
        expect(sha(await direct.get('data/aa/x'))).toBe(sha(body));
      } finally {
        await proxy.close();
      }
    });
  }

  it('gives up after maxAttempts when every connection is reset', async () => {
    const env = applyS3TestEnv();
    const proxy = await startProxy(new URL(env.endpoint), () => 'reset');
    try {
      const s = storage(s3TestUrl('proxy'), { s3Endpoint: proxy.endpoint }, { ...retrying, maxAttempts: 5 });
      const err = await failure(s.get('data/aa/x'));
      expect(err.code).toBe('TENDER_STORAGE');
      expect(err.message).toContain('gave up after 5 attempts');
      expect(proxy.counts.reset).toBe(5);
    } finally {
      await proxy.close();
    }
  });
});

describe('S3 with a MinIO that is killed and restarted', () => {
  const credentials = { user: 'tender', password: 'tender-secret-key' };
  let dir: string;
  let port: number;
  let endpoint: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'tender-minio-restart-'));
    port = await freePort();
    endpoint = await startMinio(dir, port, credentials);
    const admin = new S3Client({
      region: 'us-east-1',
      endpoint,
      forcePathStyle: true,
      credentials: { accessKeyId: credentials.user, secretAccessKey: credentials.password },
    });
    try {
      await admin.send(new CreateBucketCommand({ Bucket: 'restart' }));
    } finally {
      admin.destroy();
    }
  });

  afterAll(async () => {
    if (dir) {
      await stopMinio(dir).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  });

  async function kill(): Promise<void> {
    const pid = Number((await readFile(path.join(dir, 'minio.pid'), 'utf8')).trim());
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`MinIO pid ${pid} did not die`);
  }

  it('retries puts during the outage, and keeps what was stored before', async () => {
    applyS3TestEnv();
    const s = storage('s3://restart/repo', { s3Endpoint: endpoint }, {
      maxAttempts: 40,
      baseDelayMs: 50,
      maxDelayMs: 400,
      credentials: { accessKeyId: credentials.user, secretAccessKey: credentials.password },
    });
    const before = Array.from({ length: 10 }, (_, i) => ({ key: `data/0${i}/before-${i}`, body: randomBytes(50_000 + i) }));
    for (const o of before) expect(await s.put(o.key, [o.body])).toBe('stored');

    await kill();
    const during = Array.from({ length: 5 }, (_, i) => ({ key: `data/1${i}/during-${i}`, body: randomBytes(70_000 + i) }));
    const putting = Promise.all(during.map((o) => s.put(o.key, [o.body])));
    await new Promise((r) => setTimeout(r, 1000));
    const retriesDuringOutage = s.stats.retries;
    expect(retriesDuringOutage).toBeGreaterThan(0);
    await startMinio(dir, port, credentials);

    expect(await putting).toEqual(during.map(() => 'stored'));
    for (const o of [...before, ...during]) {
      expect(sha(await s.get(o.key))).toBe(sha(o.body));
    }
    const listed: string[] = [];
    for await (const o of s.list('data/')) listed.push(o.key);
    expect(listed.sort()).toEqual([...before, ...during].map((o) => o.key).sort());
  });
});

describe('S3 ranged GETs read straight into the caller\'s buffer (plain http)', () => {
  it('serves ranged gets in parallel, one request each, from a prefix that needs encoding', async () => {
    const url = s3TestUrl('direct !(x) y+z');
    const s = storage(url, s3TestOptions());
    const body = randomBytes(3 * 1024 * 1024);
    await s.put('data/ab/object', [body]);
    const ranges = Array.from({ length: 8 }, (_, i) => ({ offset: i * 300_000 + i, length: 200_000 + i * 1000 }));
    const buffers = ranges.map((r) => Buffer.alloc(r.length + 10));
    const got = await Promise.all(ranges.map((r, i) => s.get('data/ab/object', r, buffers[i])));
    for (const [i, r] of ranges.entries()) {
      expect(got[i]!.equals(body.subarray(r.offset, r.offset + r.length))).toBe(true);
      expect(got[i]!.buffer, 'read into the given buffer').toBe(buffers[i]!.buffer);
    }
    // One direct GET each: none of them had to be asked again through the SDK.
    expect(s.stats).toMatchObject({ gets: 8, directGets: 8, retries: 0, bytesDown: ranges.reduce((n, r) => n + r.length, 0) });
    const missing = await failure(s.get('data/ab/missing', { offset: 0, length: 10 }));
    expect(missing.code).toBe('TENDER_NOT_FOUND');
  });

  const retrying: Partial<S3Tuning> = { maxAttempts: 8, retryBudgetMs: 0, baseDelayMs: 5, maxDelayMs: 50, idleTimeoutMs: 400 };
  for (const action of ['reset', 'stall', 'slowdown'] as const) {
    it(`asks again through the SDK when its connection gets ${action === 'reset' ? 'reset' : action === 'stall' ? 'no answer' : 'a 503'}`, async () => {
      const env = applyS3TestEnv();
      const url = s3TestUrl('direct-proxy');
      const body = randomBytes(500_000);
      await storage(url, s3TestOptions()).put('data/cd/object', [body]);
      // The first connection (the direct read's) fails; every later one reaches MinIO.
      const proxy = await startProxy(new URL(env.endpoint), (n) => (n === 1 ? action : 'pass'));
      try {
        const s = storage(url, { s3Endpoint: proxy.endpoint }, retrying);
        const range = { offset: 1234, length: 400_000 };
        expect((await s.get('data/cd/object', range)).equals(body.subarray(1234, 1234 + 400_000))).toBe(true);
        expect(proxy.counts[action]).toBe(1);
        expect(s.stats, 'the failed direct read, then the SDK').toMatchObject({ gets: 2, directGets: 1 });
        // The next read goes direct again, on a fresh connection.
        expect((await s.get('data/cd/object', { offset: 0, length: 10 })).equals(body.subarray(0, 10))).toBe(true);
        expect(s.stats).toMatchObject({ gets: 3, directGets: 2 });
      } finally {
        await proxy.close();
      }
    });
  }
});
