// The engine's compression math (through the addon) against the independent float64 reference
// (tests/reference/adakv.ts) on seeded random inputs: budgets and pyramid schedules exactly, kept positions per
// (layer, head) exactly for every method when both allocators see the same fp32 scores (ties included), SnapKV
// scores within a small tolerance, and the same kept positions from each side's own scores when those are well
// separated.
import { describe, expect, it } from 'vitest';
import * as eng from '../../worker/compress-native.ts';
import type { BudgetSpecJs, GqaReduceName, MethodName, PoolingName } from '../../worker/compress-native.ts';
import * as ref from '../reference/adakv.ts';
import { int, normals, pick, rng } from './random.ts';

const METHODS = ['SNAPKV', 'PYRAMIDKV', 'ADA_SNAPKV', 'ADA_PYRAMIDKV'] as const;
const ALL_METHODS: MethodName[] = ['FULL', ...METHODS];
const ALPHAS = [0, 0.2, 1];
const POOLINGS: PoolingName[] = ['MAX', 'AVG'];
const REDUCES: GqaReduceName[] = ['MEAN', 'MAXIMUM'];

/** Kept positions per (layer, head), window included, composed from the engine's primitives the way the
 *  engine's prefill uses them: budget, per-layer prefix budgets, allocate, plus the window. */
function engineKept(spec: BudgetSpecJs, L: number, n: number, Hk: number, scores: Float32Array[]): number[][][] {
  const all = Array.from({ length: n }, (_, j) => j);
  if (!eng.compresses(spec, n)) return Array.from({ length: L }, () => Array.from({ length: Hk }, () => [...all]));
  const w = spec.window ?? 32;
  const alpha = spec.floorAlpha ?? 0.2;
  const ada = spec.method === undefined || spec.method === 'ADA_SNAPKV' || spec.method === 'ADA_PYRAMIDKV';
  const m = n - w;
  return eng.layerPrefixBudgets(spec, L, n).map((Bp, l) =>
    eng.allocate(scores[l], Hk, m, Bp, alpha, ada).map((prefix) => [...prefix, ...all.slice(m)]));
}

/** Prefill layout: keys at 0..n-1, window queries at n-w..n-1 (w may exceed n only when nothing is scored). */
function prefillInput(r: () => number, n: number, w: number, H: number, Hk: number, d: number, qScale: number) {
  return {
    q: normals(r, w * H * d, qScale),
    qpos: Int32Array.from({ length: w }, (_, i) => n - w + i),
    k: normals(r, n * Hk * d),
    kpos: Int32Array.from({ length: n }, (_, j) => j),
  };
}

/** Two sets of scores lead to the same choices when every pair of distinct reference values differs clearly. */
function wellSeparated(values: ArrayLike<number>, rel = 1e-4): boolean {
  const v = Array.from(values).sort((a, b) => a - b);
  for (let i = 1; i < v.length; i++) if (v[i] !== v[i - 1] && v[i] - v[i - 1] <= rel * Math.abs(v[i])) return false;
  return true;
}

describe('compression: engine agrees with the reference', () => {
  it('sizes budgets and pyramid schedules exactly the same way', () => {
    const r = rng(1);
    let compressed = 0;
    for (let it = 0; it < 600; it++) {
      const method = pick(r, ALL_METHODS);
      const w = int(r, 1, 40);
      const useRatio = r() < 0.4;
      const spec: BudgetSpecJs = {
        method, window: w, pyramidBeta: pick(r, [1.5, 2, 4, 20, 1 + r() * 30]),
        ...(useRatio
          ? { keepRatio: pick(r, [0.1, 0.25, 0.3, 0.5, 0.7, 1, Math.max(0.001, Math.round(r() * 1000) / 1000)]) }
          : { tokensPerHead: int(r, w + 1, w + 300) }),
      };
      const B0 = ref.refBudgetTokens(spec, 10_000);
      const n = pick(r, [int(r, 1, 2000), useRatio ? int(r, 1, 300) : B0, B0 + 1, w, Math.max(1, w - 1)]);
      const L = int(r, 1, 40);
      expect(eng.budgetTokens(spec, n), JSON.stringify({ spec, n })).toBe(ref.refBudgetTokens(spec, n));
      expect(eng.compresses(spec, n)).toBe(ref.refCompresses(spec, n));
      if (!ref.refCompresses(spec, n)) continue;
      compressed++;
      const want = ref.refLayerPrefixBudgets(spec, L, n);
      expect(eng.layerPrefixBudgets(spec, L, n), JSON.stringify({ spec, L, n })).toEqual(want);
      expect(want.reduce((s, x) => s + x, 0)).toBe(L * (ref.refBudgetTokens(spec, n) - w));
    }
    expect(compressed).toBeGreaterThan(200);
  });

  it('keeps exactly the same positions per (layer, head) for every method, alpha and size, ties included', () => {
    const r = rng(2);
    let cases = 0;
    for (const method of METHODS) {
      for (const alpha of ALPHAS) {
        for (const Hk of [1, 2, 4]) {
          for (const size of ['fits', 'B+1', 'larger', 'window>=n'] as const) {
            for (const levels of [3, 16, 1 << 20]) { // quantised scores: few levels = many exact ties
              const w = int(r, 1, 12);
              const B = int(r, w + 1, w + 40);
              const n = size === 'fits' ? int(r, 1, B) : size === 'B+1' ? B + 1 : size === 'larger' ? int(r, B + 2, B + 120)
                : int(r, 1, w);
              const L = int(r, 1, 6);
              const spec: BudgetSpecJs = { method, tokensPerHead: B, window: w, floorAlpha: alpha, pyramidBeta: pick(r, [2, 20]) };
              const m = Math.max(0, n - w);
              const scores = Array.from({ length: L }, () =>
                Float32Array.from({ length: Hk * m }, () => Math.floor(r() * levels) / levels));
              const got = engineKept(spec, L, n, Hk, scores);
              const want = ref.refKeptPositions(spec, L, n, Hk, scores);
              expect(got, JSON.stringify({ method, alpha, Hk, size, n, B, w, L })).toEqual(want);
              const kept = got.flat().reduce((s, h) => s + h.length, 0);
              expect(kept).toBe(L * Hk * (n > B ? B : n)); // exact totals: L * Hk * B when compressed
              cases++;
            }
          }
        }
      }
    }
    expect(cases).toBe(4 * 3 * 3 * 4 * 3);
  });

  it('keeps the same positions with keep-ratio budgets and the default alpha', () => {
    const r = rng(3);
    for (let it = 0; it < 60; it++) {
      const method = pick(r, METHODS);
      const w = int(r, 1, 8);
      const n = int(r, 1, 150);
      const spec: BudgetSpecJs = { method, keepRatio: pick(r, [0.1, 0.3, 0.5, 0.9]), window: w };
      const Hk = pick(r, [1, 2, 4]);
      const L = int(r, 1, 5);
      const m = Math.max(0, n - w);
      const scores = Array.from({ length: L }, () => Float32Array.from({ length: Hk * m }, () => Math.floor(r() * 8) / 8));
      expect(engineKept(spec, L, n, Hk, scores)).toEqual(ref.refKeptPositions(spec, L, n, Hk, scores));
    }
  });

  it('computes SnapKV scores within fp32 tolerance of float64 for GQA groups 1, 2, 4, both poolings and reduces', () => {
    const r = rng(4);
    let compared = 0;
    for (const G of [1, 2, 4]) {
      for (const pooling of POOLINGS) {
        for (const reduce of REDUCES) {
          for (const kernel of [1, 3, 7]) {
            for (const layout of ['prefill', 'rescore'] as const) {
              const Hk = int(r, 1, 2), H = G * Hk, d = pick(r, [4, 16, 33]);
              const w = int(r, 1, 8);
              let x;
              if (layout === 'prefill') {
                const n = int(r, w + 1, 90);
                x = { ...prefillInput(r, n, w, H, Hk, d, 1 + 2 * r()), mPrefix: n - w };
              } else {
                // decode rescoring: kept keys at scattered ascending positions, queries at later scattered positions;
                // some queries see only part of the keys (and the first may see none)
                const m = int(r, 2, 60);
                const kposArr: number[] = [];
                for (let p = int(r, 0, 3); kposArr.length < m; p += int(r, 1, 4)) kposArr.push(p);
                const last = kposArr[m - 1];
                const qposArr = Array.from({ length: w }, () => int(r, -1, last + 3)).sort((a, b) => a - b);
                x = {
                  q: normals(r, w * H * d, 2), qpos: Int32Array.from(qposArr), k: normals(r, m * Hk * d),
                  kpos: Int32Array.from(kposArr), mPrefix: int(r, 1, m),
                };
              }
              const input = { ...x, H, Hk, d, pooling, reduce, kernel };
              const got = eng.snapkvScores(input);
              const want = ref.refSnapkvScores(input).flat();
              expect(got.length).toBe(want.length);
              for (let i = 0; i < want.length; i++) {
                const tol = 2e-6 * Math.abs(want[i]) + 1e-9;
                if (!(Math.abs(got[i] - want[i]) <= tol)) {
                  expect.fail(`score ${i} differs: engine ${got[i]}, reference ${want[i]} (${JSON.stringify({ G, pooling, reduce, kernel, layout })})`);
                }
              }
              compared++;
            }
          }
        }
      }
    }
    expect(compared).toBe(3 * 2 * 2 * 3 * 2);
  });

  it('chooses the same positions from its own scores as the reference from its own, when scores are well separated', () => {
    const r = rng(5);
    let total = 0, compared = 0;
    for (const method of METHODS) {
      for (const alpha of ALPHAS) {
        for (const G of [1, 2, 4]) {
          for (const pooling of POOLINGS) {
            const reduce = pick(r, REDUCES);
            const Hk = pick(r, [1, 2, 3]), H = G * Hk, d = 16, w = int(r, 2, 6);
            const B = int(r, w + 2, w + 20), n = int(r, B + 1, B + 40), L = int(r, 1, 3), kernel = pick(r, [1, 3, 5]);
            const spec: BudgetSpecJs = { method, tokensPerHead: B, window: w, floorAlpha: alpha, poolKernel: kernel, pooling, gqaReduce: reduce };
            const engScores: Float32Array[] = [], refScores: number[][] = [];
            let separated = true;
            for (let l = 0; l < L; l++) {
              const input = { ...prefillInput(r, n, w, H, Hk, d, 3), mPrefix: n - w, H, Hk, d, pooling, reduce, kernel };
              engScores.push(eng.snapkvScores(input));
              const s = ref.refSnapkvScores(input).flat();
              refScores.push(s);
              separated &&= wellSeparated(s);
            }
            total++;
            if (!separated) continue;
            compared++;
            expect(engineKept(spec, L, n, Hk, engScores), JSON.stringify({ method, alpha, G, pooling, reduce, n, B, w }))
              .toEqual(ref.refKeptPositions(spec, L, n, Hk, refScores));
          }
        }
      }
    }
    expect(compared).toBeGreaterThan(total / 2);
  });

  it('rejects bad budgets with BadArgumentError naming the field', () => {
    const cases: [BudgetSpecJs, RegExp][] = [
      [{ tokensPerHead: 32 }, /budget\.tokens_per_head must be >= window \+ 1 = 33, got 32/],
      [{ keepRatio: 1.5 }, /budget\.keep_ratio must be in \(0, 1\], got 1\.5/],
      [{ keepRatio: 0 }, /budget\.keep_ratio/],
      [{ keepRatio: 0.5, tokensPerHead: 100 }, /got both/],
      [{ floorAlpha: 2 }, /budget\.floor_alpha/],
      [{ poolKernel: 4 }, /budget\.pool_kernel/],
      [{ poolKernel: 0 }, /budget\.pool_kernel/],
      [{ pyramidBeta: 1 }, /budget\.pyramid_beta/],
      [{ method: 'BEST' as MethodName }, /budget\.method must be one of/],
      [{ window: 0 }, /budget\.window/],
      [{ pooling: 'MIN' as PoolingName }, /budget\.pooling/],
    ];
    for (const [spec, msg] of cases) {
      let err: unknown;
      try { eng.validateBudget(spec); } catch (e) { err = e; }
      expect(err, JSON.stringify(spec)).toBeInstanceOf(Error);
      expect((err as { code: string }).code).toBe('BAD_ARGUMENT');
      expect((err as Error).message).toMatch(msg);
    }
    expect(() => eng.validateBudget({})).not.toThrow();
    expect(() => eng.validateBudget({ method: 'FULL' })).not.toThrow();
    expect(() => eng.validateBudget({ keepRatio: 0.25, method: 'ADA_PYRAMIDKV', pooling: 'AVG', gqaReduce: 'MAXIMUM' })).not.toThrow();
    expect(eng.budgetTokens({}, 5000)).toBe(1024); // the built-in default budget
  });

  it('rejects malformed scoring and allocation arguments with BadArgumentError', () => {
    const x = {
      q: new Float32Array(7), qpos: Int32Array.of(3), k: new Float32Array(4 * 8), kpos: Int32Array.of(0, 1, 2, 3),
      mPrefix: 3, H: 1, Hk: 1, d: 8, pooling: 'MAX' as const, reduce: 'MEAN' as const, kernel: 3,
    };
    expect(() => eng.snapkvScores(x)).toThrow(/q must have 8 elements/);
    expect(() => eng.snapkvScores({ ...x, q: new Float32Array(8), kernel: 4 })).toThrow(/kernel must be odd/);
    expect(() => eng.snapkvScores({ ...x, q: new Float32Array(8), kpos: Int32Array.of(0, 2, 1, 3) })).toThrow(/ascending/);
    expect(() => eng.allocate(new Float32Array(4), 1, 4, 5, 0.2, true)).toThrow(/Bp <= m/);
    try { eng.allocate(new Float32Array(3), 1, 4, 2, 0.2, true); expect.fail('no error'); } catch (e) {
      expect((e as { code: string }).code).toBe('BAD_ARGUMENT');
    }
  });
});
