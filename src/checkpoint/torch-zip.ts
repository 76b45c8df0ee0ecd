import { PickleError, PyGlobal, PyInstance, PyPersistentRef, type PyValue, readPickle } from './pickle.js';
import { type Dtype, orderedExtents, type Parsed, type TensorExtent } from './types.js';
import { looksLikeZip, readZipDirectory, readZipEntry, type ZipDirectory, type ZipEntry } from './zip.js';

/**
 * torch.save archives (torch/serialization.py `_save`, caffe2/serialize/inline_container.cc):
 * a ZIP whose entries sit under one folder (`<archive>/`): `data.pkl` (the pickled object, where
 * each tensor storage is a persistent id ('storage', torch.FloatStorage | torch.UntypedStorage,
 * key, location, numel)), `byteorder`, `data/<key>` (each storage's raw bytes, stored without
 * compression, data 64-byte aligned by an 'FB' padding extra field), `version`,
 * `.data/serialization_id`; ZIP64 records once offsets or sizes pass 4 GiB.
 */

/** Largest data.pkl read to find dtypes and names. */
export const MAX_DATA_PKL = 64 << 20;

/** Legacy storage classes (torch/storage.py `_dtype_to_storage_type_map`). */
const storageDtypes: Readonly<Record<string, Dtype>> = {
  DoubleStorage: 'F64',
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

/** torch dtype globals (`torch.float32` pickles as GLOBAL 'torch float32'). */
const torchDtypes: Readonly<Record<string, Dtype>> = {
  float64: 'F64',
  double: 'F64',
  float32: 'F32',
  float: 'F32',
  float16: 'F16',
  half: 'F16',
  bfloat16: 'BF16',
  float8_e4m3fn: 'F8_E4M3',
  float8_e5m2: 'F8_E5M2',
  int64: 'I64',
  long: 'I64',
  int32: 'I32',
  int: 'I32',
  int16: 'I16',
  short: 'I16',
  int8: 'I8',
  uint8: 'U8',
  bool: 'BOOL',
};

/** The Dtype of a torch dtype global, 'unknown' for anything else. */
export function torchDtype(value: PyValue | undefined): Dtype {
  return value instanceof PyGlobal && value.module === 'torch' ? (torchDtypes[value.name] ?? 'unknown') : 'unknown';
}

export function isTorchName(path: string): boolean {
  return /\.(pt|pth|bin|ckpt)$/.test(path);
}

export { looksLikeZip };

export interface TorchArchive {
  readonly zip: ZipDirectory;
  /** The folder every entry sits in (`archive` for file objects, the file's stem for paths). */
  readonly prefix: string;
  /** The `data/<key>` entries by key. */
  readonly storages: ReadonlyMap<string, ZipEntry>;
  /** data.pkl decoded, or why it could not be. */
  readonly pickle: PyValue | PickleError;
}

export type TorchArchiveRead =
  | { readonly ok: true; readonly archive: TorchArchive }
  /** notTorch: a whole ZIP, but without data.pkl. */
  | { readonly ok: false; readonly reason: string; readonly notTorch?: boolean };

/** Reads and checks a torch.save archive inside [base, base + size) of `fd`. */
export async function readTorchArchive(fd: number, base: number, size: number): Promise<TorchArchiveRead> {
  const read = await readZipDirectory(fd, base, size);
  if (!read.ok) return read;
  const pkl = read.zip.entries.find((e) => /^[^/]+\/data\.pkl$/.test(e.name));
  if (!pkl) return { ok: false, reason: 'a ZIP without <archive>/data.pkl: not a torch.save archive', notTorch: true };
  const prefix = pkl.name.slice(0, -'/data.pkl'.length);
  const storages = new Map<string, ZipEntry>();
  for (const entry of read.zip.entries) {
    if (!entry.name.startsWith(`${prefix}/data/`)) continue;
    if (entry.method !== 0) return { ok: false, reason: `storage ${entry.name} is compressed (torch.save stores them)` };
    storages.set(entry.name.slice(prefix.length + '/data/'.length), entry);
  }
  const bytes = await readZipEntry(fd, base, pkl, MAX_DATA_PKL);
  let pickle: PyValue | PickleError;
  if (!bytes) pickle = new PickleError(`data.pkl is over ${MAX_DATA_PKL} bytes or cannot be decompressed`);
  else {
    try {
      pickle = readPickle(bytes);
    } catch (err) {
      if (!(err instanceof PickleError)) throw err;
      pickle = err;
    }
  }
  return { ok: true, archive: { zip: read.zip, prefix, storages, pickle } };
}

/**
 * A torch.save archive's layout. undefined for a whole ZIP that is no torch.save archive, and for
 * a damaged ZIP whose name does not say torch (`named` false): a plain .zip is none of tender's
 * business.
 */
export async function parseTorchZip(fd: number, size: number, named: boolean): Promise<Parsed | undefined> {
  const read = await readTorchArchive(fd, 0, size);
  if (!read.ok) return read.notTorch || !named ? undefined : { ok: false, kind: 'torch-zip', reason: read.reason };
  const extents = storageExtents(read.archive, 0);
  if (!extents) return { ok: false, kind: 'torch-zip', reason: 'storages overlap or lie outside the archive' };
  return { ok: true, layout: { kind: 'torch-zip', extents }, expectedSize: size };
}

/**
 * One extent per storage, at its absolute offset (`base` + its data offset). Names and dtypes
 * come from data.pkl where it could be read (the first state-dict path that reaches the storage);
 * otherwise the entry name and 'unknown'.
 */
export function storageExtents(archive: TorchArchive, base: number): TensorExtent[] | undefined {
  const found = archive.pickle instanceof PickleError ? new Map<string, StorageInfo>() : storagesInPickle(archive.pickle);
  const extents: TensorExtent[] = [];
  for (const [key, entry] of archive.storages) {
    const info = found.get(key);
    extents.push({
      name: info?.name || entry.name,
      dtype: info?.dtype ?? 'unknown',
      offset: base + entry.dataOffset,
      length: entry.compressedSize,
    });
  }
  return orderedExtents(extents, base + archive.zip.centralDirectoryOffset);
}

interface StorageInfo {
  name: string;
  dtype: Dtype;
}

/** Bound on the values visited when looking for storages (a DAG walk; cycles are cut). */
const MAX_VISITS = 4_000_000;

/** For each storage key in the pickle: the first path that reaches it, and its dtype. */
export function storagesInPickle(root: PyValue): Map<string, StorageInfo> {
  const found = new Map<string, StorageInfo>();
  const seen = new Set<object>();
  const stack: { value: PyValue; path: string }[] = [{ value: root, path: '' }];
  let visits = 0;
  while (stack.length > 0 && visits++ < MAX_VISITS) {
    const { value, path } = stack.pop()!;
    if (value === null || typeof value !== 'object' || value instanceof Uint8Array || value instanceof PyGlobal) continue;
    if (seen.has(value)) continue;
    seen.add(value);
    if (value instanceof PyPersistentRef) {
      const storage = storageRef(value);
      if (storage && !found.has(storage.key)) found.set(storage.key, { name: path, dtype: storage.dtype });
      continue;
    }
    const children: { value: PyValue; path: string }[] = [];
    if (value instanceof Map) {
      for (const [k, v] of value) children.push({ value: v, path: typeof k === 'string' || typeof k === 'number' ? join(path, String(k)) : path });
    } else if (Array.isArray(value) || value instanceof Set) {
      let i = 0;
      for (const v of value) children.push({ value: v, path: Array.isArray(value) ? join(path, String(i++)) : path });
    } else if (value instanceof PyInstance) {
      // _rebuild_tensor_v3 (dtypes without a legacy storage class) names the dtype in args[6].
      const rebuild = value.global;
      if (rebuild?.is('torch._utils', '_rebuild_tensor_v3') && value.args[0] instanceof PyPersistentRef) {
        const storage = storageRef(value.args[0]);
        if (storage && !found.has(storage.key)) found.set(storage.key, { name: path, dtype: torchDtype(value.args[6]) });
      }
      // A tensor's own arguments do not extend the path; an object's fields do.
      for (const a of value.args) children.push({ value: a, path });
      if (value.state !== undefined) children.push({ value: value.state, path });
      if (value.items) children.push({ value: value.items, path });
      if (value.elements) children.push({ value: value.elements, path });
    }
    // Reverse so that the first child is visited first (first path wins).
    for (let i = children.length - 1; i >= 0; i--) stack.push(children[i]!);
  }
  return found;
}

function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

/** ('storage', storage_type, key, location, numel) → key and dtype. */
function storageRef(ref: PyPersistentRef): { key: string; dtype: Dtype } | undefined {
  const pid = ref.pid;
  if (!Array.isArray(pid) || pid.length < 3 || pid[0] !== 'storage') return undefined;
  const type = pid[1];
  const key = pid[2];
  if (typeof key !== 'string' && typeof key !== 'number') return undefined;
  const dtype = type instanceof PyGlobal && type.module === 'torch' ? (storageDtypes[type.name] ?? 'unknown') : 'unknown';
  return { key: String(key), dtype };
}
