// The engine's logits against the independent float64 reference (tests/reference/llama-f64.ts), on synthetic
// models written in the real Hugging Face formats: prefill and 16 decode steps, 3 sequences of different lengths
// in one batch.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine, type EngineOptions } from '../../worker/engine.ts';
import { writeSynthModel, type SynthModelOptions } from '../../worker/model/synth.ts';
import { loadReference } from '../reference/llama-f64.ts';

const DECODE_STEPS = 16;

function prompt(n: number, seed: number, V: number): number[] {
  let x = 2463534242 + seed;
  return Array.from({ length: n }, () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x % V;
  });
}

/** ||a - b||_inf / ||b||_inf */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

/** Runs prompts together (prefill then DECODE_STEPS greedy steps); returns tokens and the logits of each step. */
async function runBatch(engine: Engine, prompts: number[][]) {
  const ids = prompts.map((p) => engine.addSequence(p, { temperature: 0, maxNewTokens: DECODE_STEPS + 1, ignoreEos: true },
    { method: 'FULL' }));
  const logits: Float32Array[][] = prompts.map(() => []);
  const tokens: number[][] = prompts.map(() => []);
  for (let s = 0; s <= DECODE_STEPS; s++) {
    const r = await engine.step(ids.map((id) => ({ id })), true);
    for (const sr of r.seqs) {
      const i = ids.indexOf(sr.id);
      expect(sr.outOfPages).toBe(false);
      logits[i].push(sr.logits!);
      tokens[i].push(sr.token);
    }
  }
  for (const id of ids) engine.release(id);
  return { logits, tokens };
}

const dirs: string[] = [];
function model(opts: Omit<SynthModelOptions, 'out'>): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-fwd-'));
  dirs.push(dir);
  writeSynthModel({ ...opts, out: dir });
  return dir;
}
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

const CASES: Array<{ name: string; synth: Omit<SynthModelOptions, 'out'>; kvDtype: 'f32' | 'f16'; tol: number }> = [
  { name: 'Llama F32 weights, f32 pages', synth: { preset: 'tiny', seed: 1, dtype: 'f32' }, kvDtype: 'f32', tol: 1e-4 },
  { name: 'Llama F32 weights, f16 pages', synth: { preset: 'tiny', seed: 1, dtype: 'f32' }, kvDtype: 'f16', tol: 2e-3 },
  { name: 'Llama F16 weights (sharded), f32 pages', synth: { preset: 'tiny', seed: 2, dtype: 'f16', shards: 3 }, kvDtype: 'f32', tol: 1e-4 },
  { name: 'Llama BF16 weights, tied embeddings, f32 pages', synth: { preset: 'tiny', seed: 3, dtype: 'bf16', overrides: { tie_word_embeddings: true } }, kvDtype: 'f32', tol: 1e-4 },
  { name: 'Qwen2 (QKV bias), f32 pages', synth: { preset: 'tiny', seed: 4, dtype: 'f32', overrides: { architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2' } }, kvDtype: 'f32', tol: 1e-4 },
  { name: 'Llama with llama3 rope scaling, f32 pages', synth: { preset: 'tiny', seed: 5, dtype: 'f32', overrides: { rope_theta: 500000, rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 } } }, kvDtype: 'f32', tol: 1e-4 },
];

describe('forward pass against the float64 reference', () => {
  for (const c of CASES) {
    it(`${c.name}: prefill + ${DECODE_STEPS} decode steps, 3 sequences in one batch, within ${c.tol}`, async () => {
      const dir = model(c.synth);
      const engine = await Engine.load(dir, { numPages: 2048, kvDtype: c.kvDtype } satisfies EngineOptions);
      const ref = loadReference(dir);
      const V = engine.info.vocabSize;
      const prompts = [prompt(7, 1, V), prompt(23, 2, V), prompt(41, 3, V)];
      const { logits, tokens } = await runBatch(engine, prompts);
      let worst = 0;
      for (let i = 0; i < prompts.length; i++) {
        const all = [...prompts[i], ...tokens[i].slice(0, DECODE_STEPS)];
        const refLogits = ref.logits(all);
        for (let s = 0; s <= DECODE_STEPS; s++) {
          const pos = prompts[i].length - 1 + s;  // the position whose logits step s sampled from
          worst = Math.max(worst, relErr(logits[i][s], refLogits[pos]));
        }
      }
      console.log(`${c.name}: worst relative error ${worst.toExponential(2)}`);
      expect(worst).toBeLessThan(c.tol);
      expect(worst).toBeGreaterThan(0);  // fp32 vs float64: exact agreement would mean the comparison is broken
      expect(engine.poolStats().freePages).toBe(engine.poolStats().totalPages);
      engine.close();
    });
  }
});

describe('batch invariance through the binding', () => {
  let dir: string;
  beforeAll(() => { dir = model({ preset: 'tiny', seed: 9, dtype: 'f16' }); });
  it('batched and solo runs give bit-identical logits', async () => {
    const engine = await Engine.load(dir, { numPages: 2048, kvDtype: 'f16' });
    const V = engine.info.vocabSize;
    const prompts = [prompt(13, 4, V), prompt(3, 5, V), prompt(60, 6, V)];
    const batched = await runBatch(engine, prompts);
    for (let i = 0; i < prompts.length; i++) {
      const solo = await runBatch(engine, [prompts[i]]);
      expect(solo.tokens[0]).toEqual(batched.tokens[i]);
      for (let s = 0; s < solo.logits[0].length; s++) {
        expect(Buffer.from(solo.logits[0][s].buffer).equals(Buffer.from(batched.logits[i][s].buffer))).toBe(true);
      }
    }
    expect(engine.poolStats().freePages).toBe(engine.poolStats().totalPages);
    engine.close();
  });
});

describe('the op table', () => {
  it('the CPU backend reports that it runs every op of the table itself', async () => {
    const dir = model({ preset: 'tiny', seed: 2, dtype: 'f32' });
    const engine = await Engine.load(dir, { numPages: 64, backend: 'cpu' });
    expect(engine.info.backend).toBe('cpu');
    expect(engine.info.ops).toEqual(['embed', 'rmsnorm', 'matmul', 'rope', 'silu_mul', 'add', 'attn_prefill',
      'attn_decode', 'kv_write', 'kv_copy', 'kv_gather', 'snapkv_scores', 'snapkv_select', 'sample']);
    engine.close();
  });
});
