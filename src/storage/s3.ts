/**
 * S3 / MinIO storage backend (AWS SDK v3).
 *
 * Puts are conditional (`If-None-Match: *`, also on CompleteMultipartUpload), so an existing key is
 * never overwritten and a lost response that is retried comes back as 'exists'. Bodies go up as
 * streams over the caller's parts (no concatenation, no SHA-256 of the payload for SigV4) with a
 * CRC32 header computed by zlib, which the server checks. Retries are done here, not in the SDK:
 * bounded attempts, exponential backoff with full jitter, one error classification (classify()).
 *
 * Client choice (issue: "measure the AWS SDK against the minio npm client and keep the faster").
 * Throwaway script, local MinIO (scripts/minio.sh) on the same 2-core machine, http on loopback,
 * 8 requests in flight, 3 alternating runs each, median (range); client CPU in seconds:
 *
 *   workload                          AWS SDK 3.1175.0 (this file)      minio 8.0.7
 *   200 x 8 MiB PUT (If-None-Match)   9.1 s = 185 MB/s (5.6-10.2 s)     13.7 s = 122 MB/s (10.9-14.9 s)
 *     client CPU                      1.8-2.1 s                         7.4-8.3 s
 *   200 x 4 MiB ranged GET            3.6 s = 232 MB/s (3.4-6.0 s)      3.7 s = 230 MB/s (2.1-4.3 s)
 *     client CPU                      3.0-3.7 s                         2.3-3.2 s
 *   1000 x 64 KiB ranged GET          3.9 s = 253 req/s (2.2-4.4 s)     2.7 s = 369 req/s (1.8-2.9 s)
 *     client CPU per request          2.3-2.8 ms                        1.1-1.4 ms
 *
 * The SDK with its defaults (Buffer body: SHA-256 payload signing + SDK CRC32) did the PUTs in 7.7 s
 * but needs one concatenated buffer per object; with Content-MD5 instead of CRC32 this file took
 * 10-11 s (MD5 runs at ~0.6 GB/s here, zlib.crc32 at ~2.4 GB/s). minio-js over plain http hashes
 * every body with SHA-256 and MD5, and copies the parts into one Buffer.
 *
 * Decision: keep the AWS SDK. Backup throughput is bounded by PUTs, where it is ~1.5x faster with
 * ~4x less client CPU (CPU that the chunk/compress/encrypt workers need on 2 cores); large ranged
 * GETs (restore reads one range per pack) are a tie. minio-js is ~2x cheaper per small request, which
 * matters little at pack-sized requests. The SDK also brings the full credential chain (profiles,
 * SSO, web identity / IRSA and EKS pod identity for the node agent) and conditional multipart
 * completion. Only this implementation is kept in the tree.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type CompletedPart,
} from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { TenderError, type ErrorCode } from '../errors/errors.js';
import { DirectGetFailed, DirectRangeReader } from './s3-direct-get.js';
import type { StorageOptions } from './options.js';
import { markPermanent, totalLength, viewOf, type ByteRange, type ObjectInfo, type PutResult, type Storage } from './storage.js';

/** Request and byte counters; PUT-class and GET-class requests are what S3 bills for. */
export interface S3Stats {
  /** PutObject, CreateMultipartUpload, UploadPart, CompleteMultipartUpload attempts. */
  puts: number;
  /** GetObject attempts. */
  gets: number;
  /** Of those, ranged GETs read straight into the caller's buffer (s3-direct-get.ts), failed ones included. */
  directGets: number;
  /** HeadObject / HeadBucket attempts. */
  heads: number;
  /** ListObjectsV2 attempts (one per page). */
  lists: number;
  /** DeleteObject / AbortMultipartUpload attempts. */
  deletes: number;
  /** Attempts that were a retry of a failed one (included in the counts above). */
  retries: number;
  /** Payload bytes sent in successful uploads, and received in successful downloads. */
  bytesUp: number;
  bytesDown: number;
}

/** Knobs that are not user settings: tests shorten the retries, the CLI sizes the connection pool. */
export interface S3Tuning {
  /** Attempts per request, first included (default 8)... */
  maxAttempts: number;
  /**
   * ...and at least this long since the first failure (default 30 s): errors that come back at
   * once (resets, refusals while a server restarts) would otherwise use up the attempts in a few
   * seconds. A request gives up when both are spent.
   */
  retryBudgetMs: number;
  /** Backoff before retry n is uniform in [cap/2, cap], cap = min(maxDelayMs, baseDelayMs * 2^(n-1)). */
  baseDelayMs: number;
  maxDelayMs: number;
  /** Sockets per endpoint; size it to the number of concurrent storage operations (default 32). */
  maxSockets: number;
  /** TCP/TLS connect timeout (default 10 s): a blackholed endpoint fails and is retried. */
  connectTimeoutMs: number;
  /** A request whose socket is idle this long fails and is retried (default 60 s). */
  idleTimeoutMs: number;
  /** Objects larger than this go up as multipart uploads (default 64 MiB). */
  multipartThreshold: number;
  /** Part size of multipart uploads (default 16 MiB; S3 needs >= 5 MiB except for the last). */
  partSize: number;
  /** Parts of one multipart upload sent at once (default 4). */
  partConcurrency: number;
  /** Keys per ListObjectsV2 page (default 1000, the S3 maximum). */
  listPageSize: number;
  /** Explicit credentials instead of the SDK's default chain (tests). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Region instead of AWS_REGION (tests). */
  region?: string;
}

const MiB = 1024 * 1024;

export const defaultS3Tuning: Readonly<S3Tuning> = {
  maxAttempts: 8,
  retryBudgetMs: 30_000,
  baseDelayMs: 100,
  maxDelayMs: 4000,
  maxSockets: 32,
  connectTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
  multipartThreshold: 64 * MiB,
  partSize: 16 * MiB,
  partConcurrency: 4,
  listPageSize: 1000,
};

const totals: S3Stats = newStats();

function newStats(): S3Stats {
  return { puts: 0, gets: 0, directGets: 0, heads: 0, lists: 0, deletes: 0, retries: 0, bytesUp: 0, bytesDown: 0 };
}

/** Requests made by every S3Storage in this process so far (for benchmarks and progress output). */
export function s3RequestCounts(): S3Stats {
  return { ...totals };
}

type RequestKind = 'puts' | 'gets' | 'heads' | 'lists' | 'deletes';

const AUTH_HINT =
  'check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN or AWS_PROFILE if you use them), ' +
  'and that this key may read and write the bucket';
const ENDPOINT_HINT = 'check --s3-endpoint / AWS_ENDPOINT_URL and that the S3 server is running and reachable';
const TLS_HINT = 'set --ca-bundle or AWS_CA_BUNDLE to the CA certificate that signed the S3 endpoint certificate';

const RETRYABLE_NAMES = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'ThrottledException',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'ProvisionedThroughputExceededException',
  'RequestTimeout',
  'RequestTimeoutException',
  'InternalError',
  'ServiceUnavailable',
  'BadDigest', // the body was damaged in transit: the Content-MD5 check caught it
  'IncompleteBody',
  'XAmzContentSHA256Mismatch',
  'ConditionalRequestConflict', // another conditional write of the same key is in flight
  'OperationAborted',
  'TimeoutError',
  'ECONNRESET',
]);

const RETRYABLE_SYSTEM_CODES = new Set([
  'ECONNRESET',
  'EPIPE',
  'ECONNREFUSED',
  'ECONNABORTED',
  'ETIMEDOUT',
  'ESOCKETTIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ERR_STREAM_PREMATURE_CLOSE',
  'UND_ERR_SOCKET',
]);

const TLS_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'EPROTO',
  'ERR_SSL_WRONG_VERSION_NUMBER',
]);

/** What a failed attempt means: retry it, or give up with this error. */
interface Verdict {
  retry: boolean;
  error: TenderError;
}

interface ParsedUrl {
  bucket: string;
  prefix: string;
}

export function parseS3Url(url: string): ParsedUrl {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  const bucket = m?.[1] ?? '';
  if (!m || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new TenderError('TENDER_USAGE', `invalid S3 repository URL ${JSON.stringify(url)}`, {
      hint: 'use s3://BUCKET or s3://BUCKET/PREFIX (bucket names are 3-63 lower-case letters, digits, dots and dashes)',
    });
  }
  let prefix = (m[2] ?? '').replace(/^\/+/, '').replace(/\/{2,}/g, '/');
  if (prefix !== '' && !prefix.endsWith('/')) prefix += '/';
  return { bucket, prefix };
}

/** Open `s3://BUCKET/PREFIX`. Settings come from `options` and the usual AWS_* environment variables. */
export async function openS3Storage(
  url: string,
  options: StorageOptions,
  tuning: Partial<S3Tuning> = {},
): Promise<Storage> {
  // TENDER_S3_RETRY_SECONDS shortens (or lengthens) how long a failing request is retried.
  const budget = Number(process.env.TENDER_S3_RETRY_SECONDS);
  return new S3Storage(url, options, Number.isFinite(budget) && budget >= 0 ? { retryBudgetMs: budget * 1000, ...tuning } : tuning);
}

export class S3Storage implements Storage {
  readonly location: string;
  /** A request holds its body until the server has answered: two keep the link busy. */
  readonly concurrentPuts = 2;
  readonly stats: S3Stats = newStats();
  readonly bucket: string;
  readonly prefix: string;
  readonly endpoint: string | undefined;
  readonly region: string;
  private readonly tuning: S3Tuning;
  private readonly client: S3Client;
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;
  /** Set once the bucket is known to exist, so a HEAD 404 (which has no error code) means "no such key". */
  private bucketVerified = false;
  private closed = false;
  /** One controller per attempt in flight, so close() can cut them off. */
  private readonly inflight = new Set<AbortController>();
  /** Ranged GETs read straight into the caller's buffer, for a plain-http endpoint (s3-direct-get.ts). */
  private readonly directReader: DirectRangeReader | undefined;
  /** The endpoint's own path, before /bucket/key (path-style addressing). */
  private readonly endpointPath: string = '';

  constructor(url: string, options: StorageOptions = {}, tuning: Partial<S3Tuning> = {}) {
    const { bucket, prefix } = parseS3Url(url);
    this.bucket = bucket;
    this.prefix = prefix;
    this.location = `s3://${bucket}/${prefix}`;
    this.tuning = { ...defaultS3Tuning, ...tuning };
    const env = process.env;
    this.region = tuning.region ?? options.s3Region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? 'us-east-1';
    const endpoint = options.s3Endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
    this.endpoint = endpoint === '' ? undefined : endpoint;
    if (this.endpoint !== undefined && !/^https?:\/\/[^/]+/i.test(this.endpoint)) {
      throw new TenderError('TENDER_STORAGE_CONFIG', `invalid S3 endpoint ${JSON.stringify(this.endpoint)}`, {
        hint: 'set --s3-endpoint / AWS_ENDPOINT_URL to a URL such as https://minio.example:9000',
      });
    }
    const caBundlePath = options.caBundle ?? env.AWS_CA_BUNDLE;
    let ca: Buffer | undefined;
    // The CA bundle only matters for TLS; a plain-http MinIO ignores it.
    if (caBundlePath && !this.endpoint?.toLowerCase().startsWith('http:')) {
      try {
        ca = readFileSync(caBundlePath);
      } catch (err) {
        throw new TenderError('TENDER_STORAGE_CONFIG', `cannot read the CA bundle ${caBundlePath}: ${(err as Error).message}`, {
          hint: 'fix --ca-bundle / AWS_CA_BUNDLE',
          cause: err,
        });
      }
    }
    const agentOptions = { keepAlive: true, keepAliveMsecs: 1000, maxSockets: this.tuning.maxSockets, maxFreeSockets: this.tuning.maxSockets };
    this.httpAgent = new http.Agent(agentOptions);
    this.httpsAgent = new https.Agent(ca ? { ...agentOptions, ca } : agentOptions);
    // The SDK warns on every start under Node 20 (which tender supports) that its future releases
    // will need Node 22; that is for us to act on when bumping the pinned SDK, not for users.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const silent = { debug() {}, info() {}, warn() {}, error() {}, trace() {} };
    this.client = new S3Client({
      region: this.region,
      ...(this.endpoint !== undefined ? { endpoint: this.endpoint, forcePathStyle: true } : {}),
      ...(tuning.credentials ? { credentials: tuning.credentials } : {}),
      // Retries are ours (below): one classification, bounded attempts, counted.
      maxAttempts: 1,
      // Integrity is a CRC32 we compute natively (checksumOf); no SDK checksums or aws-chunked trailers on top.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      expectContinueHeader: false,
      logger: silent,
      requestHandler: new NodeHttpHandler({
        httpAgent: this.httpAgent,
        httpsAgent: this.httpsAgent,
        connectionTimeout: this.tuning.connectTimeoutMs,
        socketTimeout: this.tuning.idleTimeoutMs,
        logger: silent,
      }),
    });
    const plain = this.endpoint !== undefined ? new URL(this.endpoint) : undefined;
    if (plain?.protocol === 'http:') {
      this.endpointPath = plain.pathname.replace(/\/+$/, '');
      const host = plain.hostname.replace(/^\[(.*)\]$/, '$1');
      this.directReader = new DirectRangeReader(host, Number(plain.port || 80), plain.host, (request) => this.signGet(request), {
        connectMs: this.tuning.connectTimeoutMs,
        idleMs: this.tuning.idleTimeoutMs,
      });
    }
  }

  /** SigV4 headers for a GET, from the client's own signer (its credential chain, region and clock). */
  private async signGet(request: { hostname: string; port: number; path: string; headers: Record<string, string> }): Promise<Record<string, string>> {
    const signer = await this.client.config.signer();
    const signed = await signer.sign({ method: 'GET', protocol: 'http:', query: {}, ...request });
    return signed.headers;
  }

  private keyOf(key: string): string {
    if (key === '' || key.startsWith('/') || key.split('/').includes('..')) {
      throw markPermanent(new TenderError('TENDER_STORAGE', `refusing storage key ${JSON.stringify(key)}`));
    }
    return this.prefix + key;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let token: string | undefined;
    const fullPrefix = this.prefix + prefix;
    do {
      const page = await this.withRetry('lists', 'list', prefix || '(all)', (signal) =>
        this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: fullPrefix, ContinuationToken: token, MaxKeys: this.tuning.listPageSize }),
          { abortSignal: signal },
        ),
      );
      for (const obj of page.Contents ?? []) {
        if (obj.Key === undefined || !obj.Key.startsWith(this.prefix)) continue;
        yield { key: obj.Key.slice(this.prefix.length), size: obj.Size ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    this.bucketVerified = true;
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const k = this.keyOf(key);
    try {
      const head = await this.withRetry('heads', 'stat', key, (signal) =>
        this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal: signal }),
      );
      this.bucketVerified = true;
      return { key, size: head.ContentLength ?? 0 };
    } catch (err) {
      if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') {
        await this.verifyBucket();
        return undefined;
      }
      throw err;
    }
  }

  async get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    const k = this.keyOf(key);
    if (range && (range.offset < 0 || range.length < 0 || !Number.isSafeInteger(range.offset + range.length))) {
      throw markPermanent(new TenderError('TENDER_STORAGE', `get ${key}: invalid byte range ${range.offset}+${range.length}`));
    }
    if (range && range.length === 0) {
      // HTTP cannot ask for zero bytes; still report a missing object as missing.
      if ((await this.stat(key)) === undefined) throw this.notFound(key);
      return Buffer.alloc(0);
    }
    if (range && this.directReader && !this.closed) {
      const out = into ? viewOf(into, range.length) : Buffer.allocUnsafe(range.length);
      try {
        this.count('gets', false);
        this.stats.directGets++;
        totals.directGets++;
        await this.directReader.read(`${this.endpointPath}/${uriEncode(this.bucket)}/${k.split('/').map(uriEncode).join('/')}`, range.offset, out);
        this.bucketVerified = true;
        this.stats.bytesDown += out.length;
        totals.bytesDown += out.length;
        return out;
      } catch (err) {
        if (!(err instanceof DirectGetFailed)) throw err;
        // Not the plain answer (missing object, throttling, a cut connection): the SDK path
        // below asks again, and classifies, reports and retries what it gets.
      }
    }
    const rangeHeader = range ? `bytes=${range.offset}-${range.offset + range.length - 1}` : undefined;
    const buf = await this.withRetry('gets', 'get', key, async (signal) => {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: k, Range: rangeHeader }), {
        abortSignal: signal,
      });
      const body = res.Body as Readable | undefined;
      const announced = res.ContentLength ?? 0;
      if (range && announced !== range.length) {
        body?.destroy();
        const size = /\/(\d+)$/.exec(res.ContentRange ?? '')?.[1];
        throw new TenderError(
          'TENDER_STORAGE',
          `get ${key} in ${this.location}: asked for bytes ${range.offset}..${range.offset + range.length - 1} ` +
            `but the server returned ${announced} bytes${size ? ` (the object has ${size})` : ''}`,
        );
      }
      const out = into ? viewOf(into, announced) : Buffer.allocUnsafe(announced);
      let done = 0;
      if (body) {
        for await (const chunk of body as AsyncIterable<Buffer>) {
          if (done + chunk.length > announced) {
            body.destroy();
            throw Object.assign(new Error(`server sent more than the announced ${announced} bytes`), { name: 'IncompleteBody' });
          }
          chunk.copy(out, done);
          done += chunk.length;
        }
      }
      if (done !== announced) {
        // A connection cut mid-body: retry.
        throw Object.assign(new Error(`body ended after ${done} of ${announced} bytes`), { name: 'IncompleteBody' });
      }
      return out;
    });
    this.bucketVerified = true;
    this.stats.bytesDown += buf.length;
    totals.bytesDown += buf.length;
    return buf;
  }

  async put(key: string, parts: readonly Uint8Array[]): Promise<PutResult> {
    const k = this.keyOf(key);
    const size = totalLength(parts);
    const result =
      size > this.tuning.multipartThreshold ? await this.putMultipart(key, k, parts, size) : await this.putSingle(key, k, parts, size);
    if (result === 'stored') {
      this.stats.bytesUp += size;
      totals.bytesUp += size;
    }
    this.bucketVerified = true;
    return result;
  }

  private async putSingle(key: string, k: string, parts: readonly Uint8Array[], size: number): Promise<PutResult> {
    const checksum = checksumOf(parts);
    try {
      await this.withRetry('puts', 'put', key, (signal) =>
        this.client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: k,
            // A stream (not a Buffer) so the SDK does not SHA-256 the payload for the signature;
            // the checksum makes the server reject a body damaged in transit.
            Body: bodyStream(parts),
            ContentLength: size,
            ...checksum,
            ContentType: 'application/octet-stream',
            IfNoneMatch: '*',
          }),
          { abortSignal: signal },
        ),
      );
      return 'stored';
    } catch (err) {
      if (isPreconditionFailed(err)) return 'exists';
      throw err;
    }
  }

  private async putMultipart(key: string, k: string, parts: readonly Uint8Array[], size: number): Promise<PutResult> {
    if ((await this.stat(key)) !== undefined) return 'exists';
    const created = await this.withRetry('puts', 'put (start multipart)', key, (signal) =>
      this.client.send(
        new CreateMultipartUploadCommand({
          Bucket: this.bucket,
          Key: k,
          ContentType: 'application/octet-stream',
          ...(crc32 ? { ChecksumAlgorithm: 'CRC32' } : {}),
        }),
        { abortSignal: signal },
      ),
    );
    const uploadId = created.UploadId;
    if (!uploadId) {
      throw new TenderError('TENDER_STORAGE', `put ${key} in ${this.location}: the server returned no multipart upload id`);
    }
    try {
      const partSize = Math.max(5 * MiB, this.tuning.partSize);
      const count = Math.ceil(size / partSize);
      const completed: CompletedPart[] = new Array(count);
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < count) {
          const i = next++;
          const start = i * partSize;
          const slice = sliceParts(parts, start, Math.min(size, start + partSize));
          const checksum = checksumOf(slice);
          const res = await this.withRetry('puts', `put (part ${i + 1}/${count})`, key, (signal) =>
            this.client.send(
              new UploadPartCommand({
                Bucket: this.bucket,
                Key: k,
                UploadId: uploadId,
                PartNumber: i + 1,
                Body: bodyStream(slice),
                ContentLength: totalLength(slice),
                ...checksum,
              }),
              { abortSignal: signal },
            ),
          );
          completed[i] = { PartNumber: i + 1, ETag: res.ETag, ChecksumCRC32: res.ChecksumCRC32 };
        }
      };
      await Promise.all(Array.from({ length: Math.min(this.tuning.partConcurrency, count) }, worker));
      try {
        await this.withRetry('puts', 'put (complete multipart)', key, (signal) =>
          this.client.send(
            new CompleteMultipartUploadCommand({
              Bucket: this.bucket,
              Key: k,
              UploadId: uploadId,
              MultipartUpload: { Parts: completed },
              IfNoneMatch: '*',
            }),
            { abortSignal: signal },
          ),
        );
        return 'stored';
      } catch (err) {
        if (isPreconditionFailed(err)) {
          await this.abortMultipart(k, uploadId);
          return 'exists';
        }
        // A retried complete whose first try went through finds no upload any more.
        if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND' && (await this.stat(key))?.size === size) {
          return 'stored';
        }
        throw err;
      }
    } catch (err) {
      await this.abortMultipart(k, uploadId);
      throw err;
    }
  }

  private async abortMultipart(k: string, uploadId: string): Promise<void> {
    try {
      await this.withRetry('deletes', 'abort multipart upload', k, (signal) =>
        this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: k, UploadId: uploadId }), {
          abortSignal: signal,
        }),
      );
    } catch {
      // Best effort: a bucket lifecycle rule for incomplete uploads cleans up what is left.
    }
  }

  async delete(key: string): Promise<void> {
    const k = this.keyOf(key);
    try {
      await this.withRetry('deletes', 'delete', key, (signal) =>
        this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal: signal }),
      );
    } catch (err) {
      if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') return;
      throw err;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.directReader?.close();
    for (const c of this.inflight) c.abort();
    this.client.destroy();
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  /** HEAD answers a missing bucket with a bare 404, like a missing key; tell the two apart once. */
  private async verifyBucket(): Promise<void> {
    if (this.bucketVerified) return;
    try {
      await this.withRetry('heads', 'check bucket', this.bucket, (signal) =>
        this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: signal }),
      );
    } catch (err) {
      if (err instanceof TenderError && err.code === 'TENDER_NOT_FOUND') throw this.noSuchBucket(err);
      throw err;
    }
    this.bucketVerified = true;
  }

  private count(kind: RequestKind, retry: boolean): void {
    this.stats[kind]++;
    totals[kind]++;
    if (retry) {
      this.stats.retries++;
      totals.retries++;
    }
  }

  /** Run one request, retrying transient failures with exponential backoff and full jitter. */
  private async withRetry<T>(kind: RequestKind, op: string, key: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const { maxAttempts, retryBudgetMs, baseDelayMs, maxDelayMs } = this.tuning;
    let firstFailure: number | undefined;
    for (let attempt = 1; ; attempt++) {
      if (this.closed) throw markPermanent(new TenderError('TENDER_STORAGE', `${op} ${key}: storage ${this.location} is closed`));
      this.count(kind, attempt > 1);
      const controller = new AbortController();
      this.inflight.add(controller);
      try {
        return await fn(controller.signal);
      } catch (err) {
        const verdict = this.classify(err, op, key);
        firstFailure ??= Date.now();
        const elapsed = Date.now() - firstFailure;
        if (!verdict.retry || (attempt >= maxAttempts && elapsed >= retryBudgetMs)) {
          if (verdict.retry) {
            verdict.error.message += ` (gave up after ${attempt} attempts in ${Math.round(elapsed / 1000)} s)`;
          }
          // Retried here as long as the tuning allows: a retry wrapper above must not multiply it.
          throw markPermanent(verdict.error);
        }
        const cap = Math.min(maxDelayMs, baseDelayMs * 2 ** (Math.min(attempt, 30) - 1));
        await sleep(cap / 2 + (Math.random() * cap) / 2);
      } finally {
        this.inflight.delete(controller);
      }
    }
  }

  private notFound(key: string, cause?: unknown): TenderError {
    return new TenderError('TENDER_NOT_FOUND', `object ${key} does not exist in ${this.location}`, { cause });
  }

  private noSuchBucket(cause?: unknown): TenderError {
    return new TenderError(
      'TENDER_STORAGE_CONFIG',
      `the bucket ${this.bucket} does not exist${this.endpoint ? ` at ${this.endpoint}` : ` in region ${this.region}`}`,
      { hint: `create the bucket ${this.bucket}, or fix the bucket name in the repository URL`, cause },
    );
  }

  private classify(err: unknown, op: string, key: string): Verdict {
    if (err instanceof TenderError) return { retry: false, error: err };
    const e = (err ?? {}) as {
      name?: string;
      code?: string;
      message?: string;
      Code?: string;
      $metadata?: { httpStatusCode?: number; requestId?: string };
      $response?: { headers?: Record<string, string> };
      cause?: { code?: string };
    };
    const name = e.Code ?? e.name ?? '';
    const status = e.$metadata?.httpStatusCode ?? 0;
    const sys = e.code ?? e.cause?.code ?? '';
    const where = `${op} ${key} in ${this.location}`;
    const endpoint = this.endpoint ?? `the AWS endpoint for region ${this.region}`;
    const fail = (code: ErrorCode, message: string, hint?: string, retry = false): Verdict => ({
      retry,
      error: new TenderError(code, message, {
        hint,
        // An auth failure's S3 error can echo the canonical request, whose signed headers include
        // x-amz-security-token: keep only the error code and request id, never the raw error.
        cause: code === 'TENDER_STORAGE_AUTH' ? sanitizedCause(name, status, e.$metadata) : err,
      }),
    });

    if (name === 'NoSuchKey' || name === 'NoSuchUpload' || (status === 404 && (name === 'NotFound' || name === 'Unknown' || name === ''))) {
      return { retry: false, error: this.notFound(key, err) };
    }
    if (name === 'NoSuchBucket') return { retry: false, error: this.noSuchBucket(err) };
    if (name === 'PreconditionFailed' || status === 412) {
      return fail('TENDER_STORAGE', `${where}: precondition failed`);
    }
    if (name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch' || name === 'InvalidToken' || name === 'ExpiredToken' || name === 'TokenRefreshRequired') {
      return fail(
        'TENDER_STORAGE_AUTH',
        `${where}: the S3 server rejected the credentials (${name}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY`,
        AUTH_HINT,
      );
    }
    if (name === 'CredentialsProviderError') {
      return fail(
        'TENDER_STORAGE_AUTH',
        `${where}: no S3 credentials found (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)`,
        'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE',
      );
    }
    const bucketRegion = e.$response?.headers?.['x-amz-bucket-region'];
    if (
      name === 'AuthorizationHeaderMalformed' ||
      name === 'PermanentRedirect' ||
      name === 'IllegalLocationConstraintException' ||
      status === 301 ||
      (bucketRegion !== undefined && bucketRegion !== this.region && (status === 400 || status === 403))
    ) {
      const want = bucketRegion ?? /expecting '([^']+)'/.exec(e.message ?? '')?.[1];
      return fail(
        'TENDER_STORAGE_CONFIG',
        `${where}: the bucket ${this.bucket} is not in region ${this.region}${want ? ` (it is in ${want})` : ''}; set AWS_REGION`,
        `set AWS_REGION${want ? `=${want}` : ' to the bucket region'}`,
      );
    }
    if (name === 'AccessDenied' || name === 'AllAccessDisabled' || name === 'Forbidden' || status === 403) {
      return fail(
        'TENDER_STORAGE_AUTH',
        `${where}: access denied (${name || status}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy`,
        AUTH_HINT,
      );
    }
    if (TLS_CODES.has(sys) || /certificate|self[- ]signed|wrong version number/i.test(e.message ?? '')) {
      return fail(
        'TENDER_STORAGE_CONFIG',
        `${where}: TLS to ${endpoint} failed: ${e.message ?? sys} (see --ca-bundle / AWS_CA_BUNDLE)`,
        sys === 'EPROTO' || sys === 'ERR_SSL_WRONG_VERSION_NUMBER' || /wrong version number/i.test(e.message ?? '')
          ? 'the endpoint may not speak TLS: check http:// versus https:// in --s3-endpoint / AWS_ENDPOINT_URL'
          : TLS_HINT,
      );
    }
    if (this.closed) {
      return fail('TENDER_STORAGE', `${where}: storage ${this.location} was closed`);
    }
    // Transient: worth another attempt.
    if (
      status >= 500 ||
      status === 408 ||
      status === 429 ||
      RETRYABLE_NAMES.has(name) ||
      RETRYABLE_SYSTEM_CODES.has(sys) ||
      /socket hang up|ECONNRESET|EPIPE|premature close|aborted/i.test(e.message ?? '')
    ) {
      if (sys === 'ECONNREFUSED' || sys === 'ENOTFOUND' || sys === 'EAI_AGAIN' || sys === 'EHOSTUNREACH' || sys === 'ENETUNREACH') {
        return fail(
          'TENDER_STORAGE_CONFIG',
          `${where}: cannot reach the S3 endpoint ${endpoint} (${sys}); check --s3-endpoint / AWS_ENDPOINT_URL`,
          ENDPOINT_HINT,
          true,
        );
      }
      // The HTTP handler renames resets to TimeoutError: look at the system code first.
      if (sys === 'ECONNRESET' || sys === 'EPIPE') {
        return fail('TENDER_STORAGE', `${where}: the connection to the S3 endpoint ${endpoint} was reset`, ENDPOINT_HINT, true);
      }
      if (sys === 'ETIMEDOUT' || name === 'TimeoutError') {
        return fail('TENDER_STORAGE', `${where}: the S3 endpoint ${endpoint} timed out`, ENDPOINT_HINT, true);
      }
      return fail('TENDER_STORAGE', `${where} failed: ${describe(name, status, e.message)}`, undefined, true);
    }
    return fail('TENDER_STORAGE', `${where} failed: ${describe(name, status, e.message)}`);
  }
}

function describe(name: string, status: number, message: string | undefined): string {
  const bits = [name && name !== 'Error' ? name : undefined, status ? `HTTP ${status}` : undefined].filter(Boolean);
  const msg = message && message !== name && message !== 'UnknownError' ? message : '';
  return `${msg}${bits.length ? ` (${bits.join(', ')})` : ''}` || 'unknown error';
}

function sanitizedCause(name: string, status: number, metadata: { requestId?: string } | undefined): Error {
  const id = metadata?.requestId ? `, request id ${metadata.requestId}` : '';
  return new Error(`S3 error ${name || 'unknown'}${status ? ` (HTTP ${status}${id})` : ''}`);
}

function isPreconditionFailed(err: unknown): boolean {
  const cause = err instanceof TenderError ? err.cause : err;
  const e = cause as { name?: string; $metadata?: { httpStatusCode?: number } } | undefined;
  return e?.name === 'PreconditionFailed' || e?.$metadata?.httpStatusCode === 412;
}

const crc32 = (zlib as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;

/**
 * The integrity header for a body: CRC32 with zlib's native crc32 (Node >= 20.15, ~2.4 GB/s here),
 * else Content-MD5 (~0.6 GB/s). The server recomputes it and rejects a body damaged in transit.
 */
function checksumOf(parts: readonly Uint8Array[]): { ChecksumCRC32: string } | { ContentMD5: string } {
  if (crc32) {
    let value = 0;
    for (const p of parts) value = crc32(p, value);
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(value >>> 0);
    return { ChecksumCRC32: b.toString('base64') };
  }
  const h = createHash('md5');
  for (const p of parts) h.update(p);
  return { ContentMD5: h.digest('base64') };
}

/** A fresh stream over `parts` for each attempt; the parts are never copied into one buffer. */
function bodyStream(parts: readonly Uint8Array[]): Readable {
  let i = 0;
  return new Readable({
    highWaterMark: 0,
    read() {
      while (i < parts.length) {
        const p = parts[i++]!;
        if (p.byteLength === 0) continue;
        this.push(p);
        return;
      }
      this.push(null);
    },
  });
}

/** The bytes [start, end) of the concatenation of `parts`, as views into them. */
function sliceParts(parts: readonly Uint8Array[], start: number, end: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let pos = 0;
  for (const p of parts) {
    const pEnd = pos + p.byteLength;
    if (pEnd > start && pos < end) {
      out.push(p.subarray(Math.max(0, start - pos), Math.min(p.byteLength, end - pos)));
    }
    pos = pEnd;
    if (pos >= end) break;
  }
  return out;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A path segment as SigV4 and S3 want it: everything but unreserved characters percent-encoded. */
function uriEncode(segment: string): string {
  return encodeURIComponent(segment).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}
