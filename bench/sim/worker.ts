// A simulated worker for the routing simulation: the admission and batching rules of worker/scheduler.ts over a
// page pool that is only counted, with a step-time model instead of an engine. What it keeps from the real
// scheduler, rule for rule:
// - one loop: between two steps it admits from a FIFO queue (head-of-line: the first request that does not fit
//   stops admission), then runs one step with every running decode plus prefill work in arrival order while the
//   step's prefill budget (maxPrefillTokens × L token·layers) lasts, a long prompt getting some of its layers;
// - reserve admission: the whole footprint must fit the uncommitted pages (pool free − growth committed to running
//   requests), so nothing is ever preempted;
// - optimistic admission: the prompt's pages (plus replayed tokens) must fit, keeping one page per (layer, KV head)
//   of headroom per running decode; a decode that finds no page preempts the newest running request (recompute: its
//   pages go back, it requeues in arrival order and replays its tokens as forced decode steps before new ones);
// - free_pages published to the ledger = uncommitted pages (reserve) or the pool's free pages (optimistic);
//   prefill_tokens = prompt tokens admitted and not yet prefilled (n · layers left / L of each prefilling request,
//   plus whole prompts preempted back into the queue), as Scheduler.capacity() computes it.
// Pages a sequence holds: after j prefill layers, j·Hk·ceil(kept/P); once prefilled, L·Hk·ceil((kept + t)/P) with t
// tokens produced in this admission (every head at the mean length: the footprint's +1 page per head is the Ada
// spread this model leaves out, so it stays within the footprint). The first token comes out of the step that
// finishes the prefill.
import { budgetTokens, requestFootprintPages } from '../../ledger/footprint.ts';
import type { BudgetSpec } from '../../proto/index.ts';

export type Admission = 'reserve' | 'optimistic';

export interface ModelShape { L: number; Hk: number; P: number }

/** Step time = stepBaseMs + perTokenMs · (prefill tokens through all layers + decode rows) + perPageNs · KV pages the
 *  decodes read. The base is one pass over the weights (memory bound); tokens are compute; pages are KV reads. */
export interface CostModel { stepBaseMs: number; perTokenMs: number; perPageNs: number }

export interface SimWorkerOptions {
  id: string;
  totalPages: number;
  shape: ModelShape;
  budget: BudgetSpec;
  admission: Admission;
  maxRunning: number;
  maxPrefillTokens: number;
  cost: CostModel;
}

/** A request as a worker holds it; the fleet owns the timestamps. */
export interface SimRequest {
  id: string;
  n: number;
  m: number;
  /** ledger/footprint.ts's pages for (n, m) under the budget */
  footprint: number;
  /** the fleet's bookkeeping, filled as things happen */
  placedMs?: number;
  admittedMs?: number;
  firstTokenMs?: number;
  finishedMs?: number;
}

interface Entry {
  req: SimRequest;
  /** this worker's arrival order; the newest running request is the one preempted */
  arrival: number;
  kept: number;
  /** new tokens generated so far, over all admissions */
  generated: number;
  state: 'waiting' | 'running';
  prefilling: boolean;
  layersDone: number;
  plannedLayers: number;
  /** tokens produced in this admission (replayed, then new) */
  produced: number;
  /** tokens this admission replays before producing new ones */
  replay: number;
  held: number;
  admitPages: number;
  /** preempted back into the queue (prefillTokens counts it) */
  preempted: boolean;
}

export interface WorkerEvents {
  firstToken(req: SimRequest, atMs: number): void;
  finished(req: SimRequest, atMs: number): void;
}

export interface WorkerStats {
  steps: number;
  busyMs: number;
  admitted: number;
  preemptions: number;
  /** optimistic admissions after which the running requests' footprints add up to more than the pool */
  overcommittedAdmissions: number;
  maxRunning: number;
  maxWaiting: number;
  peakHeldPages: number;
}

export class SimWorker {
  readonly id: string;
  readonly totalPages: number;
  private readonly o: SimWorkerOptions;
  private readonly headPages: number;  // L · Hk: one page per (layer, KV head)
  private waiting: Entry[] = [];
  private running: Entry[] = [];
  private batch: Array<{ e: Entry; prefill: boolean }> = [];
  private held = 0;
  private arrivals = 0;
  private admittedIds: string[] = [];
  /** true while a step is in flight (the fleet has scheduled its end) */
  busy = false;
  readonly stats: WorkerStats = { steps: 0, busyMs: 0, admitted: 0, preemptions: 0, overcommittedAdmissions: 0,
    maxRunning: 0, maxWaiting: 0, peakHeldPages: 0 };

  constructor(o: SimWorkerOptions) {
    this.o = o;
    this.id = o.id;
    this.totalPages = o.totalPages;
    this.headPages = o.shape.L * o.shape.Hk;
  }

  footprint(n: number, m: number): number { return requestFootprintPages(this.o.shape, this.o.budget, n, m); }

  /** Time to first token of an n-token prompt alone on an idle worker: its prefill steps (a long prompt gets
   *  floor(maxPrefillTokens · L / n) layers per step) with nothing else in them. */
  isolatedPrefillMs(n: number): number {
    const { L } = this.o.shape;
    const steps = Math.ceil(L / Math.max(1, Math.min(L, Math.floor((this.o.maxPrefillTokens * L) / n))));
    return steps * this.o.cost.stepBaseMs + this.o.cost.perTokenMs * n;
  }

  /** Queues a request (the gRPC call arrived). */
  submit(req: SimRequest): void {
    if (req.footprint > this.totalPages) {
      throw new RangeError(`sim worker ${this.id}: request ${req.id} needs ${req.footprint} pages, the pool has ${this.totalPages}`);
    }
    const kept = Math.min(req.n, budgetTokens(this.o.budget, req.n));
    this.waiting.push({ req, arrival: this.arrivals++, kept, generated: 0, state: 'waiting', prefilling: false,
      layersDone: 0, plannedLayers: 0, produced: 0, replay: 0, held: 0, admitPages: 0, preempted: false });
    this.stats.maxWaiting = Math.max(this.stats.maxWaiting, this.waiting.length);
  }

  get poolFree(): number { return this.totalPages - this.held; }

  /** Growth still committed to running requests: Σ max(0, footprint − held). */
  private committed(): number {
    let c = 0;
    for (const r of this.running) c += Math.max(0, r.req.footprint - r.held);
    return c;
  }

  /** What the heartbeat publishes as free_pages (CONTRACTS.md: uncommitted pages; optimistic: pages not held). */
  freePages(): number { return this.o.admission === 'reserve' ? Math.max(0, this.poolFree - this.committed()) : this.poolFree; }

  get runningCount(): number { return this.running.length; }
  get waitingCount(): number { return this.waiting.length; }
  /** What the heartbeat publishes as prefill_tokens (worker/scheduler.ts capacity().prefillTokens). */
  prefillTokens(): number {
    const { L } = this.o.shape;
    let t = 0;
    for (const e of this.running) if (e.prefilling) t += (e.req.n * (L - e.layersDone)) / L;
    for (const e of this.waiting) if (e.preempted) t += e.req.n;
    return Math.ceil(t);
  }
  queuedIds(): string[] { return this.waiting.map((e) => e.req.id); }
  /** Ids admitted since the last call (the heartbeat's `admitted` list). */
  takeAdmitted(): string[] { const a = this.admittedIds; this.admittedIds = []; return a; }
  idle(): boolean { return this.running.length === 0 && this.waiting.length === 0; }

  private fits(e: Entry): boolean {
    if (this.o.admission === 'reserve') return e.req.footprint <= this.poolFree - this.committed();
    let c = 0;
    for (const r of this.running) c += r.prefilling ? Math.max(0, r.admitPages - r.held) : this.headPages;
    return e.admitPages <= this.poolFree - c;
  }

  private admit(now: number): void {
    while (this.waiting.length > 0 && this.running.length < this.o.maxRunning) {
      const e = this.waiting[0];
      e.admitPages = this.footprint(e.req.n, e.generated);
      if (!this.fits(e)) break;
      this.waiting.shift();
      e.state = 'running'; e.prefilling = true; e.layersDone = 0; e.produced = 0; e.replay = e.generated; e.held = 0;
      this.running.push(e);
      this.stats.admitted++;
      this.admittedIds.push(e.req.id);
      e.req.admittedMs ??= now;
      if (this.o.admission === 'optimistic') {
        let fp = 0;
        for (const r of this.running) fp += r.req.footprint;
        if (fp > this.totalPages) this.stats.overcommittedAdmissions++;
      }
      this.stats.maxRunning = Math.max(this.stats.maxRunning, this.running.length);
    }
  }

  /** Between two steps: admit, plan the next step; returns its duration in ms, or null when nothing runs. */
  beginStep(now: number): number | null {
    this.admit(now);
    if (this.running.length === 0) return null;
    const { L } = this.o.shape;
    this.batch = [];
    let decodeRows = 0, decodePages = 0, prefillTokenLayers = 0;
    for (const e of this.running) {
      if (e.prefilling) continue;
      this.batch.push({ e, prefill: false });
      decodeRows++;
      decodePages += e.held;
    }
    let budget = this.o.maxPrefillTokens * L;
    let prefills = 0;
    for (const e of this.running) {
      if (!e.prefilling) continue;
      const n = e.req.n, rem = L - e.layersDone;
      let k = Math.min(rem, Math.floor(budget / n));
      // the first prefill of a step always makes progress (worker/scheduler.ts plan())
      if (k < 1) { if (prefills > 0) break; k = 1; }
      e.plannedLayers = k;
      this.batch.push({ e, prefill: true });
      budget -= k * n;
      prefillTokenLayers += k * n;
      prefills++;
    }
    const c = this.o.cost;
    const ms = c.stepBaseMs + c.perTokenMs * (prefillTokenLayers / L + decodeRows) + (c.perPageNs * decodePages) / 1e6;
    this.busy = true;
    this.stats.steps++;
    this.stats.busyMs += ms;
    return ms;
  }

  /** The step's results: pages taken, tokens produced, finishes, preemptions. */
  endStep(now: number, ev: WorkerEvents): void {
    this.busy = false;
    const { L, Hk, P } = this.o.shape;
    const outOfPages: Entry[] = [];
    const prefillFailed: Entry[] = [];
    for (const { e, prefill } of this.batch) {
      if (e.state !== 'running') continue;  // preempted earlier in this step's results
      let need: number;
      let completes = false;
      if (prefill) {
        const to = e.layersDone + e.plannedLayers;
        completes = to >= L;
        need = completes ? this.headPages * Math.ceil((e.kept + 1) / P) - e.held : (to - e.layersDone) * Hk * Math.ceil(e.kept / P);
      } else {
        need = this.headPages * Math.ceil((e.kept + e.produced + 1) / P) - e.held;
      }
      if (need > this.poolFree) {
        if (this.o.admission === 'reserve') {
          throw new Error(`sim worker ${this.id}: request ${e.req.id} found no free page under reserve admission (a bug: `
            + `footprint ${e.req.footprint}, held ${e.held}, need ${need}, free ${this.poolFree})`);
        }
        (prefill ? prefillFailed : outOfPages).push(e);
        continue;
      }
      e.held += need;
      this.held += need;
      if (e.held > e.req.footprint) throw new Error(`sim worker ${this.id}: request ${e.req.id} holds ${e.held} pages, above its footprint ${e.req.footprint} (a bug)`);
      if (prefill) {
        e.layersDone += e.plannedLayers;
        if (!completes) continue;
        e.prefilling = false;
      }
      e.produced++;
      if (e.produced <= e.replay) continue;  // a forced (replayed) token: streamed before the preemption
      e.generated++;
      if (e.generated === 1) { e.req.firstTokenMs = now; ev.firstToken(e.req, now); }
      if (e.generated >= e.req.m) this.finish(e, now, ev);
    }
    this.stats.peakHeldPages = Math.max(this.stats.peakHeldPages, this.held);
    for (const e of prefillFailed) if (e.state === 'running') this.preempt(e);
    for (const e of outOfPages) {
      if (e.state !== 'running') continue;
      let victim = e;
      for (const r of this.running) if (r.arrival > victim.arrival) victim = r;
      this.preempt(victim);
    }
    this.batch = [];
  }

  private finish(e: Entry, now: number, ev: WorkerEvents): void {
    this.held -= e.held;
    e.held = 0;
    this.running = this.running.filter((x) => x !== e);
    e.req.finishedMs = now;
    ev.finished(e.req, now);
  }

  private preempt(e: Entry): void {
    this.held -= e.held;
    e.held = 0;
    this.running = this.running.filter((x) => x !== e);
    e.state = 'waiting';
    e.preempted = true;
    this.stats.preemptions++;
    // keep arrival order: a preempted request goes ahead of everything that arrived after it
    let i = 0;
    while (i < this.waiting.length && this.waiting[i].arrival < e.arrival) i++;
    this.waiting.splice(i, 0, e);
  }
}
