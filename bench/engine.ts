// `kvfleet bench engine`: CPU engine speed on the `small` preset with F16 weights (issue 5): prefill tokens/s at
// 512 and 2048 prompt tokens; decode tokens/s at 1K and 4K context, batch 1 and 8, method FULL so the whole
// context is read every step; and the memory-bandwidth bound for decode, against which the target is set.
//
// The bound: a decode step reads every weight once (engine.info.weightBytes, in the file's dtype) and, for each
// sequence of the batch, its whole K/V (positions x L x Hk x d x 2 (K and V) x 2 bytes for f16 pages). Divided
// into a copy bandwidth measured in the same run, right before each decode point (Buffer.copy of 256 MiB, best of
// 5, counted as read + write bytes per second, the STREAM "copy" convention; on a shared machine the bandwidth left
// to us moves with the load, so each point is compared with what memory gave just then), that gives the most
// tokens/s memory could feed:
//   bound = batch * bandwidth / (weightBytes + batch * kvBytesPerSequence).
// Target: batch-1 decode at 1K context at more than 0.5 of that bound. Each decode figure is the best of 3 runs of
// --steps steps (the machine is shared); the 1-minute load average is recorded at the start and the end.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Engine } from '../worker/engine.ts';
import type { BenchOptions } from './index.ts';
import { machineInfo, progress, target, type BenchReport } from './report.ts';

const MODEL_SEED = 0;
const COPY_BYTES = 256 * 2 ** 20;
const round = (x: number, digits = 2): number => Number(x.toFixed(digits));

function intList(opts: BenchOptions, name: string, def: number[]): number[] {
  const v = opts.args[name];
  if (v === undefined) return def;
  const xs = String(v).split(',').map(Number);
  if (v === true || xs.some((x) => !Number.isSafeInteger(x) || x < 1)) {
    throw new Error(`bench engine: --${name} must be a comma-separated list of positive integers, got ${String(v)}`);
  }
  return xs;
}

function log(msg: string): void { process.stderr.write(`bench engine: ${msg}\n`); }

/** The small F16 model, written once into a cache directory and reused (a marker file says the write finished). */
async function smallModel(dir: string): Promise<string> {
  const marker = path.join(dir, '.kvfleet-bench-complete');
  if (existsSync(marker)) return dir;
  log(`writing the small preset (F16, seed ${MODEL_SEED}) to ${dir} (once; reused by later runs)`);
  const { writeSynthModel } = await import('../worker/model/synth.ts');
  mkdirSync(dir, { recursive: true });
  const r = writeSynthModel({ out: dir, preset: 'small', seed: MODEL_SEED, dtype: 'f16' });
  writeFileSync(marker, `${r.parameters} parameters, ${r.dtype}\n`);
  return dir;
}

/** Copy bandwidth in bytes/s, counting each copied byte twice (read + write); best of `reps` 256 MiB copies. */
function copyBandwidth(reps = 7): { bytesPerS: number; bestMs: number } {
  const src = Buffer.alloc(COPY_BYTES, 7), dst = Buffer.alloc(COPY_BYTES);
  src.copy(dst);  // touch every page of both buffers first
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    src.copy(dst);
    best = Math.min(best, performance.now() - t);
  }
  if (dst[COPY_BYTES - 1] !== 7) throw new Error('bench engine: the bandwidth copy did not copy (a bug)');
  return { bytesPerS: (2 * COPY_BYTES) / (best / 1000), bestMs: best };
}

/** Prompt token ids: a fixed pseudo-random sequence over the vocabulary, no special tokens. */
function promptOf(n: number, salt: number, V: number): number[] {
  let x = (0x9e3779b9 ^ salt) >>> 0;
  return Array.from({ length: n }, () => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return 2 + (x % (V - 2)); });
}

export async function run(opts: BenchOptions): Promise<BenchReport> {
  if (opts.args.vs !== undefined) {  // kvfleet bench engine --vs llama.cpp
    if (opts.args.vs !== 'llama.cpp') throw new Error(`bench engine: --vs takes 'llama.cpp', got ${String(opts.args.vs)}`);
    return (await import('./vs-llama.ts')).run(opts);
  }
  const prefillLens = intList(opts, 'prefill', [512, 2048]);
  const contexts = intList(opts, 'contexts', [1024, 4096]);
  const batches = intList(opts, 'batches', [1, 8]);
  const steps = intList(opts, 'steps', [16])[0];
  const threads = opts.args.threads !== undefined ? intList(opts, 'threads', [0])[0] : undefined;
  const dir = await smallModel(typeof opts.args['model-dir'] === 'string' ? opts.args['model-dir']
    : path.join(os.tmpdir(), 'kvfleet-bench', 'small-f16'));
  const started = performance.now();

  const bw = copyBandwidth();
  log(`copy bandwidth ${(bw.bytesPerS / 1e9).toFixed(2)} GB/s (read + write, best 256 MiB copy ${bw.bestMs.toFixed(1)} ms)`);

  const maxB = Math.max(...batches);
  const warm = 2;
  const reps = 3;  // the machine is shared: each decode figure is the best of `reps` runs of `steps` steps
  const maxNew = batches.length * (warm + reps * steps) + 2;
  const P = 16;
  // pages for the largest decode phase: maxB sequences of the longest context plus their growth, per (layer, head)
  const probe = await Engine.load(dir, { numPages: 1, kvDtype: 'f16', pageSize: P, ...(threads ? { threads } : {}) });
  const { numLayers: L, numKvHeads: Hk, headDim: d, weightBytes, weightDtype, vocabSize: V, hiddenSize: D } = probe.info;
  probe.close();
  const longest = Math.max(...contexts, ...prefillLens);
  const numPages = maxB * L * Hk * (Math.ceil((longest + maxNew) / P) + 1);
  const engine = await Engine.load(dir, { numPages, kvDtype: 'f16', pageSize: P, ...(threads ? { threads } : {}) });
  const results: unknown[] = [{
    name: 'setup', model: dir, preset: 'small', weight_dtype: weightDtype, weight_bytes: weightBytes, L, Hk, d, V, D,
    kv_dtype: 'f16', page_size: P, pages: numPages, backend: engine.info.backend, threads: threads ?? 'default',
    decode_steps_timed: steps, decode_repeats: reps, load_average_1m_at_start: round(os.loadavg()[0]),
    copy_bandwidth_gb_per_s: round(bw.bytesPerS / 1e9, 3),
    bandwidth_definition: 'Buffer.copy of 256 MiB, (bytes read + bytes written) / s, best of 7 at the start and best of 5 '
      + 'right before each decode point (that point\'s bound uses its own)',
  }];
  try {
    // warm-up: first-touch of the weights and the engine's buffers
    {
      const id = engine.addSequence(promptOf(64, 0, V), { temperature: 0, maxNewTokens: 3, ignoreEos: true }, { method: 'FULL' });
      for (let i = 0; i < 3; i++) await engine.step([{ id }]);
      engine.release(id);
    }

    // ---- prefill ----
    for (const n of prefillLens) {
      const id = engine.addSequence(promptOf(n, n, V), { temperature: 0, maxNewTokens: 1, ignoreEos: true }, { method: 'FULL' });
      const t = performance.now();
      const r = await engine.step([{ id }]);
      const ms = performance.now() - t;
      engine.release(id);
      if (!r.seqs[0].prefillDone) throw new Error(`bench engine: prefill of ${n} tokens did not finish in one step`);
      const tps = (1000 * n) / ms;
      log(`prefill ${n} tokens: ${ms.toFixed(0)} ms, ${tps.toFixed(1)} tokens/s`);
      results.push({ name: `prefill_${n}`, prompt_tokens: n, ms: round(ms), tokens_per_s: round(tps) });
    }

    // ---- decode: maxB sequences per context (FULL, so every step reads the whole context) ----
    let b1At1k = NaN, boundB1At1k = NaN, bwB1At1k = NaN;
    const kvBytesPerToken = L * Hk * d * 2 * 2;  // K and V, f16
    for (const ctx of contexts) {
      const ids: number[] = [];
      const tick = progress(`bench engine: prefilling ${maxB} x ${ctx} tokens for decode`);
      tick(0, maxB);
      for (let s = 0; s < maxB; s++) {
        const id = engine.addSequence(promptOf(ctx, 1000 + s, V), { temperature: 0, maxNewTokens: maxNew, ignoreEos: true }, { method: 'FULL' });
        const r = await engine.step([{ id }]);
        if (r.seqs[0].outOfPages) throw new Error(`bench engine: out of pages prefilling ${ctx} tokens (a sizing bug)`);
        ids.push(id);
        tick(s + 1, maxB);
      }
      for (const b of batches) {
        const batch = ids.slice(0, b).map((id) => ({ id }));
        const pointBw = copyBandwidth(5);
        for (let i = 0; i < warm; i++) await engine.step(batch);
        const pos0 = engine.seqStats(ids[0]).positions;
        let ms = Infinity, tokens = 0;
        for (let rep = 0; rep < reps; rep++) {
          const t = performance.now();
          let got = 0;
          for (let i = 0; i < steps; i++) {
            const r = await engine.step(batch);
            for (const s of r.seqs) {
              if (s.outOfPages || s.token < 0) throw new Error(`bench engine: decode step produced no token for sequence ${s.id}`);
              got++;
            }
          }
          const repMs = performance.now() - t;
          if (repMs < ms) { ms = repMs; tokens = got; }
        }
        const tps = (1000 * tokens) / ms;
        // the mean context a timed step read: positions held at the start of the steps, averaged over all repeats
        const meanPos = pos0 + (reps * steps - 1) / 2;
        const bytesPerStep = weightBytes + b * meanPos * kvBytesPerToken;
        const bound = (b * pointBw.bytesPerS) / bytesPerStep;
        const achieved = (bytesPerStep * tokens / b) / (ms / 1000);
        log(`decode ctx ${ctx} batch ${b}: ${tps.toFixed(1)} tokens/s (${(ms / steps).toFixed(1)} ms/step), bound `
          + `${bound.toFixed(1)} tokens/s at ${(pointBw.bytesPerS / 1e9).toFixed(2)} GB/s, fraction ${(tps / bound).toFixed(3)}`);
        results.push({
          name: `decode_ctx${ctx}_b${b}`, context: ctx, batch: b, steps, ms_per_step: round(ms / steps, 3),
          tokens_per_s: round(tps), bytes_per_step: Math.round(bytesPerStep), kv_bytes_per_step: Math.round(b * meanPos * kvBytesPerToken),
          copy_bandwidth_gb_per_s: round(pointBw.bytesPerS / 1e9, 3),
          achieved_read_gb_per_s: round(achieved / 1e9, 3), bound_tokens_per_s: round(bound), fraction_of_bound: round(tps / bound, 4),
        });
        if (ctx === 1024 && b === 1) { b1At1k = tps; boundB1At1k = bound; bwB1At1k = pointBw.bytesPerS; }
      }
      for (const id of ids) engine.release(id);
    }
    if (engine.poolStats().freePages !== numPages) throw new Error('bench engine: pages leaked (a bug)');
    const fraction = b1At1k / boundB1At1k;
    // the embedding table is in weightBytes but a decode step reads one row of it: the stricter bound leaves it out
    const embedBytes = V * D * 2;
    if (Number.isFinite(fraction)) results.push({
      name: 'decode_b1_1k_bound', tokens_per_s: round(b1At1k), bound_tokens_per_s: round(boundB1At1k),
      fraction: round(fraction, 4),
      fraction_without_embedding_table: round(b1At1k / (bwB1At1k / (weightBytes - embedBytes + 1024 * kvBytesPerToken)), 4),
    });
    results.push({ name: 'end', total_seconds: round((performance.now() - started) / 1000, 1), load_average_1m_at_end: round(os.loadavg()[0]) });
    return {
      bench: 'engine', machine: machineInfo(), results,
      targets: Number.isFinite(fraction)
        ? [target('decode_b1_1k_fraction_of_bandwidth_bound', round(fraction, 4), 'fraction', '>', 0.5)]
        : [],
    };
  } finally {
    engine.close();
  }
}
