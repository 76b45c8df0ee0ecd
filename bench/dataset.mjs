#!/usr/bin/env node
// Reproducible, checkpoint-shaped benchmark data (see bench/README.md).
//
//   node bench/dataset.mjs [--scale S] [--versions N] [--drift D] [--seed X] [--dir DIR]
//   node bench/dataset.mjs --small-files N [--seed X] [--dir DIR]
//
// --scale S: one version is about S GiB (default 1). Versions are generated into
// DIR/<hash of the parameters>/v1..vN (DIR defaults to bench/.data) and reused when already there;
// the path of each version is printed. Generation writes a finished version under a temporary name
// and renames it, so an interrupted run never leaves a half version that looks complete.
//
// --drift D: how far a trained tensor moves from one version to the next, as a trainer moves it
// (default 0.005, a fine-tuning run; see "Changed tensors" below and bench/README.md).
//
// Each version holds:
//   full/model.pt, full/optim.pt        torch.save archives (ckpt-formats.mjs): fp32 ~N(0, 0.02)
//                                       weights, Adam moments; all change each version
//   export/model-bf16.safetensors       a bf16 export of fp32 weights (safetensors): the top 16 bits
//                                       of this version's weights
//   frozen/model.safetensors            bf16 safetensors; the backbone (~75% of the bytes) is the same
//                                       in every version, adapters and the head change
//   dcp/__0_0.distcp, dcp/__1_0.distcp  a two-rank torch.distributed.checkpoint (each tensor a
//                                       torch.save archive in its rank's file); ~85% changes
//   dcp/.metadata                       the pickled Metadata (written last); changes
//   misc/                               ~2000 files of 1–16 KiB (configs, logs, tokenizer pieces);
//                                       ~3% change per version, the rest are hard links to the
//                                       previous version's file (same inode, same mtime)
//
// Random bytes come from AES-256-CTR keystreams keyed by SHA-256(seed, label): a seeded PRNG that
// runs at GB/s. Each tensor has its own label, so a tensor that does not change between versions is
// byte-identical wherever it lands. Float tensors are shaped from the keystream in place: sign and
// mantissa random, exponent drawn from the exponent distribution of the target normal law, which is
// what makes real fp32/bf16 checkpoints compress by ~10% / ~30% with zstd.
//
// Changed tensors evolve from their previous version as training evolves them, version by version
// from version 1 (each step has its own keystream, so version v is the same whoever generates it):
//   weights      w_v = w_{v-1} + D·0.02·N(0,1)       (a random walk: each weight moves by about D
//                                                    times the weights' scale per version)
//   exp_avg      m_v = a·m_{v-1} + √(1−a²)·fresh     a = β1^K, β1 = 0.9
//   exp_avg_sq   s_v = b·s_{v-1} + (1−b)·fresh²      b = β2^K, β2 = 0.999
// with K = 100 optimizer steps between checkpoints: Adam's first moment is then all new (a ≈ 3e-5),
// the second keeps ~90% of its previous value. bf16 tensors (the export, adapters, the head) are the
// top 16 bits of such fp32 values. N(0,1) comes from a 64Ki-entry quantile table indexed by
// keystream bits, so generation stays a few passes over memory per step.
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Pickler, dcpMetadata, orderedDict, tensorBytes, tensorRef, writeTorchArchive } from './ckpt-formats.mjs';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const BLOCK = 16 * MiB;
/** Bumped whenever the generator's output changes, so old caches are not reused. */
const GENERATOR_VERSION = 5;
export const DEFAULT_DRIFT = 0.005;
/** Optimizer steps between two checkpoints, and Adam's betas (the moments' EMAs over them). */
const STEPS_PER_VERSION = 100;
const ADAM_M_KEEP = 0.9 ** STEPS_PER_VERSION;
const ADAM_SQ_KEEP = 0.999 ** STEPS_PER_VERSION;
const WEIGHT_SCALE = 0.02;
export const DEFAULT_DATA_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '.data');

// ---------------------------------------------------------------- random streams

const ZERO = Buffer.alloc(BLOCK);

/** A seeded keystream: `next(n)` returns the next n (≤ BLOCK) pseudo-random bytes. */
class Stream {
  constructor(seed, label) {
    const key = createHash('sha256').update(`${seed}\0${label}`).digest();
    this.cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  }
  next(n) {
    if (n > BLOCK) throw new Error('Stream.next: n > BLOCK');
    const b = this.cipher.update(n === BLOCK ? ZERO : ZERO.subarray(0, n));
    // Small outputs may be slices of Node's shared pool at any offset: typed-array views need
    // an aligned start.
    if (b.byteOffset % 8 === 0) return b;
    const c = Buffer.from(new ArrayBuffer(n));
    b.copy(c);
    return c;
  }
}

/** Small fast PRNG (splitmix32) for structure decisions (sizes, which files change, words). */
function splitmix32(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

function seedInt(...parts) {
  return createHash('sha256').update(parts.join('\0')).digest().readUInt32LE(0);
}

// ---------------------------------------------------------------- float shaping

/** Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9). */
function normInv(p) {
  const a = [-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716, 2.506628277459239];
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572];
  const c = [-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const pl = 0.02425;
  if (p < pl) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  if (p > 1 - pl) return -normInv(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/**
 * 256 biased exponents (IEEE single) drawn at the quantiles of |X|, X ~ N(0, sigma) — or of X²
 * when `squared` (Adam's second moment: positive, tiny, wide range).
 */
function exponentTable(sigma, squared = false) {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const p = (i + 0.5) / 256;
    let x = sigma * normInv((1 + p) / 2);
    if (squared) x = x * x;
    t[i] = Math.max(1, Math.min(254, Math.floor(Math.log2(x)) + 127));
  }
  return t;
}

const KIND_TABLES = new Map();
function kindTable(kind) {
  let t = KIND_TABLES.get(kind);
  if (!t) {
    const exps = kind === 'adam_sq' ? exponentTable(1e-3, true) : kind === 'adam_m' ? exponentTable(1e-3) : exponentTable(0.02);
    t = { f32: new Uint32Array(256), bf16: new Uint16Array(256), positive: kind === 'adam_sq' };
    for (let i = 0; i < 256; i++) {
      t.f32[i] = exps[i] << 23;
      t.bf16[i] = exps[i] << 7;
    }
    KIND_TABLES.set(kind, t);
  }
  return t;
}

/** Turn random bytes (length a multiple of 4) into fp32 or bf16 values of the given kind, in place. */
function shape(buf, dtype, kind) {
  if (buf.byteOffset % 4 !== 0) throw new Error('shape: unaligned buffer');
  const t = kindTable(kind);
  if (dtype === 'F32') {
    const w = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
    const tab = t.f32;
    const keep = t.positive ? 0x007fffff : 0x807fffff;
    for (let i = 0; i < w.length; i++) {
      const x = w[i];
      w[i] = (x & keep) | tab[(x >>> 23) & 0xff];
    }
  } else {
    const h = new Uint16Array(buf.buffer, buf.byteOffset, buf.length >>> 1);
    const tab = t.bf16;
    const keep = t.positive ? 0x007f : 0x807f;
    for (let i = 0; i < h.length; i++) {
      const x = h[i];
      h[i] = (x & keep) | tab[(x >>> 7) & 0xff];
    }
  }
}

/** The block evolvingFloats computes in (its callers copy what they keep). */
const EVOLVING = new Float32Array(BLOCK / 4);

/** N(0,1) at the 65536 quantiles (i + 0.5) / 65536: a standard normal from 16 random bits. */
const NORMAL = Float32Array.from({ length: 65536 }, (_, i) => normInv((i + 0.5) / 65536));

/**
 * `n` bytes (a multiple of 4) of fp32 values of `kind` at `version`, evolved from version 1 as
 * "Changed tensors" above says, BLOCK by BLOCK; `write` gets each block (reused: copy to keep).
 */
function evolvingFloats(seed, label, version, kind, drift, n, write) {
  const first = new Stream(seed, `${label}:v1`);
  const steps = [];
  for (let s = 2; s <= version; s++) steps.push(new Stream(seed, `${label}:step${s}`));
  for (let left = n; left > 0; ) {
    const k = Math.min(left, BLOCK);
    const count = k / 4;
    const x = EVOLVING.subarray(0, count);
    const b = first.next(k);
    shape(b, 'F32', kind);
    x.set(new Float32Array(b.buffer, b.byteOffset, count));
    for (const stream of steps) {
      if (kind === 'weight') {
        // Two bytes per element: one normal deviate each.
        const bits = stream.next(2 * count);
        const noise = new Uint16Array(bits.buffer, bits.byteOffset, count);
        const step = drift * WEIGHT_SCALE;
        for (let i = 0; i < count; i++) x[i] += step * NORMAL[noise[i]];
      } else {
        const fresh = stream.next(k);
        shape(fresh, 'F32', kind);
        const f = new Float32Array(fresh.buffer, fresh.byteOffset, count);
        if (kind === 'adam_m') {
          const mix = Math.sqrt(1 - ADAM_M_KEEP * ADAM_M_KEEP);
          for (let i = 0; i < count; i++) x[i] = ADAM_M_KEEP * x[i] + mix * f[i];
        } else {
          for (let i = 0; i < count; i++) x[i] = ADAM_SQ_KEEP * x[i] + (1 - ADAM_SQ_KEEP) * f[i];
        }
      }
    }
    write(Buffer.from(EVOLVING.buffer, 0, k));
    left -= k;
  }
}

/** bf16 of fp32 bytes: the top 16 bits of each value, into a new buffer. */
function topHalves(fp32) {
  const words = new Uint16Array(fp32.buffer, fp32.byteOffset, fp32.length / 2);
  const bf16 = new Uint16Array(fp32.length / 4);
  for (let i = 0; i < bf16.length; i++) bf16[i] = words[2 * i + 1];
  return Buffer.from(bf16.buffer);
}

// ---------------------------------------------------------------- file writing

/** Buffered writer: collects small pieces, writes 16 MiB at a time. */
class Writer {
  constructor(file) {
    this.fd = fs.openSync(file, 'w');
    this.buf = Buffer.allocUnsafe(BLOCK);
    this.n = 0;
    this.size = 0;
  }
  write(bytes) {
    let off = 0;
    while (off < bytes.length) {
      const k = Math.min(bytes.length - off, BLOCK - this.n);
      bytes.copy(this.buf, this.n, off, off + k);
      this.n += k;
      off += k;
      if (this.n === BLOCK) this.flush();
    }
    this.size += bytes.length;
  }
  /** Write n bytes of tensor data from its own stream (through `write`, default this.write). */
  tensor(seed, label, dtype, kind, n, write = (b) => this.write(b)) {
    const s = new Stream(seed, label);
    for (let left = n; left > 0; ) {
      const k = Math.min(left, BLOCK);
      const b = s.next(k);
      shape(b, dtype, kind);
      write(b);
      left -= k;
    }
  }
  /** Write a tensor that evolves between versions (evolvingFloats), as F32 or BF16. */
  evolving(seed, label, version, dtype, kind, drift, n, write = (b) => this.write(b)) {
    if (dtype === 'F32') evolvingFloats(seed, label, version, kind, drift, n, write);
    else evolvingFloats(seed, label, version, kind, drift, 2 * n, (fp32) => write(topHalves(fp32)));
  }
  /** Overwrites bytes already written at file offset `offset` (a header field known only after its data). */
  patch(offset, bytes) {
    const buffered = this.size - this.n;
    if (offset >= buffered) bytes.copy(this.buf, offset - buffered);
    else fs.writeSync(this.fd, bytes, 0, bytes.length, offset);
  }
  flush() {
    let off = 0;
    while (off < this.n) off += fs.writeSync(this.fd, this.buf, off, this.n - off);
    this.n = 0;
  }
  close() {
    this.flush();
    fs.closeSync(this.fd);
  }
}

// ---------------------------------------------------------------- model shapes

/**
 * A transformer-like list of tensors of about `bytes` bytes: a hidden size d (power of two, chosen
 * for 8–64 layers), per layer qkv (3d²), out (d²), mlp up/down (4d² each) and two norms.
 */
function transformer(bytes, elemSize, prefix = '') {
  const perLayer = (d) => (12 * d * d + 2 * d) * elemSize;
  let d = 4096;
  while (d > 64 && bytes / perLayer(d) < 8) d /= 2;
  const layers = Math.max(1, Math.round(bytes / perLayer(d)));
  const tensors = [];
  for (let i = 0; i < layers; i++) {
    const p = `${prefix}layers.${i}.`;
    tensors.push({ name: `${p}attn.qkv.weight`, shape: [3 * d, d] });
    tensors.push({ name: `${p}attn.out.weight`, shape: [d, d] });
    tensors.push({ name: `${p}mlp.up.weight`, shape: [4 * d, d] });
    tensors.push({ name: `${p}mlp.down.weight`, shape: [d, 4 * d] });
    tensors.push({ name: `${p}norm1.weight`, shape: [d] });
    tensors.push({ name: `${p}norm2.weight`, shape: [d] });
  }
  return { d, layers, tensors };
}

const numel = (shape) => shape.reduce((a, b) => a * b, 1);

/**
 * A torch.save of a state dict of fp32 tensors (an OrderedDict name → tensor, as model.state_dict()
 * pickles), each tensor's storage an entry of its own.
 */
function writeTorchFile(file, seed, version, drift, tensors, kindOf) {
  const w = new Writer(file);
  const pickler = new Pickler();
  pickler.value(orderedDict(tensors.map((t, i) => [t.name, tensorRef(i, 'F32', t.shape)])));
  const storages = tensors.map((t, i) => ({ key: String(i), bytes: tensorBytes('F32', t.shape), tensor: t }));
  const label = file.split(path.sep).slice(-2).join('/');
  writeTorchArchive(w, pickler.bytes(), storages, (s, write) => w.evolving(seed, `${label}:${s.tensor.name}`, version, 'F32', kindOf(s.tensor), drift, s.bytes, write));
  w.close();
}

// ---------------------------------------------------------------- the four parts

function writeFull(dir, seed, version, drift, bytes) {
  fs.mkdirSync(path.join(dir, 'full'), { recursive: true });
  const { tensors } = transformer(bytes / 3, 4, 'model.');
  writeTorchFile(path.join(dir, 'full', 'model.pt'), seed, version, drift, tensors, () => 'weight');
  const optim = [];
  for (const t of tensors) {
    optim.push({ name: `state.${t.name}.exp_avg`, shape: t.shape, kind: 'adam_m' });
    optim.push({ name: `state.${t.name}.exp_avg_sq`, shape: t.shape, kind: 'adam_sq' });
  }
  writeTorchFile(path.join(dir, 'full', 'optim.pt'), seed, version, drift, optim, (t) => t.kind);
}

function writeFrozen(dir, seed, version, drift, bytes) {
  fs.mkdirSync(path.join(dir, 'frozen'), { recursive: true });
  // ~75% backbone (frozen), ~5% adapters interleaved with it, ~20% head at the end.
  const { d, layers, tensors: backbone } = transformer(bytes * 0.75, 2, 'backbone.');
  const tensors = backbone.map((t) => ({ ...t, frozen: true }));
  const r = Math.max(8, Math.round((bytes * 0.05) / (layers * 2 * 2 * d)));
  for (let i = 0; i < layers; i++) {
    tensors.push({ name: `backbone.layers.${i}.adapter.down.weight`, shape: [r, d], frozen: false });
    tensors.push({ name: `backbone.layers.${i}.adapter.up.weight`, shape: [d, r], frozen: false });
  }
  const headRows = Math.max(1, Math.round((bytes * 0.2) / (2 * d * 2)));
  tensors.push({ name: 'head.proj.weight', shape: [headRows, d], frozen: false });
  tensors.push({ name: 'head.out.weight', shape: [headRows, d], frozen: false });
  tensors.push({ name: 'head.norm.weight', shape: [d], frozen: false });
  writeBf16Safetensors(path.join(dir, 'frozen', 'model.safetensors'), tensors, (w, t) =>
    t.frozen
      ? w.tensor(seed, `frozen:${t.name}:v0`, 'BF16', 'weight', numel(t.shape) * 2)
      : w.evolving(seed, `frozen:${t.name}`, version, 'BF16', 'weight', drift, numel(t.shape) * 2),
  );
}

/** A safetensors file of bf16 tensors, sorted by name (as the library writes them); `data(w, t)` writes each one's bytes. */
function writeBf16Safetensors(file, tensors, data) {
  tensors.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const t of tensors) {
    const n = numel(t.shape) * 2;
    header[t.name] = { dtype: 'BF16', shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const w = new Writer(file);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  w.write(len);
  w.write(Buffer.from(json));
  for (const t of tensors) data(w, t);
  w.close();
}

/** A bf16 export of this version's fp32 weights: each value's top 16 bits. */
function writeExport(dir, seed, version, drift, bytes) {
  fs.mkdirSync(path.join(dir, 'export'), { recursive: true });
  const { tensors } = transformer(bytes, 2, 'model.');
  writeBf16Safetensors(path.join(dir, 'export', 'model-bf16.safetensors'), tensors, (w, t) =>
    w.evolving(seed, `export:${t.name}`, version, 'BF16', 'weight', drift, numel(t.shape) * 2),
  );
}

function writeDcp(dir, seed, version, drift, bytes) {
  fs.mkdirSync(path.join(dir, 'dcp'), { recursive: true });
  // Each rank holds half of the model and its Adam state; ~15% of it (embeddings, frozen layers)
  // does not change between versions.
  // FileSystemWriter: each tensor item is a whole torch.save archive of that tensor, appended to
  // its rank's file; the coordinator pickles the Metadata last.
  const items = [];
  for (const rank of [0, 1]) {
    const { tensors } = transformer(bytes / 2 / 3, 4, `rank${rank}.`);
    const relativePath = `__${rank}_0.distcp`;
    const w = new Writer(path.join(dir, 'dcp', relativePath));
    const rnd = splitmix32(seedInt(seed, 'dcp-frozen', rank));
    for (const t of tensors) {
      const frozen = rnd() < 0.15;
      for (const [suffix, kind] of [['', 'weight'], ['.exp_avg', 'adam_m'], ['.exp_avg_sq', 'adam_sq']]) {
        const fqn = `${t.name}${suffix}`;
        const offset = w.size;
        const pickler = new Pickler();
        pickler.value(tensorRef(0, 'F32', t.shape));
        const storage = { key: '0', bytes: tensorBytes('F32', t.shape) };
        writeTorchArchive(w, pickler.bytes(), [storage], (s, write) =>
          frozen ? w.tensor(seed, `dcp:${fqn}:v0`, 'F32', kind, s.bytes, write) : w.evolving(seed, `dcp:${fqn}`, version, 'F32', kind, drift, s.bytes, write),
        );
        items.push({ fqn, dtype: 'F32', shape: t.shape, relativePath, offset, length: w.size - offset });
      }
    }
    w.close();
  }
  fs.writeFileSync(path.join(dir, 'dcp', '.metadata'), dcpMetadata(items));
}

const WORDS = (
  'the model loss step epoch learning rate warmup decay batch size tokens gradient norm clip ' +
  'checkpoint save load shard rank world node gpu memory throughput sequence length attention ' +
  'layer head hidden vocab embedding optimizer adam beta weight bias dropout eval train validation ' +
  'accuracy perplexity scheduler cosine linear seed config data loader worker prefetch pin'
).split(' ');

function textOf(rnd, bytes, kind) {
  const parts = [];
  let n = 0;
  let line = 0;
  while (n < bytes) {
    let s;
    if (kind === 'log') {
      s = `[2026-11-25 01:${String(line % 60).padStart(2, '0')}:${String((line * 7) % 60).padStart(2, '0')}] INFO step=${line * 10} loss=${(2 + rnd()).toFixed(4)} lr=${(rnd() * 1e-4).toExponential(3)} `;
      for (let k = 0; k < 6; k++) s += WORDS[(rnd() * WORDS.length) | 0] + ' ';
      s += '\n';
    } else if (kind === 'json') {
      s = `  "${WORDS[(rnd() * WORDS.length) | 0]}_${line}": ${rnd() < 0.5 ? (rnd() * 1000).toFixed(3) : `"${WORDS[(rnd() * WORDS.length) | 0]}"`},\n`;
    } else {
      // tokenizer pieces: "piece<TAB>score"
      let p = '';
      const len = 1 + ((rnd() * 8) | 0);
      for (let k = 0; k < len; k++) p += String.fromCharCode(97 + ((rnd() * 26) | 0));
      s = `${p}\t${(-rnd() * 20).toFixed(5)}\n`;
    }
    parts.push(s);
    n += s.length;
    line++;
  }
  return parts.join('').slice(0, bytes);
}

/** The misc files: name, size and the version whose content it holds (its last change). */
function miscPlan(seed, version) {
  const rnd = splitmix32(seedInt(seed, 'misc-plan'));
  const files = [];
  const add = (name, kind, changeRate) => {
    const size = 1024 + ((rnd() * 15 * 1024) | 0);
    const s = seedInt(seed, 'misc-change', name);
    // The version of the last change: the highest v ≤ version at which this file changed.
    let last = 1;
    for (let v = 2; v <= version; v++) if (splitmix32(s + v)() < changeRate) last = v;
    files.push({ name, kind, size, last });
  };
  for (let i = 0; i < 40; i++) add(`configs/group${i % 4}/config_${i}.json`, 'json', 0.02);
  add('configs/trainer_state.json', 'json', 1);
  for (let i = 0; i < 300; i++) add(`logs/rank${i % 8}/train_${String(i).padStart(4, '0')}.log`, 'log', 0.08);
  for (let i = 0; i < 1660; i++) add(`tokenizer/pieces/${String(i >> 7).padStart(2, '0')}/piece_${String(i).padStart(5, '0')}.txt`, 'tok', 0);
  return files;
}

function writeMisc(dir, seed, version, prevDir) {
  for (const f of miscPlan(seed, version)) {
    const file = path.join(dir, 'misc', f.name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    if (prevDir && f.last < version) {
      // Unchanged since the previous version: the same file (as a trainer would leave it).
      fs.linkSync(path.join(prevDir, 'misc', f.name), file);
      continue;
    }
    const rnd = splitmix32(seedInt(seed, 'misc', f.name, f.last));
    fs.writeFileSync(file, textOf(rnd, f.size, f.kind));
  }
}

// ---------------------------------------------------------------- versions and cache

function paramsKey(p) {
  return createHash('sha256').update(JSON.stringify({ g: GENERATOR_VERSION, ...p })).digest('hex').slice(0, 12);
}

/**
 * Generate (or reuse) versions 1..versions of the checkpoint series at `scale` GiB per version.
 * Returns { root, versions: [dir of v1, …], bytes: [logical bytes of each], files: [file count of each] }.
 */
export function checkpointSeries({ scale = 1, versions = 4, drift = DEFAULT_DRIFT, seed = 'tender-bench', dataDir = DEFAULT_DATA_DIR, log = () => {} } = {}) {
  if (!(drift > 0)) throw new Error(`--drift must be a positive number, not ${drift}`);
  const root = path.join(dataDir, `ckpt-${paramsKey({ kind: 'ckpt', scale, seed, drift })}`);
  fs.mkdirSync(root, { recursive: true });
  fs.writeFileSync(path.join(root, 'params.json'), JSON.stringify({ generator: GENERATOR_VERSION, scale, seed, drift }) + '\n');
  const bytes = scale * GiB;
  const dirs = [];
  for (let v = 1; v <= versions; v++) {
    const dir = path.join(root, `v${v}`);
    if (!fs.existsSync(dir)) {
      const tmp = path.join(root, `.tmp-v${v}-${process.pid}`);
      fs.rmSync(tmp, { recursive: true, force: true });
      const t0 = performance.now();
      writeFull(tmp, seed, v, drift, bytes * 0.40);
      writeExport(tmp, seed, v, drift, bytes * 0.08);
      writeFrozen(tmp, seed, v, drift, bytes * 0.25);
      writeDcp(tmp, seed, v, drift, bytes * 0.25);
      writeMisc(tmp, seed, v, v > 1 ? path.join(root, `v${v - 1}`) : undefined);
      fs.renameSync(tmp, dir);
      const s = treeStats(dir);
      log(`generated ${dir}: ${s.files} files, ${(s.bytes / MiB).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s (${(s.bytes / 1e6 / ((performance.now() - t0) / 1000)).toFixed(0)} MB/s)`);
    }
    dirs.push(dir);
  }
  const stats = dirs.map(treeStats);
  return { root, versions: dirs, bytes: stats.map((s) => s.bytes), files: stats.map((s) => s.files) };
}

/** N tiny files (16–1024 bytes) in directories of 1000. Returns { dir, bytes, files }. */
export function smallFiles({ count = 1_000_000, seed = 'tender-bench', dataDir = DEFAULT_DATA_DIR, log = () => {} } = {}) {
  const root = path.join(dataDir, `small-${paramsKey({ kind: 'small', count, seed })}`);
  const dir = path.join(root, 'v1');
  if (!fs.existsSync(dir)) {
    fs.mkdirSync(root, { recursive: true });
    const tmp = path.join(root, `.tmp-${process.pid}`);
    fs.rmSync(tmp, { recursive: true, force: true });
    const t0 = performance.now();
    const rnd = splitmix32(seedInt(seed, 'small'));
    const pool = Buffer.from(textOf(splitmix32(seedInt(seed, 'small-text')), 1 << 20, 'log'));
    for (let i = 0; i < count; i++) {
      const sub = path.join(tmp, `d${String(Math.floor(i / 1000)).padStart(4, '0')}`);
      if (i % 1000 === 0) fs.mkdirSync(sub, { recursive: true });
      const size = 16 + ((rnd() * 1008) | 0);
      const off = (rnd() * (pool.length - size)) | 0;
      fs.writeFileSync(path.join(sub, `f${String(i).padStart(7, '0')}.txt`), pool.subarray(off, off + size));
      if (i % 100000 === 99999) log(`  ${i + 1} files…`);
    }
    fs.renameSync(tmp, dir);
    log(`generated ${dir}: ${count} files in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  const s = treeStats(dir);
  return { root, dir, bytes: s.bytes, files: s.files };
}

/** Regular files and their total size under dir. */
export function treeStats(dir) {
  let files = 0;
  let bytes = 0;
  let dirs = 0;
  const walk = (d) => {
    dirs++;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        files++;
        bytes += fs.lstatSync(p).size;
      }
    }
  };
  walk(dir);
  return { files, bytes, dirs };
}

// ---------------------------------------------------------------- CLI

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values: o } = parseArgs({
    options: {
      scale: { type: 'string', default: '1' },
      versions: { type: 'string', default: '4' },
      drift: { type: 'string', default: String(DEFAULT_DRIFT) },
      seed: { type: 'string', default: 'tender-bench' },
      dir: { type: 'string', default: DEFAULT_DATA_DIR },
      'small-files': { type: 'string' },
    },
  });
  const log = (m) => process.stderr.write(m + '\n');
  if (o['small-files'] !== undefined) {
    const r = smallFiles({ count: Number(o['small-files'] || 1_000_000), seed: o.seed, dataDir: o.dir, log });
    console.log(`${r.dir}\t${r.files} files\t${r.bytes} bytes`);
  } else {
    const r = checkpointSeries({ scale: Number(o.scale), versions: Number(o.versions), drift: Number(o.drift), seed: o.seed, dataDir: o.dir, log });
    r.versions.forEach((d, i) => console.log(`${d}\t${r.files[i]} files\t${r.bytes[i]} bytes`));
  }
}
