/**
 * The pickle reader on real pickles (torch.save's data.pkl at protocol 2, DCP's .metadata at
 * protocol 4, both written by Python's pickle module, see test/fixtures/checkpoint/generate.py),
 * on hand-made opcode sequences, at its limits, and fuzzed: random or mutated bytes give a value or
 * a PickleError, nothing else, and never hang.
 */
import { readFile } from 'node:fs/promises';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PickleError, PyGlobal, PyInstance, PyPersistentRef, type PyValue, readPickle } from '../../src/checkpoint/pickle.js';
import { readTorchArchive } from '../../src/checkpoint/torch-zip.js';
import { readZipEntry } from '../../src/checkpoint/zip.js';
import { fixture, withFile } from './fixtures.js';

async function dataPkl(rel: string): Promise<Buffer> {
  return withFile(fixture(rel), async (fd, size) => {
    const read = await readTorchArchive(fd, 0, size);
    if (!read.ok) throw new Error(read.reason);
    const entry = read.archive.zip.entries.find((e) => e.name.endsWith('/data.pkl'))!;
    return (await readZipEntry(fd, 0, entry, 1 << 20))!;
  });
}

describe('readPickle on real pickles', () => {
  it("torch.save's data.pkl: nested dicts, OrderedDicts with _metadata, tensors as inert REDUCEs of persistent ids", async () => {
    const root = readPickle(await dataPkl('files/model.pt'));
    expect(root).toBeInstanceOf(Map);
    const model = (root as Map<PyValue, PyValue>).get('model') as Map<PyValue, PyValue>;
    expect(model).toBeInstanceOf(Map);
    expect([...model.keys()]).toEqual(['encoder.weight', 'encoder.bias', 'head.weight', 'head.scale', 'encoder.weight_view']);
    const weight = model.get('encoder.weight') as PyInstance;
    expect(weight.global).toEqual(new PyGlobal('torch._utils', '_rebuild_tensor_v2'));
    const ref = weight.args[0] as PyPersistentRef;
    expect(ref).toBeInstanceOf(PyPersistentRef);
    expect(ref.pid).toEqual(['storage', new PyGlobal('torch', 'FloatStorage'), '0', 'cpu', 32]);
    const size = weight.args[2] as PyInstance;
    expect(size.global).toEqual(new PyGlobal('torch', 'Size'));
    expect(size.args[0]).toEqual([8, 4]);
    const scale = model.get('head.scale') as PyInstance;
    expect(scale.global?.name).toBe('_rebuild_tensor_v3');
    expect(scale.args[6]).toEqual(new PyGlobal('torch', 'float8_e4m3fn'));
    expect((root as Map<PyValue, PyValue>).get('epoch')).toBe(3);
  });

  it("DCP's .metadata (protocol 4: FRAME, STACK_GLOBAL, MEMOIZE, NEWOBJ, BUILD)", async () => {
    const root = readPickle(await readFile(fixture('dcp/.metadata'))) as PyInstance;
    expect(root.global).toEqual(new PyGlobal('torch.distributed.checkpoint.metadata', 'Metadata'));
    const stateDict = root.field('state_dict_metadata') as Map<PyValue, PyValue>;
    expect([...stateDict.keys()].sort()).toEqual(['model.b', 'model.w', 'optim.m', 'step']);
    const w = stateDict.get('model.w') as PyInstance;
    const properties = w.field('properties') as PyInstance;
    expect((properties.state as PyValue[])[0]).toEqual(new PyGlobal('torch', 'float32'));
    const storage = root.field('storage_data') as Map<PyValue, PyValue>;
    expect(storage.size).toBe(5);
    for (const [index, info] of storage) {
      expect((index as PyInstance).global?.name).toBe('MetadataIndex');
      expect((info as PyInstance).global).toEqual(new PyGlobal('torch.distributed.checkpoint.filesystem', '_StorageInfo'));
    }
  });
});

describe('readPickle opcodes and limits', () => {
  const p = (...bytes: (number | string)[]): Uint8Array =>
    Buffer.concat(bytes.map((b) => (typeof b === 'number' ? Buffer.from([b]) : Buffer.from(b, 'latin1'))));

  it('protocol 0 text opcodes, integers, floats, memo', () => {
    expect(readPickle(p('I42\n.'))).toBe(42);
    expect(readPickle(p('I01\n.'))).toBe(true);
    expect(readPickle(p('L-7L\n.'))).toBe(-7);
    expect(readPickle(p('F2.5\n.'))).toBe(2.5);
    expect(readPickle(p('(I1\nI2\nlp0\ng0\n0.'))).toEqual([1, 2]);
    expect(readPickle(p('cos\nsystem\n.'))).toEqual(new PyGlobal('os', 'system'));
    // A LONG1 beyond 2^53 is a bigint; negative values are two's complement.
    expect(readPickle(p(0x80, 2, 0x8a, 9, '\x00\x00\x00\x00\x00\x00\x00\x00\x01', '.'))).toBe(1n << 64n);
    expect(readPickle(p(0x80, 2, 0x8a, 1, '\xff', '.'))).toBe(-1);
    expect(readPickle(p(0x80, 2, 'G', '\x40\x09\x21\xfb\x54\x44\x2d\x18', '.'))).toBeCloseTo(Math.PI);
  });

  it('REDUCE of os.system stays an inert description: nothing is called', () => {
    const value = readPickle(p(0x80, 2, 'cos\nsystem\n', 'X', '\x05\x00\x00\x00', 'touch', 0x85, 'R.')) as PyInstance;
    expect(value).toBeInstanceOf(PyInstance);
    expect(value.callable).toEqual(new PyGlobal('os', 'system'));
    expect(value.args).toEqual(['touch']);
  });

  it('clear errors: unsupported opcode, truncation, stack underflow, limits', () => {
    expect(() => readPickle(p(0x80, 2, 0x82, 1, '.'))).toThrow(/unsupported opcode 0x82 \(opcode at byte 2\)/);
    expect(() => readPickle(p(0x80, 2, 'X', '\x10\x00\x00\x00', 'abc'))).toThrow(PickleError);
    expect(() => readPickle(p('R.'))).toThrow(/stack underflow/);
    expect(() => readPickle(p('(((((N.'), { maxDepth: 3 })).toThrow(/MARKs nested deeper than 3/);
    expect(() => readPickle(p(']', 'N'.repeat(20), '.'), { maxObjects: 10 })).toThrow(/more than 10 values/);
    expect(() => readPickle(new Uint8Array(100), { maxBytes: 50 })).toThrow(/over the 50-byte limit/);
    expect(() => readPickle(p(0x80, 2, 0x8b, '\x00\x00\x01\x00', '.'))).toThrow(/over the 64-byte limit/);
    expect(() => readPickle(p(0x80, 2, 'h', 7, '.'))).toThrow(/memo key 7 not set/);
  });
});

describe('readPickle fuzzed', () => {
  function decodeOrOwnError(bytes: Uint8Array): void {
    try {
      readPickle(bytes, { maxObjects: 100_000 });
    } catch (err) {
      if (!(err instanceof PickleError)) throw err;
    }
  }

  it('random bytes: a value or a PickleError', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => decodeOrOwnError(bytes)), { numRuns: 3000 });
  });

  it('random opcode soup (valid opcodes, random arguments): a value or a PickleError', () => {
    const opcodes = [...'(0123NIJKLMGXCBU]el}ds)tabRcpqrghjQP.'].map((c) => c.charCodeAt(0)).concat([0x80, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8c, 0x8f, 0x90, 0x91, 0x93, 0x94, 0x95, 0x81, 0x92]);
    const piece = fc.oneof(fc.constantFrom(...opcodes).map((o) => [o]), fc.uint8Array({ maxLength: 6 }).map((a) => [...a]));
    fc.assert(fc.property(fc.array(piece, { maxLength: 200 }), (pieces) => decodeOrOwnError(Uint8Array.from(pieces.flat()))), { numRuns: 3000 });
  });

  it('mutated real pickles: a value or a PickleError', async () => {
    const originals = [await dataPkl('files/model.pt'), await readFile(fixture('dcp/.metadata'))];
    fc.assert(
      fc.property(fc.nat({ max: 1 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), fc.nat(), (which, edits, cut) => {
        const bytes = Buffer.from(originals[which]!);
        for (const [at, value] of edits) bytes[at % bytes.length] = value;
        decodeOrOwnError(bytes.subarray(0, bytes.length - (cut % 8)));
      }),
      { numRuns: 3000 },
    );
  });

  it('a self-referencing list is decoded without hanging', () => {
    // EMPTY_LIST, BINPUT 0, BINGET 0, APPEND: a list containing itself
    const value = readPickle(Uint8Array.from([0x80, 2, 0x5d, 0x71, 0, 0x68, 0, 0x61, 0x2e])) as PyValue[];
    expect(value[0]).toBe(value);
  });
});
