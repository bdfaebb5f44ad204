// An independent float64 reference of the Ada-KV compression math (ENGINE.md "Prefill with compression" and
// "Ada-KV allocation"): budgets, the pyramid schedule, SnapKV scores, and the safeguarded allocation. It imports
// nothing from csrc/ or worker/ and is written the slow, obvious way: full sorts instead of selection, exact
// rational arithmetic (BigInt) for the pyramid schedule, float64 everywhere.
//
// Shapes (ENGINE.md letters): q [w, H, d], k [m, Hk, d], scores [Hk, mPrefix], G = H / Hk.

export type RefMethod = 'FULL' | 'SNAPKV' | 'PYRAMIDKV' | 'ADA_SNAPKV' | 'ADA_PYRAMIDKV';
export type RefPooling = 'MAX' | 'AVG';
export type RefReduce = 'MEAN' | 'MAXIMUM';

export interface RefBudget {
  method?: RefMethod;
  tokensPerHead?: number;
  keepRatio?: number;
  window?: number;
  poolKernel?: number;
  floorAlpha?: number;
  pyramidBeta?: number;
  pooling?: RefPooling;
  gqaReduce?: RefReduce;
}

export interface ResolvedBudget {
  method: RefMethod;
  tokensPerHead: number | undefined; // undefined when keepRatio is used
  keepRatio: number | undefined;
  window: number;
  poolKernel: number;
  floorAlpha: number;
  pyramidBeta: number;
  pooling: RefPooling;
  gqaReduce: RefReduce;
}

/** Fills ENGINE.md's defaults: ADA_SNAPKV, 1024 tokens per head (unless a keep ratio is given), window 32,
 *  kernel 7, alpha 0.2, beta 20, MAX pooling, MEAN reduce. */
export function resolveBudget(b: RefBudget): ResolvedBudget {
  return {
    method: b.method ?? 'ADA_SNAPKV',
    tokensPerHead: b.keepRatio !== undefined ? b.tokensPerHead : (b.tokensPerHead ?? 1024),
    keepRatio: b.keepRatio,
    window: b.window ?? 32,
    poolKernel: b.poolKernel ?? 7,
    floorAlpha: b.floorAlpha ?? 0.2,
    pyramidBeta: b.pyramidBeta ?? 20,
    pooling: b.pooling ?? 'MAX',
    gqaReduce: b.gqaReduce ?? 'MEAN',
  };
}

export const isAda = (m: RefMethod): boolean => m === 'ADA_SNAPKV' || m === 'ADA_PYRAMIDKV';
export const isPyramid = (m: RefMethod): boolean => m === 'PYRAMIDKV' || m === 'ADA_PYRAMIDKV';

/** r * n rounded up (or down) where r travels as a 32-bit float (proto `float`): a product within the float's own
 *  representation error (n * 2^-24) of an integer counts as that integer, so 0.3 of 100 tokens is 30, not 31. */
export function scaledCount(r: number, n: number, mode: 'ceil' | 'floor'): number {
  const x = Math.fround(r) * n;
  const k = Math.round(x);
  if (Math.abs(x - k) <= n * 2 ** -24) return k;
  return mode === 'ceil' ? Math.ceil(x) : Math.floor(x);
}

/** B for a prompt of n tokens. */
export function refBudgetTokens(spec: RefBudget, n: number): number {
  const b = resolveBudget(spec);
  if (b.method === 'FULL') return n;
  if (b.keepRatio !== undefined) return Math.min(n, Math.max(b.window + 1, scaledCount(b.keepRatio, n, 'ceil')));
  return b.tokensPerHead as number;
}

export function refCompresses(spec: RefBudget, n: number): boolean {
  return resolveBudget(spec).method !== 'FULL' && n > refBudgetTokens(spec, n);
}

// ---- exact rationals for the pyramid schedule: value = p / q, q > 0 ----
interface Rat { p: bigint; q: bigint }
const rat = (p: bigint, q = 1n): Rat => (q < 0n ? { p: -p, q: -q } : { p, q });
const sub = (a: Rat, b: Rat): Rat => rat(a.p * b.q - b.p * a.q, a.q * b.q);
const mul = (a: Rat, b: Rat): Rat => rat(a.p * b.p, a.q * b.q);
const div = (a: Rat, b: Rat): Rat => rat(a.p * b.q, a.q * b.p);
const cmp = (a: Rat, b: Rat): number => {
  const l = a.p * b.q, r = b.p * a.q;
  return l < r ? -1 : l > r ? 1 : 0;
};
/** A float32 value as an exact rational (it is a dyadic fraction). */
function ratOfFloat(x: number): Rat {
  let v = Math.fround(x);
  let q = 1n;
  while (!Number.isInteger(v)) { v *= 2; q *= 2n; } // exact: doubling a binary fraction loses nothing
  return rat(BigInt(v), q);
}

/** Per-layer prefix budgets B'_l for a compressed prompt: uniform B - w, or the pyramid from max (layer 0) to
 *  min (layer L-1) with min = B'/beta, max = 2B' - min, capped at n - w (min raised to keep the mean), rounded by
 *  largest remainder in exact arithmetic (equal remainders: lower layer first). */
export function refLayerPrefixBudgets(spec: RefBudget, L: number, n: number): number[] {
  const b = resolveBudget(spec);
  if (!refCompresses(spec, n)) throw new Error(`prompt of ${n} tokens is not compressed`);
  const Bp = refBudgetTokens(spec, n) - b.window;
  const prefix = n - b.window;
  if (!isPyramid(b.method) || L === 1) return new Array<number>(L).fill(Bp);
  const BpR = rat(BigInt(Bp));
  let min = div(BpR, ratOfFloat(b.pyramidBeta));
  let max = sub(mul(rat(2n), BpR), min);
  if (cmp(max, rat(BigInt(prefix))) > 0) {
    max = rat(BigInt(prefix));
    min = sub(mul(rat(2n), BpR), max);
  }
  const layers = Array.from({ length: L }, (_, l) => {
    const x = sub(max, div(mul(sub(max, min), rat(BigInt(l))), rat(BigInt(L - 1))));
    const whole = x.p / x.q; // x >= 0, so truncation is floor
    return { l, whole, frac: rat(x.p - whole * x.q, x.q) };
  });
  let remaining = BigInt(L * Bp) - layers.reduce((s, x) => s + x.whole, 0n);
  const order = [...layers].sort((a, c) => cmp(c.frac, a.frac) || a.l - c.l);
  const out = layers.map((x) => x.whole);
  for (const x of order) {
    if (remaining === 0n) break;
    out[x.l] += 1n;
    remaining -= 1n;
  }
  return out.map(Number);
}

// ---- SnapKV scores ----

/** 1-D pooling, stride 1, padding kernel/2: MAX ignores the (-inf) padding, AVG counts the zero padding. */
export function refPool(x: ArrayLike<number>, kernel: number, mode: RefPooling): number[] {
  const r = (kernel - 1) / 2;
  const out: number[] = [];
  for (let j = 0; j < x.length; j++) {
    const window: number[] = [];
    for (let t = j - r; t <= j + r; t++) window.push(t >= 0 && t < x.length ? x[t] : mode === 'MAX' ? -Infinity : 0);
    out.push(mode === 'MAX' ? Math.max(...window) : window.reduce((s, v) => s + v, 0) / kernel);
  }
  return out;
}

/** Reduces per-query-head rows A [H][m] to per-KV-head rows [Hk][m] over each group of G = H / Hk heads. */
export function refReduceGqa(A: number[][], Hk: number, mode: RefReduce): number[][] {
  const G = A.length / Hk;
  return Array.from({ length: Hk }, (_, g) => {
    const rows = A.slice(g * G, (g + 1) * G);
    return rows[0].map((_, j) => {
      const vals = rows.map((row) => row[j]);
      return mode === 'MEAN' ? vals.reduce((s, v) => s + v, 0) / G : Math.max(...vals);
    });
  });
}

/** Softmax attention of one query row over keys, float64; keys not visible get weight 0. */
export function refAttentionRow(qv: ArrayLike<number>, keys: ArrayLike<number>[], visible: boolean[]): number[] {
  const d = qv.length;
  const logits = keys.map((kv, j) => {
    if (!visible[j]) return -Infinity;
    let s = 0;
    for (let t = 0; t < d; t++) s += qv[t] * kv[t];
    return s / Math.sqrt(d);
  });
  const mx = Math.max(...logits);
  if (mx === -Infinity) return logits.map(() => 0);
  const e = logits.map((l) => (l === -Infinity ? 0 : Math.exp(l - mx)));
  const z = e.reduce((s, v) => s + v, 0);
  return e.map((v) => v / z);
}

export interface RefSnapkvInput {
  q: ArrayLike<number>; // [w, H, d]
  qpos: ArrayLike<number>; // [w]
  k: ArrayLike<number>; // [m, Hk, d]
  kpos: ArrayLike<number>; // [m]
  mPrefix: number;
  H: number;
  Hk: number;
  d: number;
  pooling: RefPooling;
  reduce: RefReduce;
  kernel: number;
}

/** SnapKV scores [Hk][mPrefix]: mean over window queries of the softmax weights, GQA-reduced, then pooled. */
export function refSnapkvScores(x: RefSnapkvInput): number[][] {
  const w = x.qpos.length, m = x.kpos.length, G = x.H / x.Hk;
  const slice = (a: ArrayLike<number>, off: number, len: number): number[] => Array.from({ length: len }, (_, t) => a[off + t]);
  const A: number[][] = [];
  for (let h = 0; h < x.H; h++) {
    const g = Math.floor(h / G);
    const keys = Array.from({ length: m }, (_, j) => slice(x.k, (j * x.Hk + g) * x.d, x.d));
    const acc = new Array<number>(m).fill(0);
    for (let i = 0; i < w; i++) {
      const visible = Array.from({ length: m }, (_, j) => x.kpos[j] <= x.qpos[i]);
      const row = refAttentionRow(slice(x.q, (i * x.H + h) * x.d, x.d), keys, visible);
      for (let j = 0; j < m; j++) acc[j] += row[j] / w;
    }
    A.push(acc.slice(0, x.mPrefix));
  }
  return refReduceGqa(A, x.Hk, x.reduce).map((row) => refPool(row, x.kernel, x.pooling));
}

// ---- allocation ----

/** Kept prefix positions per head, ascending. Uniform: each head's top Bp. Ada: each head's top
 *  f = floor(alpha * Bp), then the best Hk * (Bp - f) of what is left over all heads. Order everywhere: higher
 *  score, then lower head, then lower position. S is [Hk][m] or flat [Hk * m]. */
export function refAllocate(S: ArrayLike<number> | number[][], Hk: number, m: number, Bp: number, alpha: number,
  ada: boolean): number[][] {
  const score = (h: number, j: number): number =>
    Array.isArray(S[0]) ? (S as number[][])[h][j] : (S as ArrayLike<number>)[h * m + j];
  const better = (a: [number, number], b: [number, number]): number =>
    score(b[0], b[1]) - score(a[0], a[1]) || a[0] - b[0] || a[1] - b[1];
  const f = ada ? scaledCount(alpha, Bp, 'floor') : Bp;
  const kept: Set<number>[] = Array.from({ length: Hk }, () => new Set<number>());
  for (let h = 0; h < Hk; h++) {
    const mine: [number, number][] = Array.from({ length: m }, (_, j) => [h, j]);
    mine.sort(better);
    for (const [, j] of mine.slice(0, f)) kept[h].add(j);
  }
  const rest: [number, number][] = [];
  for (let h = 0; h < Hk; h++) for (let j = 0; j < m; j++) if (!kept[h].has(j)) rest.push([h, j]);
  rest.sort(better);
  for (const [h, j] of rest.slice(0, Hk * (Bp - f))) kept[h].add(j);
  return kept.map((s) => [...s].sort((a, b) => a - b));
}

/** Kept positions per (layer, head), window included, for a prompt of n tokens and prefix scores per layer
 *  (each [Hk * (n - w)]). A prompt that is not compressed keeps 0..n-1 everywhere. */
export function refKeptPositions(spec: RefBudget, L: number, n: number, Hk: number,
  scores: ArrayLike<number>[]): number[][][] {
  const b = resolveBudget(spec);
  const all = Array.from({ length: n }, (_, j) => j);
  if (!refCompresses(spec, n)) return Array.from({ length: L }, () => Array.from({ length: Hk }, () => [...all]));
  const m = n - b.window;
  const window = all.slice(m);
  const budgets = refLayerPrefixBudgets(spec, L, n);
  return budgets.map((Bp, l) =>
    refAllocate(scores[l], Hk, m, Bp, b.floorAlpha, isAda(b.method)).map((prefix) => [...prefix, ...window]));
}
