// `kvfleet bench worker` at a small size (the full run is n = 2048, m = 128, B = 256, 24 requests): the report has
// the CONTRACTS.md shape, residency follows the pool (FULL: the 4 footprints it was sized for; ADA: what its
// smaller footprint allows), and the real peak pages stay within the formula's footprint.
import { describe, expect, it } from 'vitest';
import { run } from '../../bench/worker.ts';

describe('bench worker (small)', () => {
  it('reports resident sequences and real peak pages for FULL and ADA_SNAPKV, and the target against the ideal', async () => {
    const r = await run({ json: true, args: { requests: '16', prompt: '256', new: '16', 'tokens-per-head': '64' } });
    expect(r.bench).toBe('worker');
    const [full, ada, summary] = r.results as Array<Record<string, number>>;
    // tiny: L = 2, Hk = 2, P = 16. FULL footprint 4 · (ceil(272 / 16) + 1) = 72; ADA 4 · (ceil(80 / 16) + 1) = 24
    expect(full).toMatchObject({ method: 'FULL', pool_pages: 288, footprint_pages: 72, footprint_fit: 4, peak_resident_sequences: 4, preemptions: 0 });
    expect(ada).toMatchObject({ method: 'ADA_SNAPKV', footprint_pages: 24, footprint_fit: 12, peak_resident_sequences: 12, preemptions: 0 });
    for (const x of [full, ada]) {
      const peaks = x.peak_pages_per_sequence as unknown as number[];
      expect(peaks).toHaveLength(16);
      for (const p of peaks) { expect(p).toBeGreaterThan(0); expect(p).toBeLessThanOrEqual(x.footprint_pages); }
    }
    expect(summary).toMatchObject({ resident_ratio: 3, ideal_ratio: 3.4 });
    expect(r.targets).toEqual([{ name: 'resident_ratio_fraction_of_ideal', value: summary.fraction_of_ideal, unit: 'fraction', op: '>', threshold: 0.8 }]);
    expect(summary.fraction_of_ideal).toBeCloseTo(3 / 3.4, 3);
  });
});
