// `kvfleet generate` (CONTRACTS.md, "Command line"): tokenizes one prompt, runs it through an engine in this
// process and streams the text (or prints one JSON document with --json). Flags arrive parsed one by one
// (bin/commands/generate.ts); the checks that involve several flags are here, and every message names its flags.
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, type Stats } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { requestFootprintPages } from '../ledger/footprint.ts';
import type { BudgetSpec } from '../proto/index.ts';
import { Engine, Finish, type EngineBudget, type EngineOptions, type EngineSampling, type FinishCode,
  type SeqStats } from '../worker/engine.ts';
import { TextStream } from '../worker/detok.ts';
import { Tokenizer } from '../worker/tokenizer.ts';
import type { GenerateFlags } from './commands/generate.ts';

/** A flag combination that cannot work; the message names the flags. */
export class GenerateUsageError extends Error {
  constructor(message: string) { super(message); this.name = 'GenerateUsageError'; }
}

/** CONTRACTS.md, "The built-in default budget": used for every field the flags leave out. */
const DEFAULT_TOKENS_PER_HEAD = 1024;
const DEFAULT_WINDOW = 32;

/**
 * The budget the flags ask for. Without --method: the built-in default budget (ADA_SNAPKV). Without
 * --tokens-per-head and --keep-ratio: 1024 tokens per head, as in the built-in default budget.
 */
export function budgetFromFlags(f: GenerateFlags): EngineBudget {
  const method = f.method ?? 'ADA_SNAPKV';
  if (f.tokensPerHead !== undefined && f.keepRatio !== undefined) {
    throw new GenerateUsageError('--tokens-per-head and --keep-ratio are alternatives: give at most one');
  }
  const window = f.window ?? DEFAULT_WINDOW;
  const b: EngineBudget = { method, window };
  if (f.keepRatio !== undefined) b.keepRatio = f.keepRatio;
  else b.tokensPerHead = f.tokensPerHead ?? DEFAULT_TOKENS_PER_HEAD;
  // The window is always kept and counts inside the budget, so a budget must hold at least one prefix token.
  if (method !== 'FULL' && b.tokensPerHead !== undefined && b.tokensPerHead < window + 1) {
    throw new GenerateUsageError(`--tokens-per-head ${b.tokensPerHead} is below --window + 1 (${window + 1}): `
      + 'the observation window is always kept and counts inside the budget');
  }
  if (f.floorAlpha !== undefined) b.floorAlpha = f.floorAlpha;
  if (f.poolKernel !== undefined) b.poolKernel = f.poolKernel;
  if (f.pooling !== undefined) b.pooling = f.pooling === 'avg' ? 'AVG' : 'MAX';
  if (f.gqaReduce !== undefined) b.gqaReduce = f.gqaReduce === 'max' ? 'MAXIMUM' : 'MEAN';
  if (f.pyramidBeta !== undefined) b.pyramidBeta = f.pyramidBeta;
  if (f.decodeMaxTokensPerHead !== undefined) b.decodeMaxTokensPerHead = f.decodeMaxTokensPerHead;
  return b;
}

/** The same budget as a proto BudgetSpec, for the ledger's footprint function. */
function specOf(b: EngineBudget): BudgetSpec {
  return { method: b.method, tokens_per_head: b.tokensPerHead, keep_ratio: b.keepRatio, window: b.window,
    decode_max_tokens_per_head: b.decodeMaxTokensPerHead };
}

/**
 * Pages for one request: the ledger's footprint (what the request may ever hold) plus a quarter, so a request
 * never fails for want of pages when no pool size is given. Needs L and Hk before the engine exists, so they
 * are read from config.json; a config.json that cannot be read gives undefined and the engine, the one judge
 * of a model directory, reports what is wrong with it.
 */
function autoPages(dir: string, P: number, budget: EngineBudget, n: number, m: number,
  known?: { L: number; Hk: number }): number | undefined {
  let L = known?.L, Hk = known?.Hk;
  if (!known) {
    try {
      const c = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      L = c.num_hidden_layers as number;
      Hk = (c.num_key_value_heads ?? c.num_attention_heads) as number;
    } catch { return undefined; }
    if (!Number.isSafeInteger(L) || !Number.isSafeInteger(Hk) || L! < 1 || Hk! < 1) return undefined;
  }
  const fp = requestFootprintPages({ L: L!, Hk: Hk!, P }, specOf(budget), n, m);
  return fp + Math.ceil(fp / 4);
}

export const FINISH_NAMES: Record<number, 'LENGTH' | 'EOS' | 'STOP'> = {
  [Finish.Length]: 'LENGTH', [Finish.Eos]: 'EOS', [Finish.Stop]: 'STOP',
};

export interface GenerateOutput {
  prompt_token_ids: number[];
  token_ids: number[];
  text: string;
  seed: string;
  finish_reason: 'LENGTH' | 'EOS' | 'STOP';
  kv: { kept_tokens: number; full_tokens: number; min_head_tokens: number; max_head_tokens: number; pages: number;
    peak_pages: number; positions: number; recompressions: number; pool_pages: number };
  budget: EngineBudget;
  timing: { prefill_ms: number; decode_ms: number; prefill_tokens_per_s: number; decode_tokens_per_s: number };
}

interface Io { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream }

export async function runGenerate(f: GenerateFlags, io: Io = process): Promise<GenerateOutput> {
  const budget = budgetFromFlags(f);
  if (f.kvMemory !== undefined && f.numPages !== undefined) {
    throw new GenerateUsageError('--kv-memory and --num-pages are alternatives: give at most one');
  }
  // the folder first: a missing one is not a missing tokenizer file
  let st: Stats | undefined;
  try { st = statSync(f.model); } catch { /* below */ }
  if (!st) throw new GenerateUsageError(`--model ${f.model}: no such folder`);
  if (!st.isDirectory()) throw new GenerateUsageError(`--model ${f.model}: is a file; give the model folder (config.json, *.safetensors, tokenizer.json)`);
  const tok = Tokenizer.load(f.model);
  const promptIds = tok.encode(f.prompt);
  if (promptIds.length === 0) throw new GenerateUsageError('--prompt encodes to no tokens');
  const n = promptIds.length, m = f.maxNewTokens, P = f.pageSize;

  const load = (pool: { numPages?: number; kvMemoryBytes?: number }): Promise<Engine> => {
    const opts: EngineOptions = { kvDtype: f.kvDtype, pageSize: P, ...pool };
    if (f.threads !== undefined) opts.threads = f.threads;
    return Engine.load(f.model, opts);
  };
  const sized = f.kvMemory !== undefined || f.numPages !== undefined;
  let engine = await load(f.kvMemory !== undefined ? { kvMemoryBytes: f.kvMemory }
    : { numPages: f.numPages ?? autoPages(f.model, P, budget, n, m) ?? 1 });
  if (!sized) {
    // config.json read here and the engine's reading may differ (defaults); size again from the engine's view
    const need = autoPages(f.model, P, budget, n, m, { L: engine.info.numLayers, Hk: engine.info.numKvHeads })!;
    if (engine.poolStats().totalPages < need) { engine.close(); engine = await load({ numPages: need }); }
  }
  try {
    const room = engine.info.maxPositionEmbeddings;
    if (n + m > room) {
      throw new GenerateUsageError(`--max-new-tokens ${m} with a prompt of ${n} tokens exceeds the model's context of `
        + `${room} tokens (max_position_embeddings)`);
    }
    const seed = f.seed ?? randomBytes(8).readBigUInt64BE().toString();
    const sampling: EngineSampling = { temperature: f.temperature, maxNewTokens: m, seed, ignoreEos: !!f.ignoreEos };
    if (f.topP !== undefined) sampling.topP = f.topP;
    if (f.topK !== undefined) sampling.topK = f.topK;
    if (f.stopId !== undefined) sampling.stopIds = f.stopId;
    for (const id of f.stopId ?? []) {
      if (id >= engine.info.vocabSize) throw new GenerateUsageError(`--stop-id ${id} is outside the vocabulary [0, ${engine.info.vocabSize})`);
    }
    const id = engine.addSequence(promptIds, sampling, budget);
    const decoder = new TextStream(tok, []);   // constant work per token
    const tokens: number[] = [];
    let finish: FinishCode = Finish.None;
    let prefillMs = 0;
    const t0 = performance.now();
    let stats: SeqStats;
    try {
      while (finish === Finish.None) {
        const r = (await engine.step([{ id }])).seqs.find((s) => s.id === id);
        if (!r) throw new Error(`engine step returned no result for sequence ${id} (a bug)`);
        if (r.outOfPages) {
          throw new GenerateUsageError(`the KV pool of ${engine.poolStats().totalPages} pages is too small for this `
            + `request (${tokens.length} of ${m} tokens generated); give a larger --num-pages or --kv-memory, or `
            + 'leave both out to size the pool from the request');
        }
        if (r.prefillDone) prefillMs = performance.now() - t0;
        if (r.token >= 0) {
          tokens.push(r.token);
          if (!f.json) io.stdout.write(decoder.push(r.token).text);
        }
        finish = r.finish;
      }
      // KVStats are what the sequence holds at its end, so read them before its pages return to the pool
      stats = engine.seqStats(id);
    } finally {
      engine.release(id);
    }
    const totalMs = performance.now() - t0;
    const decodeMs = totalMs - prefillMs;
    const finishName = FINISH_NAMES[finish];
    if (!finishName) throw new Error(`sequence ended with finish code ${finish}`);
    if (!f.json) io.stdout.write(decoder.flush());
    const text = f.json ? tok.decode(tokens, true, false) : decoder.text;
    const out: GenerateOutput = {
      prompt_token_ids: promptIds, token_ids: tokens, text, seed, finish_reason: finishName,
      kv: { kept_tokens: stats.keptTokens, full_tokens: stats.fullTokens, min_head_tokens: stats.minHeadTokens,
        max_head_tokens: stats.maxHeadTokens, pages: stats.pages, peak_pages: stats.peakPages,
        positions: stats.positions, recompressions: stats.recompressions, pool_pages: engine.poolStats().totalPages },
      budget,
      timing: { prefill_ms: round(prefillMs), decode_ms: round(decodeMs),
        prefill_tokens_per_s: round((1000 * n) / prefillMs),
        // the first token comes out of the prefill step; the others are one decode step each
        decode_tokens_per_s: tokens.length > 1 ? round((1000 * (tokens.length - 1)) / decodeMs) : 0 },
    };
    if (f.json) {
      io.stdout.write(JSON.stringify(out) + '\n');
    } else {
      io.stdout.write('\n');
      const k = out.kv;
      io.stderr.write(`kvfleet generate: ${n} prompt + ${tokens.length} generated tokens, finish ${finishName}, seed ${seed}; `
        + `prefill ${out.timing.prefill_tokens_per_s} tok/s, decode ${out.timing.decode_tokens_per_s} tok/s; `
        + `kv kept ${k.kept_tokens}/${k.full_tokens} tokens (${(100 * k.kept_tokens / Math.max(1, k.full_tokens)).toFixed(1)}%), `
        + `per head ${k.min_head_tokens}..${k.max_head_tokens}; pages ${k.pages} (peak ${k.peak_pages}) of ${k.pool_pages}\n`);
    }
    return out;
  } finally {
    engine.close();
  }
}

const round = (x: number): number => (Number.isFinite(x) ? Number(x.toFixed(2)) : 0);
