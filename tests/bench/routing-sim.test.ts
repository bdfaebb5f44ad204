// The routing simulation (bench/sim/, `kvfleet bench routing-sim`) at a small size: 4 workers, 300 requests of the
// bench's long-tailed trace at a load above what the pools hold, so placement matters. Invariants: capacity-aware
// policies (the real MemoryLedger pick) never over-admit under reserve admission while round-robin does on the same
// trace; nothing is ever preempted under reserve admission; every request completes under both admission modes;
// the same seeds give the same results. The simulated worker's admission rules are checked on their own too.
import { describe, expect, it } from 'vitest';
import { CAPACITY_AWARE, runSim, SIM_POLICIES, type Policy, type SimResult } from '../../bench/sim/fleet.ts';
import { makeTrace } from '../../bench/sim/trace.ts';
import { SimWorker, type SimRequest } from '../../bench/sim/worker.ts';
import { BUDGET, COST, OUTPUT, PROMPT, SHAPE, simConfig } from '../../bench/routing-sim.ts';
import { requestFootprintPages } from '../../ledger/footprint.ts';

const POOLS = [262_144, 262_144, 262_144, 262_144];
const trace = makeTrace({ requests: 300, ratePerS: 3, prompt: PROMPT, output: OUTPUT, seed: 3 });

async function all(admission: 'reserve' | 'optimistic'): Promise<Map<Policy, SimResult>> {
  const out = new Map<Policy, SimResult>();
  for (const p of SIM_POLICIES) out.set(p, await runSim(simConfig({ pools: POOLS, admission, seed: 1 }, p, trace)));
  return out;
}

describe('routing simulation (4 workers, 300 requests)', () => {
  it('the trace is long-tailed, clipped and seeded', () => {
    expect(makeTrace({ requests: 300, ratePerS: 3, prompt: PROMPT, output: OUTPUT, seed: 3 })).toEqual(trace);
    expect(makeTrace({ requests: 300, ratePerS: 3, prompt: PROMPT, output: OUTPUT, seed: 4 })).not.toEqual(trace);
    const n = trace.map((r) => r.n).sort((a, b) => a - b);
    expect(n[0]).toBeGreaterThanOrEqual(PROMPT.min);
    expect(n[n.length - 1]).toBeLessThanOrEqual(PROMPT.max);
    // long tail: the longest prompts are many times the median
    expect(n[n.length - 3] / n[150]).toBeGreaterThan(8);
    for (const r of trace) expect(r.m).toBeGreaterThanOrEqual(OUTPUT.min);
    for (let i = 1; i < trace.length; i++) expect(trace[i].arrivalMs).toBeGreaterThan(trace[i - 1].arrivalMs);
  });

  it('reserve admission: capacity-aware policies never over-admit, round-robin does, nothing is preempted, all complete', async () => {
    const r = await all('reserve');
    for (const [p, x] of r) {
      expect(x.completed, p).toBe(trace.length);
      expect(x.preemptions, p).toBe(0);
      expect(x.placed_per_worker.reduce((a, b) => a + b, 0), p).toBe(trace.length);
      if (CAPACITY_AWARE.has(p)) {
        expect(x.over_admissions, p).toBe(0);
        // the pick really ran through the ledger, and had to wait for room at this load
        expect(x.picks, p).toBeGreaterThan(trace.length);
        expect(x.failed_picks, p).toBe(x.picks - trace.length);
      }
    }
    expect(r.get('round-robin')!.over_admissions).toBeGreaterThan(0);
    // round-robin's over-admitted requests wait in a worker's queue; capacity-aware ones wait at the router instead
    expect(r.get('round-robin')!.worker_queue_ms.p99).toBeGreaterThan(r.get('most-free')!.worker_queue_ms.p99);
  });

  it('optimistic admission: over-admission leads to preemptions, and every request still completes', async () => {
    const r = await all('optimistic');
    for (const [p, x] of r) expect(x.completed, p).toBe(trace.length);
    expect(r.get('round-robin')!.over_admissions).toBeGreaterThan(0);
    expect(r.get('round-robin')!.preemptions).toBeGreaterThan(0);
  });

  it('is deterministic: the same seeds give the same results, another p2c seed another placement', async () => {
    const cfg = simConfig({ pools: POOLS, admission: 'reserve', seed: 1 }, 'p2c', trace);
    const a = await runSim(cfg);
    const b = await runSim(cfg);
    expect(b).toEqual(a);
    const c = await runSim({ ...cfg, seed: 2 });
    expect(c.placed_per_worker).not.toEqual(a.placed_per_worker);
    expect(c.over_admissions).toBe(0);
  });
});

describe('simulated worker admission', () => {
  const req = (id: string, n: number, m: number): SimRequest => ({ id, n, m, footprint: requestFootprintPages(SHAPE, BUDGET, n, m) });
  const opts = (admission: 'reserve' | 'optimistic', totalPages: number) => ({ id: 'w', totalPages, shape: SHAPE, budget: BUDGET,
    admission, maxRunning: 256, maxPrefillTokens: 2048, cost: COST });

  /** Steps the worker until it is idle; returns the finish order. Requests record their own admission times. */
  function drain(w: SimWorker, t0 = 0): string[] {
    const order: string[] = [];
    let t = t0;
    for (let i = 0; i < 100_000 && !w.idle(); i++) {
      const ms = w.beginStep(t);
      if (ms === null) break;
      t += ms;
      w.endStep(t, { firstToken: () => {}, finished: (r) => { order.push(r.id); } });
      expect(w.poolFree).toBeGreaterThanOrEqual(0);
    }
    expect(w.idle()).toBe(true);
    return order;
  }

  it('reserve: a request waits until its whole footprint fits, then runs; free pages exclude committed growth', () => {
    const a = req('a', 1024, 512), b = req('b', 1024, 512), c = req('c', 64, 32);
    const w = new SimWorker(opts('reserve', a.footprint + b.footprint - 1));
    w.submit(a); w.submit(b); w.submit(c);
    w.beginStep(0);
    // a is admitted with nothing held yet: all of its footprint is committed
    expect(w.freePages()).toBe(b.footprint - 1);
    expect(w.queuedIds()).toEqual(['b', 'c']);
    w.endStep(1, { firstToken: () => {}, finished: () => {} });
    const order = drain(w, 1);
    expect(order[0]).toBe('a');
    // b cannot start before a finishes, and c (which would fit beside a) waits behind b: the queue is FIFO
    expect(b.admittedMs).toBeGreaterThanOrEqual(a.finishedMs!);
    expect(c.admittedMs).toBeGreaterThanOrEqual(a.finishedMs!);
    expect(w.stats.preemptions).toBe(0);
  });

  it('optimistic: admits on prompt pages, preempts the newest when decode growth runs out, and finishes everything', () => {
    const a = req('a', 1024, 1024), b = req('b', 1024, 1024);
    // room for both prompts but not for both to grow to their full footprints
    const w = new SimWorker(opts('optimistic', Math.floor((a.footprint + b.footprint) * 0.7)));
    w.submit(a); w.submit(b);
    const order = drain(w);
    expect(order.sort()).toEqual(['a', 'b']);
    expect(w.stats.preemptions).toBeGreaterThan(0);
    expect(w.stats.overcommittedAdmissions).toBeGreaterThan(0);
  });

  it('prefill tokens: a split prompt counts the layers it has left, a waiting one whole, as worker/scheduler.ts does', () => {
    // 2048 tokens through 32 layers per step: a 4096-token prompt gets 16 layers per step and leaves no budget
    const long = req('long', 4096, 4), short = req('short', 100, 4);
    const w = new SimWorker(opts('reserve', 10 * long.footprint));
    w.submit(long); w.submit(short);
    expect(w.prefillTokens()).toBe(0);   // queued on arrival: the router's reservations carry their tokens
    const seen: number[] = [];
    let t = 0;
    for (let i = 0; i < 4; i++) {
      t += w.beginStep(t)!;
      seen.push(w.prefillTokens());
      w.endStep(t, { firstToken: () => {}, finished: () => {} });
    }
    // planned: long's layers 0-15 | 16-31 | short whole | decodes only
    expect(seen).toEqual([4096 + 100, 2048 + 100, 100, 0]);
    expect(w.prefillTokens()).toBe(0);
  });

  it('prefill tokens: a request preempted back into the queue counts its whole prompt', () => {
    const a = req('a', 1024, 1024), b = req('b', 1024, 1024);
    const w = new SimWorker(opts('optimistic', Math.floor((a.footprint + b.footprint) * 0.7)));
    w.submit(a); w.submit(b);
    let t = 0;
    while (w.stats.preemptions === 0) {
      t += w.beginStep(t)!;
      w.endStep(t, { firstToken: () => {}, finished: () => {} });
    }
    // b (the newest) went back into the queue with all of its prompt to prefill again; a is decoding
    expect(w.queuedIds()).toEqual(['b']);
    expect(w.prefillTokens()).toBe(1024);
  });
});
