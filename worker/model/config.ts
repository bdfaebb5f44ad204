// Synthetic model presets and the config.json they produce, in the form transformers writes for
// LlamaForCausalLM (keys sorted, 2-space indent; transformers' to_json_string uses sort_keys=True).
import type { DtypeName } from './dtype.ts';
import { BOS_ID, EOS_ID } from './tokenizer.ts';

export type PresetName = 'tiny' | 'small' | 'hetero';
export const PRESET_NAMES: readonly PresetName[] = ['tiny', 'small', 'hetero'];

export interface Preset {
  L: number;   // num_hidden_layers
  D: number;   // hidden_size
  H: number;   // num_attention_heads
  Hk: number;  // num_key_value_heads
  d: number;   // head_dim
  F: number;   // intermediate_size
  V: number;   // vocab_size
  maxPos: number;
  ropeTheta: number;
  tied: boolean;
  defaultDtype: DtypeName;
}

export const PRESETS: Record<PresetName, Preset> = {
  // tests: every op exercised (GQA with G = 2, several heads, two layers), small enough for a float64 reference.
  tiny: { L: 2, D: 64, H: 4, Hk: 2, d: 16, F: 128, V: 512, maxPos: 8192, ropeTheta: 10000, tied: false, defaultDtype: 'f32' },
  // benchmarks: ~100.7M parameters; untied, so the lm_head matrix is real decode bandwidth as in 8B-class models.
  small: { L: 12, D: 768, H: 12, Hk: 4, d: 64, F: 2048, V: 16384, maxPos: 32768, ropeTheta: 500000, tied: false, defaultDtype: 'f16' },
  // compression quality: seeded random weights plus the attention structure of hetero.ts (heads that differ, and
  // whose favoured keys stay favoured); small enough for 4K-token prompts on 2 cores. f32 so the structure is exact.
  hetero: { L: 4, D: 256, H: 8, Hk: 4, d: 32, F: 512, V: 4096, maxPos: 8192, ropeTheta: 1e6, tied: false, defaultDtype: 'f32' },
};

/** A config.json object. Known fields are typed; overrides may add any other field. */
export interface HfConfig {
  architectures: string[];
  model_type: string;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  vocab_size: number;
  max_position_embeddings: number;
  rms_norm_eps: number;
  rope_theta: number;
  rope_scaling: Record<string, unknown> | null;
  tie_word_embeddings: boolean;
  bos_token_id: number;
  eos_token_id: number | number[];
  torch_dtype: string;
  hidden_act: string;
  attention_bias: boolean;
  [key: string]: unknown;
}

const MODEL_TYPES: Record<string, string> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};

export function presetConfig(p: Preset, torchDtype: string): HfConfig {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: BOS_ID,
    eos_token_id: EOS_ID,
    head_dim: p.d,
    hidden_act: 'silu',
    hidden_size: p.D,
    initializer_range: 0.02,
    intermediate_size: p.F,
    max_position_embeddings: p.maxPos,
    mlp_bias: false,
    num_attention_heads: p.H,
    num_hidden_layers: p.L,
    num_key_value_heads: p.Hk,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: null,
    rope_theta: p.ropeTheta,
    tie_word_embeddings: p.tied,
    torch_dtype: torchDtype,
    use_cache: true,
    vocab_size: p.V,
  };
}

/**
 * Applies overrides and checks the result can be generated. When overrides name another architecture but no
 * model_type, model_type follows the architecture (Mistral -> "mistral", Qwen2 -> "qwen2").
 */
export function applyOverrides(base: HfConfig, overrides: Record<string, unknown> = {}): HfConfig {
  const cfg = { ...base, ...overrides } as HfConfig;
  if (!Array.isArray(cfg.architectures) || cfg.architectures.length !== 1 || !(cfg.architectures[0] in MODEL_TYPES)) {
    throw new Error(`config field 'architectures' must be one of ${Object.keys(MODEL_TYPES).map((a) => `["${a}"]`).join(', ')}, got ${JSON.stringify(cfg.architectures)}`);
  }
  if (overrides.architectures !== undefined && overrides.model_type === undefined) {
    cfg.model_type = MODEL_TYPES[cfg.architectures[0]];
  }
  for (const k of ['hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
    'num_key_value_heads', 'head_dim', 'vocab_size', 'max_position_embeddings'] as const) {
    const v = cfg[k];
    if (!Number.isSafeInteger(v) || v <= 0) throw new Error(`config field '${k}' must be a positive integer, got ${JSON.stringify(v)}`);
  }
  if (cfg.num_attention_heads % cfg.num_key_value_heads !== 0) {
    throw new Error(`config field 'num_key_value_heads' (${cfg.num_key_value_heads}) must divide num_attention_heads (${cfg.num_attention_heads})`);
  }
  if (cfg.head_dim % 2 !== 0) throw new Error(`config field 'head_dim' must be even for RoPE, got ${cfg.head_dim}`);
  if (cfg.mlp_bias === true) throw new Error(`config field 'mlp_bias' true is not supported by the synthetic writer`);
  return cfg;
}

/** config.json text: keys sorted recursively, 2-space indent, trailing newline. */
export function configJsonText(cfg: HfConfig): string {
  return JSON.stringify(sortKeys(cfg), null, 2) + '\n';
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return Object.fromEntries(Object.keys(o).sort().map((k) => [k, sortKeys(o[k])]));
  }
  return v;
}
