// `kvfleet bench quality` at a small size: the measurement plumbing (resume replay under the same inputs as FULL,
// errors, KL, agreement, pages) checked on outcomes that are known exactly.
import { describe, expect, it } from 'vitest';
import { run } from '../../bench/quality.ts';

interface Row { method: string; budget: number; attnRelL1: number; klMean: number; agreement: number; pagesPerSeq: number;
  fullPagesPerSeq: number; pagesVsFull: number; fragmentation: number; windowMassKept: number; decodeSteps: number;
  keptTokensPerSeq: number; headKeptTokens: number[][]; headAttnRelL1: number[][] }

describe('bench quality (512-token prompt, 8 decode steps)', () => {
  it('matches FULL exactly when the budget holds the whole prompt, and measures a loss when it does not', async () => {
    const report = await run({ json: true, args: { prompts: '1', tokens: '512', steps: '8', budgets: '64,600' } });
    expect(report.bench).toBe('quality');
    const [head, ...rows] = report.results as [Record<string, unknown>, ...Row[]];
    expect(head).toMatchObject({ preset: 'hetero', decodeSteps: 8, window: 32, floorAlpha: 0.2 });
    expect((head.headShares as unknown[]).length).toBe(16);
    expect(rows.map((r) => `${r.method}/${r.budget}`).sort()).toEqual(
      ['ADA_PYRAMIDKV', 'ADA_SNAPKV', 'PYRAMIDKV', 'SNAPKV'].flatMap((m) => [`${m}/600`, `${m}/64`]).sort());
    for (const r of rows) {
      expect(r.decodeSteps).toBe(8);
      // 512 prompt tokens, 16 KV heads of 16-token pages
      expect(r.fullPagesPerSeq).toBe(16 * 32);
      // the per-head table adds up to the sequence's kept tokens; SnapKV keeps B per head, Ada moves budget between heads
      expect(r.headKeptTokens.flat().reduce((a, b) => a + b, 0)).toBe(r.keptTokensPerSeq);
      if (r.method === 'SNAPKV') expect(new Set(r.headKeptTokens.flat())).toEqual(new Set([Math.min(r.budget, 512)]));
      if (r.method === 'ADA_SNAPKV' && r.budget === 64) expect(new Set(r.headKeptTokens.flat()).size).toBeGreaterThan(1);
      if (r.budget === 600) {
        // n <= B: nothing compressed, so replaying FULL's tokens must reproduce FULL bit for bit
        expect(r, `${r.method}`).toMatchObject({ attnRelL1: 0, klMean: 0, agreement: 1, pagesVsFull: 1, fragmentation: 1 });
        expect(r.headAttnRelL1.flat().every((e) => e === 0), r.method).toBe(true);
        expect(r.windowMassKept).toBeCloseTo(1, 9);
      } else {
        expect(r.attnRelL1, r.method).toBeGreaterThan(0);
        expect(Math.max(...r.headAttnRelL1.flat()), r.method).toBeGreaterThan(0);
        expect(r.klMean, r.method).toBeGreaterThan(0);
        expect(r.pagesVsFull, r.method).toBeLessThan(0.25);
        expect(r.fragmentation, r.method).toBeGreaterThanOrEqual(1);
        expect(r.windowMassKept, r.method).toBeLessThan(1);
      }
    }
    expect(report.targets.map((t) => t.name)).toContain('ada_snapkv_vs_snapkv_err_ratio_B64');
    expect(report.targets.map((t) => t.name)).toContain('ada_pyramidkv_minus_pyramidkv_agreement_B600');
    expect(report.targets).toHaveLength(2 * 2 * 3);
  }, 300_000);
});
