// Typed wrappers over the compression exports of the addon (csrc/src/addon/compress_binding.cc): budget
// validation and sizing, the pyramid schedule, SnapKV scores and the Ada-KV allocation. Errors come out as the
// EngineError subclasses of worker/engine.ts (a bad budget is a BadArgumentError naming the field).
import { native, toEngineError } from './engine.ts';

export type MethodName = 'FULL' | 'SNAPKV' | 'PYRAMIDKV' | 'ADA_SNAPKV' | 'ADA_PYRAMIDKV';
export type PoolingName = 'MAX' | 'AVG';
export type GqaReduceName = 'MEAN' | 'MAXIMUM';

/** The proto BudgetSpec in camelCase; absent fields take the defaults of ENGINE.md (ADA_SNAPKV, 1024 tokens per
 *  head, window 32, kernel 7, alpha 0.2, beta 20, MAX, MEAN). With keepRatio given, tokensPerHead is unset. */
export interface BudgetSpecJs {
  method?: MethodName;
  tokensPerHead?: number;
  keepRatio?: number;
  window?: number;
  poolKernel?: number;
  floorAlpha?: number;
  pyramidBeta?: number;
  decodeMaxTokensPerHead?: number;
  pooling?: PoolingName;
  gqaReduce?: GqaReduceName;
}

interface CompressAddon {
  validateBudget(spec: BudgetSpecJs): void;
  budgetTokens(spec: BudgetSpecJs, n: number): number;
  compresses(spec: BudgetSpecJs, n: number): boolean;
  layerPrefixBudgets(spec: BudgetSpecJs, L: number, n: number): number[];
  snapkvScores(
    q: Float32Array, qpos: Int32Array, w: number, k: Float32Array, kpos: Int32Array, m: number, mPrefix: number,
    H: number, Hk: number, d: number, pooling: PoolingName, reduce: GqaReduceName, kernel: number,
  ): Float32Array;
  allocate(S: Float32Array, Hk: number, m: number, Bp: number, alpha: number, ada: boolean): number[][];
}

function addon(): CompressAddon {
  return native() as unknown as CompressAddon;
}

function call<T>(fn: (a: CompressAddon) => T): T {
  try {
    return fn(addon());
  } catch (err) {
    throw toEngineError(err);
  }
}

/** Throws BadArgumentError naming the field when the budget is invalid. */
export function validateBudget(spec: BudgetSpecJs): void {
  call((a) => a.validateBudget(spec));
}

/** B for a prompt of n tokens (validates the spec first). */
export function budgetTokens(spec: BudgetSpecJs, n: number): number {
  return call((a) => a.budgetTokens(spec, n));
}

/** True when a prompt of n tokens is compressed at all (method not FULL and n > B). */
export function compresses(spec: BudgetSpecJs, n: number): boolean {
  return call((a) => a.compresses(spec, n));
}

/** Per-layer prefix budgets B'_l (window excluded), summing to L * (B - w); only for compressed prompts. */
export function layerPrefixBudgets(spec: BudgetSpecJs, L: number, n: number): number[] {
  return call((a) => a.layerPrefixBudgets(spec, L, n));
}

export interface SnapkvInput {
  q: Float32Array; // [w, H, d] window queries (post-RoPE)
  qpos: Int32Array; // [w]
  k: Float32Array; // [m, Hk, d] keys (post-RoPE)
  kpos: Int32Array; // [m], ascending
  mPrefix: number; // scores are produced for keys 0 .. mPrefix-1
  H: number;
  Hk: number;
  d: number;
  pooling: PoolingName;
  reduce: GqaReduceName;
  kernel: number;
}

/** SnapKV scores [Hk, mPrefix] of one layer (compress.h snapkv_scores). */
export function snapkvScores(x: SnapkvInput): Float32Array {
  return call((a) =>
    a.snapkvScores(x.q, x.qpos, x.qpos.length, x.k, x.kpos, x.kpos.length, x.mPrefix, x.H, x.Hk, x.d, x.pooling,
      x.reduce, x.kernel));
}

/** Kept prefix positions per head (ascending) for scores S [Hk, m] and per-head prefix budget Bp. */
export function allocate(S: Float32Array, Hk: number, m: number, Bp: number, alpha: number, ada: boolean): number[][] {
  return call((a) => a.allocate(S, Hk, m, Bp, alpha, ada));
}
