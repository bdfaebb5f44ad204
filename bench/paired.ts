// Paired comparison of two methods measured on the same prompts (bench quality: Ada-KV against its uniform twin).
//
// Each prompt gives both methods the same inputs, so the prompts are the unit of resampling: a percentile bootstrap
// over prompts (resampled with replacement, the same resample for both methods) gives a confidence interval for a
// statistic of the pair. A statistic is a function of per-prompt sums, so a ratio of sums (the benchmark's error and
// KL ratios) is resampled as a ratio of sums, not as a mean of per-prompt ratios.
import { seededRandom } from './sim/trace.ts';

/** Per-prompt sums for one method: any named quantities, each an array with one entry per prompt. */
export type PerPrompt = Record<string, number[]>;

export interface Interval { lo: number; hi: number }

/**
 * Percentile bootstrap interval of `stat` over prompts. `stat` receives, for each method, the quantities summed over
 * the resampled prompts. Deterministic for a given seed. With a single prompt there is nothing to resample: the
 * interval is the point.
 */
export function bootstrapInterval(a: PerPrompt, b: PerPrompt, stat: (a: Record<string, number>, b: Record<string, number>) => number,
    opts: { resamples?: number; level?: number; seed?: number } = {}): Interval {
  const { resamples = 4000, level = 0.95, seed = 1 } = opts;
  const n = promptCount(a, b);
  const sums = (x: PerPrompt, idx: Int32Array) => Object.fromEntries(Object.entries(x).map(([k, v]) => {
    let s = 0;
    for (const i of idx) s += v[i];
    return [k, s];
  }));
  const all = Int32Array.from({ length: n }, (_, i) => i);
  if (n === 1) {
    const v = stat(sums(a, all), sums(b, all));
    return { lo: v, hi: v };
  }
  const rand = seededRandom(seed);
  const vals: number[] = [];
  const idx = new Int32Array(n);
  for (let r = 0; r < resamples; r++) {
    for (let i = 0; i < n; i++) idx[i] = Math.floor(rand() * n);
    const v = stat(sums(a, idx), sums(b, idx));
    if (!Number.isNaN(v)) vals.push(v);
  }
  vals.sort((x, y) => x - y);
  const q = (p: number) => vals[Math.min(vals.length - 1, Math.max(0, Math.floor(p * vals.length)))];
  return { lo: q((1 - level) / 2), hi: q(1 - (1 - level) / 2) };
}

function promptCount(a: PerPrompt, b: PerPrompt): number {
  const lens = [...Object.values(a), ...Object.values(b)].map((v) => v.length);
  if (lens.length === 0 || lens.some((l) => l !== lens[0]) || lens[0] === 0) {
    throw new Error(`paired comparison: every quantity needs one value per prompt, got lengths ${lens.join(', ')}`);
  }
  return lens[0];
}

/**
 * Where an interval lies against the value that means "no difference" (1 for a ratio, 0 for a difference):
 * `better` if entirely on the good side, `worse` if entirely on the bad side, `inconclusive` if it straddles, `tie` if it is exactly the
 * neutral value (e.g. a budget that holds the whole prompt).
 */
export function verdict(iv: Interval, neutral: number, lowerIsBetter: boolean): 'better' | 'worse' | 'inconclusive' | 'tie' {
  if (iv.lo === neutral && iv.hi === neutral) return 'tie';
  if (iv.hi < neutral) return lowerIsBetter ? 'better' : 'worse';
  if (iv.lo > neutral) return lowerIsBetter ? 'worse' : 'better';
  return 'inconclusive';
}
