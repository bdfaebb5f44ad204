// `kvfleet bench worker`: how many sequences one worker keeps resident when memory, not compute, is the limit
// (issue 12). The `tiny` model (fast on CPU), a page pool sized by the footprint formula to hold exactly 4 FULL
// sequences of n = 2048 prompt + m = 128 new tokens, and R = 24 requests submitted at t = 0 through real gRPC to an
// in-process worker (the code `kvfleet worker` runs; reserve admission). Once under FULL, once under ADA_SNAPKV with
// B = 256 tokens per head. Measured:
//   - the peak number of sequences resident in one engine step (holding pages in the pool during the step:
//     scheduler stat maxResidentInStep), and the most in one step's batch;
//   - each sequence's real peak pages, from the engine (KVStats.peak_pages), against the formula's footprint.
// Target: ADA/FULL resident ratio at >= 80% of the ideal (n + m) / (B + m) = 2176 / 384 = 5.67 (reported as the
// fraction of the ideal, op '>', threshold 0.8).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { requestFootprintPages } from '../ledger/footprint.ts';
import { generationClient, type BudgetSpec, type GenerateResponse } from '../proto/index.ts';
import { parseWorkerConfig } from '../worker/config.ts';
import { startWorker } from '../worker/server.ts';
import type { BenchOptions } from './index.ts';
import { machineInfo, progress, target, type BenchReport, intArg as benchIntArg } from './report.ts';

const MODEL_SEED = 7;
const FULL_SEQUENCES = 4;
const round = (x: number, digits = 3): number => Number(x.toFixed(digits));

const intArg = (opts: BenchOptions, name: string, def: number): number => benchIntArg('worker', opts, name, def);

function log(msg: string): void { process.stderr.write(`bench worker: ${msg}\n`); }

/** Prompt token ids: a fixed pseudo-random sequence over the vocabulary, no special tokens. */
function promptOf(n: number, salt: number, V: number): number[] {
  let x = (0x2545f491 ^ Math.imul(salt + 1, 0x9e3779b9)) >>> 0;
  return Array.from({ length: n }, () => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return 2 + (x % (V - 2)); });
}

interface RunResult {
  method: string;
  tokens_per_head: number | null;
  requests: number;
  pool_pages: number;
  footprint_pages: number;
  /** requests the pool holds by the footprint formula (reserve admission) */
  footprint_fit: number;
  peak_resident_sequences: number;
  max_sequences_in_step: number;
  max_running: number;
  preemptions: number;
  steps: number;
  peak_pages: { min: number; mean: number; max: number };
  peak_pages_per_sequence: number[];
  /** real peak pages / formula footprint, for the largest sequence */
  footprint_use: number;
  kept_tokens_mean: number;
  wall_s: number;
  generated_tokens_per_s: number;
}

async function runOnce(modelDir: string, spec: BudgetSpec, o: { R: number; n: number; m: number; poolPages: number;
  admission: string }): Promise<RunResult> {
  const cfg = parseWorkerConfig({ model: modelDir, port: 0, numPages: o.poolPages, metricsPort: 0, logLevel: 'silent',
    admission: o.admission, maxQueue: Math.max(1024, o.R) });
  const w = await startWorker(cfg, { logger: pino({ level: 'silent' }) });
  const gen = generationClient(w.address, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 64 << 20 });
  try {
    const V = w.engine.info.vocabSize;
    const shape = { L: w.engine.info.numLayers, Hk: w.engine.info.numKvHeads, P: cfg.pageSize };
    const footprint = requestFootprintPages(shape, spec, o.n, o.m);
    const tick = progress(`bench worker: ${spec.method}`);
    let done = 0;
    w.scheduler.resetStats();
    const t0 = performance.now();
    // every request is submitted now, before any finishes: the pool, not arrival, limits residency
    const results = await Promise.all(Array.from({ length: o.R }, (_, i) => new Promise<GenerateResponse>((resolve, reject) => {
      const call = gen.Generate({ request_id: `bench-${spec.method}-${i}`, token_ids: { ids: promptOf(o.n, i, V) },
        sampling: { max_new_tokens: o.m, temperature: 0, ignore_eos: true }, budget: { spec } });
      let last: GenerateResponse | undefined;
      call.on('data', (msg: GenerateResponse) => { if (msg.finish_reason !== undefined) last = msg; });
      call.on('error', (e: grpc.ServiceError) => reject(new Error(`request ${i} (${spec.method}) failed: ${e.details}`)));
      call.on('end', () => {
        tick(++done, o.R);
        if (last) resolve(last); else reject(new Error(`request ${i} (${spec.method}) ended without a finish reason`));
      });
    })));
    const wall = (performance.now() - t0) / 1000;
    const st = w.scheduler.stats();
    const peaks = results.map((r) => r.kv_stats?.peak_pages ?? 0);
    for (const [i, r] of results.entries()) {
      if (r.usage?.completion_tokens !== o.m) throw new Error(`bench worker: request ${i} generated ${r.usage?.completion_tokens} tokens, expected ${o.m}`);
    }
    const kept = results.map((r) => Number(r.kv_stats?.kept_tokens ?? 0));
    return {
      method: spec.method ?? 'METHOD_UNSPECIFIED', tokens_per_head: spec.tokens_per_head ?? null, requests: o.R,
      pool_pages: o.poolPages, footprint_pages: footprint, footprint_fit: Math.floor(o.poolPages / footprint),
      peak_resident_sequences: st.maxResidentInStep, max_sequences_in_step: st.maxSequencesInStep, max_running: st.maxRunning,
      preemptions: st.preemptions, steps: st.steps,
      peak_pages: { min: Math.min(...peaks), mean: round(peaks.reduce((a, b) => a + b, 0) / peaks.length, 2), max: Math.max(...peaks) },
      peak_pages_per_sequence: peaks,
      footprint_use: round(Math.max(...peaks) / footprint),
      kept_tokens_mean: round(kept.reduce((a, b) => a + b, 0) / kept.length, 1),
      wall_s: round(wall, 2), generated_tokens_per_s: round((o.R * o.m) / wall, 1),
    };
  } finally {
    gen.close();
    await w.shutdown({ graceMs: 0 });
  }
}

export async function run(opts: BenchOptions): Promise<BenchReport> {
  const R = intArg(opts, 'requests', 24);
  const n = intArg(opts, 'prompt', 2048);
  const m = intArg(opts, 'new', 128);
  const B = intArg(opts, 'tokens-per-head', 256);
  const admission = typeof opts.args.admission === 'string' ? opts.args.admission : 'reserve';
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvfleet-bench-worker-'));
  try {
    const { writeSynthModel } = await import('../worker/model/synth.ts');
    writeSynthModel({ out: dir, preset: 'tiny', seed: MODEL_SEED });
    const { PRESETS } = await import('../worker/model/config.ts');
    const t = PRESETS.tiny;
    const P = 16;
    const full: BudgetSpec = { method: 'FULL' };
    const ada: BudgetSpec = { method: 'ADA_SNAPKV', tokens_per_head: B };
    const poolPages = FULL_SEQUENCES * requestFootprintPages({ L: t.L, Hk: t.Hk, P }, full, n, m);
    log(`tiny (L ${t.L}, Hk ${t.Hk}, P ${P}); pool ${poolPages} pages = ${FULL_SEQUENCES} FULL footprints of n ${n} + m ${m}; `
      + `${R} requests at t = 0; ${admission} admission`);
    const fullRun = await runOnce(dir, full, { R, n, m, poolPages, admission });
    log(`FULL: ${fullRun.peak_resident_sequences} resident at peak, ${fullRun.wall_s} s`);
    const adaRun = await runOnce(dir, ada, { R, n, m, poolPages, admission });
    log(`ADA_SNAPKV B=${B}: ${adaRun.peak_resident_sequences} resident at peak, ${adaRun.wall_s} s`);
    const ideal = (n + m) / (B + m);
    const ratio = adaRun.peak_resident_sequences / fullRun.peak_resident_sequences;
    const summary = {
      summary: true, prompt_tokens: n, max_new_tokens: m, tokens_per_head: B, requests: R, admission,
      resident_full: fullRun.peak_resident_sequences, resident_ada: adaRun.peak_resident_sequences,
      resident_ratio: round(ratio), ideal_ratio: round(ideal), fraction_of_ideal: round(ratio / ideal),
      // the ceiling the footprint formula's page rounding allows: floor(pool / ADA footprint) / FULL_SEQUENCES
      formula_ratio: round(adaRun.footprint_fit / fullRun.footprint_fit),
    };
    return {
      bench: 'worker', machine: machineInfo(), results: [fullRun, adaRun, summary],
      targets: [target('resident_ratio_fraction_of_ideal', round(ratio / ideal), 'fraction', '>', 0.8)],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
