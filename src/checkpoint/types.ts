/** Element types of tensor data, named as in the safetensors format. */
export type Dtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL' | 'unknown';

/** Where one tensor's raw bytes lie in a file. */
export interface TensorExtent {
  readonly name: string;
  readonly dtype: Dtype;
  readonly offset: number;
  readonly length: number;
}

export type LayoutKind = 'safetensors' | 'torch-zip' | 'dcp-shard' | 'npy';

/** extents: sorted by offset, non-overlapping, inside the file. */
export interface FileLayout {
  readonly kind: LayoutKind;
  readonly extents: readonly TensorExtent[];
}

/**
 * What a format parser found: the layout and the size the file must have to be whole, or why the
 * file is damaged or incomplete.
 */
export type Parsed =
  | { readonly ok: true; readonly layout: FileLayout; readonly expectedSize: number }
  | { readonly ok: false; readonly kind: LayoutKind; readonly reason: string };

/** Bytes per element, for the dtypes with a fixed size. */
export const dtypeSize: Readonly<Record<Exclude<Dtype, 'unknown'>, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/**
 * Sorts extents by offset and checks they are non-overlapping and inside [0, limit); drops empty
 * ones. undefined when they overlap or leave the range.
 */
export function orderedExtents(extents: TensorExtent[], limit: number): TensorExtent[] | undefined {
  const sorted = extents.filter((e) => e.length > 0).sort((a, b) => a.offset - b.offset);
  let end = 0;
  for (const e of sorted) {
    if (e.offset < end || e.offset + e.length > limit) return undefined;
    end = e.offset + e.length;
  }
  return sorted;
}
