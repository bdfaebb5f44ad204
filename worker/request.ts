// GenerateRequest → what the scheduler runs. Every check that can be made before admission is made here, at once,
// and names the field (CONTRACTS.md: absent = default, present and invalid = INVALID_ARGUMENT). The engine's
// addSequence re-validates at admission; this layer exists so bad input never waits in the queue.
import { randomBytes } from 'node:crypto';
import type { BudgetSelector, BudgetSpec, GenerateRequest } from '../proto/index.ts';
import { BUILTIN_DEFAULT_BUDGET, BudgetSpecError, resolveBudgetSpec, type ResolvedBudgetSpec } from '../ledger/footprint.ts';
import { BudgetSelectorError, budgetChoice, DEFAULT_BUDGET_NAME, lookupBudgetName } from '../ledger/budget-names.ts';
import type { EngineBudget } from './engine.ts';
import type { Tokenizer } from './tokenizer.ts';

export const DEFAULT_MAX_NEW_TOKENS = 256;

/**
 * The new tokens a request of n prompt tokens is planned with, checked against max_model_len as the worker and the
 * router both check it: INVALID_ARGUMENT when the prompt leaves no room for a token, when max_new_tokens is 0, or
 * when it exceeds the room; an absent max_new_tokens is the default, within the room.
 */
export function plannedNewTokens(n: number, maxNew: number | undefined, maxModelLen: number, promptField: string): number {
  if (n >= maxModelLen) {
    throw invalid(promptField, `the prompt has ${n} tokens; max_model_len is ${maxModelLen}, which leaves no room for a new token`);
  }
  const room = maxModelLen - n;
  if (maxNew === undefined) return Math.min(DEFAULT_MAX_NEW_TOKENS, room);
  if (maxNew === 0) throw invalid('sampling.max_new_tokens', 'must be at least 1');
  if (maxNew > room) {
    throw invalid('sampling.max_new_tokens', `${maxNew} exceeds the model's room: prompt ${n} + max_new_tokens `
      + `${maxNew} > max_model_len ${maxModelLen}`);
  }
  return maxNew;
}

/** A call cancelled this close to its deadline (or after it) is counted as DEADLINE_EXCEEDED, not CANCELLED. The
 *  client's own deadline timer cancels the stream at ITS deadline, and grpc-js computes the server's copy when it
 *  processes the headers, later on a busy event loop: so the server sees the deadline's cancel up to that lag early
 *  (a 20 ms slack misread it as CANCELLED under load). A client that cancels within this of its deadline is
 *  counted as a deadline. The router counts its clients' cancels by the same rule. */
export const DEADLINE_SLACK_MS = 250;

const U64_MAX = (1n << 64n) - 1n;

/** A request the worker refuses; `code` is mapped to a gRPC status at the server edge only. */
export class RequestError extends Error {
  readonly code: 'INVALID_ARGUMENT' | 'NOT_FOUND';
  readonly field: string;
  constructor(code: 'INVALID_ARGUMENT' | 'NOT_FOUND', field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'RequestError';
    this.code = code;
    this.field = field;
  }
}
const invalid = (field: string, message: string) => new RequestError('INVALID_ARGUMENT', field, message);

export interface ParsedRequest {
  prompt: number[];
  maxNewTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed: string;
  stop: string[];
  ignoreEos: boolean;
  spec: ResolvedBudgetSpec;
  budget: EngineBudget;
  resume: number[];
}

export interface RequestContext {
  tokenizer: Tokenizer;
  vocabSize: number;
  maxModelLen: number;
  /** named and default budgets (default: the built-in default only) */
  budgets?: BudgetSource;
}

function checkIds(field: string, ids: readonly number[], V: number): void {
  for (let i = 0; i < ids.length; i++) {
    const t = ids[i];
    if (!Number.isInteger(t) || t < 0 || t >= V) throw invalid(`${field}[${i}]`, `token id ${t} is outside the vocabulary [0, ${V})`);
  }
}

/**
 * Where named budgets and the default budget come from: the built-in default alone (a worker without a ledger), or
 * the fleet's budgets cached from the ledger (worker/budgets.ts). Both answer synchronously; a request never waits
 * on Redis.
 */
export interface BudgetSource {
  /** The budget of a request that names none and gives no inline spec. */
  defaultBudget(): ResolvedBudgetSpec;
  /** A named budget; throws RequestError (NOT_FOUND for a name the fleet does not allow). */
  named(name: string): ResolvedBudgetSpec;
}

/** Without a ledger only the built-in default budget exists, under the name 'default' (ledger/budget-names.ts). */
export const BUILTIN_BUDGETS: BudgetSource = {
  defaultBudget: () => ({ ...BUILTIN_DEFAULT_BUDGET }),
  named(name) {
    if (lookupBudgetName(name, () => undefined).kind === 'default') return { ...BUILTIN_DEFAULT_BUDGET };
    throw new RequestError('NOT_FOUND', 'budget.name', `unknown budget '${name}' (this worker is in no fleet and knows only '${DEFAULT_BUDGET_NAME}')`);
  },
};

/** The budget a request runs under: inline spec (validated), a name the source knows, or the source's default; the
 *  selector rules are the router's too (ledger/budget-names.ts). */
export function resolveSelector(sel: BudgetSelector | undefined, budgets: BudgetSource = BUILTIN_BUDGETS): ResolvedBudgetSpec {
  let choice;
  try {
    choice = budgetChoice(sel);
  } catch (err) {
    if (err instanceof BudgetSelectorError) throw invalid(err.field, err.reason);
    throw err;
  }
  if (choice.kind === 'default') return budgets.defaultBudget();
  if (choice.kind === 'name') return budgets.named(choice.name);
  return checkSpec(choice.spec);
}

/** Fills defaults and checks every field (footprint fields and those only the engine reads); errors name
 *  `budget.spec.<field>`, or `<prefix>.<field>` for a fleet budget. */
export function checkSpec(spec: BudgetSpec, prefix = 'budget.spec'): ResolvedBudgetSpec {
  let s: ResolvedBudgetSpec;
  try {
    s = resolveBudgetSpec(spec);
  } catch (err) {
    if (err instanceof BudgetSpecError) throw invalid(`${prefix}.${err.field}`, err.message);
    throw err;
  }
  // Fields the footprint does not need but the engine checks at admission: checked here so they fail at once.
  if (!Number.isSafeInteger(s.pool_kernel) || s.pool_kernel < 1 || s.pool_kernel % 2 === 0) {
    throw invalid(`${prefix}.pool_kernel`, `must be odd and >= 1, got ${s.pool_kernel}`);
  }
  if (!(s.floor_alpha >= 0 && s.floor_alpha <= 1)) throw invalid(`${prefix}.floor_alpha`, `must be in [0, 1], got ${s.floor_alpha}`);
  if (!(Number.isFinite(s.pyramid_beta) && s.pyramid_beta > 1)) {
    throw invalid(`${prefix}.pyramid_beta`, `must be a finite number > 1, got ${s.pyramid_beta}`);
  }
  return s;
}

/** ResolvedBudgetSpec (proto names) → the engine's camelCase budget. */
export function engineBudget(s: ResolvedBudgetSpec): EngineBudget {
  const b: EngineBudget = {
    method: s.method, window: s.window, poolKernel: s.pool_kernel, floorAlpha: s.floor_alpha,
    pyramidBeta: s.pyramid_beta, decodeMaxTokensPerHead: s.decode_max_tokens_per_head, pooling: s.pooling,
    gqaReduce: s.gqa_reduce,
  };
  if (s.method !== 'FULL') {
    if (s.tokens_per_head !== undefined) b.tokensPerHead = s.tokens_per_head;
    if (s.keep_ratio !== undefined) b.keepRatio = s.keep_ratio;
  }
  return b;
}

/** A random uint64 as a decimal string: the seed of a request that names none (reported back on the last message). */
export function randomSeed(): string { return randomBytes(8).readBigUInt64BE().toString(); }

export function parseGenerateRequest(req: GenerateRequest, ctx: RequestContext): ParsedRequest {
  const V = ctx.vocabSize;
  let prompt: number[];
  const which = req.prompt ?? (req.text !== undefined ? 'text' : req.token_ids !== undefined ? 'token_ids' : undefined);
  if (which === 'text') {
    if (!req.text) throw invalid('text', 'the prompt is empty');
    prompt = ctx.tokenizer.encode(req.text);
  } else if (which === 'token_ids') {
    prompt = [...(req.token_ids?.ids ?? [])];
    checkIds('token_ids.ids', prompt, V);
  } else {
    throw invalid('prompt', 'missing: set text or token_ids');
  }
  if (prompt.length === 0) throw invalid(which === 'text' ? 'text' : 'token_ids.ids', 'the prompt is empty');
  const n = prompt.length;
  const s = req.sampling ?? {};
  const maxNewTokens = plannedNewTokens(n, s.max_new_tokens ?? undefined, ctx.maxModelLen, which === 'text' ? 'text' : 'token_ids.ids');
  if (s.temperature !== undefined && s.temperature !== null && !(Number.isFinite(s.temperature) && s.temperature >= 0)) {
    throw invalid('sampling.temperature', `must be >= 0, got ${s.temperature}`);
  }
  if (s.top_p !== undefined && s.top_p !== null && !(s.top_p > 0 && s.top_p <= 1)) {
    throw invalid('sampling.top_p', `must be in (0, 1], got ${s.top_p}`);
  }
  if (s.top_k !== undefined && s.top_k !== null && !(Number.isSafeInteger(s.top_k) && s.top_k >= 0)) {
    throw invalid('sampling.top_k', `must be an integer >= 0, got ${s.top_k}`);
  }
  let seed: string;
  if (s.seed !== undefined && s.seed !== null) {
    let v: bigint;
    try { v = BigInt(s.seed); } catch { throw invalid('sampling.seed', `not an unsigned 64-bit integer: ${String(s.seed)}`); }
    if (v < 0n || v > U64_MAX) throw invalid('sampling.seed', `not an unsigned 64-bit integer: ${String(s.seed)}`);
    seed = v.toString();
  } else {
    seed = randomSeed();
  }
  const stop = [...(s.stop ?? [])];
  stop.forEach((x, i) => { if (x.length === 0) throw invalid(`sampling.stop[${i}]`, 'a stop string must not be empty'); });

  const spec = resolveSelector(req.budget, ctx.budgets);
  const resume = [...(req.resume_token_ids ?? [])];
  checkIds('resume_token_ids', resume, V);
  if (resume.length > maxNewTokens) {
    throw invalid('resume_token_ids', `${resume.length} resume tokens exceed max_new_tokens ${maxNewTokens} (they count towards it)`);
  }
  return {
    prompt, maxNewTokens, seed, stop, ignoreEos: s.ignore_eos === true, spec, budget: engineBudget(spec), resume,
    ...(s.temperature !== undefined && s.temperature !== null ? { temperature: s.temperature } : {}),
    ...(s.top_p !== undefined && s.top_p !== null ? { topP: s.top_p } : {}),
    ...(s.top_k !== undefined && s.top_k !== null ? { topK: s.top_k } : {}),
  };
}
