// `kvfleet synth-model`: real Hugging Face files, checked with an independent header parser, the reference
// reader and @huggingface/tokenizers.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnKvfleet } from './harness/proc.ts';
import { loadReference, softmax } from './reference/llama-f64.ts';
import { readModelTensors } from './reference/safetensors-read.ts';
import { presetConfig, PRESETS } from '../worker/model/config.ts';
import { buildTokenizer } from '../worker/model/tokenizer.ts';
import { modelTensors, writeSynthModel } from '../worker/model/synth.ts';

const tmp = mkdtempSync(path.join(tmpdir(), 'kvfleet-synth-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function cli(args: string[]): Promise<{ code: number | string; out: string }> {
  const p = spawnKvfleet(['synth-model', ...args]);
  const code = await p.exited();
  return { code, out: p.output() };
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

/** Parses a safetensors header from scratch and checks the format's invariants. */
function checkSafetensors(file: string): Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  expect((8 + n) % 8, 'data section 8-byte aligned').toBe(0);
  const text = buf.subarray(8, 8 + n).toString('utf8');
  expect(text.trimEnd().length + (text.length - text.trimEnd().length)).toBe(n);
  expect(/^ *$/.test(text.slice(text.trimEnd().length)), 'padding is spaces').toBe(true);
  const header = JSON.parse(text) as Record<string, unknown>;
  expect(header.__metadata__).toEqual({ format: 'pt' });
  const entries = Object.entries(header).filter(([k]) => k !== '__metadata__') as
    Array<[string, { dtype: string; shape: number[]; data_offsets: [number, number] }]>;
  const sorted = [...entries].sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
  let offset = 0;
  for (const [name, t] of sorted) {
    expect(t.data_offsets[0], `${name} starts where the previous tensor ended`).toBe(offset);
    expect(t.data_offsets[1] - t.data_offsets[0], `${name} size`).toBe(t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype]);
    offset = t.data_offsets[1];
  }
  expect(buf.length, 'file ends with the last tensor').toBe(8 + n + offset);
  return Object.fromEntries(entries);
}

function expectedShapes(c: { L: number; D: number; H: number; Hk: number; d: number; F: number; V: number; tied: boolean }): Record<string, number[]> {
  const s: Record<string, number[]> = { 'model.embed_tokens.weight': [c.V, c.D], 'model.norm.weight': [c.D] };
  if (!c.tied) s['lm_head.weight'] = [c.V, c.D];
  for (let i = 0; i < c.L; i++) {
    const p = `model.layers.${i}.`;
    Object.assign(s, {
      [`${p}input_layernorm.weight`]: [c.D], [`${p}post_attention_layernorm.weight`]: [c.D],
      [`${p}self_attn.q_proj.weight`]: [c.H * c.d, c.D], [`${p}self_attn.k_proj.weight`]: [c.Hk * c.d, c.D],
      [`${p}self_attn.v_proj.weight`]: [c.Hk * c.d, c.D], [`${p}self_attn.o_proj.weight`]: [c.D, c.H * c.d],
      [`${p}mlp.gate_proj.weight`]: [c.F, c.D], [`${p}mlp.up_proj.weight`]: [c.F, c.D], [`${p}mlp.down_proj.weight`]: [c.D, c.F],
    });
  }
  return s;
}

const TINY = { L: 2, D: 64, H: 4, Hk: 2, d: 16, F: 128, V: 512, tied: false };

describe('kvfleet synth-model --preset tiny', () => {
  const dir = path.join(tmp, 'tiny');
  let out = '';
  beforeAll(async () => {
    const r = await cli(['--out', dir, '--preset', 'tiny']);
    out = r.out;
    expect(r.code, r.out).toBe(0);
  });

  it('writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json and reports the size', () => {
    expect(readdirSync(dir).sort()).toEqual(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    expect(out).toMatch(/139584 parameters, f32/);
  });

  it('writes the config fields transformers writes for LlamaForCausalLM', () => {
    const c = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(c).toMatchObject({
      architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 64, intermediate_size: 128,
      num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, vocab_size: 512,
      max_position_embeddings: 8192, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false,
      bos_token_id: 0, eos_token_id: 1, torch_dtype: 'float32', hidden_act: 'silu', attention_bias: false,
    });
    expect(Object.keys(c)).toEqual(Object.keys(c).sort());
  });

  it('writes a valid safetensors file with the Hugging Face Llama tensor names and shapes', () => {
    const h = checkSafetensors(path.join(dir, 'model.safetensors'));
    const want = expectedShapes(TINY);
    expect(Object.keys(h).sort()).toEqual(Object.keys(want).sort());
    for (const [name, shape] of Object.entries(want)) {
      expect(h[name].shape, name).toEqual(shape);
      expect(h[name].dtype, name).toBe('F32');
    }
  });

  it('gives the reference non-degenerate logits: neither one-hot nor uniform, at every position', () => {
    const m = loadReference(dir);
    const logits = m.logits([0, 72, 101, 108, 108, 111, 44, 300, 511, 1, 7]);
    expect(logits).toHaveLength(11);
    for (const l of logits) {
      expect(l).toHaveLength(512);
      const p = softmax(l);
      const max = Math.max(...p);
      const entropy = -p.reduce((a, x) => a + (x > 0 ? x * Math.log(x) : 0), 0) / Math.log(512);
      expect(max).toBeLessThan(0.5);
      expect(max).toBeGreaterThan(5 / 512);
      expect(entropy).toBeGreaterThan(0.3);
      expect(entropy).toBeLessThan(0.95);
    }
  });

  it('keeps the reference causal: logits of a prefix do not depend on later tokens', () => {
    const m = loadReference(dir);
    const full = m.logits([0, 5, 6, 7, 8, 9]);
    const prefix = m.logits([0, 5, 6]);
    for (let i = 0; i < 3; i++) expect(Array.from(prefix[i])).toEqual(Array.from(full[i]));
  });

  it('writes a tokenizer that @huggingface/tokenizers loads, round-trips (multi-byte UTF-8 too) and sizes to vocab_size', () => {
    const tok = new Tokenizer(JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')),
      JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')));
    for (const text of ['Hello, world!', '  two  spaces\tand tabs\nnew line ', 'café naïve — 日本語 🙂 €5', '']) {
      const e = tok.encode(text);
      expect(e.ids[0], 'bos first').toBe(0);
      expect(e.ids.every((id: number) => id >= 0 && id < 512)).toBe(true);
      expect(tok.decode(e.ids, { skip_special_tokens: true })).toBe(text);
    }
    expect(tok.encode('the').ids.length).toBeLessThan(1 + 3); // merges are used
    expect(tok.get_vocab(true).size).toBe(512);
    for (let id = 0; id < 512; id++) {
      expect(tok.id_to_token(id), `id ${id}`).toBeDefined();
      expect(tok.decode([id]).length, `id ${id} decodes`).toBeGreaterThan(0);
    }
    expect(tok.decode([0, 1])).toBe('<s></s>');
    const cfg = JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
    expect(cfg).toMatchObject({ bos_token: '<s>', eos_token: '</s>', add_bos_token: true, model_max_length: 8192, tokenizer_class: 'PreTrainedTokenizerFast' });
  });
});

describe('kvfleet synth-model determinism, dtypes and shards', () => {
  it('writes identical bytes for the same seed and different weights for another seed', async () => {
    const [a, b, c] = ['s1a', 's1b', 's2'].map((n) => path.join(tmp, n));
    for (const [d, seed] of [[a, '1'], [b, '1'], [c, '2']]) {
      const r = await cli(['--out', d, '--preset', 'tiny', '--seed', seed]);
      expect(r.code, r.out).toBe(0);
    }
    const bytes = (d: string) => readFileSync(path.join(d, 'model.safetensors'));
    expect(bytes(a).equals(bytes(b))).toBe(true);
    expect(bytes(a).length).toBe(bytes(c).length);
    expect(bytes(a).equals(bytes(c))).toBe(false);
    const ta = readModelTensors(a), tc = readModelTensors(c);
    for (const [name, t] of ta) {
      expect(Array.from(t.data).some((x, i) => x !== tc.get(name)!.data[i]), `${name} differs across seeds`).toBe(true);
    }
  });

  it('writes f16 and bf16 files whose values are the f32 values rounded to that dtype', async () => {
    const f32 = readModelTensors(path.join(tmp, 's1a'));
    for (const [dtype, st, torch, mantissaBits] of [['f16', 'F16', 'float16', 10], ['bf16', 'BF16', 'bfloat16', 7]] as const) {
      const d = path.join(tmp, `s1-${dtype}`);
      const r = await cli(['--out', d, '--preset', 'tiny', '--seed', '1', '--dtype', dtype]);
      expect(r.code, r.out).toBe(0);
      const h = checkSafetensors(path.join(d, 'model.safetensors'));
      expect(new Set(Object.values(h).map((t) => t.dtype))).toEqual(new Set([st]));
      expect(JSON.parse(readFileSync(path.join(d, 'config.json'), 'utf8')).torch_dtype).toBe(torch);
      for (const [name, t] of readModelTensors(d)) {
        const ref = f32.get(name)!.data;
        // Both are roundings of the same float64 draw, so they differ by at most half an ulp of the narrow dtype at
        // the value's binade, 2^(e - mantissaBits - 1), plus f32's own rounding (f16 subnormals: 2^-25 absolute).
        let worst = -Infinity, at = -1, exact = 0;
        t.data.forEach((x, i) => {
          const halfUlp = 2 ** (Math.floor(Math.log2(Math.abs(ref[i]))) - mantissaBits - 1);
          const excess = Math.abs(x - ref[i]) - (halfUlp * (1 + 2 ** -12) + 2 ** -25);
          if (excess > worst) { worst = excess; at = i; }
          if (x === ref[i]) exact++;
        });
        expect(worst, `${name}[${at}]: ${t.data[at]} vs f32 ${ref[at]}`).toBeLessThanOrEqual(0);
        expect(exact, `${name} is really narrowed`).toBeLessThan(t.data.length);
      }
    }
  });

  it('--shards 3 writes three shards and a consistent index holding the same tensors as one file', async () => {
    const d = path.join(tmp, 'sharded');
    const r = await cli(['--out', d, '--preset', 'tiny', '--seed', '1', '--shards', '3']);
    expect(r.code, r.out).toBe(0);
    const shardFiles = ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors'];
    expect(readdirSync(d).sort()).toEqual(['config.json', ...shardFiles, 'model.safetensors.index.json', 'tokenizer.json', 'tokenizer_config.json'].sort());
    const index = JSON.parse(readFileSync(path.join(d, 'model.safetensors.index.json'), 'utf8')) as
      { metadata: { total_size: number }; weight_map: Record<string, string> };
    let total = 0;
    const seen = new Set<string>();
    for (const f of shardFiles) {
      const h = checkSafetensors(path.join(d, f));
      expect(Object.keys(h).length, `${f} is not empty`).toBeGreaterThan(0);
      for (const [name, t] of Object.entries(h)) {
        expect(index.weight_map[name], name).toBe(f);
        seen.add(name);
        total += t.data_offsets[1] - t.data_offsets[0];
      }
    }
    expect([...seen].sort()).toEqual(Object.keys(index.weight_map).sort());
    expect(index.metadata.total_size).toBe(total);
    const single = readModelTensors(path.join(tmp, 's1a'));
    const sharded = readModelTensors(d);
    expect([...sharded.keys()].sort()).toEqual([...single.keys()].sort());
    for (const [name, t] of single) expect(sharded.get(name)!.data, name).toEqual(t.data);
    // writing one file again into the same directory removes the shards and the index
    const again = await cli(['--out', d, '--preset', 'tiny', '--seed', '1']);
    expect(again.code, again.out).toBe(0);
    expect(readdirSync(d).sort()).toEqual(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
  });

  it('fails on an unknown preset with a message naming the flag and the choices', async () => {
    const d = path.join(tmp, 'bogus');
    const r = await cli(['--out', d, '--preset', 'bogus']);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/option '--preset <name>' argument 'bogus' is invalid\. Allowed choices are tiny, small/);
    expect(existsSync(d)).toBe(false);
    const s = await cli(['--out', d, '--preset', 'tiny', '--shards', 'x']);
    expect(s.code).toBe(1);
    expect(s.out).toMatch(/option '--shards <k>' argument 'x' is invalid/);
  });
});

describe('writeSynthModel variants (programmatic API)', () => {
  it('Qwen2: architectures and model_type follow, q/k/v biases are written and used by the reference', () => {
    const d = path.join(tmp, 'qwen2');
    const r = writeSynthModel({ out: d, preset: 'tiny', seed: 3, overrides: { architectures: ['Qwen2ForCausalLM'] } });
    expect(r.config.model_type).toBe('qwen2');
    const h = checkSafetensors(path.join(d, 'model.safetensors'));
    expect(h['model.layers.1.self_attn.k_proj.bias'].shape).toEqual([32]);
    expect(h['model.layers.1.self_attn.q_proj.bias'].shape).toEqual([64]);
    expect(h['model.layers.0.self_attn.o_proj.bias']).toBeUndefined();
    const m = loadReference(d);
    expect(m.config.qkvBias).toBe(true);
    expect(m.logits([0, 9, 10]).every((l) => l.every(Number.isFinite))).toBe(true);
  });

  it('Mistral with a sliding window, tied embeddings and a bf16 file load in the reference', () => {
    const d = path.join(tmp, 'mistral');
    const r = writeSynthModel({ out: d, preset: 'tiny', dtype: 'bf16',
      overrides: { architectures: ['MistralForCausalLM'], sliding_window: 2, tie_word_embeddings: true } });
    expect(r.config.model_type).toBe('mistral');
    expect(r.parameters).toBe(139584 - 512 * 64);
    const h = checkSafetensors(path.join(d, 'model.safetensors'));
    expect(h['lm_head.weight']).toBeUndefined();
    const det = loadReference(d).forwardDetailed([0, 4, 5, 6]);
    expect(det.attnProbs[0][3][0][0]).toBe(0); // outside the window of 2
    expect(det.attnProbs[0][3][0][1]).toBe(0);
    expect(det.attnProbs[0][3][0][2]).toBeGreaterThan(0);
  });

  it('rejects bad overrides naming the field', () => {
    const d = path.join(tmp, 'bad');
    expect(() => writeSynthModel({ out: d, preset: 'tiny', overrides: { num_key_value_heads: 3 } })).toThrow(/'num_key_value_heads' \(3\) must divide/);
    expect(() => writeSynthModel({ out: d, preset: 'tiny', overrides: { architectures: ['GPT2LMHeadModel'] } })).toThrow(/'architectures' must be one of/);
    expect(() => writeSynthModel({ out: d, preset: 'tiny', overrides: { vocab_size: 100 } })).toThrow(/vocab_size must be an integer >= 258/);
  });
});

describe('the small preset (not written here: about 200 MB)', () => {
  it('has about 100M parameters with the planned shapes', () => {
    const cfg = presetConfig(PRESETS.small, 'float16');
    const tensors = modelTensors(cfg);
    const params = tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
    expect(params).toBe(100_682_496);
    const want = expectedShapes({ L: 12, D: 768, H: 12, Hk: 4, d: 64, F: 2048, V: 16384, tied: false });
    expect(Object.fromEntries(tensors.map((t) => [t.name, t.shape]))).toEqual(want);
    expect(cfg).toMatchObject({ max_position_embeddings: 32768, rope_theta: 500000, torch_dtype: 'float16' });
  });

  it('has a tokenizer whose merges fill its 16384-token vocabulary', () => {
    const t = buildTokenizer(16384, 32768);
    const tok = new Tokenizer(t.tokenizerJson, t.tokenizerConfig);
    expect(tok.get_vocab(true).size).toBe(16384);
    expect(tok.id_to_token(16383)).toBeDefined();
    const text = 'Benchmarks use the small preset: 12 layers, d=64. Ünïcödé ✓';
    expect(tok.decode(tok.encode(text).ids, { skip_special_tokens: true })).toBe(text);
  });
});
