// From a KVBudget's spec to the BudgetSpec the ledger stores (proto field names, snake_case, enum names), and the
// re-validation a schema cannot do: the engine's own rules (worker/compress-native.ts validateBudget, the same code
// a worker runs on every request), which also see float32 rounding (a keepRatio of 1e-50 is 0 to the engine), and
// the ledger's (ledger/footprint.ts resolveBudgetSpec, what routers size requests with). Both must accept a budget:
// the engine alone would take "neither tokensPerHead nor keepRatio" as its built-in 1024, which routers refuse.
import { BudgetSpecError, resolveBudgetSpec } from '../ledger/index.ts';
import type { BudgetSpec, GqaReduce, Method, Pooling } from '../proto/index.ts';
import type { BudgetSpecJs, GqaReduceName, MethodName, PoolingName } from '../worker/compress-native.ts';
import { BadArgumentError } from '../worker/engine.ts';
import type { BudgetMethod, KVBudgetSpec } from './api/v1alpha1.ts';
import { KVBUDGET_CRD } from './api/v1alpha1.ts';

const METHOD: Record<BudgetMethod, MethodName & Method> = {
  Full: 'FULL', SnapKV: 'SNAPKV', PyramidKV: 'PYRAMIDKV', AdaSnapKV: 'ADA_SNAPKV', AdaPyramidKV: 'ADA_PYRAMIDKV',
};
const POOLING: Record<KVBudgetSpec['pooling'], PoolingName & Pooling> = { Max: 'MAX', Avg: 'AVG' };
const GQA_REDUCE: Record<KVBudgetSpec['gqaReduce'], GqaReduceName & GqaReduce> = { Mean: 'MEAN', Max: 'MAXIMUM' };

/** The spec's field names as the engine and the ledger spell them (for messages that name the user's field). */
const SNAKE_TO_SPEC: Record<string, string> = {
  method: 'method', tokens_per_head: 'tokensPerHead', keep_ratio: 'keepRatio', window: 'window', pool_kernel: 'poolKernel',
  pooling: 'pooling', gqa_reduce: 'gqaReduce', floor_alpha: 'floorAlpha', pyramid_beta: 'pyramidBeta',
  decode_max_tokens_per_head: 'decodeMaxTokensPerHead',
};

/** The schema's defaults, read from the CRD itself so they are written once. */
const SPEC_DEFAULTS: Record<string, unknown> = Object.fromEntries(
  Object.entries(KVBUDGET_CRD.spec.versions[0].schema.openAPIV3Schema.properties!.spec.properties!)
    .filter(([, s]) => s.default !== undefined).map(([k, s]) => [k, s.default]));

/** The spec with every schema default filled (the API server fills them on admission; an object stored before
 *  a default was added may lack one). */
export function withDefaults(spec: KVBudgetSpec): KVBudgetSpec {
  return { ...SPEC_DEFAULTS, ...spec } as KVBudgetSpec;
}

function enumValue<K extends string, V>(table: Record<K, V>, value: unknown, field: string): V {
  if (typeof value === 'string' && Object.hasOwn(table, value)) return table[value as K];
  throw new InvalidBudgetError(`spec.${field}: unsupported value ${JSON.stringify(value)}; expected one of ${Object.keys(table).join(', ')}`);
}

/** A KVBudget the engine would refuse. Expected (a user's mistake), so it becomes a condition, never a crash. */
export class InvalidBudgetError extends Error {
  constructor(message: string) { super(message); this.name = 'InvalidBudgetError'; }
}

/** The ledger's BudgetSpec for a KVBudget spec (defaults filled; tokens_per_head/keep_ratio only when set). */
export function toLedgerBudget(input: KVBudgetSpec): BudgetSpec {
  const s = withDefaults(input);
  const out: BudgetSpec = {
    method: enumValue(METHOD, s.method, 'method'),
    window: s.window,
    pool_kernel: s.poolKernel,
    pooling: enumValue(POOLING, s.pooling, 'pooling'),
    gqa_reduce: enumValue(GQA_REDUCE, s.gqaReduce, 'gqaReduce'),
    floor_alpha: s.floorAlpha,
    pyramid_beta: s.pyramidBeta,
    decode_max_tokens_per_head: s.decodeMaxTokensPerHead,
  };
  if (s.tokensPerHead !== undefined) out.tokens_per_head = s.tokensPerHead;
  if (s.keepRatio !== undefined) out.keep_ratio = s.keepRatio;
  return out;
}

/** The same budget in the addon's camelCase shape. */
function toEngineBudget(b: BudgetSpec): BudgetSpecJs {
  return {
    method: b.method as MethodName, tokensPerHead: b.tokens_per_head, keepRatio: b.keep_ratio, window: b.window,
    poolKernel: b.pool_kernel, floorAlpha: b.floor_alpha, pyramidBeta: b.pyramid_beta,
    decodeMaxTokensPerHead: b.decode_max_tokens_per_head, pooling: b.pooling as PoolingName, gqaReduce: b.gqa_reduce as GqaReduceName,
  };
}

/** The engine's budget check: throws BadArgumentError naming the field; other errors (no addon) are not about the budget. */
export type EngineValidate = (spec: BudgetSpecJs) => void;

/** The engine's messages name proto fields (`budget.keep_ratio`); say the spec's names instead (`spec.keepRatio`). */
function specWords(message: string): string {
  return message.replace(/\bbudget\.([a-z_]+)/g, (m, f: string) => (SNAKE_TO_SPEC[f] ? `spec.${SNAKE_TO_SPEC[f]}` : m))
    .replace(/\bbudget: /, 'spec: ')
    .replace(/\b[a-z]+(?:_[a-z]+)+\b/g, (w) => SNAKE_TO_SPEC[w] ?? w);
}

/**
 * The ledger BudgetSpec of a valid KVBudget, or InvalidBudgetError with the engine's (or the ledger's) reason in
 * the spec's words.
 * Errors that are not about the budget (the addon missing or broken) propagate: the reconcile fails and retries.
 */
export function resolveKVBudget(spec: KVBudgetSpec, validate: EngineValidate): BudgetSpec {
  const budget = toLedgerBudget(spec);
  try {
    validate(toEngineBudget(budget));
  } catch (err) {
    if (err instanceof BadArgumentError) throw new InvalidBudgetError(specWords(err.message));
    throw err;
  }
  try {
    resolveBudgetSpec(budget);
  } catch (err) {
    if (err instanceof BudgetSpecError) {
      throw new InvalidBudgetError(specWords(err.message.replace(/^budget ([a-z_/]+): /, (_m, f: string) =>
        `${f.split('/').map((x) => `spec.${SNAKE_TO_SPEC[x] ?? x}`).join('/')}: `)));
    }
    throw err;
  }
  return budget;
}
