// Ada-KV prefill compression through the whole engine (issue 6): a tiny synthetic model (F32 weights, f32 pages)
// is prefilled with each method, and the positions the engine keeps per (layer, KV head) are compared with what
// the independent reference (tests/reference/adakv.ts) chooses from the float64 reference model's own per-layer q
// and k (tests/reference/llama-f64.ts). Nothing here comes from csrc/ except through the engine's public binding.
//
// fp32 vs float64: the engine scores in fp32, the reference in f64, so two positions whose scores are equal to
// ~1e-7 may be ordered differently. Kept sets must match exactly, except for swaps in which every position that
// one side keeps and the other drops has, on the other side of the swap, a position whose reference score is
// within NEAR_TIE_TOL (relative to the layer's largest score) of its own. Such near-ties are counted and logged;
// the test also bounds their number.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BadArgumentError, Engine, Finish, type EngineBudget } from '../../worker/engine.ts';
import { writeSynthModel } from '../../worker/model/synth.ts';
import { loadReference, type Detailed } from '../reference/llama-f64.ts';
import * as ref from '../reference/adakv.ts';

const NEAR_TIE_TOL = 1e-5;
const P = 16;

function prompt(n: number, seed: number, V: number): number[] {
  let x = 2463534242 ^ (seed * 2654435761);
  return Array.from({ length: n }, () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return 2 + (x % (V - 2));  // no BOS/EOS ids inside the prompt
  });
}

const dirs: string[] = [];
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

interface TinyModel { dir: string; engine: Engine; L: number; H: number; Hk: number; d: number; V: number }

async function tinyModel(seed: number, Hk: number, pageSize = P): Promise<TinyModel> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-adakv-'));
  dirs.push(dir);
  writeSynthModel({ out: dir, preset: 'tiny', seed, dtype: 'f32', overrides: { num_key_value_heads: Hk } });
  const engine = await Engine.load(dir, { numPages: 2048, kvDtype: 'f32', pageSize });
  const i = engine.info;
  return { dir, engine, L: i.numLayers, H: i.numHeads, Hk: i.numKvHeads, d: i.headDim, V: i.vocabSize };
}

/** Prefills one sequence (one step) and returns its kept positions [L][Hk] and stats; the sequence stays alive. */
async function prefill(m: TinyModel, tokens: number[], budget: EngineBudget) {
  const id = m.engine.addSequence(tokens, { temperature: 0, maxNewTokens: 4, ignoreEos: true }, budget);
  const r = await m.engine.step([{ id }]);
  expect(r.seqs[0].outOfPages).toBe(false);
  expect(r.seqs[0].prefillDone).toBe(true);
  const kept = Array.from({ length: m.L }, (_, l) =>
    Array.from({ length: m.Hk }, (_, h) => Array.from(m.engine.headPositions(id, l, h))));
  return { id, kept, stats: m.engine.seqStats(id) };
}

/** The reference's SnapKV scores per layer, [L][Hk * (n - w)], from its own post-RoPE q and k. */
function refScores(det: Detailed, m: TinyModel, n: number, b: ref.ResolvedBudget): Float64Array[] {
  const { L, H, Hk, d } = m;
  const w = b.window;
  return Array.from({ length: L }, (_, l) => {
    const q = new Float64Array(w * H * d);
    for (let i = 0; i < w; i++) for (let h = 0; h < H; h++) q.set(det.q[l][n - w + i][h], (i * H + h) * d);
    const k = new Float64Array(n * Hk * d);
    for (let j = 0; j < n; j++) for (let g = 0; g < Hk; g++) k.set(det.k[l][j][g], (j * Hk + g) * d);
    const S = ref.refSnapkvScores({ q, qpos: Array.from({ length: w }, (_, i) => n - w + i), k,
      kpos: Array.from({ length: n }, (_, j) => j), mPrefix: n - w, H, Hk, d, pooling: b.pooling, reduce: b.gqaReduce,
      kernel: b.poolKernel });
    return Float64Array.from(S.flat());
  });
}

/**
 * Compares kept positions; returns the number of near-tie swaps. Fails on any difference that is not a near tie,
 * on any window position missing, and (uniform methods) on any per-head count difference.
 */
function expectSameKept(engine: number[][][], want: number[][][], scores: Float64Array[] | null, n: number, w: number,
  uniform: boolean, label: string): number {
  let nearTies = 0;
  for (let l = 0; l < want.length; l++) {
    const out: Array<[number, number]> = [], inn: Array<[number, number]> = [];
    for (let h = 0; h < want[l].length; h++) {
      const e = new Set(engine[l][h]), r = new Set(want[l][h]);
      expect(engine[l][h], `${label} l=${l} h=${h}: positions ascending, no duplicates`)
        .toEqual([...e].sort((a, b) => a - b));
      for (let j = Math.max(0, n - w); j < n; j++) expect(e.has(j), `${label} l=${l} h=${h}: window position ${j} kept`).toBe(true);
      if (uniform) expect(e.size, `${label} l=${l} h=${h}: per-head count`).toBe(r.size);
      for (const j of r) if (!e.has(j)) out.push([h, j]);
      for (const j of e) if (!r.has(j)) inn.push([h, j]);
    }
    if (out.length === 0 && inn.length === 0) continue;
    expect(inn.length, `${label} l=${l}: the layer keeps exactly as many tokens as the reference`).toBe(out.length);
    expect(scores, `${label} l=${l}: differs although nothing is compressed`).not.toBeNull();
    const S = scores![l], mPrefix = n - w;
    const s = ([h, j]: [number, number]) => S[h * mPrefix + j];
    const tol = NEAR_TIE_TOL * S.reduce((a, x) => Math.max(a, x), 0);
    for (const [side, other] of [[out, inn], [inn, out]] as const) {
      for (const x of side) {
        const partner = other.some((y) => Math.abs(s(x) - s(y)) <= tol);
        expect(partner, `${label} l=${l}: (head ${x[0]}, pos ${x[1]}) score ${s(x)} differs from the reference's `
          + `choice and is not a near tie (tol ${tol})`).toBe(true);
      }
    }
    nearTies += out.length;
  }
  return nearTies;
}

interface Case { n: number; budget: ref.RefBudget }

/** Methods x alphas x windows x budgets, including n <= B and n = B + 1. */
function cases(n: number): Case[] {
  const out: Case[] = [];
  const shapes: ref.RefBudget[] = [
    { window: 8, tokensPerHead: 24 }, { window: 8, tokensPerHead: 40 }, { window: 32, tokensPerHead: 48 },
    { window: 16, keepRatio: 0.3 }, { window: 8, tokensPerHead: n - 1 },  // n = B + 1
    { window: 8, tokensPerHead: n }, { window: 32, tokensPerHead: n + 20 },  // n <= B: nothing compressed
  ];
  for (const method of ['FULL', 'SNAPKV', 'PYRAMIDKV', 'ADA_SNAPKV', 'ADA_PYRAMIDKV'] as const) {
    for (const shape of shapes) {
      const alphas = ref.isAda(method) ? [0, 0.2, 1] : [0.2];
      for (const floorAlpha of alphas) out.push({ n, budget: { method, ...shape, floorAlpha } });
    }
  }
  return out;
}

const toEngine = (b: ref.RefBudget): EngineBudget => ({ ...b });

describe('Ada-KV prefill: the engine keeps the positions the reference chooses', () => {
  // G = H / Hk = 1, 2 and 4 query heads per KV head
  for (const Hk of [2, 4, 1]) {
    it(`every method, alpha 0/0.2/1, windows 8/16/32, n <= B and n = B + 1 (tiny, Hk=${Hk}, G=${4 / Hk})`, async () => {
      const m = await tinyModel(11 + Hk, Hk);
      const refModel = loadReference(m.dir);
      let compared = 0, nearTies = 0, keptTotal = 0;
      for (const [n, seed] of [[96, 1], [71, 2]] as const) {
        const tokens = prompt(n, seed + Hk, m.V);
        const det = refModel.forwardDetailed(tokens);
        const scoreCache = new Map<string, Float64Array[]>();
        const list = cases(n);
        // pooling, GQA reduction and kernel variants on the Ada method
        list.push({ n, budget: { method: 'ADA_SNAPKV', window: 8, tokensPerHead: 32, pooling: 'AVG' } },
          { n, budget: { method: 'ADA_SNAPKV', window: 8, tokensPerHead: 32, gqaReduce: 'MAXIMUM' } },
          { n, budget: { method: 'ADA_PYRAMIDKV', window: 8, tokensPerHead: 32, poolKernel: 1, pyramidBeta: 4 } },
          { n, budget: { method: 'SNAPKV', window: 4, tokensPerHead: 20, poolKernel: 3, pooling: 'AVG', gqaReduce: 'MAXIMUM' } });
        for (const c of list) {
          const b = ref.resolveBudget(c.budget);
          const label = `n=${n} ${JSON.stringify(c.budget)}`;
          const compresses = ref.refCompresses(c.budget, n);
          const key = `${b.window}/${b.pooling}/${b.gqaReduce}/${b.poolKernel}`;
          let scores: Float64Array[] | null = null;
          if (compresses) {
            if (!scoreCache.has(key)) scoreCache.set(key, refScores(det, m, n, b));
            scores = scoreCache.get(key)!;
          }
          const want = ref.refKeptPositions(c.budget, m.L, n, m.Hk, scores ?? []);
          const { id, kept, stats } = await prefill(m, tokens, toEngine(c.budget));
          nearTies += expectSameKept(kept, want, scores, n, compresses ? b.window : 0, !ref.isAda(b.method), label);
          const total = kept.flat().reduce((s, x) => s + x.length, 0);
          expect(stats.keptTokens, label).toBe(total);
          expect(stats.fullTokens, label).toBe(m.L * m.Hk * n);
          expect(stats.minHeadTokens, label).toBe(Math.min(...kept.flat().map((x) => x.length)));
          expect(stats.maxHeadTokens, label).toBe(Math.max(...kept.flat().map((x) => x.length)));
          // pages are per (layer, head): each head's list rounds up on its own
          expect(stats.pages, label).toBe(kept.flat().reduce((s, x) => s + Math.ceil(x.length / P), 0));
          if (compresses) expect(total, label).toBe(m.L * m.Hk * ref.refBudgetTokens(c.budget, n));
          else expect(total, label).toBe(m.L * m.Hk * n);
          m.engine.release(id);
          compared++; keptTotal += total;
        }
      }
      console.log(`Hk=${Hk}: ${compared} prefills compared with the reference; near-tie swaps ${nearTies} `
        + `of ${keptTotal} kept tokens`);
      expect(nearTies).toBeLessThanOrEqual(Math.ceil(keptTotal * 1e-3));
      expect(m.engine.poolStats().freePages).toBe(m.engine.poolStats().totalPages);
      m.engine.close();
    });
  }
});

describe('Ada-KV prefill: budgets, pages and the pool', () => {
  let m: TinyModel;
  beforeAll(async () => { m = await tinyModel(5, 2); });
  afterAll(() => m.engine.close());

  it('ADA_SNAPKV at budget B keeps exactly L*Hk*B tokens when n > B, heads holding different lengths', async () => {
    let uneven = 0;
    for (const [n, B, w] of [[300, 64, 32], [200, 33, 32], [129, 128, 8], [500, 100, 16]] as const) {
      const { id, kept, stats } = await prefill(m, prompt(n, n, m.V), { method: 'ADA_SNAPKV', tokensPerHead: B, window: w });
      expect(stats.keptTokens).toBe(m.L * m.Hk * B);
      for (const layer of kept) expect(layer.reduce((s, x) => s + x.length, 0)).toBe(m.Hk * B);
      if (stats.minHeadTokens !== stats.maxHeadTokens) uneven++;
      m.engine.release(id);
    }
    expect(uneven).toBeGreaterThan(0);  // Ada really allocates unevenly on some of these prompts
  });

  it('FULL compresses nothing', async () => {
    const n = 300;
    const { id, kept, stats } = await prefill(m, prompt(n, 3, m.V), { method: 'FULL' });
    for (const layer of kept) for (const head of layer) expect(head).toEqual(Array.from({ length: n }, (_, j) => j));
    expect(stats.keptTokens).toBe(stats.fullTokens);
    expect(stats.fullTokens).toBe(m.L * m.Hk * n);
    expect(stats.pages).toBe(m.L * m.Hk * Math.ceil(n / P));
    m.engine.release(id);
  });

  it('keep_ratio r compresses to B = min(n, max(w + 1, ceil(r n)))', async () => {
    // r as thousandths, so ceil(r n) is computed exactly (0.3 of 100 is 30, not 31)
    for (const [n, rMilli, w] of [[100, 300, 8], [97, 250, 8], [50, 100, 16], [200, 900, 32], [60, 1000, 8], [123, 333, 8]] as const) {
      const B = Math.min(n, Math.max(w + 1, Math.ceil((rMilli * n) / 1000 - 1e-9)));
      const { id, stats } = await prefill(m, prompt(n, rMilli, m.V), { method: 'ADA_SNAPKV', keepRatio: rMilli / 1000, window: w });
      expect(stats.keptTokens, `n=${n} r=${rMilli / 1000} w=${w}`).toBe(m.L * m.Hk * B);
      m.engine.release(id);
    }
  });

  it('pages held equal the sum over (layer, head) of ceil(kept / P) for an odd page size too', async () => {
    const m7 = await tinyModel(6, 2, 7);
    for (const method of ['SNAPKV', 'PYRAMIDKV', 'ADA_SNAPKV', 'ADA_PYRAMIDKV'] as const) {
      const { id, kept, stats } = await prefill(m7, prompt(211, 9, m7.V), { method, tokensPerHead: 45, window: 8, floorAlpha: 0 });
      expect(stats.pages, method).toBe(kept.flat().reduce((s, x) => s + Math.ceil(x.length / 7), 0));
      expect(m7.engine.poolStats().totalPages - m7.engine.poolStats().freePages, method).toBe(stats.pages);
      m7.engine.release(id);
    }
    expect(m7.engine.poolStats().freePages).toBe(m7.engine.poolStats().totalPages);
    m7.engine.close();
  });

  it('a prompt whose FULL cache does not fit in the pool still runs when its compressed cache fits', async () => {
    const n = 1000, B = 64;
    const fullPages = m.L * m.Hk * Math.ceil(n / P);  // 252
    const numPages = 40;  // compressed: L*Hk*ceil(64/16) = 16 pages after prefill, room for decode growth
    expect(fullPages).toBeGreaterThan(numPages);
    const small = await Engine.load(m.dir, { numPages, kvDtype: 'f32' });
    try {
      const tokens = prompt(n, 77, m.V);
      const full = small.addSequence(tokens, { temperature: 0, maxNewTokens: 8, ignoreEos: true }, { method: 'FULL' });
      const rf = (await small.step([{ id: full }])).seqs[0];
      expect(rf.outOfPages).toBe(true);
      expect(rf.finish).toBe(Finish.Failed);
      small.release(full);
      expect(small.poolStats().freePages).toBe(numPages);

      const id = small.addSequence(tokens, { temperature: 0, maxNewTokens: 8, ignoreEos: true }, { method: 'ADA_SNAPKV', tokensPerHead: B });
      const out: number[] = [];
      for (let s = 0; s < 8; s++) {
        const r = (await small.step([{ id }])).seqs[0];
        expect(r.outOfPages).toBe(false);
        out.push(r.token);
        if (s === 7) expect(r.finish).toBe(Finish.Length);
      }
      const st = small.seqStats(id);
      expect(st.keptTokens).toBe(m.L * m.Hk * (B + 7));  // 7 decode steps appended one token per head each
      expect(st.peakPages).toBeLessThanOrEqual(numPages);
      small.release(id);
      expect(small.poolStats().freePages).toBe(numPages);
    } finally {
      small.close();
    }
  });

  it('rejects bad budgets with a BadArgumentError naming the field, and adds no sequence', () => {
    const bad: Array<[object, RegExp]> = [
      [{ method: 'SNAPKV', tokensPerHead: 32, window: 32 }, /tokens_per_head.*window \+ 1/],
      [{ method: 'SNAPKV', keepRatio: 0 }, /keep_ratio/], [{ method: 'SNAPKV', keepRatio: 1.5 }, /keep_ratio/],
      [{ floorAlpha: -0.1 }, /floor_alpha/], [{ floorAlpha: 1.1 }, /floor_alpha/],
      [{ poolKernel: 4 }, /pool_kernel/], [{ poolKernel: 0 }, /pool_kernel/], [{ pyramidBeta: 1 }, /pyramid_beta/],
      [{ method: 'BOGUS' }, /method/], [{ method: 'ADA_SNAPKV', tokensPerHead: 100, keepRatio: 0.5 }, /tokens_per_head and keep_ratio/],
    ];
    for (const [budget, field] of bad) {
      let err: unknown;
      try { m.engine.addSequence(prompt(50, 1, m.V), { maxNewTokens: 2 }, budget as EngineBudget); } catch (e) { err = e; }
      expect(err, JSON.stringify(budget)).toBeInstanceOf(BadArgumentError);
      expect((err as Error).message, JSON.stringify(budget)).toMatch(field);
    }
    expect(m.engine.poolStats().sequences).toBe(0);
  });

  it('leaks no pages: every method, released after prefill, mid-decode and after finishing', async () => {
    const total = m.engine.poolStats().totalPages;
    const ids: number[] = [];
    for (const method of ['FULL', 'SNAPKV', 'PYRAMIDKV', 'ADA_SNAPKV', 'ADA_PYRAMIDKV'] as const) {
      ids.push(m.engine.addSequence(prompt(150, ids.length, m.V), { temperature: 0.7, seed: 1, maxNewTokens: 5, ignoreEos: true },
        { method, tokensPerHead: 40, window: 8, decodeMaxTokensPerHead: method === 'ADA_SNAPKV' ? 48 : 0 }));
    }
    await m.engine.step(ids.map((id) => ({ id })));
    expect(m.engine.poolStats().freePages).toBeLessThan(total);
    m.engine.release(ids.shift()!);  // after prefill
    await m.engine.step(ids.map((id) => ({ id })));
    m.engine.release(ids.shift()!);  // mid-decode
    for (let s = 0; s < 3; s++) await m.engine.step(ids.map((id) => ({ id })));  // tokens 3..5 of 5
    for (const id of ids) expect(m.engine.seqStats(id).finish).toBe(Finish.Length);
    for (const id of ids) m.engine.release(id);  // finished
    expect(m.engine.poolStats().freePages).toBe(total);
    expect(m.engine.poolStats().sequences).toBe(0);
  });
});
