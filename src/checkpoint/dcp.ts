import { open } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { PickleError, PyInstance, type PyValue, readPickle } from './pickle.js';
import { readTorchArchive, storageExtents, torchDtype } from './torch-zip.js';
import { type Dtype, orderedExtents, type Parsed, type TensorExtent } from './types.js';
import { readAt } from './read-at.js';
import { looksLikeSafetensors, parseSafetensors } from './safetensors.js';

/**
 * torch.distributed.checkpoint with FileSystemWriter (torch/distributed/checkpoint/filesystem.py):
 * each rank writes `__<rank>_<n>.distcp`, a concatenation of items (bytes items as they are,
 * tensors each as a whole torch.save archive); then the coordinator pickles a
 * torch.distributed.checkpoint.metadata.Metadata to `.metadata.tmp` and renames it to
 * `.metadata`. Metadata.state_dict_metadata maps each fqn to a TensorStorageMetadata (properties:
 * TensorProperties whose first state field is the torch dtype) or BytesStorageMetadata;
 * Metadata.storage_data maps MetadataIndex(fqn, offset, index) → _StorageInfo(relative_path,
 * offset, length).
 */

export const DCP_METADATA = '.metadata';
/** Largest `.metadata` read. */
export const MAX_DCP_METADATA = 64 << 20;

export function isDcpShardName(path: string): boolean {
  return /^__\d+_\d+\.distcp$/.test(basename(path));
}

export interface DcpItem {
  readonly fqn: string;
  /** The chunk's offset in the whole tensor (MetadataIndex.offset), when sharded. */
  readonly chunkOffset: readonly number[] | undefined;
  /** undefined for bytes items. */
  readonly dtype: Dtype | undefined;
  readonly relativePath: string;
  readonly offset: number;
  readonly length: number;
}

export type DcpMetadataRead = { readonly ok: true; readonly items: readonly DcpItem[] } | { readonly ok: false; readonly reason: string };

/**
 * The last `.metadata` decoded, keyed by its path and identity (device, inode, size, mtime): a
 * backup reads a directory's shards one after another, and each needs the same metadata. One
 * entry, so memory stays bounded by the largest metadata.
 */
let lastRead: { key: string; read: DcpMetadataRead } | undefined;

/** Reads and decodes `<dir>/.metadata`. */
export async function readDcpMetadata(dir: string): Promise<DcpMetadataRead> {
  const path = join(dir, DCP_METADATA);
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { ok: false, reason: `no ${DCP_METADATA} (it is written last)` };
    throw err;
  }
  try {
    const stats = await handle.stat({ bigint: true });
    const key = `${path}\0${stats.dev}:${stats.ino}:${stats.size}:${stats.mtimeNs}`;
    if (lastRead?.key === key) return lastRead.read;
    const size = Number(stats.size);
    let read: DcpMetadataRead;
    if (size > MAX_DCP_METADATA) read = { ok: false, reason: `${DCP_METADATA} of ${size} bytes is over the ${MAX_DCP_METADATA}-byte limit` };
    else read = decode(await readAt(handle.fd, 0, size));
    lastRead = { key, read };
    return read;
  } finally {
    await handle.close();
  }
}

function decode(bytes: Buffer): DcpMetadataRead {
  let root: PyValue;
  try {
    root = readPickle(bytes);
  } catch (err) {
    if (err instanceof PickleError) return { ok: false, reason: `${DCP_METADATA} is damaged: ${err.message}` };
    throw err;
  }
  return decodeMetadata(root);
}

function decodeMetadata(root: PyValue): DcpMetadataRead {
  const fail = (reason: string): DcpMetadataRead => ({ ok: false, reason: `${DCP_METADATA}: ${reason}` });
  if (!(root instanceof PyInstance) || root.global?.name !== 'Metadata') return fail('not a Metadata object');
  const stateDict = root.field('state_dict_metadata');
  const storage = root.field('storage_data');
  if (!(stateDict instanceof Map) || !(storage instanceof Map)) return fail('no state_dict_metadata or storage_data');
  const dtypes = new Map<string, Dtype>();
  for (const [fqn, meta] of stateDict) {
    if (typeof fqn !== 'string' || !(meta instanceof PyInstance)) return fail('a state_dict_metadata entry is not fqn → metadata');
    if (meta.global?.name !== 'TensorStorageMetadata') continue;
    const properties = meta.field('properties');
    if (!(properties instanceof PyInstance)) return fail(`${fqn} has no properties`);
    // TensorProperties.__getstate__ is (dtype, layout, requires_grad, memory_format, pin_memory).
    const state = properties.state;
    dtypes.set(fqn, torchDtype(Array.isArray(state) && state.length > 2 ? state[0] : properties.field('dtype')));
  }
  const items: DcpItem[] = [];
  for (const [index, info] of storage) {
    if (!(index instanceof PyInstance) || !(info instanceof PyInstance)) return fail('a storage_data entry is not MetadataIndex → _StorageInfo');
    const fqn = index.field('fqn');
    const relativePath = info.field('relative_path');
    const offset = info.field('offset');
    const length = info.field('length');
    if (typeof fqn !== 'string' || typeof relativePath !== 'string') return fail('a storage entry without fqn or relative_path');
    if (!isSafeRelative(relativePath)) return fail(`relative_path ${JSON.stringify(relativePath)} leaves the checkpoint directory`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || (offset as number) < 0 || (length as number) < 0) {
      return fail(`bad offset or length for ${fqn}`);
    }
    items.push({
      fqn,
      chunkOffset: sizeValues(index.field('offset')),
      dtype: dtypes.get(fqn),
      relativePath,
      offset: offset as number,
      length: length as number,
    });
  }
  return { ok: true, items };
}

function isSafeRelative(path: string): boolean {
  return path !== '' && !path.startsWith('/') && !path.split('/').some((part) => part === '..' || part === '');
}

/** A torch.Size (pickled as REDUCE(torch.Size, (tuple,))) or a plain tuple as numbers. */
function sizeValues(value: PyValue | undefined): number[] | undefined {
  const tuple = value instanceof PyInstance ? value.args[0] : value;
  if (!Array.isArray(tuple) || !tuple.every((n) => Number.isSafeInteger(n))) return undefined;
  return tuple as number[];
}

function itemName(item: DcpItem): string {
  return item.chunkOffset?.some((n) => n !== 0) ? `${item.fqn}[${item.chunkOffset.join(',')}]` : item.fqn;
}

/**
 * A shard's tensor extents: each tensor item's storage inside its torch.save archive (the whole
 * item with dtype 'unknown' when that archive cannot be read). Bytes items are left to CDC. A
 * shard written with SerializationFormat.SAFETENSORS is one safetensors blob: its own header
 * gives the extents.
 */
export async function parseDcpShard(fd: number, filePath: string, size: number): Promise<Parsed> {
  const fail = (reason: string): Parsed => ({ ok: false, kind: 'dcp-shard', reason });
  if (looksLikeSafetensors(await readAt(fd, 0, 16))) {
    const blob = await parseSafetensors(fd, size);
    return blob.ok ? { ...blob, layout: { kind: 'dcp-shard', extents: blob.layout.extents } } : fail(blob.reason);
  }
  const metadata = await readDcpMetadata(dirname(filePath));
  if (!metadata.ok) return fail(metadata.reason);
  const name = basename(filePath);
  const mine = metadata.items.filter((item) => item.relativePath === name);
  if (mine.length === 0) return fail(`${DCP_METADATA} names no item in ${name}`);
  const expectedSize = Math.max(...mine.map((item) => item.offset + item.length));
  if (expectedSize > size) return fail(`${DCP_METADATA} puts items up to byte ${expectedSize} of this ${size}-byte shard`);
  const extents: TensorExtent[] = [];
  for (const item of mine) {
    if (item.dtype === undefined) continue;
    const label = itemName(item);
    const read = await readTorchArchive(fd, item.offset, item.length);
    const inner = read.ok ? storageExtents(read.archive, item.offset) : undefined;
    if (!inner) {
      extents.push({ name: label, dtype: 'unknown', offset: item.offset, length: item.length });
      continue;
    }
    for (const e of inner) {
      extents.push({ name: inner.length === 1 ? label : `${label}/${e.name}`, dtype: item.dtype !== 'unknown' ? item.dtype : e.dtype, offset: e.offset, length: e.length });
    }
  }
  const ordered = orderedExtents(extents, size);
  if (!ordered) return fail('items overlap');
  return { ok: true, layout: { kind: 'dcp-shard', extents: ordered }, expectedSize };
}
