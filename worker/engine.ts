// The one typed boundary to the native engine (csrc/, built by cmake-js into build/Release/kvfleet.node).
// Every native function is declared here once; native errors become EngineError subclasses here and nowhere else.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ADDON_PATH = process.env.KVFLEET_ADDON ?? path.join(ROOT, 'build/Release/kvfleet.node');

export interface DeviceInfo {
  cudaCompiled: boolean;
  cudaUsable: boolean;
  deviceCount: number;
  name: string;
  reason: string;
  computeCapability: string;
  totalMemory: number;
}

/** Sampling as the engine takes it (validated natively: BAD_ARGUMENT names the field). */
export interface EngineSampling {
  temperature?: number;   // default 1; 0 = greedy
  topP?: number;          // default 1
  topK?: number;          // default 0 = off
  seed?: number | bigint | string;
  maxNewTokens?: number;  // default 256; resume tokens count
  ignoreEos?: boolean;
  stopIds?: number[];
}

/** A BudgetSpec with camelCase fields; absent fields take ENGINE.md's defaults (the built-in default budget). */
export interface EngineBudget {
  method?: 'FULL' | 'SNAPKV' | 'PYRAMIDKV' | 'ADA_SNAPKV' | 'ADA_PYRAMIDKV';
  tokensPerHead?: number;
  keepRatio?: number;
  window?: number;
  poolKernel?: number;
  floorAlpha?: number;
  pyramidBeta?: number;
  decodeMaxTokensPerHead?: number;
  pooling?: 'MAX' | 'AVG';
  gqaReduce?: 'MEAN' | 'MAXIMUM';
}

export interface EngineOptions {
  pageSize?: number;        // P, default 16
  kvMemoryBytes?: number;   // pool size in bytes, or
  numPages?: number;        // an exact page count
  kvDtype?: 'f16' | 'f32';  // default f16
  threads?: number;         // 0 = default
  backend?: 'cpu' | 'cuda';
}

/** Finish reasons as the engine reports them (values match proto FinishReason where they overlap). */
export const Finish = { None: 0, Length: 1, Stop: 2, Eos: 3, Failed: 5 } as const;
export type FinishCode = (typeof Finish)[keyof typeof Finish];

export interface StepSeqResult {
  id: number;
  token: number;          // -1 when none this step
  forced: boolean;        // a replayed resume token
  prefillDone: boolean;
  outOfPages: boolean;
  finish: FinishCode;
  logits?: Float32Array;  // [V], when requested
  attn?: Float32Array;    // [L, H*d] decode rows' attention outputs (before o_proj), when requested
}
export interface StepResult { seqs: StepSeqResult[]; decodeRows: number; prefillRows: number; sequences: number; ms: number }

export interface SeqStats {
  id: number; promptTokens: number; generatedTokens: number; positions: number;
  keptTokens: number; fullTokens: number; minHeadTokens: number; maxHeadTokens: number;
  pages: number; peakPages: number; layersDone: number; prefilling: boolean; finish: FinishCode;
  recompressions: number;  // decode-cap layer recompressions so far
}
export interface PoolStats {
  totalPages: number; freePages: number; pageSize: number; numLayers: number; numKvHeads: number;
  headDim: number; pageBytes: number; sequences: number;
}
export interface ModelInfo {
  architecture: string; numLayers: number; hiddenSize: number; numHeads: number; numKvHeads: number;
  headDim: number; intermediateSize: number; vocabSize: number; maxPositionEmbeddings: number;
  weightDtype: 'F32' | 'F16' | 'BF16'; weightBytes: number; bosTokenId: number; eosTokenIds: number[];
  backend: string;
  ops: string[];  // the op-table entries the backend runs (ops.h names: embed, matmul, ..., snapkv_select, sample)
}

export interface NativeEngine {
  addSequence(prompt: number[] | Int32Array, sampling: EngineSampling | undefined, budget: EngineBudget | undefined,
    resume: number[] | undefined): number;
  release(id: number): void;
  step(batch: { id: number; maxLayers?: number }[], wantLogits: boolean, wantAttn?: boolean): Promise<StepResult>;
  seqStats(id: number): SeqStats;
  poolStats(): PoolStats;
  config(): ModelInfo;
  headPositions(id: number, layer: number, head: number): Int32Array;
  headKv(id: number, layer: number, head: number): { k: Float32Array; v: Float32Array };
  close(): void;
}

interface NativeAddon {
  abiVersion: number;
  deviceInfo(): DeviceInfo;
  loadEngine(dir: string, opts: EngineOptions): Promise<NativeEngine>;
}

// ---- errors: one class per native error kind ----
export class EngineError extends Error {
  readonly code: string;
  constructor(message: string, code = 'INTERNAL') { super(message); this.name = new.target.name; this.code = code; }
}
export class BadModelError extends EngineError { constructor(m: string) { super(m, 'BAD_MODEL'); } }
export class OutOfPagesError extends EngineError { constructor(m: string) { super(m, 'OUT_OF_PAGES'); } }
export class BadArgumentError extends EngineError { constructor(m: string) { super(m, 'BAD_ARGUMENT'); } }
export class InternalEngineError extends EngineError { constructor(m: string) { super(m, 'INTERNAL'); } }
export class AddonMissingError extends EngineError { constructor(m: string) { super(m, 'ADDON_MISSING'); } }

/** Converts whatever the addon threw into the typed class for its `code`. */
export function toEngineError(err: unknown): EngineError {
  if (err instanceof EngineError) return err;
  const e = err as { message?: string; code?: string };
  const msg = e?.message ?? String(err);
  switch (e?.code) {
    case 'BAD_MODEL': return new BadModelError(msg);
    case 'OUT_OF_PAGES': return new OutOfPagesError(msg);
    case 'BAD_ARGUMENT': return new BadArgumentError(msg);
    default: return new InternalEngineError(msg);
  }
}

let addon: NativeAddon | undefined;

/** Loads the addon once; a missing build is an AddonMissingError that says how to build it. */
export function native(): NativeAddon {
  if (addon) return addon;
  if (!existsSync(ADDON_PATH)) {
    throw new AddonMissingError(`the engine addon is not built (${ADDON_PATH} is missing): run \`npm run build\``);
  }
  const require = createRequire(import.meta.url);
  addon = require(ADDON_PATH) as NativeAddon;
  return addon;
}

export function deviceInfo(): DeviceInfo {
  try { return native().deviceInfo(); } catch (err) { throw toEngineError(err); }
}

/**
 * The engine as TypeScript sees it: every native call goes through here, errors become typed classes, and
 * steps are serialised (the native engine belongs to a running step; mutations wait for it to end).
 */
export class Engine {
  readonly info: ModelInfo;
  private readonly n: NativeEngine;
  private running: Promise<unknown> = Promise.resolve();
  private stepping = false;

  private constructor(n: NativeEngine) { this.n = n; this.info = wrap(() => n.config()); }

  static async load(dir: string, opts: EngineOptions): Promise<Engine> {
    try {
      return new Engine(await native().loadEngine(dir, opts));
    } catch (err) { throw toEngineError(err); }
  }

  /** Adds a sequence; throws BadArgumentError naming the field for a bad prompt, sampling or budget. */
  addSequence(prompt: number[] | Int32Array, sampling?: EngineSampling, budget?: EngineBudget, resume?: number[]): number {
    this.assertIdle('addSequence');
    return wrap(() => this.n.addSequence(prompt, sampling, budget, resume));
  }

  release(id: number): void {
    this.assertIdle('release');
    wrap(() => this.n.release(id));
  }

  /** Runs one step off the event loop. One at a time: a second call waits for the first. */
  async step(batch: { id: number; maxLayers?: number }[], wantLogits = false, wantAttn = false): Promise<StepResult> {
    const prev = this.running;
    let done!: () => void;
    this.running = new Promise<void>((r) => { done = r; });
    await prev.catch(() => undefined);
    this.stepping = true;
    try {
      return await this.n.step(batch, wantLogits, wantAttn);
    } catch (err) {
      throw toEngineError(err);
    } finally {
      this.stepping = false;
      done();
    }
  }

  seqStats(id: number): SeqStats { this.assertIdle('seqStats'); return wrap(() => this.n.seqStats(id)); }
  poolStats(): PoolStats { return wrap(() => this.n.poolStats()); }
  headPositions(id: number, layer: number, head: number): Int32Array {
    this.assertIdle('headPositions');
    return wrap(() => this.n.headPositions(id, layer, head));
  }
  headKv(id: number, layer: number, head: number): { k: Float32Array; v: Float32Array } {
    this.assertIdle('headKv');
    return wrap(() => this.n.headKv(id, layer, head));
  }
  close(): void { this.assertIdle('close'); wrap(() => this.n.close()); }

  private assertIdle(what: string): void {
    if (this.stepping) throw new InternalEngineError(`${what} called while a step is running (await the step first)`);
  }
}

function wrap<T>(fn: () => T): T {
  try { return fn(); } catch (err) { throw toEngineError(err); }
}
