// The paired bootstrap behind bench quality's Ada-vs-uniform intervals, on inputs whose answers are known.
import { describe, expect, it } from 'vitest';
import { bootstrapInterval, verdict } from '../../bench/paired.ts';

const ratioOfSums = (p: Record<string, number>, q: Record<string, number>) => p.x / q.x;

describe('paired bootstrap over prompts', () => {
  it('collapses to the point when every prompt has the same ratio', () => {
    const a = { x: [2, 4, 6, 8, 10] }, b = { x: [1, 2, 3, 4, 5] };
    const iv = bootstrapInterval(a, b, ratioOfSums);
    expect(iv.lo).toBeCloseTo(2, 12);
    expect(iv.hi).toBeCloseTo(2, 12);
  });

  it('resamples prompts, keeping each prompt\'s pair together, and is deterministic for a seed', () => {
    // Ada better on 9 prompts by 10%, one prompt a large loss: the interval must contain the point and be wide
    const u = { x: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1] }, a = { x: [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 3] };
    const iv = bootstrapInterval(a, u, ratioOfSums, { seed: 7 });
    const point = 11.1 / 10;
    expect(iv.lo).toBeLessThan(point);
    expect(iv.hi).toBeGreaterThan(point);
    expect(iv.lo).toBeGreaterThanOrEqual(0.9 - 1e-12);   // no resample can go below the all-wins ratio
    expect(iv.hi).toBeLessThanOrEqual(3 + 1e-12);        // nor above the all-losses one
    expect(bootstrapInterval(a, u, ratioOfSums, { seed: 7 })).toEqual(iv);
    expect(verdict(iv, 1, true)).toBe('inconclusive');
  });

  it('finds a consistent difference: all prompts better gives an interval below 1', () => {
    const u = { x: [1, 2, 3, 4, 5, 6, 7, 8] }, a = { x: [0.8, 1.7, 2.2, 3.5, 4.1, 5.0, 6.3, 7.1] };
    const iv = bootstrapInterval(a, u, ratioOfSums);
    expect(iv.hi).toBeLessThan(1);
    expect(verdict(iv, 1, true)).toBe('better');
    expect(verdict(iv, 1, false)).toBe('worse');
    expect(verdict({ lo: 1, hi: 1 }, 1, true)).toBe('tie');
  });

  it('a single prompt gives the point; mismatched lengths are refused', () => {
    expect(bootstrapInterval({ x: [3] }, { x: [2] }, ratioOfSums)).toEqual({ lo: 1.5, hi: 1.5 });
    expect(() => bootstrapInterval({ x: [1, 2] }, { x: [1] }, ratioOfSums)).toThrow(/one value per prompt/);
  });
});
