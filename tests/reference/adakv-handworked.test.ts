// The reference checked against cases worked out by hand (the arithmetic is in the comments).
import { describe, expect, it } from 'vitest';
import {
  refAllocate, refBudgetTokens, refCompresses, refKeptPositions, refLayerPrefixBudgets, refPool, refReduceGqa,
  refSnapkvScores,
} from './adakv.ts';

describe('Ada-KV reference, hand-worked', () => {
  it('allocates 2 heads with small integer scores for alpha 0, 0.5 and 1', () => {
    // head 0: 5 3 0 4 ; head 1: 1 2 6 0 ; Bp = 2 (4 slots in all)
    const S = [5, 3, 0, 4, 1, 2, 6, 0];
    // alpha 0.5: f = 1: head 0 keeps p0 (5), head 1 keeps p2 (6); the 2 slots left go to 4 (h0 p3), 3 (h0 p1)
    expect(refAllocate(S, 2, 4, 2, 0.5, true)).toEqual([[0, 1, 3], [2]]);
    // alpha 0: flattened top 4 = 6, 5, 4, 3: the same here
    expect(refAllocate(S, 2, 4, 2, 0, true)).toEqual([[0, 1, 3], [2]]);
    // alpha 1 (and uniform): each head's own top 2: head 0 {5, 4} = p0, p3; head 1 {6, 2} = p2, p1
    expect(refAllocate(S, 2, 4, 2, 1, true)).toEqual([[0, 3], [1, 2]]);
    expect(refAllocate(S, 2, 4, 2, 0.2, false)).toEqual([[0, 3], [1, 2]]);
  });

  it('breaks ties by lower head, then lower position', () => {
    const S = new Array(3 * 5).fill(1);
    // alpha 0, Bp = 2: 6 slots -> head 0's 5 positions, then head 1 position 0
    expect(refAllocate(S, 3, 5, 2, 0, true)).toEqual([[0, 1, 2, 3, 4], [0], []]);
    // alpha 0.5: f = 1 per head (position 0), then 3 slots -> head 0 positions 1, 2, 3
    expect(refAllocate(S, 3, 5, 2, 0.5, true)).toEqual([[0, 1, 2, 3], [0], [0]]);
  });

  it('computes the pyramid schedule for L = 4 by largest remainder, with the cap rule', () => {
    // B' = 100, beta 20: min 5, max 195, step 63 1/3: 195, 131 2/3, 68 1/3, 5 -> floors sum 399, +1 to layer 1
    expect(refLayerPrefixBudgets({ method: 'PYRAMIDKV', tokensPerHead: 104, window: 4 }, 4, 10_000)).toEqual([195, 132, 68, 5]);
    // B' = 10, beta 4: min 2.5, max 17.5, step 5: 17.5, 12.5, 7.5, 2.5 -> floors sum 38, two tokens to the four
    // equal remainders: the lower layers 0 and 1
    expect(refLayerPrefixBudgets({ method: 'ADA_PYRAMIDKV', tokensPerHead: 14, window: 4, pyramidBeta: 4 }, 4, 10_000))
      .toEqual([18, 13, 7, 2]);
    // cap: B' = 100, n - w = 160 < 195: max 160, min 40, step 40: 160, 120, 80, 40
    expect(refLayerPrefixBudgets({ method: 'PYRAMIDKV', tokensPerHead: 104, window: 4 }, 4, 164)).toEqual([160, 120, 80, 40]);
    // uniform methods: B' everywhere
    expect(refLayerPrefixBudgets({ method: 'ADA_SNAPKV', tokensPerHead: 104, window: 4 }, 4, 164)).toEqual([100, 100, 100, 100]);
  });

  it('max- and avg-pools a short vector', () => {
    const x = [1, 3, 2, 0, 5];
    // kernel 3, padding 1: max windows {-inf,1,3} {1,3,2} {3,2,0} {2,0,5} {0,5,-inf}
    expect(refPool(x, 3, 'MAX')).toEqual([3, 3, 3, 5, 5]);
    // avg counts the zero padding: 4/3, 6/3, 5/3, 7/3, 5/3
    const avg = refPool(x, 3, 'AVG');
    [4 / 3, 2, 5 / 3, 7 / 3, 5 / 3].forEach((v, i) => expect(avg[i]).toBeCloseTo(v, 12));
    expect(refPool(x, 1, 'MAX')).toEqual(x);
  });

  it('reduces GQA groups by mean and by max', () => {
    // H = 4, Hk = 2: group 0 = rows 0, 1; group 1 = rows 2, 3
    const A = [[1, 2], [3, 0], [0.5, 0.5], [0.1, 0.9]];
    const mean = refReduceGqa(A, 2, 'MEAN');
    expect(mean[0]).toEqual([2, 1]);
    expect(mean[1][0]).toBeCloseTo(0.3, 12);
    expect(mean[1][1]).toBeCloseTo(0.7, 12);
    expect(refReduceGqa(A, 2, 'MAXIMUM')).toEqual([[3, 2], [0.5, 0.9]]);
  });

  it('scores equal logits as the window mean of uniform causal softmax', () => {
    // all keys 0 -> every visible key gets the same weight. Query at position 3 sees 4 keys (1/4 each), query at
    // 4 sees 5 (1/5 each); mean over w = 2: keys 0..3 get (1/4 + 1/5) / 2 = 0.225. Prefix = 3 keys.
    const S = refSnapkvScores({
      q: [1, 1], qpos: [3, 4], k: [0, 0, 0, 0, 0], kpos: [0, 1, 2, 3, 4], mPrefix: 3, H: 1, Hk: 1, d: 1,
      pooling: 'MAX', reduce: 'MEAN', kernel: 3,
    });
    S[0].forEach((v) => expect(v).toBeCloseTo(0.225, 12));
  });

  it('sizes budgets from a keep ratio and keeps everything when the prompt fits', () => {
    expect(refBudgetTokens({ keepRatio: 0.3, window: 4 }, 100)).toBe(30); // 0.3f * 100 is 30.0000012
    expect(refBudgetTokens({ keepRatio: 0.25, window: 4 }, 101)).toBe(26); // ceil(25.25)
    expect(refBudgetTokens({ keepRatio: 0.1, window: 4 }, 10)).toBe(5); // floored at w + 1
    expect(refCompresses({ tokensPerHead: 40, window: 4 }, 40)).toBe(false);
    expect(refCompresses({ tokensPerHead: 40, window: 4 }, 41)).toBe(true);
    const kept = refKeptPositions({ tokensPerHead: 40, window: 4 }, 2, 6, 1, []);
    expect(kept).toEqual([[[0, 1, 2, 3, 4, 5]], [[0, 1, 2, 3, 4, 5]]]);
  });
});
