// The footprint and budget functions against numbers worked by hand from ARCHITECTURE.md and ENGINE.md.
import { describe, expect, it } from 'vitest';
import {
  BUILTIN_DEFAULT_BUDGET, BudgetSpecError, budgetTokens, footprintPages, requestFootprintPages, resolveBudgetSpec,
} from '../../ledger/footprint.ts';
import { degradedShare, fleetPressure, workerPressure } from '../../ledger/pressure.ts';

describe('footprintPages', () => {
  it('counts kept prompt tokens plus full growth without a decode cap', () => {
    // kept = min(100, 64) = 64, grow = 20, ceil(84 / 16) = 6, +1 = 7 pages per head, × L·Hk = 4 → 28
    expect(footprintPages({ L: 2, Hk: 2, P: 16, n: 100, B: 64, m: 20, D: 0 })).toBe(28);
    // kept = min(4096, 512) = 512, grow = 256, 768 / 16 = 48, +1 = 49, × 12·4 → 2352
    expect(footprintPages({ L: 12, Hk: 4, P: 16, n: 4096, B: 512, m: 256, D: 0 })).toBe(2352);
  });

  it('keeps the whole prompt when it fits the budget', () => {
    // kept = 10, grow = 6, ceil(16 / 16) = 1, +1 = 2, × 4 → 8
    expect(footprintPages({ L: 2, Hk: 2, P: 16, n: 10, B: 64, m: 6, D: 0 })).toBe(8);
    // one more token crosses a page: ceil(17 / 16) = 2, +1 = 3 → 12
    expect(footprintPages({ L: 2, Hk: 2, P: 16, n: 10, B: 64, m: 7, D: 0 })).toBe(12);
  });

  it('bounds growth by the decode cap D + P', () => {
    // D = 48: min(64 + 20, 48 + 16) − 64 = 0 → ceil(64 / 16) + 1 = 5 → 20
    expect(footprintPages({ L: 2, Hk: 2, P: 16, n: 100, B: 64, m: 20, D: 48 })).toBe(20);
    // D = 80: min(84, 96) − 64 = 20, the cap does not bind → 28, as without a cap
    expect(footprintPages({ L: 2, Hk: 2, P: 16, n: 100, B: 64, m: 20, D: 80 })).toBe(28);
    // D = 70: min(84, 86) − 64 = 20 → 28; m = 100: min(164, 86) − 64 = 22, ceil(86 / 16) = 6, +1 = 7 → 28
    expect(footprintPages({ L: 2, Hk: 2, P: 16, n: 100, B: 64, m: 100, D: 70 })).toBe(28);
    // kept 10 with D = 8: min(10 + 50, 24) − 10 = 14 → ceil(24 / 16) + 1 = 3 → 12
    expect(footprintPages({ L: 2, Hk: 2, P: 16, n: 10, B: 64, m: 50, D: 8 })).toBe(12);
  });

  it('holds the +1 page of per-head rounding even for an empty prompt', () => {
    expect(footprintPages({ L: 3, Hk: 5, P: 16, n: 0, B: 0, m: 1, D: 0 })).toBe(3 * 5 * 2);
  });

  it('rejects non-integer and out-of-range inputs, naming the letter', () => {
    expect(() => footprintPages({ L: 0, Hk: 2, P: 16, n: 1, B: 1, m: 1, D: 0 })).toThrow(/footprint L/);
    expect(() => footprintPages({ L: 1, Hk: 2, P: 16, n: 1.5, B: 1, m: 1, D: 0 })).toThrow(/footprint n/);
    expect(() => footprintPages({ L: 1, Hk: 2, P: 16, n: 1, B: 1, m: -1, D: 0 })).toThrow(/footprint m/);
  });
});

describe('budgetTokens', () => {
  it('uses tokens_per_head as given', () => {
    expect(budgetTokens({ method: 'ADA_SNAPKV', tokens_per_head: 512 }, 4096)).toBe(512);
    expect(budgetTokens({ method: 'SNAPKV', tokens_per_head: 512 }, 100)).toBe(512);   // kept = min(n, B) later
  });

  it('turns keep_ratio into min(n, max(w + 1, ceil(r·n)))', () => {
    expect(budgetTokens({ method: 'SNAPKV', keep_ratio: 0.125 }, 1000)).toBe(125);
    expect(budgetTokens({ method: 'SNAPKV', keep_ratio: 0.1 }, 1000)).toBe(100);   // float32 product, not 101
    expect(budgetTokens({ method: 'SNAPKV', keep_ratio: 0.1 }, 1001)).toBe(101);   // ceil(100.1)
    expect(budgetTokens({ method: 'SNAPKV', keep_ratio: 0.01 }, 1000)).toBe(33);   // floor w + 1 with w = 32
    expect(budgetTokens({ method: 'SNAPKV', keep_ratio: 0.01, window: 8 }, 1000)).toBe(10);  // max(9, 10)
    expect(budgetTokens({ method: 'SNAPKV', keep_ratio: 0.5 }, 20)).toBe(20);      // min(n, max(33, 10))
    expect(budgetTokens({ method: 'SNAPKV', keep_ratio: 1 }, 777)).toBe(777);
  });

  it('keeps everything for FULL', () => {
    expect(budgetTokens({ method: 'FULL' }, 3000)).toBe(3000);
    expect(budgetTokens({ method: 'FULL', tokens_per_head: 64 }, 3000)).toBe(3000);
  });

  it('defaults an absent method to ADA_SNAPKV and fills ENGINE.md defaults', () => {
    expect(resolveBudgetSpec({ tokens_per_head: 100 })).toEqual({ method: 'ADA_SNAPKV', tokens_per_head: 100, window: 32,
      pool_kernel: 7, floor_alpha: 0.2, pyramid_beta: 20, decode_max_tokens_per_head: 0, pooling: 'MAX', gqa_reduce: 'MEAN' });
  });

  it('names the field of a bad spec', () => {
    const err = (f: () => unknown): BudgetSpecError => {
      try { f(); } catch (e) { return e as BudgetSpecError; }
      throw new Error('did not throw');
    };
    expect(err(() => budgetTokens({ method: 'SNAPKV' }, 10))).toBeInstanceOf(BudgetSpecError);
    expect(err(() => budgetTokens({ method: 'SNAPKV' }, 10)).message).toMatch(/exactly one of tokens_per_head and keep_ratio/);
    expect(err(() => budgetTokens({ method: 'SNAPKV', tokens_per_head: 64, keep_ratio: 0.5 }, 10)).field).toBe('tokens_per_head');
    expect(err(() => budgetTokens({ method: 'SNAPKV', tokens_per_head: 32 }, 10)).field).toBe('tokens_per_head');
    expect(err(() => budgetTokens({ method: 'SNAPKV', keep_ratio: 0 }, 10)).field).toBe('keep_ratio');
    expect(err(() => budgetTokens({ method: 'SNAPKV', keep_ratio: 1.5 }, 10)).field).toBe('keep_ratio');
    expect(err(() => budgetTokens({ method: 'SNAPKV', keep_ratio: 0.5, window: 0 }, 10)).field).toBe('window');
  });
});

describe('requestFootprintPages', () => {
  it('combines the budget with the footprint under the built-in default budget', () => {
    // B = 1024, kept = 1024, grow = 100, ceil(1124 / 16) = 71, +1 = 72, × 2·2 → 288
    expect(requestFootprintPages({ L: 2, Hk: 2, P: 16 }, BUILTIN_DEFAULT_BUDGET, 2000, 100)).toBe(288);
    // a 1000-token prompt is not compressed by default: ceil(1100 / 16) = 69, +1 = 70 → 280
    expect(requestFootprintPages({ L: 2, Hk: 2, P: 16 }, BUILTIN_DEFAULT_BUDGET, 1000, 100)).toBe(280);
  });

  it('takes the decode cap from the spec', () => {
    // keep_ratio 0.25 of 400 → B = 100, D = 64: min(100 + 200, 80) − 100 < 0 → 0; ceil(100 / 16) + 1 = 8 → × 4 = 32
    expect(requestFootprintPages({ L: 2, Hk: 2, P: 16 }, { method: 'ADA_PYRAMIDKV', keep_ratio: 0.25, decode_max_tokens_per_head: 64 },
      400, 200)).toBe(32);
  });
});

describe('kv pressure', () => {
  it('follows ARCHITECTURE.md for a worker and a fleet', () => {
    expect(workerPressure({ total_pages: 200, free_pages: 50, reserved_pages: 10 })).toBeCloseTo(0.8, 12);
    expect(workerPressure({ total_pages: 0, free_pages: 0, reserved_pages: 0 })).toBe(1);
    const fleet = fleetPressure([
      { total_pages: 100, free_pages: 50, reserved_pages: 0, draining: false, running: 4, waiting: 1 },   // 0.5
      { total_pages: 100, free_pages: 10, reserved_pages: 0, draining: false, running: 0, waiting: 1 },   // 0.9
      { total_pages: 100, free_pages: 100, reserved_pages: 0, draining: true, running: 9, waiting: 9 },   // left out
    ]);
    expect(fleet.kv).toBeCloseTo(0.7, 12);
    expect(fleet.queue).toBeCloseTo(2 / 4, 12);
    expect(fleet.pressure).toBeCloseTo(1.2, 12);
    expect(fleet.workers).toBe(2);
    expect(fleetPressure([{ total_pages: 10, free_pages: 10, reserved_pages: 0, draining: false, running: 0, waiting: 5 }]).queue).toBe(1);
    expect(fleetPressure([])).toEqual({ kv: 0, queue: 0, pressure: 0, workers: 0 });
  });

  it('splits a worker\'s effective free pages among live routers in degraded mode', () => {
    expect(degradedShare(100, 3)).toBe(33);
    expect(degradedShare(100, 0)).toBe(100);
    expect(degradedShare(-5, 2)).toBe(0);
  });
});
