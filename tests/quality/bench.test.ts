// `kvfleet bench quality` at a small size: the measurement plumbing (resume replay under the same inputs as FULL,
// errors, KL, agreement, pages) checked on outcomes that are known exactly.
import { describe, expect, it } from 'vitest';
import { run } from '../../bench/quality.ts';

interface Row { method: string; budget: number; attnRelL1: number; klMean: number; agreement: number; pagesPerSeq: number;
  fullPagesPerSeq: number; pagesVsFull: number; fragmentation: number; windowMassKept: number; decodeSteps: number;
  keptTokensPerSeq: number; headKeptTokens: number[][]; headAttnRelL1: number[][] }

interface Stat { value: number; lo: number; hi: number; verdict: string }

describe('bench quality (512-token prompt, 8 decode steps)', () => {
  it('matches FULL exactly when the budget holds the whole prompt, and measures a loss when it does not', async () => {
    const report = await run({ json: true, args: { prompts: '1', tokens: '512', steps: '8', budgets: '64,600' } });
    expect(report.bench).toBe('quality');
    const [head, ...rest] = report.results as [Record<string, unknown>, ...unknown[]];
    const rows = rest.filter((r): r is Row => (r as Row).method !== undefined);
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
    // the paired intervals: one prompt has nothing to resample, so each interval is its target's point; the budget
    // that holds the whole prompt is an exact tie
    const { comparisons } = rest.find((r) => (r as { comparisons?: unknown }).comparisons) as { comparisons: Array<{
      ada: string; budget: number; prompts: number; errRatio: Stat; klRatio: Stat; agreementDiff: Stat }> };
    expect(comparisons).toHaveLength(2 * 2);
    for (const c of comparisons) {
      expect(c.prompts).toBe(1);
      const name = `${c.ada.toLowerCase()}_vs_${c.ada.slice(4).toLowerCase()}`;
      const t = (m: string) => report.targets.find((x) => x.name === `${name}_${m}_B${c.budget}`)!.value;
      expect(c.errRatio).toMatchObject({ value: t('err_ratio'), lo: t('err_ratio'), hi: t('err_ratio') });
      expect(c.klRatio).toMatchObject({ value: t('kl_ratio'), lo: t('kl_ratio'), hi: t('kl_ratio') });
      if (c.budget === 600) {
        for (const s of [c.errRatio, c.klRatio, c.agreementDiff]) expect(s.verdict).toBe('tie');
      } else {
        expect(c.errRatio.verdict).not.toBe('tie');
      }
    }
  }, 300_000);
});
