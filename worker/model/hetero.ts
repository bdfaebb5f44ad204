// The `hetero` preset's structure: a Llama model whose attention heads really differ, built into the weights so that
// what an observation window sees predicts later attention (design/ENGINE.md, "The hetero preset needs structure").
//
// Residual stream [D]: dimensions 0..K-1 are dedicated (K = 1 + number of subsets):
//   dim 0          c    = 1 in every token's embedding (the shared direction every query reads)
//   dim 1 + s      u_s  = strength r in [STRENGTH_MIN, 1] if the token belongs to salience subset s, else 0
// Invariant: no weight writes to the dedicated dimensions (o_proj and down_proj rows are zero there) and no weight
// other than the structured entries below reads them (columns zero in q/k/v/gate/up and lm_head), so they hold the
// embedding's values unchanged through every layer; each layer's input_layernorm weight there is that layer's
// expected residual rms (LAYER_GAIN), so after RMSNorm they are again ~c and ~r.
//
// Per layer l and KV head g: kappa_g, a seeded unit vector on RoPE's lowest-frequency pairs (the last KAPPA_PAIRS
// pairs of the head, i.e. dims d/2-p..d/2-1 and d-p..d-1 in rotate-half layout; with rope_theta 1e6 they turn by
// < 0.03 rad over 8K positions, so RoPE barely changes q.k there). Those head dims are reserved for the structure:
//   W_k[g, kappa dims, u_subset(g)] = kappa_g                  (salient tokens' keys point along kappa_g)
//   W_q[qh, kappa dims, c]          = boost * sqrt(d) * kappa_g (every query of the group points at kappa_g)
// and zero elsewhere in those rows. A salient key with strength r then gets a logit bonus ~ boost * r over ordinary
// keys, on top of the random part q_rand.k_rand / sqrt(d) from the other d - 2p dims, whose std is the head's
// `noise` (W_q's random rows are scaled by it). Sharp heads: large boost, ~1% subsets; broad heads: small boost,
// ~30% subsets, low noise.
//
// Prompts (heteroPrompt): the tokens of the sharp heads' subsets come in contiguous spans, not one by one.
// Decided from the design before measuring with it (issue 7; design/ENGINE.md "The hetero preset needs structure"):
// the preset exists to give the engine the attention structure of a real LLM, and the scoring ENGINE.md makes the
// default is SnapKV's, whose max pooling (kernel 7) keeps each high-scoring key together with its neighbours
// because in real text the keys a head favours cluster (multi-token names, numbers, phrases). The first prompts drew
// every token independently, so each favoured key of a sharp head stood alone: pooling then spent 6 of every 7 kept
// slots of a sharp head on keys with no attention, and inflated a sharp head's pooled scores ~7x against a broad
// head's (whose neighbours are salient for it ~30% of the time anyway), an artefact of the synthetic text that no
// real prompt has. Measured before this change (bench quality, 1 prompt, 16 steps, kernel 7 vs 1 as a diagnostic):
// SNAPKV error 0.24 -> 0.09 at B=256, i.e. pooling waste dominated every method's error.
// The rule, fixed once and the same for every method: filler tokens are drawn uniformly from the ids that belong to
// no sharp subset; a sharp subset s appears only in spans of SPAN_MIN..SPAN_MAX tokens (uniform; mean 4, a
// multi-token word or entity in BPE text) drawn from its members, round(fraction * n) of its tokens in all (its share
// of every prompt is exact, so a short prompt cannot lack a subset by chance), the spans and the filler tokens in a
// seeded random order. The broad subsets (25-30% of the vocabulary) stay spread through the filler as before:
// being everywhere is what makes a head broad. Nothing else about the model changes.
import type { HfConfig } from './config.ts';
import { Rng } from './prng.ts';

export interface HeteroSubset { name: string; fraction: number }
export interface HeteroHead { kind: 'sharp' | 'broad'; subset: number; boost: number; noise: number }

/** Shape of the preset (the structure below is laid out for exactly these; overrides of shape fields are refused). */
export const HETERO_SHAPE = { L: 4, D: 256, H: 8, Hk: 4, d: 32, F: 512, V: 4096 } as const;

/** Salience subsets: membership is Bernoulli(fraction) per vocabulary id >= 2 (BOS/EOS are never salient). */
export const HETERO_SUBSETS: readonly HeteroSubset[] = [
  { name: 'A', fraction: 0.01 },
  { name: 'B', fraction: 0.015 },
  { name: 'C', fraction: 0.01 },
  { name: 'D', fraction: 0.02 },
  { name: 'W1', fraction: 0.3 },
  { name: 'W2', fraction: 0.25 },
];

const sharp = (subset: number, boost: number): HeteroHead => ({ kind: 'sharp', subset, boost, noise: 1 });
const broad = (subset: number, boost: number): HeteroHead => ({ kind: 'broad', subset, boost, noise: 0.5 });

/** [L][Hk]: one broad head per layer at a different index, sharp heads on different subsets and scales. */
export const HETERO_HEADS: readonly (readonly HeteroHead[])[] = [
  [sharp(0, 10), sharp(1, 9), broad(4, 3), sharp(2, 11)],
  [broad(5, 3), sharp(3, 9), sharp(0, 11), sharp(1, 10)],
  [sharp(2, 10), sharp(3, 11), sharp(0, 9), broad(4, 3)],
  [sharp(1, 11), broad(5, 3), sharp(2, 9), sharp(3, 10)],
];

export const STRENGTH_MIN = 0.7;
/** Span lengths (tokens, inclusive) of the sharp subsets' tokens in heteroPrompt. */
export const SPAN_MIN = 2;
export const SPAN_MAX = 6;
export const KAPPA_PAIRS = 2;
/** Residual rms entering each layer, as measured by `kvfleet bench quality` (residualRms) on its 4K-token prompts. */
export const LAYER_GAIN: readonly number[] = [1, 1.18, 1.34, 1.54];

export const DEDICATED_DIMS = 1 + HETERO_SUBSETS.length;
const C_DIM = 0;
const subsetDim = (s: number) => 1 + s;

/** Everything that defines the structure, as the benchmark prints it. */
export function heteroParameters() {
  return { shape: HETERO_SHAPE, ropeTheta: 1e6, maxPositionEmbeddings: 8192, dedicatedDims: DEDICATED_DIMS,
    subsets: HETERO_SUBSETS, strengthMin: STRENGTH_MIN, kappaPairs: KAPPA_PAIRS, layerGain: LAYER_GAIN,
    heads: HETERO_HEADS, prompt: { sharpSubsetSpans: [SPAN_MIN, SPAN_MAX], sharpSubsets: sharpSubsets().map((i) => HETERO_SUBSETS[i].name) } };
}

/**
 * Salience strengths [S, V] (row s: 0 for non-members, r in [STRENGTH_MIN, 1] for members), from the model seed.
 * The benchmark uses the same function to describe its prompts.
 */
export function heteroSalience(seed: number, V: number): Float32Array[] {
  return HETERO_SUBSETS.map((sub, s) => {
    const rng = new Rng(seed, `hetero.subset.${s}`);
    const out = new Float32Array(V);
    for (let t = 0; t < V; t++) {
      const member = rng.nextU32() / 4294967296 < sub.fraction;
      const r = STRENGTH_MIN + (1 - STRENGTH_MIN) * (rng.nextU32() / 4294967296);
      if (t >= 2 && member) out[t] = r;
    }
    return out;
  });
}

/** Head dims of the kappa directions: the last KAPPA_PAIRS rotate-half pairs (lowest RoPE frequencies). */
export function kappaDims(d: number): number[] {
  const dims: number[] = [];
  for (let i = d / 2 - KAPPA_PAIRS; i < d / 2; i++) dims.push(i);
  for (let i = d - KAPPA_PAIRS; i < d; i++) dims.push(i);
  return dims;
}

function kappa(seed: number, l: number, g: number): Float64Array {
  const rng = new Rng(seed, `hetero.kappa.${l}.${g}`);
  const k = Float64Array.from({ length: 2 * KAPPA_PAIRS }, () => rng.nextNormal());
  const norm = Math.hypot(...k);
  return k.map((x) => x / norm);
}

/** Refuses config changes the structure is not laid out for. */
export function checkHeteroConfig(cfg: HfConfig): void {
  const want: Array<[keyof HfConfig, number]> = [['num_hidden_layers', HETERO_SHAPE.L], ['hidden_size', HETERO_SHAPE.D],
    ['num_attention_heads', HETERO_SHAPE.H], ['num_key_value_heads', HETERO_SHAPE.Hk], ['head_dim', HETERO_SHAPE.d],
    ['intermediate_size', HETERO_SHAPE.F], ['vocab_size', HETERO_SHAPE.V]];
  for (const [k, v] of want) {
    if (cfg[k] !== v) throw new Error(`preset hetero: config field '${k}' must stay ${v} (its structure is laid out for it), got ${JSON.stringify(cfg[k])}`);
  }
  if (cfg.architectures[0] !== 'LlamaForCausalLM' || cfg.attention_bias === true) {
    throw new Error(`preset hetero: only LlamaForCausalLM without attention_bias is supported, got ${JSON.stringify(cfg.architectures)}`);
  }
}

/**
 * Applies the structure to a tensor already filled with its seeded random init (`a`, row-major [out, in]).
 * Deterministic in (seed, name): like the random init, it does not depend on other tensors.
 */
export function structureTensor(a: Float32Array | Float16Array, name: string, seed: number, salience: () => Float32Array[]): void {
  const { D, H, Hk, d, V } = HETERO_SHAPE;
  const G = H / Hk;
  const K = DEDICATED_DIMS;
  const zeroCols = (rows: number, cols: number) => { for (let r = 0; r < rows; r++) for (let c = 0; c < K; c++) a[r * cols + c] = 0; };
  const zeroRows = (cols: number) => a.fill(0, 0, K * cols);
  if (name === 'model.embed_tokens.weight') {
    const sal = salience();
    for (let t = 0; t < V; t++) {
      a[t * D + C_DIM] = 1;
      for (let s = 0; s < sal.length; s++) a[t * D + subsetDim(s)] = sal[s][t];
    }
    return;
  }
  if (name === 'lm_head.weight') { zeroCols(V, D); return; }
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
  if (!m) return;   // model.norm.weight: unchanged
  const l = Number(m[1]);
  const heads = HETERO_HEADS[l];
  const kd = kappaDims(d);
  switch (m[2]) {
    case 'input_layernorm.weight':
      for (let c = 0; c < K; c++) a[c] = LAYER_GAIN[l];
      return;
    case 'self_attn.q_proj.weight':
      zeroCols(H * d, D);
      for (let qh = 0; qh < H; qh++) {
        const g = Math.floor(qh / G);
        const head = heads[g];
        for (let i = qh * d * D; i < (qh + 1) * d * D; i++) a[i] *= head.noise;
        const kap = kappa(seed, l, g);
        kd.forEach((j, idx) => {
          const row = (qh * d + j) * D;
          a.fill(0, row, row + D);
          a[row + C_DIM] = head.boost * Math.sqrt(d) * kap[idx];
        });
      }
      return;
    case 'self_attn.k_proj.weight':
      zeroCols(Hk * d, D);
      for (let g = 0; g < Hk; g++) {
        const kap = kappa(seed, l, g);
        kd.forEach((j, idx) => {
          const row = (g * d + j) * D;
          a.fill(0, row, row + D);
          a[row + subsetDim(heads[g].subset)] = kap[idx];
        });
      }
      return;
    case 'self_attn.v_proj.weight': zeroCols(Hk * d, D); return;
    case 'mlp.gate_proj.weight':
    case 'mlp.up_proj.weight': zeroCols(HETERO_SHAPE.F, D); return;
    case 'self_attn.o_proj.weight': zeroRows(H * d); return;
    case 'mlp.down_proj.weight': zeroRows(HETERO_SHAPE.F); return;
    default: return;   // post_attention_layernorm: gate/up ignore the dedicated dims anyway
  }
}

/** Indices of the subsets some sharp head favours (A..D), ascending. */
export function sharpSubsets(): number[] {
  return [...new Set(HETERO_HEADS.flat().filter((h) => h.kind === 'sharp').map((h) => h.subset))].sort((a, b) => a - b);
}

/**
 * A seeded prompt of n tokens for the model of seed `modelSeed` (see the header: sharp subsets in spans). Each sharp
 * subset s gets round(fraction_s * n) tokens, cut into spans of SPAN_MIN..SPAN_MAX tokens (the last one takes the
 * remainder); the other tokens are filler, uniform over 2..V-1 minus the sharp subsets' members; the spans and the
 * filler tokens are then put in a seeded random order (Fisher-Yates).
 */
export function heteroPrompt(n: number, seed: number, V: number = HETERO_SHAPE.V, modelSeed = 0): number[] {
  const sal = heteroSalience(modelSeed, V);
  const sharp = sharpSubsets();
  const filler: number[] = [];
  for (let t = 2; t < V; t++) if (sharp.every((s) => sal[s][t] === 0)) filler.push(t);
  const rng = new Rng(seed, 'hetero.prompt');
  const below = (k: number) => Math.floor((rng.nextU32() / 4294967296) * k);   // uniform in 0..k-1
  const items: number[][] = [];
  let spanTokens = 0;
  for (const s of sharp) {
    const members: number[] = [];
    for (let t = 2; t < V; t++) if (sal[s][t] > 0) members.push(t);
    let left = Math.round(HETERO_SUBSETS[s].fraction * n);
    while (left > 0) {
      const len = Math.min(left, SPAN_MIN + below(SPAN_MAX - SPAN_MIN + 1));
      items.push(Array.from({ length: len }, () => members[below(members.length)]));
      left -= len;
      spanTokens += len;
    }
  }
  if (spanTokens > n) throw new Error(`heteroPrompt: ${n} tokens cannot hold the sharp subsets' ${spanTokens}`);
  for (let i = spanTokens; i < n; i++) items.push([filler[below(filler.length)]]);
  for (let i = items.length - 1; i > 0; i--) {
    const j = below(i + 1);
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items.flat();
}
