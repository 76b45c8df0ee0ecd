import { isDcpShardName, parseDcpShard } from './dcp.js';
import { isNpyName, looksLikeNpy, parseNpy } from './npy.js';
import { readAt } from './read-at.js';
import { isSafetensorsName, looksLikeSafetensors, parseSafetensors } from './safetensors.js';
import { isTorchName, looksLikeZip, parseTorchZip } from './torch-zip.js';
import { type FileLayout, orderedExtents, type Parsed } from './types.js';

export type { Dtype, FileLayout, LayoutKind, TensorExtent } from './types.js';

/**
 * Which format the file is in and what its headers say; undefined when it is none of them. A
 * format is recognised by its first bytes, or by its name when it is too short to show them (a
 * truncated file). Throws only what the file system throws; a bug in a parser is not hidden here
 * (the public functions below turn it into "not a known layout").
 */
export async function parseFile(fd: number, filePath: string, size: number): Promise<Parsed | undefined> {
  if (isDcpShardName(filePath)) return parseDcpShard(fd, filePath, size);
  const head = await readAt(fd, 0, 16);
  if (isSafetensorsName(filePath) || looksLikeSafetensors(head)) return parseSafetensors(fd, size);
  if (isNpyName(filePath) || looksLikeNpy(head)) return parseNpy(fd, size);
  if (isTorchName(filePath) ? looksLikeZip(head) || head.length < 4 : looksLikeZip(head)) return parseTorchZip(fd, size, isTorchName(filePath));
  return undefined;
}

/** Whether an error comes from the file system (kept) rather than from content (a null layout). */
export function isIoError(err: unknown): boolean {
  return typeof (err as { code?: unknown } | null)?.code === 'string' && typeof (err as { syscall?: unknown }).syscall === 'string';
}

/**
 * One parse of a file's headers, taken as `size` bytes: both its layout (for chunking) and its
 * completeness verdict come from it, so a backup parses each checkpoint file once.
 * `parsed` undefined: not a known format, or content no parser accepts.
 */
export interface FileHeaders {
  readonly size: number;
  readonly parsed: Parsed | undefined;
}

/**
 * Reads only headers/directories with positioned reads on an open fd (bounded memory: a header
 * over a limit is refused). DCP shard files (`__N_M.distcp`) get their extents from the sibling
 * `.metadata`. Never throws for bad content (only for I/O errors).
 */
export async function readFileHeaders(fd: number, filePath: string, size: number): Promise<FileHeaders> {
  try {
    return { size, parsed: await parseFile(fd, filePath, size) };
  } catch (err) {
    if (isIoError(err)) throw err;
    return { size, parsed: undefined };
  }
}

/** The tensor layout the headers give; null: not a known layout, or damaged: the caller falls back to plain CDC. */
export function layoutOf(headers: FileHeaders): FileLayout | null {
  const { parsed, size } = headers;
  if (!parsed?.ok) return null;
  const extents = orderedExtents([...parsed.layout.extents], size);
  return extents ? { kind: parsed.layout.kind, extents } : null;
}

/** readFileHeaders, then layoutOf. */
export async function readFileLayout(fd: number, filePath: string, size: number): Promise<FileLayout | null> {
  return layoutOf(await readFileHeaders(fd, filePath, size));
}
