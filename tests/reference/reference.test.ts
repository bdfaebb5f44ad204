// Checks of the float64 reference itself, against numbers worked out by hand.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeValues, type DtypeName } from '../../worker/model/dtype.ts';
import { writeSafetensors, type TensorSpec } from '../../worker/model/safetensors.ts';
import { attention, loadReference, rmsNorm, rope, ropeInvFreq, silu } from './llama-f64.ts';
import { bf16BitsToNumber, f16BitsToNumber, readSafetensors } from './safetensors-read.ts';

const tmp = mkdtempSync(path.join(tmpdir(), 'kvfleet-ref-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const close = (a: ArrayLike<number>, b: number[], tol = 1e-14) => {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < b.length; i++) expect(Math.abs(a[i] - b[i]), `index ${i}: ${a[i]} vs ${b[i]}`).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(b[i])));
};
const vec = (...x: number[]) => Float64Array.from(x);

describe('RMSNorm', () => {
  it('scales [3, 4] by 1/sqrt((9 + 16) / 2) = 1/sqrt(12.5), giving [0.6, 0.8] * sqrt(2)', () => {
    close(rmsNorm([3, 4], [1, 1], 0), [0.6 * Math.SQRT2, 0.8 * Math.SQRT2]);
  });
  it('multiplies by the weight after normalising, and adds eps inside the root', () => {
    // mean(x^2) = (1 + 4 + 9 + 16) / 4 = 7.5; with eps = 0.5 the divisor is sqrt(8) = 2 * sqrt(2)
    const r = 1 / (2 * Math.SQRT2);
    close(rmsNorm([1, 2, 3, 4], [1, 1, 2, 0.5], 0.5), [1 * r, 2 * r, 3 * r * 2, 4 * r * 0.5]);
  });
});

describe('RoPE (rotate-half, as Hugging Face)', () => {
  it('d = 4, theta = 10000: inverse frequencies are 10000^0 = 1 and 10000^(-2/4) = 0.01', () => {
    close(ropeInvFreq(4, 10000), [1, 0.01]);
  });
  it('rotates x = [1, 2, 3, 4] at position 1 in pairs (x0, x2) by 1 rad and (x1, x3) by 0.01 rad', () => {
    const cos1 = 0.5403023058681398, sin1 = 0.8414709848078965;
    const cos01 = 0.9999500004166653, sin01 = 0.009999833334166664;
    const out = rope([1, 2, 3, 4], 1, [1, 0.01]);
    // out[i] = x[i] cos - x[i + 2] sin;  out[i + 2] = x[i + 2] cos + x[i] sin
    close(out, [1 * cos1 - 3 * sin1, 2 * cos01 - 4 * sin01, 3 * cos1 + 1 * sin1, 4 * cos01 + 2 * sin01], 1e-15);
    close(out, [-1.9841106485555495, 1.959900667496664, 2.4623779024123156, 4.019799668334994], 1e-15);
  });
  it('is the identity at position 0 and preserves the norm elsewhere', () => {
    close(rope([1, 2, 3, 4], 0, [1, 0.01]), [1, 2, 3, 4]);
    const r = rope([1, 2, 3, 4], 37, [1, 0.01]);
    expect(r.reduce((a, b) => a + b * b, 0)).toBeCloseTo(30, 12);
  });
  it('llama3 scaling: keeps high frequencies, divides low ones by factor, interpolates between', () => {
    // d = 8, theta = 10000: inv_freq = [1, 0.1, 0.01, 0.001], wavelengths 2*pi/f = [6.28, 62.8, 628.3, 6283].
    // old context 1024, low_freq_factor 1, high_freq_factor 4 -> wavelength bounds 1024 and 256, factor 8.
    // 628.3 lies between: smooth = (1024 / 628.3185 - 1) / 3 = 0.2099155...;
    // f = (1 - smooth) * 0.01 / 8 + smooth * 0.01 = 0.01 * (0.125 + 0.875 * smooth)
    const smooth = (1024 / (2 * Math.PI / 0.01) - 1) / 3;
    expect(smooth).toBeCloseTo(0.20991553908700275, 14);
    close(ropeInvFreq(8, 10000, { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 1024 }),
      [1, 0.1, 0.003086760967011274, 0.001 / 8], 1e-12);
  });
});

describe('GQA attention', () => {
  // d = 2, scale 1/sqrt(2). One KV head: k0 = [1, 0], k1 = [0, 1], k2 = [1, 1]; v0 = [1, 2], v1 = [3, 4], v2 = [5, 6].
  const k = [[vec(1, 0)], [vec(0, 1)], [vec(1, 1)]];
  const v = [[vec(1, 2)], [vec(3, 4)], [vec(5, 6)]];
  const s2 = Math.SQRT2;
  // Query head 0: token 1 scores [ln 3, 0] -> weights [3/4, 1/4]; token 2 scores [0, ln 2, ln 2] -> [1/5, 2/5, 2/5].
  // Query head 1: all-zero queries -> uniform over the visible (causal) keys.
  const q = [
    [vec(5, -7), vec(0, 0)],
    [vec(s2 * Math.log(3), 0), vec(0, 0)],
    [vec(0, s2 * Math.log(2)), vec(0, 0)],
  ];
  const { out, probs } = attention(q, k, v);
  it('token 0 sees only itself, whatever its query', () => {
    close(out[0][0], [1, 2]); close(out[0][1], [1, 2]);
    close(probs[0][0], [1, 0, 0]);
  });
  it('token 1: head 0 = 3/4 v0 + 1/4 v1 = [1.5, 2.5]; head 1 = mean(v0, v1) = [2, 3]', () => {
    close(probs[1][0], [0.75, 0.25, 0], 1e-14);
    close(out[1][0], [1.5, 2.5], 1e-14); close(out[1][1], [2, 3], 1e-14);
  });
  it('token 2: head 0 = (v0 + 2 v1 + 2 v2) / 5 = [3.4, 4.4]; head 1 = mean(v0, v1, v2) = [3, 4]', () => {
    close(out[2][0], [3.4, 4.4], 1e-14); close(out[2][1], [3, 4], 1e-14);
  });
  it('query head h reads KV head floor(h / G): H = 4, Hk = 2', () => {
    // one token, so each head's output is its KV head's v: heads 0, 1 -> v of KV head 0; heads 2, 3 -> KV head 1
    const z = vec(0, 0);
    const r = attention([[z, z, z, z]], [[vec(1, 0), vec(0, 1)]], [[vec(10, 11), vec(20, 21)]]);
    expect(r.out[0].map((o) => Array.from(o))).toEqual([[10, 11], [10, 11], [20, 21], [20, 21]]);
  });
  it('a sliding window of 2 hides key 0 from token 2', () => {
    const r = attention(q, k, v, 2);
    // head 1, token 2: uniform over keys 1 and 2 -> [4, 5]
    close(r.probs[2][1], [0, 0.5, 0.5]); close(r.out[2][1], [4, 5]);
  });
});

describe('safetensors round trip (writer in worker/model, reader here)', () => {
  it('stores f16/bf16 with round-to-nearest-even and reads back the known bit patterns', () => {
    // f16: 1 = 0x3C00, -2 = 0xC000, 65504 = 0x7BFF (max), 2^-24 = 0x0001 (smallest subnormal),
    //      1 + 2^-11 is a tie between 0x3C00 and 0x3C01 -> even 0x3C00; 1 + 3 * 2^-11 -> tie -> even 0x3C02.
    // bf16: 1 = 0x3F80, -2 = 0xC000, 3.140625 = 0x4049, 1 + 2^-8 tie -> 0x3F80, 1 + 3 * 2^-8 tie -> 0x3F82.
    const f16In = [1, -2, 65504, 2 ** -24, 1 + 2 ** -11, 1 + 3 * 2 ** -11];
    const f16Bits = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x3c00, 0x3c02];
    const bf16In = [1, -2, 3.140625, 1 + 2 ** -8, 1 + 3 * 2 ** -8];
    const bf16Bits = [0x3f80, 0xc000, 0x4049, 0x3f80, 0x3f82];
    const f32In = [0.1, -1e-3, 12345.678];
    const spec = (name: string, values: number[], dtype: DtypeName): TensorSpec =>
      ({ name, dtype, shape: [values.length], bytes: () => encodeValues(values, dtype) });
    const file = path.join(tmp, 'bits.safetensors');
    writeSafetensors(file, [spec('a', f16In, 'f16'), spec('b', bf16In, 'bf16'), spec('c', f32In, 'f32')]);

    const raw = readFileSync(file);
    const n = Number(raw.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    const data = 8 + n;
    expect(Array.from({ length: 6 }, (_, i) => raw.readUInt16LE(data + 2 * i))).toEqual(f16Bits);
    expect(Array.from({ length: 5 }, (_, i) => raw.readUInt16LE(data + 12 + 2 * i))).toEqual(bf16Bits);

    const t = readSafetensors(file);
    expect(Array.from(t.get('a')!.data)).toEqual([1, -2, 65504, 2 ** -24, 1, 1 + 2 ** -9]);
    expect(Array.from(t.get('b')!.data)).toEqual([1, -2, 3.140625, 1, 1 + 2 ** -6]);
    expect(Array.from(t.get('c')!.data)).toEqual(f32In.map(Math.fround));
    expect(t.get('a')!.dtype).toBe('F16');
    expect(t.get('b')!.dtype).toBe('BF16');
  });
  it('decodes special f16/bf16 values from bits', () => {
    expect(f16BitsToNumber(0x7c00)).toBe(Infinity);
    expect(f16BitsToNumber(0xfc00)).toBe(-Infinity);
    expect(f16BitsToNumber(0x7e00)).toBeNaN();
    expect(Object.is(f16BitsToNumber(0x8000), -0)).toBe(true);
    expect(f16BitsToNumber(0x0400)).toBe(2 ** -14);
    expect(bf16BitsToNumber(0x7f80)).toBe(Infinity);
    expect(bf16BitsToNumber(0x0001)).toBe(2 ** -133);
  });
  it('rejects a truncated file, an oversized header and an unsupported dtype, naming the file', () => {
    const good = path.join(tmp, 'good.safetensors');
    writeSafetensors(good, [{ name: 'x', dtype: 'f32', shape: [4], bytes: () => encodeValues([1, 2, 3, 4], 'f32') }]);
    const raw = readFileSync(good);
    const cut = path.join(tmp, 'cut.safetensors');
    writeFileSync(cut, raw.subarray(0, raw.length - 3));
    expect(() => readSafetensors(cut)).toThrow(/cut\.safetensors: truncated: tensor 'x'/);
    const big = Buffer.from(raw); big.writeBigUInt64LE(10_000n, 0);
    const bigFile = path.join(tmp, 'big.safetensors');
    writeFileSync(bigFile, big);
    expect(() => readSafetensors(bigFile)).toThrow(/big\.safetensors: header length 10000 exceeds the file/);
    const hdr = JSON.stringify({ y: { dtype: 'I64', shape: [1], data_offsets: [0, 8] } });
    const i64 = Buffer.alloc(8 + hdr.length + 8); i64.writeBigUInt64LE(BigInt(hdr.length), 0); i64.write(hdr, 8);
    const i64File = path.join(tmp, 'i64.safetensors');
    writeFileSync(i64File, i64);
    expect(() => readSafetensors(i64File)).toThrow(/i64\.safetensors: tensor 'y' has unsupported dtype "I64"/);
  });
});

describe('a whole forward pass, worked by hand', () => {
  // L = 1, D = 2, H = Hk = 1, d = 2, F = 1, V = 3, eps = 0. With one token, attention returns v itself,
  // so the pass reduces to scalar arithmetic:
  //   x = embed[0] = [3, 4];  m = rmsnorm(x) = [0.6, 0.8] * sqrt(2)  (any positive multiple of [3, 4] gives m)
  //   attn = o_proj(v_proj(m)) = 0.5 * m;  h1 = x + 0.5 m  (still along [3, 4], so rmsnorm(h1) = m again)
  //   mlp = down(silu(gate m) * up m) = [silu(0.6 sqrt2) * 0.8 sqrt2, 0];  h2 = h1 + mlp
  //   logits = lm_head(rmsnorm(h2)) with lm_head rows [1, 0], [0, 1], [1, 1]
  const dir = path.join(tmp, 'micro');
  const t = (name: string, shape: number[], values: number[]): TensorSpec =>
    ({ name, dtype: 'f32', shape, bytes: () => encodeValues(values, 'f32') });
  function writeMicro(configOverrides: Record<string, unknown> = {}): void {
    const p = 'model.layers.0.';
    const tensors = [
      t('model.embed_tokens.weight', [3, 2], [3, 4, 1, 0, 0, 2]),
      t(`${p}input_layernorm.weight`, [2], [1, 1]),
      t(`${p}self_attn.q_proj.weight`, [2, 2], [1, 0, 0, 1]),
      t(`${p}self_attn.k_proj.weight`, [2, 2], [1, 0, 0, 1]),
      t(`${p}self_attn.v_proj.weight`, [2, 2], [1, 0, 0, 1]),
      t(`${p}self_attn.o_proj.weight`, [2, 2], [0.5, 0, 0, 0.5]),
      t(`${p}post_attention_layernorm.weight`, [2], [1, 1]),
      t(`${p}mlp.gate_proj.weight`, [1, 2], [1, 0]),
      t(`${p}mlp.up_proj.weight`, [1, 2], [0, 1]),
      t(`${p}mlp.down_proj.weight`, [2, 1], [1, 0]),
      t('model.norm.weight', [2], [1, 1]),
      t('lm_head.weight', [3, 2], [1, 0, 0, 1, 1, 1]),
    ];
    mkdirSync(dir, { recursive: true });
    writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
    writeFileSync(path.join(dir, 'config.json'), JSON.stringify({
      architectures: ['LlamaForCausalLM'], hidden_size: 2, intermediate_size: 1, num_hidden_layers: 1,
      num_attention_heads: 1, num_key_value_heads: 1, head_dim: 2, vocab_size: 3, rms_norm_eps: 0,
      rope_theta: 10000, tie_word_embeddings: false, hidden_act: 'silu', ...configOverrides,
    }));
  }
  it('matches the scalar derivation', () => {
    writeMicro();
    const s2 = Math.SQRT2;
    const m = [0.6 * s2, 0.8 * s2];
    const h1 = [3 + 0.5 * m[0], 4 + 0.5 * m[1]];
    const h2 = [h1[0] + silu(0.6 * s2) * 0.8 * s2, h1[1]];
    const r = 1 / Math.sqrt((h2[0] ** 2 + h2[1] ** 2) / 2);
    const expected = [h2[0] * r, h2[1] * r, (h2[0] + h2[1]) * r];
    close(loadReference(dir).logits([0])[0], expected, 1e-14);
    // silu itself: silu(x) = x / (1 + e^-x); silu(0) = 0, silu(1) = 1 / (1 + 1/e)
    expect(silu(0)).toBe(0);
    expect(silu(1)).toBeCloseTo(0.7310585786300049, 15);
  });
  it('rotates queries and keys by their positions inside the pass', () => {
    // tokens [2, 0]: m0 = rmsnorm([0, 2]) = [0, sqrt2], m1 = [0.6, 0.8] sqrt2; q = k = m (identity projections).
    // d = 2 -> one pair (x0, x1), inv_freq 1: k0 = m0 (position 0); q1 = k1 = m1 rotated by 1 rad.
    // score(1, 1) = |m1|^2 / sqrt2 = sqrt2; score(1, 0) = q1 . m0 / sqrt2 = sqrt2 (0.8 cos 1 + 0.6 sin 1).
    writeMicro();
    const det = loadReference(dir).forwardDetailed([2, 0]);
    const s10 = Math.SQRT2 * (0.8 * Math.cos(1) + 0.6 * Math.sin(1));
    const p10 = 1 / (1 + Math.exp(Math.SQRT2 - s10));
    close(det.attnProbs[0][1][0], [p10, 1 - p10], 1e-14);
    close(det.k[0][1][0], [0.6 * Math.SQRT2 * Math.cos(1) - 0.8 * Math.SQRT2 * Math.sin(1),
      0.8 * Math.SQRT2 * Math.cos(1) + 0.6 * Math.SQRT2 * Math.sin(1)], 1e-14);
  });
  it('refuses a token outside the vocabulary and a missing tensor, naming them', () => {
    writeMicro();
    expect(() => loadReference(dir).logits([3])).toThrow(/token 0 = 3 is outside the vocabulary \[0, 3\)/);
    writeMicro({ attention_bias: true });
    expect(() => loadReference(dir)).toThrow(/missing tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'/);
  });
});
