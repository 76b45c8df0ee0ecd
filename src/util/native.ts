import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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

/**
 * One loaded libnvidia-ml. Calls run in order on the session's thread; a call hung in the driver
 * leaves its promise (and every later one) pending forever, so callers bound each with a timeout.
 * Rejections carry `code`: an NVML return code's name (NVML_ERROR_DRIVER_NOT_LOADED, ...) or
 * NVML_LIBRARY_MISSING, NVML_SYMBOL_MISSING, NVML_GARBAGE.
 */
export interface NativeNvmlSession {
  /** dlopen, resolve the functions, nvmlInit_v2. */
  open(): Promise<void>;
  /** Every GPU NVML counts, by index: UUID and utilisation.gpu as NVML reports them (unchecked). */
  read(): Promise<Array<{ index: number; uuid: string; utilisation: number }>>;
  /** nvmlShutdown and dlclose; later calls reject. */
  close(): Promise<void>;
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
  /** With base: the shuffle of src XOR base. */
  shuffle(src: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array): void;
  /** dst = unshuffle(planes, then tail) XOR base (base may be dst itself). */
  unshufflePlanes(planes: Uint8Array[], tail: Uint8Array, dst: Uint8Array, elementSize: number, base?: Uint8Array): void;
  /** One byte per page spanned by the range; bit 0 set when the page is in the page cache (Linux). */
  residentPages?(fd: number, offset: number, length: number): Uint8Array;
  /** Evicts the range's pages that `before` (residentPages of the same range) says were not cached. */
  dropPages?(fd: number, offset: number, length: number, before: Uint8Array): void;
  /** lstat of each name in `dir`, 14 numbers per name (see walk.ts); one call per directory. */
  lstatAt?(dir: string, names: string[]): Float64Array;
  /**
   * True when some process has the file open for writing (a read lease, F_SETLEASE, is refused),
   * false when nobody has, undefined when it cannot be told (Linux only).
   */
  openForWriting?(path: string): boolean | undefined;
  /** Why openForWriting is missing (not Linux). */
  leaseUnavailable?: string;
  /** Why residentPages/dropPages are missing (not Linux). */
  pageCacheUnavailable?: string;
  /** FITHAW on the filesystem holding `path`: true when it was frozen, false when it was not (EINVAL). */
  thawFs?(path: string): boolean;
  /** syncfs(2) on the filesystem holding `path`, on a libuv worker thread. */
  syncFs?(path: string): Promise<void>;
  /** Why thawFs/syncFs are missing (not Linux). */
  freezeUnavailable?: string;
  /**
   * Writes the parts to `fd` (opened with O_DIRECT) from offset 0 and sets the file to their exact
   * length, on a libuv thread (native/src/directio.cc). Rejects with `errno` set; EINVAL: the
   * filesystem refuses direct I/O.
   */
  writeDirect?(fd: number, parts: Uint8Array[]): Promise<number>;
  /** Why writeDirect is missing (not Linux). */
  directWriteUnavailable?: string;
  /** NVML on a thread of the addon's own (native/src/nvml.cc); Linux only. */
  NvmlSession?: new (libraryPath: string) => NativeNvmlSession;
  /** Why NvmlSession is missing (not Linux). */
  nvmlUnavailable?: string;
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

/** The freeze guard executable built next to the addon (native/src/freeze_guard.cc; Linux only). */
export function freezeGuardPath(): string {
  return join(packageRoot(), 'native', 'build', 'Release', 'tender-freeze-guard');
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

export function requireNative(): NativeAddon {
  const addon = loadNative();
  if (!addon) throw new Error(nativeUnavailableReason() ?? 'native addon unavailable');
  return addon;
}
