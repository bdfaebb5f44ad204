// `kvfleet bench detok`: the worker's per-token detokenization cost (worker/detok.ts TextStream.push) across a long
// stream, with and without stop strings, on the synthetic tiny model's byte-level BPE tokenizer. The cost must not
// grow with the stream: the targets are the last window's median ms/token over the first's (< 2), and a bound on
// the last window (< 0.05 ms/token). Before the incremental decode it was 0.31 ms/token at 0-4K tokens and
// 4.79 ms/token at 12-16K (15x).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { TextStream } from '../worker/detok.ts';
import { Tokenizer } from '../worker/tokenizer.ts';
import { writeSynthModel } from '../worker/model/synth.ts';
import type { BenchOptions } from './index.ts';
import { machineInfo, percentile, target, type BenchReport, intArg as benchIntArg } from './report.ts';

const intArg = (opts: BenchOptions, name: string, def: number): number => benchIntArg('detok', opts, name, def);

const round = (x: number, digits = 4): number => Number(x.toFixed(digits));

export async function run(opts: BenchOptions): Promise<BenchReport> {
  const tokens = intArg(opts, 'tokens', 16_000);
  const windows = intArg(opts, 'windows', 4);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-bench-detok-'));
  try {
    writeSynthModel({ out: dir, preset: 'tiny', seed: 11 });
    const tok = Tokenizer.load(dir);
    const results: Array<Record<string, unknown>> = [];
    const perWindow = Math.max(1, Math.floor(tokens / windows));
    const batch = Math.max(1, Math.min(500, perWindow));
    const id = (i: number) => 5 + ((i * 7919) % 400);
    { const warm = new TextStream(tok, ['x']); for (let i = 0; i < 2000; i++) warm.push(id(i)); }  // JIT warm-up
    for (const stops of [[] as string[], ['never-there', '\n\n###']]) {
      const ts = new TextStream(tok, stops);
      // each window's cost: the median over its batches of `batch` tokens (robust to a GC pause or a busy core)
      const batches: number[][] = Array.from({ length: windows }, () => []);
      let t = performance.now();
      for (let i = 0; i < perWindow * windows; i++) {
        ts.push(id(i));
        if ((i + 1) % batch === 0) {
          const now = performance.now();
          batches[Math.min(windows - 1, Math.floor(i / perWindow))].push((now - t) / batch);
          t = now;
        }
      }
      const ms = batches.map((b) => percentile(b, 50));
      results.push({
        stops: stops.length, tokens: perWindow * windows,
        windows: ms.map((m, w) => ({ from: w * perWindow, to: (w + 1) * perWindow, median_ms_per_token: round(m) })),
        growth: round(ms[ms.length - 1] / ms[0], 2),
      });
    }
    const worstLast = Math.max(...results.map((r) => (r.windows as Array<{ median_ms_per_token: number }>).at(-1)!.median_ms_per_token));
    const worstGrowth = Math.max(...results.map((r) => r.growth as number));
    return {
      bench: 'detok', machine: machineInfo(), results,
      targets: [
        target('detok_growth_last_over_first_window', worstGrowth, 'ratio', '<', 2),
        target('detok_ms_per_token_last_window', worstLast, 'ms', '<', 0.05),
      ],
    };
  } finally { rmSync(dir, { recursive: true, force: true }); }
}
