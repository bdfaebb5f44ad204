// Router and worker size requests with ledger/footprint.ts; the engine compresses with its own budget_tokens.
// They must agree on B for every keep ratio and prompt length, or a router would reserve the wrong page count.
import { describe, expect, it } from 'vitest';
import { budgetTokens } from '../../ledger/footprint.ts';
import { budgetTokens as engineBudgetTokens } from '../../worker/compress-native.ts';

describe('ledger and engine agree on the budget B(n)', () => {
  it('for keep ratios given as float32 (as gRPC delivers them) and as decimals', () => {
    let x = 12345;
    const rnd = () => { x = (x * 1103515245 + 12345) >>> 0; return x / 2 ** 32; };
    const ratios = [0.1, 0.3, 0.7, 0.125, 1, 0.05, 0.333, 0.9];
    for (let i = 0; i < 300; i++) ratios.push(Math.max(1e-3, Math.round(rnd() * 1000) / 1000));
    let checked = 0;
    for (const r of ratios) {
      for (const n of [1, 7, 33, 100, 999, 1000, 4096, 10_000, 32_768]) {
        for (const ratio of [r, Math.fround(r)]) {
          const spec = { method: 'ADA_SNAPKV' as const, keep_ratio: ratio, window: 32 };
          expect(budgetTokens(spec, n), `r=${ratio} n=${n}`).toBe(engineBudgetTokens({ method: 'ADA_SNAPKV', keepRatio: ratio, window: 32 }, n));
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(5000);
    expect(budgetTokens({ method: 'ADA_SNAPKV', keep_ratio: 0.3, window: 4 }, 100)).toBe(30);
  });
});
