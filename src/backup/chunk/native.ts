import { type ChunkerParams, validateChunkerParams } from '../../repo/chunker-params.js';
import { type BoundaryFinder, GearChunker, chunkerMasks } from './fastcdc.js';
import { type NativeAddon, type NativeCutVariant, type NativeGearChunkerHandle, loadNative, requireNative } from '../../util/native.js';

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
