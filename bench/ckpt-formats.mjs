// The byte formats of torch checkpoints, written the way torch writes them, for the benchmark data
// (dataset.mjs): a pickle writer (protocol 2, the opcodes torch.save's pickles use), torch.save ZIP
// archives (stored entries under `archive/`, tensor data 64-byte aligned by an 'FB' extra field)
// and the `.metadata` of torch.distributed.checkpoint. tender reads them in src/checkpoint/.
import zlib from 'node:zlib';

// ---------------------------------------------------------------- pickle (protocol 2)

/** Builds a pickle from values: plain JS values and the wrappers below. */
export class Pickler {
  constructor() {
    this.parts = [Buffer.from([0x80, 2])];
  }
  op(...bytes) {
    this.parts.push(Buffer.from(bytes));
  }
  global(module, name) {
    this.parts.push(Buffer.from(`c${module}\n${name}\n`, 'latin1'));
  }
  str(s) {
    const b = Buffer.from(s, 'utf8');
    const h = Buffer.alloc(5);
    h[0] = 0x58; // BINUNICODE
    h.writeUInt32LE(b.length, 1);
    this.parts.push(h, b);
  }
  int(n) {
    if (Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31) {
      const h = Buffer.alloc(5);
      h[0] = 0x4a; // BININT
      h.writeInt32LE(n, 1);
      this.parts.push(h);
      return;
    }
    // LONG1: little-endian two's complement, 8 bytes are enough for any file offset.
    const h = Buffer.alloc(10);
    h[0] = 0x8a;
    h[1] = 8;
    h.writeBigInt64LE(BigInt(n), 2);
    this.parts.push(h);
  }
  float(x) {
    const h = Buffer.alloc(9);
    h[0] = 0x47; // BINFLOAT, big-endian
    h.writeDoubleBE(x, 1);
    this.parts.push(h);
  }
  /** Writes any value: see the wrappers. */
  value(v) {
    if (v === null || v === undefined) this.op(0x4e);
    else if (v === true) this.op(0x88);
    else if (v === false) this.op(0x89);
    else if (typeof v === 'string') this.str(v);
    else if (typeof v === 'number') Number.isInteger(v) ? this.int(v) : this.float(v);
    else if (typeof v.pickle === 'function') v.pickle(this);
    else if (Array.isArray(v)) {
      this.op(0x28);
      for (const x of v) this.value(x);
      this.op(0x74); // TUPLE
    } else {
      this.op(0x7d, 0x28); // EMPTY_DICT, MARK
      for (const [k, x] of v instanceof Map ? v : Object.entries(v)) {
        this.value(k);
        this.value(x);
      }
      this.op(0x75); // SETITEMS
    }
  }
  bytes() {
    this.op(0x2e); // STOP
    return Buffer.concat(this.parts);
  }
}

/** collections.OrderedDict(entries). */
export const orderedDict = (entries) => ({
  pickle(p) {
    p.global('collections', 'OrderedDict');
    p.op(0x29, 0x52, 0x28); // EMPTY_TUPLE, REDUCE, MARK
    for (const [k, v] of entries) {
      p.value(k);
      p.value(v);
    }
    p.op(0x75);
  },
});

/** An object built as NEWOBJ(cls, ()) then BUILD(state): a dataclass, or a class with __getstate__. */
export const pyObject = (module, name, state) => ({
  pickle(p) {
    p.global(module, name);
    p.op(0x29, 0x81); // EMPTY_TUPLE, NEWOBJ
    p.value(state);
    p.op(0x62); // BUILD
  },
});

/** torch.Size(dims). */
export const torchSize = (dims) => ({
  pickle(p) {
    p.global('torch', 'Size');
    p.value([dims]);
    p.op(0x52);
  },
});

/** A global by name (torch.float32 is `torch float32`). */
export const pyGlobal = (module, name) => ({ pickle: (p) => p.global(module, name) });

const storageClass = { F32: 'FloatStorage', BF16: 'BFloat16Storage', F16: 'HalfStorage', F64: 'DoubleStorage', I64: 'LongStorage' };
const elementSize = { F32: 4, BF16: 2, F16: 2, F64: 8, I64: 8 };

/** A tensor as torch.save pickles it: _rebuild_tensor_v2(persistent storage ref, 0, shape, stride, False, OrderedDict()). */
export const tensorRef = (key, dtype, shape) => ({
  pickle(p) {
    p.global('torch._utils', '_rebuild_tensor_v2');
    p.op(0x28); // MARK (the argument tuple)
    const numel = shape.reduce((a, b) => a * b, 1);
    p.value(['storage', pyGlobal('torch', storageClass[dtype]), String(key), 'cpu', numel]);
    p.op(0x51); // BINPERSID
    p.int(0);
    p.value(shape);
    const stride = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
    p.value(stride);
    p.value(false);
    orderedDict([]).pickle(p);
    p.op(0x74, 0x52); // TUPLE, REDUCE
  },
});

export const tensorBytes = (dtype, shape) => shape.reduce((a, b) => a * b, 1) * elementSize[dtype];

// ---------------------------------------------------------------- torch.save ZIP archives

const crc32 = zlib.crc32 ?? (() => 0);

/**
 * Writes a torch.save archive through `w` (dataset.mjs's Writer: write(bytes), size, patch(offset,
 * bytes)): archive/data.pkl, archive/byteorder, then archive/data/<key> for each storage (its bytes
 * from `fill(key, write)`), archive/version, archive/.data/serialization_id, and the central
 * directory. `base` is where the archive starts in the file (a DCP shard holds several).
 */
export function writeTorchArchive(w, pickleBytes, storages, fill) {
  const base = w.size;
  const entries = [];
  const entry = (name, size, body) => {
    const nameBytes = Buffer.from(name, 'utf8');
    const offset = w.size - base;
    // Data aligned to 64 bytes in the archive, as torch's writer does, by an 'FB' padding field.
    const pad = (64 - ((offset + 30 + nameBytes.length + 4) % 64)) % 64;
    const extra = Buffer.alloc(4 + pad, 'Z');
    extra.writeUInt16LE(0x4246, 0);
    extra.writeUInt16LE(pad, 2);
    const header = Buffer.alloc(30);
    header.writeUInt32LE(0x04034b50, 0);
    header.writeUInt16LE(20, 4);
    header.writeUInt32LE(size, 18);
    header.writeUInt32LE(size, 22);
    header.writeUInt16LE(nameBytes.length, 26);
    header.writeUInt16LE(extra.length, 28);
    w.write(header);
    w.write(nameBytes);
    w.write(extra);
    let crc = 0;
    body((bytes) => {
      crc = crc32(bytes, crc);
      w.write(bytes);
    });
    const crcBytes = Buffer.alloc(4);
    crcBytes.writeUInt32LE(crc >>> 0);
    w.patch(base + offset + 14, crcBytes);
    entries.push({ nameBytes, offset, size, crc });
  };
  entry('archive/data.pkl', pickleBytes.length, (write) => write(pickleBytes));
  entry('archive/byteorder', 6, (write) => write(Buffer.from('little')));
  for (const s of storages) entry(`archive/data/${s.key}`, s.bytes, (write) => fill(s, write));
  entry('archive/version', 2, (write) => write(Buffer.from('3\n')));
  entry('archive/.data/serialization_id', 20, (write) => write(Buffer.from('0'.repeat(20))));
  const cdStart = w.size - base;
  for (const e of entries) {
    const h = Buffer.alloc(46);
    h.writeUInt32LE(0x02014b50, 0);
    h.writeUInt16LE(20, 4);
    h.writeUInt16LE(20, 6);
    h.writeUInt32LE(e.crc >>> 0, 16);
    h.writeUInt32LE(e.size, 20);
    h.writeUInt32LE(e.size, 24);
    h.writeUInt16LE(e.nameBytes.length, 28);
    h.writeUInt32LE(e.offset, 42);
    w.write(h);
    w.write(e.nameBytes);
  }
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(w.size - base - cdStart, 12);
  end.writeUInt32LE(cdStart, 16);
  w.write(end);
}

// ---------------------------------------------------------------- torch.distributed.checkpoint

const dcp = 'torch.distributed.checkpoint.metadata';
const dcpStorage = 'torch.distributed.checkpoint.filesystem';

/**
 * The pickled `.metadata` of a DCP checkpoint: `items` are {fqn, dtype, shape, relativePath,
 * offset, length}, one per tensor (each a whole torch.save archive in its shard file).
 */
export function dcpMetadata(items) {
  const stateDict = new Map();
  const storage = new Map();
  for (const it of items) {
    const zeros = it.shape.map(() => 0);
    stateDict.set(
      it.fqn,
      pyObject(dcp, 'TensorStorageMetadata', {
        properties: pyObject(dcp, 'TensorProperties', [pyGlobal('torch', it.dtype === 'F32' ? 'float32' : 'bfloat16'), pyGlobal('torch', 'strided'), false, pyGlobal('torch', 'contiguous_format'), false]),
        size: torchSize(it.shape),
        chunks: { pickle: (p) => p.value([pyObject(dcp, 'ChunkStorageMetadata', { offsets: torchSize(zeros), sizes: torchSize(it.shape) })]) },
      }),
    );
    storage.set(
      pyObject(dcp, 'MetadataIndex', { fqn: it.fqn, offset: torchSize(zeros), index: 0 }),
      pyObject(dcpStorage, '_StorageInfo', { relative_path: it.relativePath, offset: it.offset, length: it.length }),
    );
  }
  const p = new Pickler();
  p.value(pyObject(dcp, 'Metadata', { state_dict_metadata: stateDict, planner_data: null, storage_data: storage }));
  return p.bytes();
}
