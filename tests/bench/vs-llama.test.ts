// bench engine-vs-llama: the SVG helpers, the target arithmetic, and a bounded real run (--quick: the tiny preset
// through llama.cpp and our engine) that checks what the report claims against what was measured.
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { barChart, lineChart, niceTicks, tickLabel } from '../../bench/plot.ts';
import { run, targetsFor, writeCharts, type SystemResult } from '../../bench/vs-llama.ts';
import { met } from '../../bench/report.ts';

const tmp: string[] = [];
const tmpDir = (): string => { const d = mkdtempSync(path.join(os.tmpdir(), 'kvf-vsllama-')); tmp.push(d); return d; };
afterAll(() => { for (const d of tmp) rmSync(d, { recursive: true, force: true }); });

const count = (s: string, re: RegExp): number => (s.match(re) ?? []).length;
const circles = (svg: string): Array<{ cx: number; cy: number }> =>
  [...svg.matchAll(/<circle cx="([-\d.]+)" cy="([-\d.]+)" r="4"/g)].map((m) => ({ cx: Number(m[1]), cy: Number(m[2]) }));

describe('plot helpers', () => {
  it('ticks are round numbers covering the range, labels are short', () => {
    expect(niceTicks(0, 10)).toEqual([0, 2, 4, 6, 8, 10]);
    expect(niceTicks(0.3, 1.1)).toEqual([0.4, 0.6, 0.8, 1]);
    expect(tickLabel(4096)).toBe('4096');
    expect(tickLabel(32768)).toBe('32.77K');
    expect(tickLabel(12_582_912)).toBe('12.58M');
    expect(tickLabel(0.05)).toBe('0.05');
  });

  it('a line chart places larger x to the right and larger y higher, one marker per point', () => {
    const svg = lineChart({ title: 'T', xLabel: 'x', yLabel: 'y', logX: true,
      series: [{ name: 'a', points: [[1024, 10], [4096, 5]] }, { name: 'b & <c>', points: [[1024, 20]] }] });
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('b &amp; &lt;c&gt;');
    const c = circles(svg);
    expect(c).toHaveLength(3);
    expect(c[1].cx).toBeGreaterThan(c[0].cx);        // 4096 right of 1024
    expect(c[1].cy).toBeGreaterThan(c[0].cy);        // 5 below 10 (SVG y grows downwards)
    expect(c[2].cy).toBeLessThan(c[0].cy);           // 20 above 10
    expect(count(svg, /<polyline/g)).toBe(1);        // a single point draws no line
  });

  it('a log-scale bar chart draws one bar per positive value, taller for larger values', () => {
    const svg = barChart({ title: 'KV', yLabel: 'bytes', logY: true, groups: [
      { label: 'g1', bars: [{ name: 'x', value: 1e6 }, { name: 'y', value: 1e4 }] },
      { label: 'g2', bars: [{ name: 'x', value: 0 }, { name: 'y', value: 1e5 }] }] });
    const h = [...svg.matchAll(/<rect x="[-\d.]+" y="[-\d.]+" width="[-\d.]+" height="([-\d.]+)" fill="#/g)].map((m) => Number(m[1]));
    expect(h).toHaveLength(3);
    expect(h[0]).toBeGreaterThan(h[2]);
    expect(h[2]).toBeGreaterThan(h[1]);
  });
});

function row(model: string, context: number, system: SystemResult['system'], decode: number, kv: number): SystemResult {
  return { name: 'run', model, dtype: 'F16', context, system, prefill_tokens_per_s: 100, decode_tokens_per_s: decode,
    prefill_ms_median: 1, decode_ms_median: 1000 / decode, kv_bytes_per_seq: kv, reps: 1, decode_steps: 4 };
}

describe('targetsFor', () => {
  const setups = [
    { name: 'setup', model: 'small', dtype: 'F16', role: 'base', context_llama_kv_2x_weights: 33000 },
    { name: 'setup', model: 'kvheavy', dtype: 'F16', role: 'kvheavy', context_llama_kv_2x_weights: 3072 },
  ];
  it('divides ours by llama.cpp at the base model\'s shortest context and at the 2x point', () => {
    const t = targetsFor([...setups,
      row('small', 1024, 'llama.cpp', 80, 1), row('small', 1024, 'kvfleet FULL', 60, 1), row('small', 4096, 'kvfleet FULL', 1, 1),
      row('kvheavy', 3072, 'llama.cpp', 20, 100_000_000), row('kvheavy', 3072, 'kvfleet ADA_SNAPKV', 50, 5_000_000)]);
    expect(t.map((x) => [x.name, x.value, x.op, x.threshold])).toEqual([
      ['full_decode_vs_llama_small_1024', 0.75, '>', 0.5],
      ['ada_snapkv_decode_vs_llama_at_kv_2x_weights_kvheavy_3072', 2.5, '>', 2],
      ['ada_snapkv_kv_bytes_vs_llama_at_kv_2x_weights_kvheavy_3072', 0.05, '<', 1 / 16],
    ]);
    expect(t.every(met)).toBe(true);
  });
  it('a missing measurement is NaN and never meets its target', () => {
    const t = targetsFor([...setups, row('small', 1024, 'llama.cpp', 80, 1)]);
    expect(t.every((x) => Number.isNaN(x.value) && !met(x))).toBe(true);
  });
});

describe('quality chart', () => {
  it('plots error against budget per method from a quality report, and is skipped without one', () => {
    const dir = tmpDir();
    const q = path.join(dir, 'quality.json');
    writeFileSync(q, JSON.stringify({ bench: 'quality', results: [{ preset: 'hetero' },
      ...[64, 256, 1024].flatMap((B) => [{ method: 'SNAPKV', budget: B, attnRelL1: 1 / B }, { method: 'ADA_SNAPKV', budget: B, attnRelL1: 0.5 / B }])] }));
    const report = { bench: 'engine-vs-llama', machine: {} as never, results: [], targets: [] };
    expect(writeCharts(report, dir, q)).toContain('quality-error-vs-budget.svg');
    const svg = readFileSync(path.join(dir, 'quality-error-vs-budget.svg'), 'utf8');
    expect(count(svg, /<polyline/g)).toBe(2);
    expect(circles(svg)).toHaveLength(6);
    const dir2 = tmpDir();
    expect(writeCharts(report, dir2, path.join(dir2, 'absent.json'))).not.toContain('quality-error-vs-budget.svg');
  });
});

describe('bench engine-vs-llama --quick (real llama.cpp and engine, tiny preset)', () => {
  it('measures every system at each context, agrees with llama.cpp on greedy tokens, and plots', async () => {
    const dir = tmpDir();
    const report = await run({ json: true, args: { quick: true, reps: '1', decode: '4', plot: dir, quality: path.join(dir, 'none.json') } });
    expect(report.bench).toBe('engine-vs-llama');
    const setups = report.results.filter((r) => (r as { name: string }).name === 'setup') as Array<Record<string, unknown>>;
    const runs = report.results.filter((r) => (r as { name: string }).name === 'run') as SystemResult[];
    expect(setups).toHaveLength(2);
    const n2x = setups[1].context_llama_kv_2x_weights as number;
    // tiny: 2 * weightBytes / (2 * L * Hk * d * 2) with L = 2, Hk = 2, d = 16
    expect(n2x).toBe(Math.ceil((2 * (setups[1].weight_bytes_llama as number)) / 256));
    expect(runs.map((r) => `${r.context} ${r.system}`)).toEqual([
      '256 llama.cpp', '256 kvfleet FULL', '256 kvfleet ADA_SNAPKV',
      `${n2x} llama.cpp`, `${n2x} kvfleet FULL`, `${n2x} kvfleet ADA_SNAPKV`]);
    for (const r of runs) {
      expect(r.prefill_tokens_per_s).toBeGreaterThan(0);
      expect(r.decode_tokens_per_s).toBeGreaterThan(0);
    }
    const at = (ctx: number, sys: SystemResult['system']) => runs.find((r) => r.context === ctx && r.system === sys)!;
    // same weights, same greedy decoding: our FULL follows llama.cpp's tokens on the short context
    expect(at(256, 'kvfleet FULL').greedy_agreement_with_llama).toBeGreaterThanOrEqual(0.8);
    // FULL holds the same tokens as llama.cpp's cache, up to page rounding (2 layers x 2 heads x one 2 KiB page)
    const pageBytes = 16 * 16 * 2 * 2;
    expect(Math.abs(at(n2x, 'kvfleet FULL').kv_bytes_per_seq - at(n2x, 'llama.cpp').kv_bytes_per_seq)).toBeLessThanOrEqual(2 * 2 * pageBytes);
    // ADA_SNAPKV at 256 tokens per head keeps about 256 + 4 of ~2.2K tokens
    expect(at(n2x, 'kvfleet ADA_SNAPKV').kv_bytes_per_seq / at(n2x, 'llama.cpp').kv_bytes_per_seq).toBeLessThan(0.2);
    expect(report.targets).toHaveLength(3);
    expect(report.targets[2].value).toBeCloseTo(at(n2x, 'kvfleet ADA_SNAPKV').kv_bytes_per_seq / at(n2x, 'llama.cpp').kv_bytes_per_seq, 3);
    for (const f of ['decode-tiny-f16.svg', 'decode-tiny-2x-f16.svg', 'prefill-tiny-f16.svg', 'kv-bytes-per-seq.svg', 'engine-vs-llama.json']) {
      expect(existsSync(path.join(dir, f))).toBe(true);
    }
    expect(circles(readFileSync(path.join(dir, 'decode-tiny-2x-f16.svg'), 'utf8'))).toHaveLength(3);
    // --from replots a saved report without measuring
    const again = await run({ json: true, args: { from: path.join(dir, 'engine-vs-llama.json') } });
    expect(again.targets).toEqual(report.targets.map((t) => ({ ...t })));
  }, 300_000);
});
