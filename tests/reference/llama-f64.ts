// The float64 reference forward pass of the Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM),
// written to be obviously correct, not fast: full recomputation, plain loops, everything in float64.
// Independent of the engine: imports nothing from csrc/ or worker/ (its own config and safetensors readers).
//
// Letters: L layers, H query heads, Hk KV heads, G = H / Hk, d head dim, D model dim, F MLP dim, V vocab,
// n tokens. Weights are [out, in] row-major, as nn.Linear stores them; y = W x (+ b).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { readModelTensors, type RefTensor } from './safetensors-read.ts';

export interface RefConfig {
  arch: 'LlamaForCausalLM' | 'MistralForCausalLM' | 'Qwen2ForCausalLM';
  L: number; D: number; H: number; Hk: number; G: number; d: number; F: number; V: number;
  eps: number;
  invFreq: Float64Array;          // [d/2] RoPE inverse frequencies (after rope_scaling)
  tied: boolean;
  qkvBias: boolean;               // Qwen2, or Llama/Mistral attention_bias
  oBias: boolean;                 // Llama/Mistral attention_bias
  slidingWindow: number | null;   // Mistral: key j visible to query i iff 0 <= i - j < slidingWindow
  softcap: number | null;         // final_logit_softcapping: logits = c * tanh(logits / c)
}

const ARCHS = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'] as const;

/** RoPE scaling as in transformers' ROPE_INIT_FUNCTIONS: default, linear, llama3. */
export interface RopeScaling {
  rope_type?: string; type?: string; factor?: number;
  low_freq_factor?: number; high_freq_factor?: number; original_max_position_embeddings?: number;
}

/** inv_freq[i] = theta^(-2i/d), i < d/2, then rope_scaling applied (transformers' _compute_*_parameters). */
export function ropeInvFreq(d: number, theta: number, scaling: RopeScaling | null = null): Float64Array {
  const inv = new Float64Array(d / 2);
  for (let i = 0; i < d / 2; i++) inv[i] = 1 / theta ** ((2 * i) / d);
  const kind = scaling ? (scaling.rope_type ?? scaling.type ?? 'default') : 'default';
  if (kind === 'default') return inv;
  if (kind === 'linear') {
    for (let i = 0; i < inv.length; i++) inv[i] /= scaling!.factor!;
    return inv;
  }
  if (kind === 'llama3') {
    const { factor, low_freq_factor: lo, high_freq_factor: hi, original_max_position_embeddings: old } = scaling!;
    if (!(factor! > 0 && lo! > 0 && hi! > lo! && old! > 0)) throw new Error(`rope_scaling llama3 needs factor, low_freq_factor < high_freq_factor, original_max_position_embeddings: ${JSON.stringify(scaling)}`);
    const lowFreqWavelen = old! / lo!;    // longer wavelengths than this: divide the frequency by factor
    const highFreqWavelen = old! / hi!;   // shorter than this: unchanged
    for (let i = 0; i < inv.length; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      if (wavelen < highFreqWavelen) continue;
      if (wavelen > lowFreqWavelen) { inv[i] /= factor!; continue; }
      const smooth = (old! / wavelen - lo!) / (hi! - lo!);
      inv[i] = (1 - smooth) * (inv[i] / factor!) + smooth * inv[i];
    }
    return inv;
  }
  throw new Error(`rope_scaling type '${kind}' is not supported by the reference`);
}

export function parseRefConfig(json: Record<string, unknown>, file = 'config.json'): RefConfig {
  const fail = (msg: string): never => { throw new Error(`${file}: ${msg}`); };
  const int = (k: string, dflt?: number): number => {
    const v = json[k] ?? dflt;
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) fail(`field '${k}' must be a positive integer, got ${JSON.stringify(json[k])}`);
    return v as number;
  };
  const archs = json.architectures as string[] | undefined;
  const arch = archs?.[0] as RefConfig['arch'];
  if (!ARCHS.includes(arch)) fail(`architecture ${JSON.stringify(archs)} is not supported (${ARCHS.join(', ')})`);
  if ((json.hidden_act ?? 'silu') !== 'silu') fail(`hidden_act '${String(json.hidden_act)}' is not supported (silu only)`);
  if (json.mlp_bias === true) fail(`mlp_bias is not supported`);
  if (arch === 'Qwen2ForCausalLM' && json.use_sliding_window === true) fail(`Qwen2 use_sliding_window is not supported`);
  const D = int('hidden_size');
  const H = int('num_attention_heads');
  const Hk = int('num_key_value_heads', H);
  const d = json.head_dim == null ? D / H : int('head_dim');
  if (!Number.isInteger(d) || d % 2 !== 0) fail(`head_dim ${d} must be an even integer`);
  if (H % Hk !== 0) fail(`num_key_value_heads ${Hk} must divide num_attention_heads ${H}`);
  const theta = (json.rope_theta as number | undefined) ?? 10000;
  const sw = arch === 'MistralForCausalLM' ? (json.sliding_window as number | null | undefined) ?? null : null;
  return {
    arch, D, H, Hk, G: H / Hk, d,
    L: int('num_hidden_layers'), F: int('intermediate_size'), V: int('vocab_size'),
    eps: (json.rms_norm_eps as number | undefined) ?? 1e-6,
    invFreq: ropeInvFreq(d, theta, (json.rope_scaling as RopeScaling | null | undefined) ?? null),
    tied: json.tie_word_embeddings === true,
    qkvBias: arch === 'Qwen2ForCausalLM' || json.attention_bias === true,
    oBias: arch !== 'Qwen2ForCausalLM' && json.attention_bias === true,
    slidingWindow: sw,
    softcap: (json.final_logit_softcapping as number | null | undefined) ?? null,
  };
}

// ---- the ops, each small enough to check by hand ----

/** x * 1/sqrt(mean(x^2) + eps) * w. */
export function rmsNorm(x: ArrayLike<number>, w: ArrayLike<number>, eps: number): Float64Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const r = 1 / Math.sqrt(ss / x.length + eps);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * r * w[i];
  return out;
}

/** Rotate-half RoPE of one head vector [d] at position `pos`: pairs (i, i + d/2), angle pos * invFreq[i]. */
export function rope(x: ArrayLike<number>, pos: number, invFreq: ArrayLike<number>): Float64Array {
  const half = x.length / 2;
  const out = new Float64Array(x.length);
  for (let i = 0; i < half; i++) {
    const a = pos * invFreq[i];
    const c = Math.cos(a), s = Math.sin(a);
    out[i] = x[i] * c - x[i + half] * s;
    out[i + half] = x[i + half] * c + x[i] * s;
  }
  return out;
}

/** y = W x (+ b); W [rows, cols] row-major. */
export function matVec(W: ArrayLike<number>, rows: number, cols: number, x: ArrayLike<number>, b?: ArrayLike<number>): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = b ? b[r] : 0;
    for (let c = 0; c < cols; c++) s += W[r * cols + c] * x[c];
    y[r] = s;
  }
  return y;
}

export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * Causal GQA attention for all positions. q [n][H][d], k and v [n][Hk][d] (k already rotated);
 * query head h reads KV head floor(h / G). Returns the per-head outputs [n][H][d] and probabilities [n][H][n].
 */
export function attention(q: Float64Array[][], k: Float64Array[][], v: Float64Array[][],
    slidingWindow: number | null = null): { out: Float64Array[][]; probs: Float64Array[][] } {
  const n = q.length, H = q[0].length, Hk = k[0].length, d = q[0][0].length, G = H / Hk;
  const scale = 1 / Math.sqrt(d);
  const out: Float64Array[][] = [], probs: Float64Array[][] = [];
  for (let i = 0; i < n; i++) {
    out.push([]); probs.push([]);
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / G);
      const p = new Float64Array(n);   // [n], zero where masked
      const visible = (j: number) => j <= i && (slidingWindow === null || i - j < slidingWindow);
      let max = -Infinity;
      for (let j = 0; j < n; j++) {
        if (!visible(j)) continue;
        let s = 0;
        for (let t = 0; t < d; t++) s += q[i][h][t] * k[j][g][t];
        p[j] = s * scale;
        if (p[j] > max) max = p[j];
      }
      let z = 0;
      for (let j = 0; j < n; j++) if (visible(j)) { p[j] = Math.exp(p[j] - max); z += p[j]; }
      const o = new Float64Array(d);
      for (let j = 0; j < n; j++) {
        if (!visible(j)) continue;
        p[j] /= z;
        for (let t = 0; t < d; t++) o[t] += p[j] * v[j][g][t];
      }
      out[i].push(o); probs[i].push(p);
    }
  }
  return { out, probs };
}

// ---- the model ----

export interface Detailed {
  q: Float64Array[][][];        // [L][n][H] -> [d], after RoPE
  k: Float64Array[][][];        // [L][n][Hk] -> [d], after RoPE (what the cache holds)
  v: Float64Array[][][];        // [L][n][Hk] -> [d]
  attnHeads: Float64Array[][][]; // [L][n][H] -> [d], per-head attention output before o_proj
  attnProbs: Float64Array[][][]; // [L][n][H] -> [n], attention probabilities (0 where masked)
  attnOut: Float64Array[][];    // [L][n] -> [D], after o_proj (the layer's attention contribution)
  hidden: Float64Array[][];     // [L+1][n] -> [D], residual stream entering layer l (hidden[L]: before final norm)
  logits: Float64Array[];       // [n] -> [V]
}

export class ReferenceModel {
  readonly config: RefConfig;
  readonly dir: string;
  private readonly w: Map<string, RefTensor>;

  constructor(dir: string, config: RefConfig, tensors: Map<string, RefTensor>) {
    this.dir = dir; this.config = config; this.w = tensors;
    const { L, D, H, Hk, d, F, V } = config;
    const expect: Array<[string, number[]]> = [['model.embed_tokens.weight', [V, D]], ['model.norm.weight', [D]]];
    if (!config.tied) expect.push(['lm_head.weight', [V, D]]);
    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}.`;
      expect.push([`${p}input_layernorm.weight`, [D]], [`${p}post_attention_layernorm.weight`, [D]],
        [`${p}self_attn.q_proj.weight`, [H * d, D]], [`${p}self_attn.k_proj.weight`, [Hk * d, D]],
        [`${p}self_attn.v_proj.weight`, [Hk * d, D]], [`${p}self_attn.o_proj.weight`, [D, H * d]],
        [`${p}mlp.gate_proj.weight`, [F, D]], [`${p}mlp.up_proj.weight`, [F, D]], [`${p}mlp.down_proj.weight`, [D, F]]);
      if (config.qkvBias) {
        expect.push([`${p}self_attn.q_proj.bias`, [H * d]], [`${p}self_attn.k_proj.bias`, [Hk * d]], [`${p}self_attn.v_proj.bias`, [Hk * d]]);
      }
      if (config.oBias) expect.push([`${p}self_attn.o_proj.bias`, [D]]);
    }
    for (const [name, shape] of expect) {
      const t = tensors.get(name);
      if (!t) throw new Error(`${dir}: missing tensor '${name}'`);
      if (t.shape.join(',') !== shape.join(',')) throw new Error(`${dir}: tensor '${name}' has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
  }

  private t(name: string): Float32Array {
    const t = this.w.get(name);
    if (!t) throw new Error(`${this.dir}: missing tensor '${name}'`);
    return t.data;
  }

  /** Logits [V] for every position 0..n-1 of `tokens`. */
  logits(tokens: number[]): Float64Array[] {
    return this.forwardDetailed(tokens).logits;
  }

  /** The whole forward pass, top to bottom, keeping every intermediate the compression tests need. */
  forwardDetailed(tokens: number[]): Detailed {
    const c = this.config;
    const { L, D, H, Hk, d, F, V } = c;
    const n = tokens.length;
    if (n === 0) throw new Error('forward: no tokens');
    const embed = this.t('model.embed_tokens.weight');
    let x: Float64Array[] = tokens.map((tok, i) => {
      if (!Number.isInteger(tok) || tok < 0 || tok >= V) throw new Error(`forward: token ${i} = ${tok} is outside the vocabulary [0, ${V})`);
      return Float64Array.from(embed.subarray(tok * D, (tok + 1) * D));
    });
    const det: Detailed = { q: [], k: [], v: [], attnHeads: [], attnProbs: [], attnOut: [], hidden: [x], logits: [] };
    const split = (y: Float64Array, heads: number) => Array.from({ length: heads }, (_, h) => y.slice(h * d, (h + 1) * d));

    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}.`;
      const bias = (name: string) => (c.qkvBias ? this.t(`${p}self_attn.${name}.bias`) : undefined);
      // attention block
      const xn = x.map((xi) => rmsNorm(xi, this.t(`${p}input_layernorm.weight`), c.eps));
      const q = xn.map((xi, pos) => split(matVec(this.t(`${p}self_attn.q_proj.weight`), H * d, D, xi, bias('q_proj')), H)
        .map((qh) => rope(qh, pos, c.invFreq)));
      const k = xn.map((xi, pos) => split(matVec(this.t(`${p}self_attn.k_proj.weight`), Hk * d, D, xi, bias('k_proj')), Hk)
        .map((kh) => rope(kh, pos, c.invFreq)));
      const v = xn.map((xi) => split(matVec(this.t(`${p}self_attn.v_proj.weight`), Hk * d, D, xi, bias('v_proj')), Hk));
      const { out: heads, probs } = attention(q, k, v, c.slidingWindow);
      const oBias = c.oBias ? this.t(`${p}self_attn.o_proj.bias`) : undefined;
      const attnOut = heads.map((hs) => {
        const cat = new Float64Array(H * d);
        hs.forEach((o, h) => cat.set(o, h * d));
        return matVec(this.t(`${p}self_attn.o_proj.weight`), D, H * d, cat, oBias);
      });
      x = x.map((xi, i) => xi.map((e, j) => e + attnOut[i][j]));
      // MLP block: down(silu(gate x) * up x)
      const mlpOut = x.map((xi) => {
        const xm = rmsNorm(xi, this.t(`${p}post_attention_layernorm.weight`), c.eps);
        const g = matVec(this.t(`${p}mlp.gate_proj.weight`), F, D, xm);
        const u = matVec(this.t(`${p}mlp.up_proj.weight`), F, D, xm);
        const a = g.map((gi, j) => silu(gi) * u[j]);
        return matVec(this.t(`${p}mlp.down_proj.weight`), D, F, a);
      });
      x = x.map((xi, i) => xi.map((e, j) => e + mlpOut[i][j]));
      det.q.push(q); det.k.push(k); det.v.push(v); det.attnHeads.push(heads); det.attnProbs.push(probs);
      det.attnOut.push(attnOut); det.hidden.push(x);
    }
    const head = this.t(c.tied ? 'model.embed_tokens.weight' : 'lm_head.weight');
    det.logits = x.map((xi) => {
      const y = matVec(head, V, D, rmsNorm(xi, this.t('model.norm.weight'), c.eps));
      if (c.softcap !== null) for (let i = 0; i < V; i++) y[i] = c.softcap * Math.tanh(y[i] / c.softcap);
      return y;
    });
    return det;
  }
}

/** Loads config.json and the safetensors weights (single file or sharded) of a model directory. */
export function loadReference(dir: string): ReferenceModel {
  const file = path.join(dir, 'config.json');
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${file}: cannot read config (${(e as Error).message})`, { cause: e });
  }
  return new ReferenceModel(dir, parseRefConfig(json, file), readModelTensors(dir));
}

/** Softmax of logits in float64 (max-subtracted). */
export function softmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  const p = new Float64Array(logits.length);
  let z = 0;
  for (let i = 0; i < logits.length; i++) { p[i] = Math.exp(logits[i] - max); z += p[i]; }
  for (let i = 0; i < p.length; i++) p[i] /= z;
  return p;
}
