import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { checkTimeout, checkedSamples, settleWithin } from './gpu-common.js';
import type { GpuReader, GpuSample } from './gpu-reader.js';

/** A /metrics page larger than this is not an exporter's answer. */
const maxBodyBytes = 16 << 20;

export interface DcgmReaderOptions {
  /** The exporter's metrics URL (http or https); a URL without a path gets /metrics (dcgm-exporter's). */
  readonly url: string;
  /** How long one GET (connect, headers, whole body) may take. */
  readonly timeoutMs: number;
}

/** Reads DCGM_FI_DEV_GPU_UTIL from a DCGM exporter's Prometheus text, one GET per reading. */
export function dcgmReader(options: DcgmReaderOptions): GpuReader {
  return new DcgmReader(metricsUrl(options.url), checkTimeout(options.timeoutMs, 'DCGM reader'));
}

function metricsUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`DCGM exporter URL ${JSON.stringify(text)} is not a URL (expected e.g. http://127.0.0.1:9400/metrics)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`DCGM exporter URL ${JSON.stringify(text)} is not http or https`);
  }
  if (url.pathname === '/') url.pathname = '/metrics';
  return url;
}

class DcgmReader implements GpuReader {
  readonly source = 'dcgm';
  readonly #url: URL;
  readonly #timeoutMs: number;

  constructor(url: URL, timeoutMs: number) {
    this.#url = url;
    this.#timeoutMs = timeoutMs;
  }

  async read(signal?: AbortSignal): Promise<GpuSample[]> {
    const stop = new AbortController();
    const fetchSignal = signal ? AbortSignal.any([signal, stop.signal]) : stop.signal;
    const text = await settleWithin(
      this.#get(fetchSignal),
      this.#timeoutMs,
      () => {
        stop.abort();
        return new Error(`DCGM exporter at ${this.#url.href} did not answer within ${this.#timeoutMs} ms`);
      },
      signal,
    );
    const where = `DCGM exporter at ${this.#url.href}`;
    return checkedSamples(where, parseDcgmMetrics(text, where));
  }

  async close(): Promise<void> {}

  /** One GET on a connection of its own (no keep-alive: an idle pooled socket would hold the process open at exit). */
  #get(signal: AbortSignal): Promise<string> {
    const where = this.#url.href;
    const request = this.#url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise<string>((resolve, reject) => {
      const req = request(this.#url, { signal, agent: false, headers: { accept: 'text/plain' } }, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new Error(`GET ${where} answered HTTP ${res.statusCode} ${res.statusMessage ?? ''}`.trimEnd()));
          return;
        }
        const chunks: Buffer[] = [];
        let bytes = 0;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes <= maxBodyBytes) return void chunks.push(chunk);
          req.destroy();
          reject(new Error(`GET ${where} sent more than ${maxBodyBytes} bytes: not an exporter's metrics`));
        });
        res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        res.on('error', (err) => reject(new Error(`GET ${where} broke off: ${err.message}`)));
      });
      req.on('error', (err) => reject(signal.aborted ? signal.reason : new Error(`cannot GET ${where}: ${err.message}`)));
      req.end();
    });
  }
}

const metricName = 'DCGM_FI_DEV_GPU_UTIL';
/** name{labels} value [timestamp] */
const sampleLine = /^DCGM_FI_DEV_GPU_UTIL(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*$/;
const labelPair = /[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*(?:,|$)/y;

/**
 * The DCGM_FI_DEV_GPU_UTIL samples of a Prometheus text page, one per GPU (label `gpu`, with
 * `UUID` when present). Other metrics are skipped unread; a malformed sample of this one is an
 * error naming its line. A GPU listed more than once (dcgm-exporter repeats it for every pod that
 * shares it) counts with its highest value.
 */
export function parseDcgmMetrics(text: string, where = 'DCGM exporter'): GpuSample[] {
  const byGpu = new Map<number, GpuSample>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (!line.startsWith(metricName) || !/^[{ \t]/.test(line.slice(metricName.length))) return;
    const bad = (why: string): Error => new Error(`${where} line ${i + 1}: ${why}: ${JSON.stringify(line.slice(0, 200))}`);
    const match = sampleLine.exec(line);
    if (!match) throw bad(`malformed ${metricName} sample`);
    const labels = parseLabels(match[1] ?? '');
    if (!labels) throw bad('malformed labels');
    const gpu = labels.get('gpu');
    if (gpu === undefined || !/^\d{1,6}$/.test(gpu)) throw bad('no gpu="N" label');
    const utilisation = Number(match[2]);
    if (!(utilisation >= 0 && utilisation <= 100)) throw bad(`utilisation ${match[2]} is not a percentage 0..100`);
    const index = Number(gpu);
    const uuid = labels.get('UUID');
    const seen = byGpu.get(index);
    if (seen && seen.uuid !== uuid) throw bad(`GPU ${index} was listed before with UUID ${seen.uuid ?? '(none)'}`);
    if (!seen || utilisation > seen.utilisation) byGpu.set(index, uuid === undefined ? { index, utilisation } : { index, uuid, utilisation });
  });
  if (byGpu.size === 0) throw new Error(`${where} has no ${metricName} samples (is the GPU utilisation field exported?)`);
  return [...byGpu.values()];
}

function parseLabels(text: string): Map<string, string> | undefined {
  const labels = new Map<string, string>();
  let at = 0;
  while (text.slice(at).trim() !== '') {
    labelPair.lastIndex = at;
    const m = labelPair.exec(text);
    if (!m) return undefined;
    labels.set(m[1]!, m[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c)));
    at = labelPair.lastIndex;
  }
  return labels;
}
