// ENGINE.md "Theory to test against": with the true attention of one query per head as the score, the output error
// bound is minimised by keeping the most attention mass. Uniform allocation satisfies the safeguard's lower bound
// and the safeguarded greedy is the optimum under it, so on every input Ada allocation keeps at least the attention
// mass uniform allocation keeps, for every alpha (alpha = 1 is uniform itself).
import { describe, expect, it } from 'vitest';
import * as eng from '../../worker/compress-native.ts';
import { refAllocate, refAttentionRow } from '../reference/adakv.ts';
import { int, normals, pick, rng } from './random.ts';

const ALPHAS = [0, 0.2, 1];

/** Attention mass kept: the sum over heads of the true (float64) attention of the kept positions. */
function mass(attn: number[][], kept: number[][]): number {
  return kept.reduce((s, pos, h) => s + pos.reduce((t, j) => t + attn[h][j], 0), 0);
}

/** One query per KV head over m keys, heads with very different concentration (as real heads are):
 *  returns the float64 attention [Hk][m] and the engine's fp32 attention (SnapKV scores with w = 1, G = 1,
 *  kernel 1: exactly the attention of that one query). */
function attentionCase(r: () => number, Hk: number, m: number, d: number) {
  const scales = Array.from({ length: Hk }, () => pick(r, [0.2, 1, 3, 8]));
  const q = new Float32Array(Hk * d);
  for (let h = 0; h < Hk; h++) q.set(normals(r, d, scales[h]), h * d);
  const k = normals(r, m * Hk * d);
  const qpos = Int32Array.of(m), kpos = Int32Array.from({ length: m }, (_, j) => j);
  const attn = Array.from({ length: Hk }, (_, h) => {
    const keys = Array.from({ length: m }, (_, j) => k.subarray((j * Hk + h) * d, (j * Hk + h + 1) * d));
    return refAttentionRow(q.subarray(h * d, (h + 1) * d), keys, new Array<boolean>(m).fill(true));
  });
  const S = eng.snapkvScores({ q, qpos, k, kpos, mPrefix: m, H: Hk, Hk, d, pooling: 'MAX', reduce: 'MEAN', kernel: 1 });
  return { attn, S };
}

describe('Ada-KV keeps at least the attention mass of uniform allocation', () => {
  it('holds for alpha 0, 0.2 and 1 on many random inputs (engine and reference allocators)', () => {
    const r = rng(6);
    const strictlyBetter = new Map<number, number>(ALPHAS.map((a) => [a, 0]));
    const N = 300;
    for (let it = 0; it < N; it++) {
      const Hk = int(r, 1, 8), m = int(r, 2, 160), d = pick(r, [8, 16]);
      const Bp = int(r, 1, m - 1);
      const { attn, S } = attentionCase(r, Hk, m, d);
      // the engine's scores are the attention itself, in fp32
      for (let h = 0; h < Hk; h++) for (let j = 0; j < m; j++) expect(Math.abs(S[h * m + j] - attn[h][j])).toBeLessThan(1e-6);

      const uniform = eng.allocate(S, Hk, m, Bp, 0.2, false);
      const uniformMass = mass(attn, uniform);
      const refUniformMass = mass(attn, refAllocate(attn, Hk, m, Bp, 0.2, false));
      for (const alpha of ALPHAS) {
        const ada = eng.allocate(S, Hk, m, Bp, alpha, true);
        expect(ada.reduce((s, p) => s + p.length, 0)).toBe(Hk * Bp); // same total, different split
        const adaMass = mass(attn, ada);
        // engine: chosen from fp32 scores, so a near-tie can swap two keys whose masses differ by ~1e-7
        expect(adaMass).toBeGreaterThanOrEqual(uniformMass - 1e-6);
        // reference on the exact float64 attention: the inequality holds exactly (up to summation rounding)
        const refAdaMass = mass(attn, refAllocate(attn, Hk, m, Bp, alpha, true));
        expect(refAdaMass).toBeGreaterThanOrEqual(refUniformMass - 1e-12);
        if (alpha === 1) expect(ada).toEqual(uniform);
        if (adaMass > uniformMass + 1e-6) strictlyBetter.set(alpha, (strictlyBetter.get(alpha) ?? 0) + 1);
      }
    }
    // not vacuous: with heads of different concentration Ada gains mass on most inputs when alpha < 1, and more
    // with a smaller safeguard
    expect(strictlyBetter.get(0)).toBeGreaterThan(N / 2);
    expect(strictlyBetter.get(0)).toBeGreaterThanOrEqual(strictlyBetter.get(0.2) ?? 0);
    expect(strictlyBetter.get(1)).toBe(0);
  });

  it('alpha 0 keeps the most mass of any allocation with the same total (flattened top-k)', () => {
    const r = rng(7);
    for (let it = 0; it < 100; it++) {
      const Hk = int(r, 2, 6), m = int(r, 4, 60), d = 8;
      const Bp = int(r, 1, m - 1);
      const { attn } = attentionCase(r, Hk, m, d);
      const best = mass(attn, refAllocate(attn, Hk, m, Bp, 0, true));
      const sorted = attn.flat().sort((a, b) => b - a);
      const topk = sorted.slice(0, Hk * Bp).reduce((s, v) => s + v, 0);
      expect(best).toBeCloseTo(topk, 12);
      // any other split of the same total keeps no more: a random per-head split, each head its own top
      const split = new Array<number>(Hk).fill(0);
      for (let t = 0; t < Hk * Bp; t++) {
        const open = split.map((c, h) => (c < m ? h : -1)).filter((h) => h >= 0);
        split[pick(r, open)]++;
      }
      const other = attn.reduce((s, row, h) => s + [...row].sort((a, b) => b - a).slice(0, split[h]).reduce((t, v) => t + v, 0), 0);
      expect(best).toBeGreaterThanOrEqual(other - 1e-12);
    }
  });
});
