// The autoscaler's decision with a fake clock: scripted pressure timelines, one observation every 5 s.
import { describe, expect, it } from 'vitest';
import { drainOrder, ScaleDecider, type ScalePolicy } from '../../operator/autoscaler.ts';
import type { WorkerSnapshot } from '../../ledger/index.ts';

const policy: ScalePolicy = { minReplicas: 1, maxReplicas: 10, targetKVPressure: 0.7, scaleUpStabilizationSeconds: 15,
  scaleDownStabilizationSeconds: 300 };
const STEP = 5_000;

/** Runs a timeline: pressure(t seconds) every 5 s for `seconds`; the decided count is applied and becomes ready at
 *  once unless `readyLag` says how many pods stay not ready. Returns (t, replicas) after each change. */
function run(p: ScalePolicy, start: number, seconds: number, pressure: (t: number) => number, readyLag = 0) {
  const d = new ScaleDecider();
  let current = start;
  const changes: [number, number][] = [];
  const seen: number[] = [];
  for (let t = 0; t <= seconds; t += STEP / 1000) {
    const r = d.decide(p, { current, ready: Math.max(0, current - readyLag), pressure: pressure(t) }, 1_700_000_000_000 + t * 1000);
    expect(r.desired, `t=${t}`).toBeLessThanOrEqual(Math.max(1, 2 * current));
    if (r.desired !== current) { changes.push([t, r.desired]); current = r.desired; }
    seen.push(current);
  }
  return { changes, seen, final: current };
}

describe('ScaleDecider (fake clock)', () => {
  it('scales up under sustained pressure within the up window, not on the first high sample', () => {
    // calm (0.7 = target) for 60 s, then 1.4 (twice the target) from t = 60
    const r = run(policy, 2, 120, (t) => (t < 60 ? 0.7 : 1.4));
    expect(r.changes[0]).toEqual([75, 4]); // 15 s of high samples (60, 65, 70, 75): 2 × 1.4 / 0.7 = 4
    // once at 4 the fleet's pressure (still 1.4 here, scripted) keeps asking for more, at most 2× a step
    expect(r.changes.every(([, n], i) => i === 0 || n <= 2 * r.changes[i - 1][1])).toBe(true);
  });

  it('does not flap on noise around the target', () => {
    const noise = [0.66, 0.74, 0.7, 0.72, 0.68, 0.5, 0.9, 0.5, 0.9, 0.69];
    const r = run(policy, 3, 900, (t) => noise[(t / 5) % noise.length]);
    expect(r.changes).toEqual([]);
  });

  it('scales down only after the down window, to the highest recommendation in it', () => {
    // busy (0.7 at 4 replicas) until t = 100, then nearly idle
    const r = run(policy, 4, 600, (t) => (t < 100 ? 0.7 : 0.1));
    expect(r.changes).toEqual([[400, 1]]); // 300 s after the last sample that justified 4
  });

  it('never goes below min or above max, and steps up at most 2x', () => {
    const bounded = { ...policy, minReplicas: 2, maxReplicas: 6, scaleUpStabilizationSeconds: 0, scaleDownStabilizationSeconds: 0 };
    const up = run(bounded, 2, 60, () => 10);
    expect(up.changes).toEqual([[0, 4], [5, 6]]); // 2 → 4 (2x cap; 10/0.7 × 2 = 29 asked) → 6 (max)
    expect(Math.max(...up.seen)).toBe(6);
    const down = run(bounded, 6, 60, () => 0);
    expect(down.changes).toEqual([[0, 2]]);
    expect(Math.min(...down.seen)).toBe(2);
    // a count outside the bounds (set by hand) is brought back into them even without a pressure signal
    const d = new ScaleDecider();
    expect(d.decide(bounded, { current: 9, ready: 0, pressure: undefined }, 0).desired).toBe(6);
  });

  it('credits pods that are starting: no more scale-up for pressure they will absorb, and no scale-down meanwhile', () => {
    const fast = { ...policy, scaleUpStabilizationSeconds: 0, scaleDownStabilizationSeconds: 0 };
    const d = new ScaleDecider();
    // 4 asked for, 2 ready and pressed at 1.0: 2 × 1.0 / 0.7 → 3 are needed, 4 are coming
    expect(d.decide(fast, { current: 4, ready: 2, pressure: 1.0 }, 0).desired).toBe(4);
    expect(d.decide(fast, { current: 4, ready: 2, pressure: 1.0 }, 5000).desired).toBe(4);
    // once all 4 serve, the same pressure asks for ceil(4 × 1.0 / 0.7) = 6
    expect(d.decide(fast, { current: 4, ready: 4, pressure: 1.0 }, 10_000).desired).toBe(6);
  });
});

describe('drainOrder', () => {
  const w = (id: string, running: number, waiting: number, free: number): WorkerSnapshot => ({ worker_id: id, addr: '', total_pages: 100,
    free_pages: free, page_size: 16, num_layers: 1, num_kv_heads: 1, running, waiting, draining: false, heartbeat_ms: 0, reserved_pages: 0,
    reservations: 0, effective_free: free });
  it('puts the least-loaded workers first: least work, then least KV pressure', () => {
    expect(drainOrder([w('a', 3, 0, 50), w('b', 0, 0, 10), w('c', 0, 0, 90), w('d', 1, 1, 99)]).map((x) => x.worker_id)).toEqual(['c', 'b', 'd', 'a']);
  });
});
