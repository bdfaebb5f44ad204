// GGUF v3 exporter for the synthetic Llama models (config.json + safetensors + tokenizer.json), so llama.cpp runs the
// very same weights as our engine (bench engine --vs llama.cpp).
//
// GGUF v3 layout (ggml docs/gguf.md), all little-endian:
//   "GGUF" u32 version=3, u64 tensor_count, u64 kv_count
//   kv_count x { string key, u32 value_type, value }            string = u64 byte length + UTF-8 bytes
//   tensor_count x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   zero padding to `general.alignment` (32), then the data section; every tensor's offset (relative to the data
//   section) is a multiple of the alignment.
// ne[0] is the contiguous dimension: a Hugging Face [out, in] row-major matrix is ne = [in, out] with the same bytes.
//
// RoPE: Hugging Face Llama rotates halves (dims i and i + d/2 form a pair); llama.cpp's LLM_ARCH_LLAMA uses the
// "normal" RoPE that rotates adjacent dims (2i, 2i + 1). llama.cpp's convert_hf_to_gguf.py therefore permutes the
// rows of q_proj (by H heads) and k_proj (by Hk heads): within each head, output row j*(d/2) + i moves to 2i + j.
// Done here in permuteRopeRows; without it llama.cpp would compute a different (but plausible-looking) model.
import { closeSync, existsSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';

export type GgufFloat = 'F32' | 'F16';
const GGML_TYPE = { F32: 0, F16: 1 } as const;
const GGML_BYTES = { F32: 4, F16: 2 } as const;
/** general.file_type: LLAMA_FTYPE_ALL_F32 = 0, LLAMA_FTYPE_MOSTLY_F16 = 1. */
const FILE_TYPE = { F32: 0, F16: 1 } as const;
export const GGUF_ALIGNMENT = 32;

// GGUF metadata value types
const T = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10, I64: 11, F64: 12 } as const;
// llama.cpp token types (llama_token_type)
const TOKEN_NORMAL = 1, TOKEN_CONTROL = 3, TOKEN_UNUSED = 5;

type MetaValue =
  | { type: 'u32'; v: number } | { type: 'i32'; v: number } | { type: 'f32'; v: number } | { type: 'bool'; v: boolean }
  | { type: 'string'; v: string } | { type: 'string[]'; v: string[] } | { type: 'i32[]'; v: number[] };

// ---- safetensors input (own minimal reader: bench code does not import tests/) ----

type StDtype = 'F32' | 'F16' | 'BF16';
interface StTensor { name: string; dtype: StDtype; shape: number[]; bytes: Buffer }
const ST_BYTES: Record<StDtype, number> = { F32: 4, F16: 2, BF16: 2 };

function readSafetensorsFile(file: string, out: Map<string, StTensor>): void {
  const buf = readFileSync(file);
  const fail = (msg: string): never => { throw new Error(`${file}: ${msg}`); };
  if (buf.length < 8) fail(`truncated: ${buf.length} bytes, no header length`);
  const n = Number(buf.readBigUInt64LE(0));
  if (8 + n > buf.length) fail(`header length ${n} exceeds the file (${buf.length} bytes)`);
  let header: Record<string, unknown> = {};
  try { header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>; } catch (e) {
    fail(`header is not valid JSON (${(e as Error).message})`);
  }
  const base = 8 + n;
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const t = raw as { dtype?: string; shape?: number[]; data_offsets?: number[] };
    if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16') fail(`tensor '${name}' has unsupported dtype ${JSON.stringify(t.dtype)}`);
    if (!Array.isArray(t.shape) || !Array.isArray(t.data_offsets) || t.data_offsets.length !== 2) fail(`tensor '${name}' lacks shape or data_offsets`);
    const dtype = t.dtype as StDtype;
    const count = t.shape!.reduce((a, b) => a * b, 1);
    const [begin, end] = t.data_offsets!;
    if (end - begin !== count * ST_BYTES[dtype]) fail(`tensor '${name}' has ${end - begin} bytes; shape [${t.shape!.join(', ')}] ${dtype} needs ${count * ST_BYTES[dtype]}`);
    if (base + end > buf.length) fail(`truncated: tensor '${name}' ends at byte ${base + end}, the file has ${buf.length}`);
    if (out.has(name)) fail(`tensor '${name}' appears in more than one file`);
    out.set(name, { name, dtype, shape: t.shape!, bytes: buf.subarray(base + begin, base + end) });
  }
}

function readModelDir(dir: string): Map<string, StTensor> {
  const out = new Map<string, StTensor>();
  const single = path.join(dir, 'model.safetensors');
  if (existsSync(single)) { readSafetensorsFile(single, out); return out; }
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  if (!existsSync(indexFile)) throw new Error(`${dir}: neither model.safetensors nor model.safetensors.index.json exists`);
  const index = JSON.parse(readFileSync(indexFile, 'utf8')) as { weight_map?: Record<string, string> };
  if (!index.weight_map) throw new Error(`${indexFile}: no weight_map`);
  for (const f of new Set(Object.values(index.weight_map))) readSafetensorsFile(path.join(dir, f), out);
  return out;
}

// ---- value conversion ----

function f16BitsToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Values of a safetensors tensor as float32 (exact for F32, F16 and BF16 sources). */
function toF32(t: StTensor): Float32Array {
  const n = t.bytes.length / ST_BYTES[t.dtype];
  const out = new Float32Array(n);
  if (t.dtype === 'F32') {
    new Uint8Array(out.buffer).set(t.bytes);
  } else if (t.dtype === 'F16') {
    for (let i = 0; i < n; i++) out[i] = f16BitsToNumber(t.bytes.readUInt16LE(2 * i));
  } else {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u[i] = t.bytes.readUInt16LE(2 * i) << 16;
  }
  return out;
}

/** The tensor's bytes as `to`: F16 -> F16 copies bits (so both engines run bit-identical weights); else round to nearest even. */
function encode(t: StTensor, to: GgufFloat): Buffer {
  if (to === 'F16' && t.dtype === 'F16') return Buffer.from(t.bytes);
  const f32 = toF32(t);
  if (to === 'F32') return Buffer.from(f32.buffer, f32.byteOffset, f32.byteLength);
  const h = new Float16Array(f32.length);
  h.set(f32);
  return Buffer.from(h.buffer, h.byteOffset, h.byteLength);
}

/**
 * convert_hf_to_gguf.py's LlamaModel.permute: rows [heads, 2, d/2] -> [heads, d/2, 2], i.e. within each head the
 * row j*(d/2) + i (j in {0,1}, i < d/2) moves to 2i + j. `data` is row-major [rows, rowBytes].
 */
export function permuteRopeRows(data: Buffer, rows: number, heads: number): Buffer {
  if (rows % heads !== 0 || (rows / heads) % 2 !== 0) throw new Error(`RoPE permutation: ${rows} rows do not split into ${heads} heads of even size`);
  const rowBytes = data.length / rows;
  const d = rows / heads, half = d / 2;
  const out = Buffer.alloc(data.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < half; i++) {
        const src = h * d + j * half + i, dst = h * d + 2 * i + j;
        data.copy(out, dst * rowBytes, src * rowBytes, (src + 1) * rowBytes);
      }
    }
  }
  return out;
}

// ---- config and tokenizer ----

export interface LlamaHparams {
  L: number; D: number; H: number; Hk: number; d: number; F: number; V: number;
  contextLength: number; ropeTheta: number; rmsEps: number; tied: boolean; bosId: number; eosId: number;
}

function readHparams(dir: string): LlamaHparams {
  const file = path.join(dir, 'config.json');
  if (!existsSync(file)) throw new Error(`${dir}: config.json is missing`);
  const c = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  const fail = (msg: string): never => { throw new Error(`${file}: ${msg}`); };
  const arch = Array.isArray(c.architectures) ? c.architectures[0] : undefined;
  if (arch !== 'LlamaForCausalLM' && arch !== 'MistralForCausalLM') fail(`architectures ${JSON.stringify(c.architectures)}: the GGUF exporter writes Llama only`);
  if (c.attention_bias === true) fail(`attention_bias true is not supported by the GGUF exporter`);
  if (c.rope_scaling != null) fail(`rope_scaling ${JSON.stringify(c.rope_scaling)} is not supported by the GGUF exporter (needs rope_freqs)`);
  if (c.sliding_window != null) fail(`sliding_window ${JSON.stringify(c.sliding_window)} is not supported by the GGUF exporter`);
  const int = (k: string): number => {
    const v = c[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) fail(`field '${k}' must be a positive integer, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const num = (k: string, def?: number): number => {
    const v = c[k] ?? def;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`field '${k}' must be a positive number, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const H = int('num_attention_heads');
  const eos = Array.isArray(c.eos_token_id) ? c.eos_token_id[0] : c.eos_token_id;
  return {
    L: int('num_hidden_layers'), D: int('hidden_size'), H, Hk: (c.num_key_value_heads ?? H) as number,
    d: (c.head_dim ?? int('hidden_size') / H) as number, F: int('intermediate_size'), V: int('vocab_size'),
    contextLength: int('max_position_embeddings'), ropeTheta: num('rope_theta', 10000), rmsEps: num('rms_norm_eps'),
    tied: c.tie_word_embeddings === true, bosId: (c.bos_token_id ?? 0) as number, eosId: (eos ?? 1) as number,
  };
}

interface GgufVocab { tokens: string[]; types: number[]; merges: string[] }

/** tokens/token_type/merges for tokenizer.ggml.* from a byte-level BPE tokenizer.json, padded to V with unused tokens. */
function readVocab(dir: string, V: number): GgufVocab {
  const file = path.join(dir, 'tokenizer.json');
  if (!existsSync(file)) throw new Error(`${dir}: tokenizer.json is missing`);
  const tj = JSON.parse(readFileSync(file, 'utf8')) as {
    model?: { type?: string; vocab?: Record<string, number>; merges?: Array<string | [string, string]> };
    added_tokens?: Array<{ id: number; content: string; special?: boolean }>;
  };
  if (tj.model?.type !== 'BPE' || !tj.model.vocab) throw new Error(`${file}: model.type must be "BPE" with a vocab, got ${JSON.stringify(tj.model?.type)}`);
  const tokens: (string | undefined)[] = new Array(V);
  const types = new Array<number>(V).fill(TOKEN_NORMAL);
  const put = (tok: string, id: number, special: boolean): void => {
    if (!Number.isInteger(id) || id < 0 || id >= V) throw new Error(`${file}: token ${JSON.stringify(tok)} has id ${id}, outside the model's vocab_size ${V}`);
    if (tokens[id] !== undefined && tokens[id] !== tok) throw new Error(`${file}: id ${id} is both ${JSON.stringify(tokens[id])} and ${JSON.stringify(tok)}`);
    tokens[id] = tok;
    if (special) types[id] = TOKEN_CONTROL;
  };
  for (const [tok, id] of Object.entries(tj.model.vocab)) put(tok, id, false);
  for (const a of tj.added_tokens ?? []) put(a.content, a.id, a.special !== false);
  // ids the tokenizer never produces still need a (unique) token text in GGUF
  for (let i = 0; i < V; i++) if (tokens[i] === undefined) { tokens[i] = `[PAD${i}]`; types[i] = TOKEN_UNUSED; }
  const merges = (tj.model.merges ?? []).map((m) => (Array.isArray(m) ? `${m[0]} ${m[1]}` : m));
  return { tokens: tokens as string[], types, merges };
}

// ---- writer ----

class ByteWriter {
  private chunks: Buffer[] = [];
  length = 0;
  private push(b: Buffer): void { this.chunks.push(b); this.length += b.length; }
  u32(v: number): void { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
  i32(v: number): void { const b = Buffer.alloc(4); b.writeInt32LE(v); this.push(b); }
  u64(v: number): void { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
  f32(v: number): void { const b = Buffer.alloc(4); b.writeFloatLE(v); this.push(b); }
  bool(v: boolean): void { this.push(Buffer.from([v ? 1 : 0])); }
  str(s: string): void { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.push(b); }
  raw(b: Buffer): void { this.push(b); }
  pad(align: number): void { const p = (align - (this.length % align)) % align; if (p) this.push(Buffer.alloc(p)); }
  buffer(): Buffer { return Buffer.concat(this.chunks, this.length); }
}

function writeMeta(w: ByteWriter, key: string, m: MetaValue): void {
  w.str(key);
  switch (m.type) {
    case 'u32': w.u32(T.U32); w.u32(m.v); break;
    case 'i32': w.u32(T.I32); w.i32(m.v); break;
    case 'f32': w.u32(T.F32); w.f32(m.v); break;
    case 'bool': w.u32(T.BOOL); w.bool(m.v); break;
    case 'string': w.u32(T.STRING); w.str(m.v); break;
    case 'string[]': w.u32(T.ARRAY); w.u32(T.STRING); w.u64(m.v.length); for (const s of m.v) w.str(s); break;
    case 'i32[]': w.u32(T.ARRAY); w.u32(T.I32); w.u64(m.v.length); for (const x of m.v) w.i32(x); break;
  }
}

export interface GgufExportOptions {
  /** Model directory: config.json, model.safetensors (or shards + index), tokenizer.json. */
  dir: string;
  /** Output .gguf file; written to a temporary name and renamed, so it appears complete or not at all. */
  out: string;
  /** Matrix dtype. Norm weights are always F32 (llama.cpp's convert script keeps 1-D tensors in F32). */
  dtype: GgufFloat;
  name?: string;
  /**
   * Permute q/k rows for llama.cpp's RoPE (default true). false writes a file llama.cpp runs as a different model:
   * only the negative control in tests/bench/gguf.test.ts uses it, to prove the agreement test can fail.
   */
  ropePermutation?: boolean;
}

export interface GgufExportResult {
  file: string; dtype: GgufFloat; hparams: LlamaHparams; tensors: number;
  /** Bytes of tensor data (llama.cpp's weight bytes, without padding). */
  weightBytes: number;
  fileBytes: number;
}

interface OutTensor { name: string; ne: number[]; type: GgufFloat; data: () => Buffer; bytes: number }

export function exportGguf(opts: GgufExportOptions): GgufExportResult {
  const hp = readHparams(opts.dir);
  const { L, D, H, Hk, d, F, V } = hp;
  const st = readModelDir(opts.dir);
  const vocab = readVocab(opts.dir, V);

  const used = new Set<string>();
  const get = (name: string, shape: number[]): StTensor => {
    const t = st.get(name);
    if (!t) throw new Error(`${opts.dir}: tensor '${name}' is missing`);
    if (t.shape.length !== shape.length || t.shape.some((x, i) => x !== shape[i])) {
      throw new Error(`${opts.dir}: tensor '${name}' has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    used.add(name);
    return t;
  };
  const tensors: OutTensor[] = [];
  // a matrix [out, in] in the chosen dtype (ne = [in, out]); `ropeHeads` permutes its rows for llama.cpp's RoPE
  const permute = opts.ropePermutation !== false;
  const mat = (gguf: string, hf: string, rows: number, cols: number, ropeHeads?: number): void => {
    const t = get(hf, [rows, cols]);
    const type = opts.dtype;
    tensors.push({ name: gguf, ne: [cols, rows], type, bytes: rows * cols * GGML_BYTES[type], data: () => {
      const b = encode(t, type);
      return ropeHeads && permute ? permuteRopeRows(b, rows, ropeHeads) : b;
    } });
  };
  const vec = (gguf: string, hf: string, n: number): void => {
    const t = get(hf, [n]);
    tensors.push({ name: gguf, ne: [n], type: 'F32', bytes: n * 4, data: () => encode(t, 'F32') });
  };

  mat('token_embd.weight', 'model.embed_tokens.weight', V, D);
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}.`;
    vec(`blk.${i}.attn_norm.weight`, `${p}input_layernorm.weight`, D);
    mat(`blk.${i}.attn_q.weight`, `${p}self_attn.q_proj.weight`, H * d, D, H);
    mat(`blk.${i}.attn_k.weight`, `${p}self_attn.k_proj.weight`, Hk * d, D, Hk);
    mat(`blk.${i}.attn_v.weight`, `${p}self_attn.v_proj.weight`, Hk * d, D);
    mat(`blk.${i}.attn_output.weight`, `${p}self_attn.o_proj.weight`, D, H * d);
    vec(`blk.${i}.ffn_norm.weight`, `${p}post_attention_layernorm.weight`, D);
    mat(`blk.${i}.ffn_gate.weight`, `${p}mlp.gate_proj.weight`, F, D);
    mat(`blk.${i}.ffn_up.weight`, `${p}mlp.up_proj.weight`, F, D);
    mat(`blk.${i}.ffn_down.weight`, `${p}mlp.down_proj.weight`, D, F);
  }
  vec('output_norm.weight', 'model.norm.weight', D);
  // tied embeddings: llama.cpp falls back to token_embd when output.weight is absent
  if (!hp.tied) mat('output.weight', 'lm_head.weight', V, D);
  const unused = [...st.keys()].filter((k) => !used.has(k));
  if (unused.length) throw new Error(`${opts.dir}: tensors the Llama exporter does not know: ${unused.slice(0, 5).join(', ')}${unused.length > 5 ? ', ...' : ''}`);

  const meta: Array<[string, MetaValue]> = [
    ['general.architecture', { type: 'string', v: 'llama' }],
    ['general.name', { type: 'string', v: opts.name ?? path.basename(path.resolve(opts.dir)) }],
    ['general.file_type', { type: 'u32', v: FILE_TYPE[opts.dtype] }],
    ['general.alignment', { type: 'u32', v: GGUF_ALIGNMENT }],
    ['llama.vocab_size', { type: 'u32', v: V }],
    ['llama.context_length', { type: 'u32', v: hp.contextLength }],
    ['llama.embedding_length', { type: 'u32', v: D }],
    ['llama.block_count', { type: 'u32', v: L }],
    ['llama.feed_forward_length', { type: 'u32', v: F }],
    ['llama.attention.head_count', { type: 'u32', v: H }],
    ['llama.attention.head_count_kv', { type: 'u32', v: Hk }],
    ['llama.attention.key_length', { type: 'u32', v: d }],
    ['llama.attention.value_length', { type: 'u32', v: d }],
    ['llama.rope.freq_base', { type: 'f32', v: hp.ropeTheta }],
    ['llama.rope.dimension_count', { type: 'u32', v: d }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', v: hp.rmsEps }],
    ['tokenizer.ggml.model', { type: 'string', v: 'gpt2' }],
    ['tokenizer.ggml.pre', { type: 'string', v: 'default' }],
    ['tokenizer.ggml.tokens', { type: 'string[]', v: vocab.tokens }],
    ['tokenizer.ggml.token_type', { type: 'i32[]', v: vocab.types }],
    ['tokenizer.ggml.merges', { type: 'string[]', v: vocab.merges }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', v: hp.bosId }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', v: hp.eosId }],
    ['tokenizer.ggml.add_bos_token', { type: 'bool', v: true }],
    ['tokenizer.ggml.add_eos_token', { type: 'bool', v: false }],
  ];

  const w = new ByteWriter();
  w.raw(Buffer.from('GGUF', 'ascii'));
  w.u32(3);
  w.u64(tensors.length);
  w.u64(meta.length);
  for (const [k, v] of meta) writeMeta(w, k, v);
  const offsets: number[] = [];
  let off = 0;
  for (const t of tensors) {
    offsets.push(off);
    off += t.bytes;
    off += (GGUF_ALIGNMENT - (off % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
  }
  tensors.forEach((t, i) => {
    w.str(t.name);
    w.u32(t.ne.length);
    for (const x of t.ne) w.u64(x);
    w.u32(GGML_TYPE[t.type]);
    w.u64(offsets[i]);
  });
  w.pad(GGUF_ALIGNMENT);
  const head = w.buffer();

  const file = path.resolve(opts.out);
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = openSync(tmp, 'w');
  try {
    writeFull(fd, head, 0);
    tensors.forEach((t, i) => {
      const b = t.data();
      if (b.length !== t.bytes) throw new Error(`GGUF exporter: tensor '${t.name}' encoded to ${b.length} bytes, expected ${t.bytes} (a bug)`);
      writeFull(fd, b, head.length + offsets[i]);
    });
    // the data section ends padded too, so the file size is head + aligned data
    const end = head.length + off;
    const last = head.length + offsets[offsets.length - 1] + tensors[tensors.length - 1].bytes;
    if (end > last) writeFull(fd, Buffer.alloc(end - last), last);
    closeSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  renameSync(tmp, file);
  return { file, dtype: opts.dtype, hparams: hp, tensors: tensors.length,
    weightBytes: tensors.reduce((a, t) => a + t.bytes, 0), fileBytes: head.length + off };
}

function writeFull(fd: number, b: Buffer, pos: number): void {
  let done = 0;
  while (done < b.length) done += writeSync(fd, b, done, b.length - done, pos + done);
}
