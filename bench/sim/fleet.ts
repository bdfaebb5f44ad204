// The routing simulation: a discrete-event run of one router in front of simulated workers (worker.ts) on a
// virtual clock. Capacity-aware policies (most-free, best-fit, p2c, least-prefill) go through the REAL placement
// code: a MemoryLedger (the exact semantics of the Redis scripts) on a VirtualClock, fed by the workers' heartbeats
// every heartbeatMs (free_pages, prefill_tokens, admitted and queued ids, as worker/fleet.ts sends them), picked
// with the request's footprint from ledger/footprint.ts and its prompt tokens, released when the stream ends (as
// router/router.ts does). A pick that finds no
// room waits and tries again on the router's backoff (10 ms doubling to 100 ms, router/router.ts place()), with no
// give-up: a client answered RESOURCE_EXHAUSTED would retry, and its time to first token counts from its first try.
// Baselines that ignore capacity: round-robin, and least-requests (fewest requests placed and not finished; ties
// rotate). Their workers queue what their pool cannot hold (reserve) or over-admit and preempt (optimistic).
//
// Over-admission: a placement after which the requests a worker holds (queued or running, the new one included)
// have footprints adding up to more than its pool, i.e. the router promised pages the worker does not have. Under
// reserve admission such a request waits in that worker's queue while others may have room; under optimistic
// admission it is what leads to preemptions. The ledger makes it impossible for capacity-aware policies: reserved +
// committed never exceeds total (checked here on every placement, not assumed).
//
// Determinism: the trace is seeded, p2c's random source is seeded, events at the same time run in the order they
// were scheduled, and every ledger call is awaited before the next event.
import { MemoryLedgerBackend, VirtualClock, type Ledger, type PickPolicy } from '../../ledger/index.ts';
import { percentile } from '../report.ts';
import { seededRandom, type TraceRequest } from './trace.ts';
import { SimWorker, type Admission, type CostModel, type ModelShape, type SimRequest, type WorkerStats } from './worker.ts';
import type { BudgetSpec } from '../../proto/index.ts';

export type Policy = PickPolicy | 'round-robin' | 'least-requests';
export const SIM_POLICIES: readonly Policy[] = ['most-free', 'best-fit', 'p2c', 'least-prefill', 'round-robin', 'least-requests'];
export const CAPACITY_AWARE: ReadonlySet<Policy> = new Set<Policy>(['most-free', 'best-fit', 'p2c', 'least-prefill']);

export interface SimConfig {
  /** pages of each worker's pool (one entry per worker) */
  pools: number[];
  shape: ModelShape;
  budget: BudgetSpec;
  admission: Admission;
  cost: CostModel;
  maxRunning: number;
  maxPrefillTokens: number;
  heartbeatMs: number;
  policy: Policy;
  trace: TraceRequest[];
  /** seeds p2c's random source */
  seed: number;
}

export interface SimResult {
  policy: Policy;
  admission: Admission;
  requests: number;
  completed: number;
  over_admissions: number;
  preemptions: number;
  overcommitted_admissions: number;
  ttft_ms: { p50: number; p90: number; p99: number; mean: number; max: number };
  /** TTFT − the request's prefill alone on an idle worker: the wait that placement and batching add */
  ttft_excess_ms: { p50: number; p99: number };
  /** arrival → placed on a worker (the router's wait for room; 0 for baselines) */
  router_wait_ms: { p50: number; p99: number };
  /** placed → first admitted by the worker */
  worker_queue_ms: { p50: number; p99: number };
  /** completed requests / (last finish − first arrival) */
  completed_per_s: number;
  /** the middle half of the completions over the time they took (ramp-up and drain left out): the service rate
   *  when the run is saturated */
  steady_completed_per_s: number;
  makespan_s: number;
  picks: number;
  failed_picks: number;
  /** Σ busy time / (workers · makespan) */
  utilization: number;
  peak_held_fraction: number;
  /** requests placed on each worker */
  placed_per_worker: number[];
}

// ---- a binary heap of events ordered by (time, sequence) ----
interface Ev { t: number; seq: number; run: () => void | Promise<void> }
class EventQueue {
  private h: Ev[] = [];
  private n = 0;
  get size(): number { return this.h.length; }
  push(t: number, run: Ev['run']): void {
    const h = this.h;
    h.push({ t, seq: this.n++, run });
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!EventQueue.less(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }
  pop(): Ev | undefined {
    const h = this.h;
    if (h.length === 0) return undefined;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let s = i;
        if (l < h.length && EventQueue.less(h[l], h[s])) s = l;
        if (r < h.length && EventQueue.less(h[r], h[s])) s = r;
        if (s === i) break;
        [h[i], h[s]] = [h[s], h[i]];
        i = s;
      }
    }
    return top;
  }
  private static less(a: Ev, b: Ev): boolean { return a.t < b.t || (a.t === b.t && a.seq < b.seq); }
}

const ROUTER_BACKOFF_FIRST_MS = 10;
const ROUTER_BACKOFF_MAX_MS = 100;
const round = (x: number, d = 3): number => Number(x.toFixed(d));

interface Waiting {
  req: SimRequest & { arrivalMs: number };
  /** the router's next poll time on its backoff schedule, and the backoff after it */
  nextPoll: number;
  backoff: number;
  /** a poll event is scheduled */
  pending: boolean;
  /** the ledger version its last failed pick saw: polling again before a change gives the same null */
  failedAt: number;
}

/** Completions per second over the middle half of the finish times. */
export function steadyRate(finishMs: number[]): number {
  const s = [...finishMs].sort((a, b) => a - b);
  const a = Math.floor(s.length * 0.25), b = Math.floor(s.length * 0.75);
  return b > a && s[b] > s[a] ? (b - a) / ((s[b] - s[a]) / 1000) : NaN;
}

export async function runSim(cfg: SimConfig): Promise<SimResult> { return (await simulate(cfg)).result; }

/** runSim, plus every request's time to first token (ms, trace order) for pooling runs. */
export async function simulate(cfg: SimConfig): Promise<{ result: SimResult; ttftMs: number[] }> {
  if (cfg.pools.length < 1) throw new RangeError('sim: pools must name at least one worker');
  const clock = new VirtualClock(0);
  const backend = new MemoryLedgerBackend({ clock: clock.now, random: seededRandom(cfg.seed) });
  const ledger: Ledger = backend.ledger('sim', 'fleet');
  const aware = CAPACITY_AWARE.has(cfg.policy);
  const workers = cfg.pools.map((pages, i) => new SimWorker({ id: `w${String(i).padStart(2, '0')}`, totalPages: pages,
    shape: cfg.shape, budget: cfg.budget, admission: cfg.admission, maxRunning: cfg.maxRunning,
    maxPrefillTokens: cfg.maxPrefillTokens, cost: cfg.cost }));
  const byId = new Map(workers.map((w) => [w.id, w]));
  const q = new EventQueue();
  const reqs: Array<SimRequest & { arrivalMs: number }> = cfg.trace.map((t) => ({ id: t.id, n: t.n, m: t.m, arrivalMs: t.arrivalMs, footprint: workers[0].footprint(t.n, t.m) }));
  const maxPool = Math.max(...cfg.pools);
  for (const r of reqs) {
    if (r.footprint > maxPool) throw new RangeError(`sim: request ${r.id} (n=${r.n}, m=${r.m}) needs ${r.footprint} pages, more than any pool (${maxPool})`);
  }

  // what each worker has been promised: Σ footprints of requests placed on it and not finished
  const promised = new Map(workers.map((w) => [w.id, 0]));
  const outstanding = new Map(workers.map((w) => [w.id, 0]));
  const placedOn = new Map<string, SimWorker>();
  const placedCount = new Map(workers.map((w) => [w.id, 0]));
  let overAdmissions = 0, completed = 0, picks = 0, failedPicks = 0, rr = 0, lrNext = 0;
  let ledgerVersion = 0;
  let lastFinish = 0;
  const waiting = new Set<Waiting>();

  const now = (): number => clock.now();
  const advanceTo = (t: number): void => { if (t > clock.now()) clock.advance(t - clock.now()); };

  const events = {
    firstToken: () => {},
    finished: (req: SimRequest, at: number) => {
      const w = placedOn.get(req.id)!;
      promised.set(w.id, promised.get(w.id)! - req.footprint);
      outstanding.set(w.id, outstanding.get(w.id)! - 1);
      completed++;
      lastFinish = Math.max(lastFinish, at);
      // the router releases the reservation when the stream ends (0 pages once a heartbeat reported it admitted)
      if (aware) q.push(at, async () => { if ((await ledger.release(w.id, req.id)) > 0) changed(); });
    },
  };

  const kick = (w: SimWorker): void => {
    if (w.busy) return;
    const ms = w.beginStep(now());
    if (ms === null) return;
    q.push(now() + ms, () => { w.endStep(now(), events); kick(w); });
  };

  const place = (req: SimRequest, w: SimWorker): void => {
    const p = promised.get(w.id)! + req.footprint;
    if (p > w.totalPages) {
      overAdmissions++;
      if (aware && cfg.admission === 'reserve') {
        throw new Error(`sim: ${cfg.policy} placed ${req.id} on ${w.id} with ${p} pages promised of ${w.totalPages} (the ledger over-reserved: a bug)`);
      }
    }
    promised.set(w.id, p);
    outstanding.set(w.id, outstanding.get(w.id)! + 1);
    placedCount.set(w.id, placedCount.get(w.id)! + 1);
    placedOn.set(req.id, w);
    req.placedMs = now();
    w.submit(req);
    kick(w);
  };

  // ---- the capacity-aware router: pick, or wait on the backoff schedule ----
  const tryPick = async (wt: Waiting): Promise<void> => {
    wt.pending = false;
    picks++;
    const r = await ledger.pick(wt.req.footprint, wt.req.id, { policy: cfg.policy as PickPolicy, promptTokens: wt.req.n });
    if (r) {
      waiting.delete(wt);
      place(wt.req, byId.get(r.worker_id)!);
      return;
    }
    failedPicks++;
    wt.failedAt = ledgerVersion;
    // the next poll on the router's schedule; it only runs once the ledger has changed (else it would fail again)
    wt.nextPoll = now() + wt.backoff;
    wt.backoff = Math.min(ROUTER_BACKOFF_MAX_MS, wt.backoff * 2);
    if (!waiting.has(wt)) waiting.add(wt);
  };

  /** The ledger changed (a heartbeat, a release): waiting requests poll again at their next scheduled time. */
  function changed(): void {
    ledgerVersion++;
    for (const wt of waiting) {
      if (wt.pending || wt.failedAt === ledgerVersion) continue;
      // skip the polls that fall before now: each would have seen the ledger before this change and failed
      while (wt.nextPoll < now()) { wt.nextPoll += wt.backoff; wt.backoff = Math.min(ROUTER_BACKOFF_MAX_MS, wt.backoff * 2); }
      wt.pending = true;
      q.push(wt.nextPoll, () => tryPick(wt));
    }
  }

  const route = async (req: SimRequest & { arrivalMs: number }): Promise<void> => {
    if (aware) {
      await tryPick({ req, nextPoll: now(), backoff: ROUTER_BACKOFF_FIRST_MS, pending: false, failedAt: -1 });
      return;
    }
    let w: SimWorker;
    if (cfg.policy === 'round-robin') {
      w = workers[rr++ % workers.length];
    } else {
      // least-requests: fewest outstanding; ties go to the first at or after a rotating start
      let best = -1;
      for (let k = 0; k < workers.length; k++) {
        const i = (lrNext + k) % workers.length;
        if (best < 0 || outstanding.get(workers[i].id)! < outstanding.get(workers[best].id)!) best = i;
      }
      w = workers[best];
      lrNext = (best + 1) % workers.length;
    }
    place(req, w);
  };

  // ---- heartbeats (capacity-aware policies only: baselines never read the ledger) ----
  const heartbeat = async (w: SimWorker): Promise<void> => {
    await ledger.heartbeat(w.id, {
      addr: `${w.id}:7000`, total_pages: w.totalPages, free_pages: w.freePages(), page_size: cfg.shape.P,
      num_layers: cfg.shape.L, num_kv_heads: cfg.shape.Hk, running: w.runningCount, waiting: w.waitingCount, draining: false, prefill_tokens: w.prefillTokens(),
    }, { admitted: w.takeAdmitted(), queued: w.queuedIds() });
    changed();
  };

  if (aware) {
    for (const w of workers) await heartbeat(w);
    workers.forEach((w, i) => {
      const tick = (): Promise<void> => heartbeat(w).then(() => { if (completed < reqs.length) q.push(now() + cfg.heartbeatMs, tick); });
      q.push((i * cfg.heartbeatMs) / workers.length + cfg.heartbeatMs, tick);
    });
  }
  for (const r of reqs) q.push(r.arrivalMs, () => route(r));

  while (completed < reqs.length) {
    const ev = q.pop();
    if (!ev) throw new Error(`sim: ${reqs.length - completed} requests never completed and nothing is scheduled (a bug)`);
    advanceTo(ev.t);
    await ev.run();
  }

  const ttft = reqs.map((r) => r.firstTokenMs! - r.arrivalMs);
  const excess = reqs.map((r) => r.firstTokenMs! - r.arrivalMs - workers[0].isolatedPrefillMs(r.n));
  const rwait = reqs.map((r) => r.placedMs! - r.arrivalMs);
  const wq = reqs.map((r) => r.admittedMs! - r.placedMs!);
  const first = reqs.reduce((a, r) => Math.min(a, r.arrivalMs), Infinity);
  const makespan = (lastFinish - first) / 1000;
  const st: WorkerStats[] = workers.map((w) => w.stats);
  const sum = (k: keyof WorkerStats) => st.reduce((a, s) => a + s[k], 0);
  const result: SimResult = {
    policy: cfg.policy, admission: cfg.admission, requests: reqs.length, completed,
    over_admissions: overAdmissions, preemptions: sum('preemptions'), overcommitted_admissions: sum('overcommittedAdmissions'),
    ttft_ms: { p50: round(percentile(ttft, 50), 1), p90: round(percentile(ttft, 90), 1), p99: round(percentile(ttft, 99), 1),
      mean: round(ttft.reduce((a, b) => a + b, 0) / ttft.length, 1), max: round(Math.max(...ttft), 1) },
    ttft_excess_ms: { p50: round(percentile(excess, 50), 1), p99: round(percentile(excess, 99), 1) },
    router_wait_ms: { p50: round(percentile(rwait, 50), 1), p99: round(percentile(rwait, 99), 1) },
    worker_queue_ms: { p50: round(percentile(wq, 50), 1), p99: round(percentile(wq, 99), 1) },
    completed_per_s: round(completed / makespan, 3), steady_completed_per_s: round(steadyRate(reqs.map((r) => r.finishedMs!)), 3),
    makespan_s: round(makespan, 2), picks, failed_picks: failedPicks,
    utilization: round(sum('busyMs') / (workers.length * (lastFinish - first)), 3),
    peak_held_fraction: round(Math.max(...workers.map((w) => w.stats.peakHeldPages / w.totalPages)), 3),
    placed_per_worker: workers.map((w) => placedCount.get(w.id)!),
  };
  return { result, ttftMs: ttft };
}
