// THE footprint function (ARCHITECTURE.md, "Footprint formula") and the budget-tokens function (ENGINE.md,
// "Budget"). Router and worker must agree page for page, so both import these; do not re-derive them elsewhere.
//
// Letters (ENGINE.md): L layers, Hk KV heads, P page size (tokens), n prompt tokens, w observation window,
// B budget tokens per head, m max_new_tokens, D decode cap (decode_max_tokens_per_head, 0 = none).
import type { BudgetSpec, GqaReduce, Method, Pooling } from '../proto/index.ts';

export class BudgetSpecError extends Error {
  readonly field: string;
  constructor(field: string, message: string) {
    super(`budget ${field}: ${message}`);
    this.name = 'BudgetSpecError';
    this.field = field;
  }
}

export interface FootprintInput {
  L: number; Hk: number; P: number;
  /** prompt tokens */ n: number;
  /** budget tokens per head (B = n for FULL) */ B: number;
  /** max_new_tokens */ m: number;
  /** decode cap per head, 0 = none */ D: number;
}

function checkCount(name: string, v: number, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) throw new RangeError(`footprint ${name} must be an integer >= ${min}, got ${v}`);
}

/**
 * Pages a request may ever hold: kept = min(n, B); grow = D > 0 ? max(0, min(kept + m, D + P) − kept) : m;
 * pages = L · Hk · (ceil((kept + grow) / P) + 1). The +1 covers per-head page rounding (Ada heads hold unequal
 * lengths, so a layer may need up to one extra page per head). With a decode cap the mean per-head length never
 * exceeds D + P, which is why growth is bounded by it.
 */
export function footprintPages(x: FootprintInput): number {
  checkCount('L', x.L, 1); checkCount('Hk', x.Hk, 1); checkCount('P', x.P, 1);
  checkCount('n', x.n, 0); checkCount('B', x.B, 0); checkCount('m', x.m, 0); checkCount('D', x.D, 0);
  const kept = Math.min(x.n, x.B);
  const grow = x.D > 0 ? Math.max(0, Math.min(kept + x.m, x.D + x.P) - kept) : x.m;
  return x.L * x.Hk * (Math.ceil((kept + grow) / x.P) + 1);
}

/** A BudgetSpec with every defaultable field filled (ENGINE.md / CONTRACTS.md defaults). tokens_per_head and
 *  keep_ratio have no default: exactly one is set unless the method is FULL. */
export interface ResolvedBudgetSpec {
  method: Exclude<Method, 'METHOD_UNSPECIFIED'>;
  tokens_per_head?: number;
  keep_ratio?: number;
  window: number;
  pool_kernel: number;
  floor_alpha: number;
  pyramid_beta: number;
  decode_max_tokens_per_head: number;
  pooling: Exclude<Pooling, 'POOLING_UNSPECIFIED'>;
  gqa_reduce: Exclude<GqaReduce, 'GQA_REDUCE_UNSPECIFIED'>;
}

export const BUDGET_DEFAULTS = {
  method: 'ADA_SNAPKV', window: 32, pool_kernel: 7, floor_alpha: 0.2, pyramid_beta: 20,
  decode_max_tokens_per_head: 0, pooling: 'MAX', gqa_reduce: 'MEAN',
} as const;

/** CONTRACTS.md, "The built-in default budget": used where no budget is named and no fleet default exists. */
export const BUILTIN_DEFAULT_BUDGET: Readonly<ResolvedBudgetSpec> = Object.freeze({
  ...BUDGET_DEFAULTS, tokens_per_head: 1024,
});

/** Fills defaults and checks the fields the footprint depends on; errors name the field. */
export function resolveBudgetSpec(spec: BudgetSpec): ResolvedBudgetSpec {
  const method = spec.method === undefined || spec.method === 'METHOD_UNSPECIFIED' ? BUDGET_DEFAULTS.method : spec.method;
  const window = spec.window ?? BUDGET_DEFAULTS.window;
  if (!Number.isSafeInteger(window) || window < 1) throw new BudgetSpecError('window', `must be an integer >= 1, got ${window}`);
  const D = spec.decode_max_tokens_per_head ?? 0;
  if (!Number.isSafeInteger(D) || D < 0) throw new BudgetSpecError('decode_max_tokens_per_head', `must be an integer >= 0, got ${D}`);
  const out: ResolvedBudgetSpec = {
    method, window,
    pool_kernel: spec.pool_kernel ?? BUDGET_DEFAULTS.pool_kernel,
    floor_alpha: spec.floor_alpha ?? BUDGET_DEFAULTS.floor_alpha,
    pyramid_beta: spec.pyramid_beta ?? BUDGET_DEFAULTS.pyramid_beta,
    decode_max_tokens_per_head: D,
    pooling: spec.pooling === undefined || spec.pooling === 'POOLING_UNSPECIFIED' ? BUDGET_DEFAULTS.pooling : spec.pooling,
    gqa_reduce: spec.gqa_reduce === undefined || spec.gqa_reduce === 'GQA_REDUCE_UNSPECIFIED' ? BUDGET_DEFAULTS.gqa_reduce : spec.gqa_reduce,
  };
  const hasT = spec.tokens_per_head !== undefined && spec.tokens_per_head !== null;
  const hasR = spec.keep_ratio !== undefined && spec.keep_ratio !== null;
  if (method === 'FULL') {
    if (hasT) out.tokens_per_head = spec.tokens_per_head;
    if (hasR) out.keep_ratio = spec.keep_ratio;
    return out;
  }
  if (hasT === hasR) {
    throw new BudgetSpecError(hasT ? 'tokens_per_head' : 'tokens_per_head/keep_ratio',
      `exactly one of tokens_per_head and keep_ratio must be set for method ${method}`);
  }
  if (hasT) {
    const t = spec.tokens_per_head!;
    // The window is always kept and counts inside the budget, so a useful budget holds at least one prefix token.
    if (!Number.isSafeInteger(t) || t < window + 1) {
      throw new BudgetSpecError('tokens_per_head', `must be an integer >= window + 1 (${window + 1}), got ${t}`);
    }
    out.tokens_per_head = t;
  } else {
    const r = spec.keep_ratio!;
    if (!(typeof r === 'number' && r > 0 && r <= 1)) throw new BudgetSpecError('keep_ratio', `must be in (0, 1], got ${r}`);
    out.keep_ratio = r;
  }
  return out;
}

/**
 * B(n), budget tokens per head for a prompt of n tokens: tokens_per_head; or for keep_ratio r,
 * B = min(n, max(w + 1, ceil(r · n))); FULL: n. keep_ratio travels as a proto float (32-bit): r is rounded to float32
 * first (0.1 from JSON and 0.10000000149… from gRPC give the same B), and a product r · n within the float's own
 * representation error (n · 2^-24) of an integer is that integer, so 0.3 · 100 is 30, not 31. This is the engine's
 * rule (csrc/src/compress.cc, budget_tokens); tests/ledger/engine-agreement.test.ts checks the two agree.
 */
export function budgetTokens(spec: BudgetSpec | ResolvedBudgetSpec, n: number): number {
  checkCount('n', n, 0);
  const s = resolveBudgetSpec(spec);
  if (s.method === 'FULL') return n;
  if (s.tokens_per_head !== undefined) return s.tokens_per_head;
  const x = Math.fround(s.keep_ratio!) * n;  // exact in a double for n < 2^29
  const k = Math.round(x);
  const rn = Math.abs(x - k) <= n * 2 ** -24 ? k : Math.ceil(x);
  return Math.min(n, Math.max(s.window + 1, rn));
}

/** The footprint of a request under a budget spec: footprintPages with B = budgetTokens(spec, n) and D from spec. */
export function requestFootprintPages(model: { L: number; Hk: number; P: number }, spec: BudgetSpec | ResolvedBudgetSpec,
  n: number, m: number): number {
  const s = resolveBudgetSpec(spec);
  return footprintPages({ ...model, n, m, B: budgetTokens(s, n), D: s.decode_max_tokens_per_head });
}
