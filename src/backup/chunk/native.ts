import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type BoundaryFinder,
  type ChunkerParams,
  GearChunker,
  chunkerMasks,
  validateChunkerParams,
} from './fastcdc.js';

/**
 * The optional N-API addon (native/, built by `npm install` or `npm run build:native`) with the
 * hot loops: the FastCDC boundary finder and the byte-plane shuffle for float tensors. Every
 * native function has a plain-TS equivalent that produces identical output; the addon is only
 * a speed-up. Set TENDER_NATIVE=0 to force the TS code paths.
 */

/**
 * Inner-loop flavour of the native chunker; both give identical cut positions. 'bytewise' (the
 * default) hashes one byte per step; 'rolling2' is FastCDC's "rolling two bytes" (one
 * shift-add per two bytes on the dependency chain, with a pre-shifted table), which measured
 * slower on AMD Zen 3 and is kept for comparison on other CPUs (bench/chunk.bench.mjs).
 */
export type NativeCutVariant = 'bytewise' | 'rolling2';

export interface NativeGearChunkerHandle {
  cut(data: Uint8Array, start: number, end: number): number;
  cutAll(data: Uint8Array, start: number, end: number, eof: boolean, out: Uint32Array): number;
  readonly variant: NativeCutVariant;
}

export interface NativeAddon {
  GearChunker: new (
    gear: Uint32Array,
    minSize: number,
    avgSize: number,
    maxSize: number,
    maskHard: number,
    maskEasy: number,
    variant?: NativeCutVariant,
  ) => NativeGearChunkerHandle;
  shuffle(src: Uint8Array, dst: Uint8Array, elementSize: number): void;
  unshuffle(src: Uint8Array, dst: Uint8Array, elementSize: number): void;
  /** One byte per page spanned by the range; bit 0 set when the page is in the page cache (Linux). */
  residentPages?(fd: number, offset: number, length: number): Uint8Array;
  /** Evicts the range's pages that `before` (residentPages of the same range) says were not cached. */
  dropPages?(fd: number, offset: number, length: number, before: Uint8Array): void;
  /** lstat of each name in `dir`, 14 numbers per name (see walk.ts); one call per directory. */
  lstatAt?(dir: string, names: string[]): Float64Array;
  /** Why residentPages/dropPages are missing (not Linux). */
  pageCacheUnavailable?: string;
  abiVersion: number;
}

const ADDON_ABI_VERSION = 1;
const ADDON_RELATIVE_PATH = join('native', 'build', 'Release', 'tender_native.node');

/** The folder holding tender's package.json: works from src/ (vitest) and from dist/. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown }).name === 'tender') return dir;
      } catch {
        // not ours (or unreadable): keep walking up
      }
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find the tender package root (package.json with name "tender")');
    dir = parent;
  }
}

export function nativeAddonPath(): string {
  return join(packageRoot(), ADDON_RELATIVE_PATH);
}

export function nativeDisabled(): boolean {
  return process.env.TENDER_NATIVE === '0';
}

let loaded: { addon: NativeAddon | undefined; reason: string | undefined } | undefined;

/**
 * The addon, or undefined when TENDER_NATIVE=0, when the .node file is missing, or when it
 * fails to load; the outcome (and reason) is computed once and cached.
 */
export function loadNative(): NativeAddon | undefined {
  if (nativeDisabled()) return undefined;
  loaded ??= tryLoad();
  return loaded.addon;
}

/** Why loadNative() returned undefined (undefined when the addon is loaded). */
export function nativeUnavailableReason(): string | undefined {
  if (nativeDisabled()) return 'disabled by TENDER_NATIVE=0';
  loaded ??= tryLoad();
  return loaded.reason;
}

function tryLoad(): { addon: NativeAddon | undefined; reason: string | undefined } {
  let path: string;
  try {
    path = nativeAddonPath();
  } catch (err) {
    return { addon: undefined, reason: (err as Error).message };
  }
  if (!existsSync(path)) {
    return { addon: undefined, reason: `native addon not built (${path} is missing; run npm run build:native)` };
  }
  try {
    const addon = createRequire(import.meta.url)(path) as NativeAddon;
    if (addon.abiVersion !== ADDON_ABI_VERSION || typeof addon.GearChunker !== 'function') {
      return { addon: undefined, reason: `native addon at ${path} is stale (rebuild with npm run build:native)` };
    }
    return { addon, reason: undefined };
  } catch (err) {
    return { addon: undefined, reason: `native addon at ${path} failed to load: ${(err as Error).message}` };
  }
}

function requireNative(): NativeAddon {
  const addon = loadNative();
  if (!addon) throw new Error(nativeUnavailableReason() ?? 'native addon unavailable');
  return addon;
}

/** The native boundary finder: same cut positions as GearChunker, plus a batched cutAll. */
export class NativeGearChunker implements BoundaryFinder {
  private readonly handle: NativeGearChunkerHandle;

  constructor(
    readonly params: ChunkerParams,
    gear: Uint32Array,
    options: { addon?: NativeAddon; variant?: NativeCutVariant } = {},
  ) {
    validateChunkerParams(params);
    if (gear.length !== 256) throw new Error('the Gear table must have 256 entries');
    const { maskHard, maskEasy } = chunkerMasks(params);
    const addon = options.addon ?? requireNative();
    this.handle = new addon.GearChunker(
      gear,
      params.minSize,
      params.avgSize,
      params.maxSize,
      maskHard,
      maskEasy,
      options.variant,
    );
  }

  get variant(): NativeCutVariant {
    return this.handle.variant;
  }

  cut(data: Uint8Array, start: number, end: number): number {
    return this.handle.cut(data, start, end);
  }

  /**
   * Writes successive chunk lengths starting at `start` into `out` while at least maxSize bytes
   * remain (or, when `eof`, until `end`), stopping when `out` is full; returns how many.
   */
  cutAll(data: Uint8Array, start: number, end: number, eof: boolean, out: Uint32Array): number {
    return this.handle.cutAll(data, start, end, eof, out);
  }
}

/** A boundary finder that may also batch: NativeGearChunker has cutAll, GearChunker does not. */
export type BatchBoundaryFinder = BoundaryFinder & {
  cutAll?(data: Uint8Array, start: number, end: number, eof: boolean, out: Uint32Array): number;
};

/**
 * cutAll for any boundary finder: the native batch call when there is one, otherwise a loop
 * over `cut` with the same contract.
 */
export function cutAll(
  finder: BatchBoundaryFinder,
  maxSize: number,
  data: Uint8Array,
  start: number,
  end: number,
  eof: boolean,
  out: Uint32Array,
): number {
  if (finder.cutAll) return finder.cutAll(data, start, end, eof, out);
  let n = 0;
  let pos = start;
  while (n < out.length) {
    const remaining = end - pos;
    if (remaining === 0 || (!eof && remaining < maxSize)) break;
    const len = finder.cut(data, pos, end);
    out[n++] = len;
    pos += len;
  }
  return n;
}

/** The native chunker when the addon is available (and not disabled), else the TS one. */
export function createBoundaryFinder(params: ChunkerParams, gear: Uint32Array): BoundaryFinder {
  const addon = loadNative();
  return addon ? new NativeGearChunker(params, gear, { addon }) : new GearChunker(params, gear);
}

// ---- Byte-plane shuffle -----------------------------------------------------------------------
//
// For n = length / elementSize elements, plane k (k < elementSize) is dst[k*n, (k+1)*n) and holds
// byte k of every element; the length % elementSize trailing bytes are copied through unchanged
// after the planes. unshuffle is the inverse. src and dst must have equal lengths and not overlap.

function checkShuffleArgs(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  if (!Number.isInteger(elementSize) || elementSize < 1 || elementSize > 64) {
    throw new RangeError('elementSize must be in 1..64');
  }
  if (src.length !== dst.length) throw new RangeError('src and dst must have the same length');
  if (
    src.length > 0 &&
    src.buffer === dst.buffer &&
    src.byteOffset < dst.byteOffset + dst.length &&
    dst.byteOffset < src.byteOffset + src.length
  ) {
    throw new RangeError('src and dst must not overlap');
  }
}

/** Plain-TS shuffle (the reference the native one is tested against). */
export function shuffleBytes(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  checkShuffleArgs(src, dst, elementSize);
  const n = Math.floor(src.length / elementSize);
  for (let k = 0; k < elementSize; k++) {
    const base = k * n;
    for (let j = 0, s = k; j < n; j++, s += elementSize) dst[base + j] = src[s]!;
  }
  const body = n * elementSize;
  if (body < src.length) dst.set(src.subarray(body), body);
}

/** Plain-TS inverse of shuffleBytes. */
export function unshuffleBytes(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  checkShuffleArgs(src, dst, elementSize);
  const n = Math.floor(src.length / elementSize);
  for (let k = 0; k < elementSize; k++) {
    const base = k * n;
    for (let j = 0, d = k; j < n; j++, d += elementSize) dst[d] = src[base + j]!;
  }
  const body = n * elementSize;
  if (body < src.length) dst.set(src.subarray(body), body);
}

/** The addon's shuffle; throws when the addon is unavailable. */
export function nativeShuffle(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  requireNative().shuffle(src, dst, elementSize);
}

/** The addon's unshuffle; throws when the addon is unavailable. */
export function nativeUnshuffle(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  requireNative().unshuffle(src, dst, elementSize);
}

/** Shuffle with the addon when available, else in TS (identical output). */
export function byteShuffle(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  const addon = loadNative();
  if (addon) addon.shuffle(src, dst, elementSize);
  else shuffleBytes(src, dst, elementSize);
}

/** Unshuffle with the addon when available, else in TS (identical output). */
export function byteUnshuffle(src: Uint8Array, dst: Uint8Array, elementSize: number): void {
  const addon = loadNative();
  if (addon) addon.unshuffle(src, dst, elementSize);
  else unshuffleBytes(src, dst, elementSize);
}
