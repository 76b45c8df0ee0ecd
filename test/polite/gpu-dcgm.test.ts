import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dcgmReader, parseDcgmMetrics } from '../../src/polite/gpu-dcgm.js';
import { type FakeDcgmExporter, dcgmText, fakeDcgmExporter, waitFor } from '../helpers/gpu-stubs.js';

const timeoutMs = 1500;

let exporter: FakeDcgmExporter;

beforeAll(async () => {
  exporter = await fakeDcgmExporter();
});

afterAll(async () => {
  await exporter.close();
});

describe('DCGM exporter reader (node:http on 127.0.0.1)', () => {
  it('reads DCGM_FI_DEV_GPU_UTIL per GPU with its UUID, every time it is asked', async () => {
    const r = dcgmReader({ url: exporter.url, timeoutMs });
    expect(r.source).toBe('dcgm');
    exporter.serve(dcgmText([12, 97]));
    expect(await r.read()).toEqual([
      { index: 0, uuid: 'GPU-d0', utilisation: 12 },
      { index: 1, uuid: 'GPU-d1', utilisation: 97 },
    ]);
    exporter.serve(dcgmText([0, 1]));
    expect((await r.read()).map((s) => s.utilisation)).toEqual([0, 1]);
    // A URL without a path means dcgm-exporter's /metrics.
    const bare = dcgmReader({ url: exporter.url.replace(/\/metrics$/, ''), timeoutMs });
    expect((await bare.read()).map((s) => s.utilisation)).toEqual([0, 1]);
  });

  it('an endpoint that never answers rejects at the timeout; the next reading works again', async () => {
    const r = dcgmReader({ url: exporter.url, timeoutMs });
    exporter.serve('hang');
    const before = exporter.requests;
    const reading = r.read();
    await waitFor(async () => (exporter.requests > before ? true : undefined), 'the request to arrive');
    await expect(reading).rejects.toThrow(`DCGM exporter at ${exporter.url} did not answer within ${timeoutMs} ms`);
    exporter.serve(dcgmText([44]));
    expect(await r.read()).toEqual([{ index: 0, uuid: 'GPU-d0', utilisation: 44 }]);
  });

  it('HTTP errors, refused connections and pages without the metric say what went wrong', async () => {
    const r = dcgmReader({ url: exporter.url, timeoutMs });
    exporter.serve({ status: 503, body: 'exporter starting' });
    await expect(r.read()).rejects.toThrow(`GET ${exporter.url} answered HTTP 503 Service Unavailable`);
    exporter.serve('# HELP go_goroutines Number of goroutines.\ngo_goroutines 12\n');
    await expect(r.read()).rejects.toThrow(`DCGM exporter at ${exporter.url} has no DCGM_FI_DEV_GPU_UTIL samples`);
    exporter.serve('<html><body>login</body></html>');
    await expect(r.read()).rejects.toThrow(/has no DCGM_FI_DEV_GPU_UTIL samples/);
    // A port nothing listens on: the exporter's own, once closed.
    const gone = await fakeDcgmExporter();
    await gone.close();
    await expect(dcgmReader({ url: gone.url, timeoutMs }).read()).rejects.toThrow(new RegExp(`^cannot GET ${gone.url}: .*ECONNREFUSED`));
    expect(() => dcgmReader({ url: 'localhost:9400', timeoutMs })).toThrow(/is not http or https/);
    expect(() => dcgmReader({ url: 'not a url', timeoutMs })).toThrow(/is not a URL/);
  });

  it('an aborted reading rejects with the reason', async () => {
    const r = dcgmReader({ url: exporter.url, timeoutMs: 60_000 });
    exporter.serve('hang');
    const abort = new AbortController();
    const before = exporter.requests;
    const reading = r.read(abort.signal);
    await waitFor(async () => (exporter.requests > before ? true : undefined), 'the request to arrive');
    abort.abort(new Error('backup finished'));
    await expect(reading).rejects.toThrow('backup finished');
  });
});

describe('parseDcgmMetrics', () => {
  it('takes labels in any order, escapes, timestamps and the pods that share a GPU', () => {
    const text = [
      'DCGM_FI_DEV_GPU_UTIL_SAMPLES{gpu="0"} 999',
      'DCGM_FI_DEV_GPU_UTIL{UUID="GPU-x",gpu="0",pod="a \\"b\\"",namespace="ml",} 30 1700000000000',
      'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x",pod="c"} 31',
      'DCGM_FI_DEV_GPU_UTIL{gpu="1"} 0',
    ].join('\n');
    expect(parseDcgmMetrics(text)).toEqual([
      { index: 0, uuid: 'GPU-x', utilisation: 31 },
      { index: 1, utilisation: 0 },
    ]);
  });

  it('a malformed sample of the metric is an error naming its line', () => {
    expect(() => parseDcgmMetrics('x 1\nDCGM_FI_DEV_GPU_UTIL{gpu="0"} NaN')).toThrow(
      'DCGM exporter line 2: utilisation NaN is not a percentage 0..100: "DCGM_FI_DEV_GPU_UTIL{gpu=\\"0\\"} NaN"',
    );
    expect(() => parseDcgmMetrics('DCGM_FI_DEV_GPU_UTIL{gpu="0"} 101')).toThrow(/line 1: utilisation 101 is not a percentage/);
    expect(() => parseDcgmMetrics('DCGM_FI_DEV_GPU_UTIL{UUID="GPU-x"} 5')).toThrow(/line 1: no gpu="N" label/);
    expect(() => parseDcgmMetrics('DCGM_FI_DEV_GPU_UTIL{gpu="0" UUID="x"} 5')).toThrow(/line 1: malformed labels/);
    expect(() => parseDcgmMetrics('DCGM_FI_DEV_GPU_UTIL{gpu="0"}')).toThrow(/line 1: malformed DCGM_FI_DEV_GPU_UTIL sample/);
    expect(() => parseDcgmMetrics('DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a"} 5\nDCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-b"} 5')).toThrow(
      /line 2: GPU 0 was listed before with UUID GPU-a/,
    );
  });
});
