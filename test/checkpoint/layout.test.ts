/**
 * readFileLayout on real files in each layout (test/fixtures/checkpoint, written by the real
 * safetensors and numpy libraries and by a torch-layout mirror, see generate.py): the extents are
 * the tensors as written (names, dtypes, lengths, offsets where the writer recorded them, and the
 * bytes at each extent hash to the tensor's bytes); damaged files give null, never a throw.
 */
import { open, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileCompleteness } from '../../src/checkpoint/completeness.js';
import { type FileLayout, parseFile, readFileLayout } from '../../src/checkpoint/layout.js';
import { MAX_SAFETENSORS_HEADER } from '../../src/checkpoint/safetensors.js';
import { buildZip64, copyFixture, expected, fixture, sha256At, tempDir, withFile } from './fixtures.js';

let tmp: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

async function layoutOf(file: string): Promise<FileLayout | null> {
  return withFile(file, (fd, size) => readFileLayout(fd, file, size));
}

/** The layout's extents are sorted, non-overlapping, inside the file. */
function expectWellFormed(layout: FileLayout, size: number): void {
  let end = 0;
  for (const e of layout.extents) {
    expect(e.offset).toBeGreaterThanOrEqual(end);
    expect(e.length).toBeGreaterThan(0);
    end = e.offset + e.length;
  }
  expect(end).toBeLessThanOrEqual(size);
}

async function expectMatches(file: string, rel: string): Promise<void> {
  const want = expected[rel]!;
  const layout = await layoutOf(file);
  expect(layout, rel).not.toBeNull();
  expect(layout!.kind).toBe(want.kind);
  const size = (await withFile(file, async (_fd, s) => s)) as number;
  expectWellFormed(layout!, size);
  const byName = new Map(layout!.extents.map((e) => [e.name, e]));
  expect([...byName.keys()].sort()).toEqual(want.extents.map((e) => e.name).sort());
  for (const w of want.extents) {
    const got = byName.get(w.name)!;
    expect({ name: got.name, dtype: got.dtype, length: got.length }).toEqual({ name: w.name, dtype: w.dtype, length: w.length });
    if (w.offset !== undefined) expect(got.offset, w.name).toBe(w.offset);
    if (w.sha256 !== undefined) expect(await sha256At(file, got.offset, got.length), w.name).toBe(w.sha256);
  }
}

describe('readFileLayout: extents as written', () => {
  for (const rel of Object.keys(expected).filter((r) => r !== 'files/zip64.pt')) {
    it(rel, async () => {
      await expectMatches(fixture(rel), rel);
    });
  }

  it('the fixtures cover every layout kind and the dtypes tender transforms', () => {
    const kinds = new Set(Object.values(expected).map((e) => e.kind));
    expect([...kinds].sort()).toEqual(['dcp-shard', 'npy', 'safetensors', 'torch-zip']);
    const dtypes = new Set(Object.values(expected).flatMap((e) => e.extents.map((x) => x.dtype)));
    for (const d of ['F64', 'F32', 'F16', 'BF16', 'F8_E4M3', 'I64', 'I32', 'I16', 'U8', 'BOOL', 'unknown']) expect(dtypes).toContain(d);
  });

  it('a torch.save archive past 4 GiB (ZIP64, sparse file): storages at their offsets', async () => {
    const file = await buildZip64(tmp.dir);
    await expectMatches(file, 'files/zip64.pt');
    const verdict = await withFile(file, (fd, size) => fileCompleteness(fd, file, size));
    expect(verdict).toEqual({ complete: true, kind: 'torch-zip' });
    // Cut inside the ZIP64 end records, and inside the 4 GiB storage: incomplete.
    const size = (await stat(file)).size;
    for (const cut of [size - 1, size - 22, size - 30, size - 100, 1 << 31]) {
      await truncate(file, cut);
      expect(await withFile(file, (fd, s) => fileCompleteness(fd, file, s)), `cut at ${cut}`).toMatchObject({ complete: false, kind: 'torch-zip' });
      expect(await layoutOf(file)).toBeNull();
    }
  });

  it('a DCP shard without its .metadata, or with a damaged one, has no layout', async () => {
    const shard = await copyFixture('dcp/__0_0.distcp', path.join(tmp.dir, '__0_0.distcp'));
    expect(await layoutOf(shard)).toBeNull();
    const dir = await copyFixture('dcp', path.join(tmp.dir, 'dcp-replaced'));
    const inDir = path.join(dir, '__0_0.distcp');
    expect((await layoutOf(inDir))?.extents).toHaveLength(2);
    // A new .metadata (same path) is read again, not taken from the last one decoded.
    await writeFile(path.join(dir, '.metadata'), (await readFile(path.join(dir, '.metadata'))).subarray(0, 500));
    expect(await layoutOf(inDir)).toBeNull();
  });

  it('files that are no checkpoint format: null', async () => {
    const text = path.join(tmp.dir, 'notes.txt');
    await writeFile(text, 'hello\n');
    expect(await layoutOf(text)).toBeNull();
    expect(await layoutOf(fixture('files/plain.zip'))).toBeNull();
    const plainZip = fixture('files/plain.zip');
    expect(await withFile(plainZip, (fd, size) => fileCompleteness(fd, plainZip, size))).toBeUndefined();
  });

  it('a torch.save archive whose data.pkl is damaged still gives its storages, with unknown dtypes', async () => {
    const file = await copyFixture('files/model.pt', path.join(tmp.dir, 'bad-pickle.pt'));
    // data.pkl is the first record: its data starts at the first 64-byte boundary after the header.
    const handle = await open(file, 'r+');
    await handle.write(Buffer.from([0xff, 0xff, 0xff, 0xff]), 0, 4, 64);
    await handle.close();
    const layout = await layoutOf(file);
    expect(layout?.kind).toBe('torch-zip');
    expect(layout!.extents.map((e) => e.dtype)).toEqual(layout!.extents.map(() => 'unknown'));
    expect(layout!.extents.map((e) => e.name).sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7].map((k) => `model/data/${k}`));
  });
});

describe('readFileLayout: bounded and tolerant', () => {
  it('a safetensors header claiming 2 GB is refused without allocating it', async () => {
    const file = path.join(tmp.dir, 'huge-header.safetensors');
    const claimed = 2_000_000_000;
    const head = Buffer.alloc(9);
    head.writeBigUInt64LE(BigInt(claimed));
    head[8] = 0x7b;
    await writeFile(file, head);
    // Sparse: the file is as long as the header claims, so only the limit stops the read.
    const handle = await open(file, 'r+');
    await handle.truncate(8 + claimed + 16);
    await handle.close();
    const before = process.memoryUsage();
    expect(await layoutOf(file)).toBeNull();
    const verdict = await withFile(file, (fd, size) => fileCompleteness(fd, file, size));
    const after = process.memoryUsage();
    expect(verdict).toMatchObject({ complete: false, kind: 'safetensors' });
    expect((verdict as { reason: string }).reason).toContain(`${MAX_SAFETENSORS_HEADER}-byte limit`);
    expect(after.arrayBuffers - before.arrayBuffers).toBeLessThan(64 << 20);
    expect(after.rss - before.rss).toBeLessThan(256 << 20);
  });

  const sources = ['files/model.safetensors', 'files/array.npy', 'files/model.pt', 'dcp/__0_0.distcp'];
  for (const rel of sources) {
    it(`${rel} with damaged bytes: null or a well-formed layout, never a throw`, async () => {
      const original = await readFile(fixture(rel));
      // DCP shards need their .metadata beside them.
      const dir = path.join(tmp.dir, `damaged-${path.basename(path.dirname(rel))}`);
      if (rel.startsWith('dcp/')) await copyFixture('dcp', dir);
      else await copyFixture(path.dirname(rel), dir);
      const file = path.join(dir, path.basename(rel));
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ at: fc.nat({ max: original.length - 1 }), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 8 }),
          fc.boolean(),
          async (edits, headerOnly) => {
            const bytes = Buffer.from(original);
            // Header-only edits hit the parts the parsers read (start and end of the file).
            for (const { at, value } of edits) bytes[headerOnly ? (at % 2 ? at % 64 : bytes.length - 1 - (at % 64)) : at] = value;
            await writeFile(file, bytes);
            const layout = await withFile(file, (fd, size) => parseFile(fd, file, size)).then(
              () => layoutOf(file),
              (err: unknown) => {
                throw new Error(`parser threw on damaged input: ${String(err)}`);
              },
            );
            if (layout) expectWellFormed(layout, bytes.length);
          },
        ),
        { numRuns: 150 },
      );
    });
  }
});
