/** Checkpoint files for tests, written as the libraries write them (tests only). */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gaussianBf16, gaussianFloats } from './floats.js';

export interface Tensor {
  name: string;
  dtype: 'F32' | 'BF16' | 'F16' | 'F64' | 'I64';
  shape: number[];
  data: Uint8Array;
}

/**
 * A safetensors file: u64le header length ‖ JSON header (padded with spaces to 8 bytes, as the
 * Python library does, unless `pad` is false) ‖ the tensors' bytes in order. `metadata` goes in
 * "__metadata__".
 */
export function safetensors(tensors: readonly Tensor[], metadata: Record<string, string> = {}, pad = true): Buffer {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.data.length] };
    at += t.data.length;
  }
  let json = JSON.stringify(header);
  if (pad) json += ' '.repeat((8 - (json.length % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([length, Buffer.from(json), ...tensors.map((t) => t.data)]);
}

export async function writeSafetensors(file: string, tensors: readonly Tensor[], metadata: Record<string, string> = {}, pad = true): Promise<void> {
  await writeFile(file, safetensors(tensors, metadata, pad));
}

/**
 * Version `v` (1, 2, …) of a small training run's checkpoint directory, written as a trainer
 * writes it (each changed file a new file renamed into place):
 * - full/model.safetensors, full/optim.safetensors: fp32 weights and Adam moments, all changed
 *   each version (weights drift by small steps);
 * - frozen/model.safetensors: a bf16 backbone that never changes, LoRA adapters that do;
 * - export/model-bf16.safetensors: a bf16 export of the full weights;
 * - misc/trainer_state.json.
 */
export async function writeCheckpointVersion(dir: string, v: number, scale = 1): Promise<void> {
  const n = Math.round(262_144 * scale);
  const weights = (name: string) => {
    const w = gaussianFloats(n, 0.02, hash(name));
    for (let step = 1; step < v; step++) {
      const delta = gaussianFloats(n, 0.0005, hash(`${name}/${step}`));
      for (let i = 0; i < n; i++) w[i]! += delta[i]!;
    }
    return w;
  };
  const f32 = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const layers = ['layers.0.attn', 'layers.0.mlp', 'layers.1.attn', 'layers.1.mlp'];
  const full = layers.map((l) => ({ name: `${l}.weight`, w: weights(l) }));
  const bias = (name: string): Tensor => ({ name, dtype: 'F32', shape: [64], data: f32(gaussianFloats(64, 0.01, hash(name) + v)) });
  const put = async (rel: string, content: Buffer) => {
    const file = path.join(dir, rel);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(`${file}.tmp`, content);
    await rename(`${file}.tmp`, file);
  };
  await put(
    'full/model.safetensors',
    safetensors([...full.flatMap((t) => [{ name: t.name, dtype: 'F32' as const, shape: [n], data: f32(t.w) }, bias(`${t.name}.bias`)])], { step: String(v * 100) }),
  );
  await put(
    'full/optim.safetensors',
    safetensors(
      full.flatMap((t) => {
        const m = gaussianFloats(n, 1e-4, hash(`${t.name}/m/${v}`));
        const s = gaussianFloats(n, 1e-4, hash(`${t.name}/s/${v}`)).map((x) => x * x);
        return [
          { name: `${t.name}.exp_avg`, dtype: 'F32' as const, shape: [n], data: f32(m) },
          { name: `${t.name}.exp_avg_sq`, dtype: 'F32' as const, shape: [n], data: f32(s) },
          { name: `${t.name}.step`, dtype: 'I64' as const, shape: [1], data: new Uint8Array(new BigInt64Array([BigInt(v * 100)]).buffer) },
        ];
      }),
    ),
  );
  const frozen: Tensor[] = [];
  for (const l of layers) {
    frozen.push({ name: `${l}.base`, dtype: 'BF16', shape: [n], data: gaussianBf16(gaussianFloats(n, 0.02, hash(`frozen/${l}`))) });
    frozen.push({ name: `${l}.lora_A`, dtype: 'BF16', shape: [8, 512], data: gaussianBf16(gaussianFloats(4096, 0.01, hash(`lora/${l}/${v}`))) });
  }
  await put('frozen/model.safetensors', safetensors(frozen, { adapter_step: String(v) }));
  await put('export/model-bf16.safetensors', safetensors(full.map((t) => ({ name: t.name, dtype: 'BF16', shape: [n], data: gaussianBf16(t.w) }))));
  await put('misc/trainer_state.json', Buffer.from(JSON.stringify({ global_step: v * 100, log_history: Array.from({ length: v }, (_, i) => ({ step: i, loss: 2 / (i + 1) })) })));
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}
