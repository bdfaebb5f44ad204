// The scheduler: one loop owns the engine. Each iteration, between two steps, it (1) releases cancelled
// sequences, (2) admits waiting requests that fit, (3) runs ONE engine step with every running decode plus the
// prefill work that fits the step's prefill budget (a long prompt gets maxLayers, ENGINE.md "Batching"), then
// (4) hands new tokens to their streams, finishes, and preempts. A decode whose client stream is full (the sink is
// paused: backpressure) sits steps out, keeping its pages, until the stream drains; the others go on. addSequence/release/seqStats are only ever called
// here, between steps, which is what the Engine class requires.
//
// Admission (ARCHITECTURE.md, "Footprint formula"; pages from ledger/footprint.ts, never re-derived):
// - reserve: a request is admitted only when its whole footprint fits the uncommitted pages, i.e. the pool's free
//   pages minus the growth still committed to admitted requests (Σ max(0, footprint − held)). Nothing is preempted.
// - optimistic: a request is admitted on the pages of its prompt (plus any tokens it replays), keeping one page per
//   head of headroom for each running decode; when a decode comes back out of pages, the newest running request is
//   preempted by recompute: its pages are released and it is requeued with every token generated so far as resume
//   tokens, which the engine replays (forced) before sampling again — its stream continues unbroken and identical,
//   since draws are keyed by (seed, position).
// The queue is FIFO by arrival (preempted requests keep their place); it is bounded by maxQueue.
import type { Logger } from 'pino';
import { Finish, InternalEngineError, type Engine, type EngineBudget, type EngineSampling, type SeqStats,
  type StepResult } from './engine.ts';
import { requestFootprintPages, type ResolvedBudgetSpec } from '../ledger/footprint.ts';
import type { Admission } from './config.ts';

export class QueueFullError extends Error {
  constructor(message: string) { super(message); this.name = 'QueueFullError'; }
}
export class DrainingError extends Error {
  constructor(message: string) { super(message); this.name = 'DrainingError'; }
}

export type FinishReason = 'LENGTH' | 'STOP' | 'EOS';

export interface SchedRequest {
  requestId: string;
  prompt: number[];
  /** Sampling with the seed fixed (a preempted request must draw the same tokens again). */
  sampling: EngineSampling & { maxNewTokens: number; seed: string };
  budget: EngineBudget;
  /** The budget with defaults filled, for the footprint. */
  spec: ResolvedBudgetSpec;
  /** Tokens the client already has (CONTRACTS.md, Resume): replayed, not streamed. */
  resume: number[];
  /** The client's stream had already stopped at the last resume token (a stop string matched in their text, and the
   *  first worker failed before its final message): finish with STOP once they are replayed, sampling nothing, as
   *  the uninterrupted stream did at that token. */
  stopAfterResume?: boolean;
}

/** Where a request's results go. Called from the scheduler loop, never during a step. */
export interface Sink {
  /** A new token (never a replayed one). Returning true stops the request here (a stop string matched). */
  token(id: number): boolean;
  /** The request finished; stats were taken before its pages were released. generated includes resume tokens. */
  finish(reason: FinishReason, stats: SeqStats, generated: number[]): void;
  /** The request failed (e.g. the engine rejected its arguments at admission). */
  fail(err: Error): void;
  /** The client takes tokens slower than they come (its stream's buffer is full): the request's decodes wait,
   *  holding their pages, while the rest of the batch goes on; RequestHandle.resume() when it has drained. */
  paused?(): boolean;
}

export interface RequestHandle {
  /** Client cancellation or deadline: a waiting request leaves the queue now, a running one releases its pages at
   *  the next point between steps. Idempotent; nothing is sent to the sink afterwards. */
  cancel(): void;
  /** The sink is no longer paused: its decodes join the next step. */
  resume(): void;
}

export interface SchedulerOptions {
  admission: Admission;
  maxRunning: number;
  maxQueue: number;
  /** Prefill work per step, in prompt tokens through all L layers (a prompt of n tokens for k layers costs n·k/L). */
  maxPrefillTokens: number;
  logger: Logger;
  /** Observers (ledger reporting, metrics); called from the loop between steps, must not throw. */
  hooks?: SchedulerHooks;
}

export interface SchedulerHooks {
  /** A request got its pages committed (first admission, or re-admission after a preemption). */
  admitted?(requestId: string): void;
  /** A running request was preempted by recompute (optimistic admission). */
  preempted?(requestId: string): void;
  /** One engine step ended: the engine's own duration and the sequences in it. */
  step?(ms: number, sequences: number): void;
}

export interface StepStats {
  steps: number;
  /** Most sequences (decodes + prefills) in one engine step. */
  maxSequencesInStep: number;
  /** Most sequences holding pages in the pool during one step (those in the step, and running ones whose prefill
   *  has started but that the step's prefill budget left out). */
  maxResidentInStep: number;
  maxDecodeRowsInStep: number;
  /** Steps in which a prefill ran only some of its layers. */
  splitPrefillSteps: number;
  /** Steps that ran decodes and a partial prefill together (decodes kept flowing during a long prefill). */
  decodesDuringSplitPrefill: number;
  preemptions: number;
  admitted: number;
  finished: number;
  cancelled: number;
  maxRunning: number;
  maxWaiting: number;
  /** Decodes left out of a step because their client's stream was full (backpressure). */
  pausedDecodes: number;
  /** Times the loop waited because every running request was paused. */
  pausedWaits: number;
}

export interface CapacitySnapshot {
  totalPages: number;
  /** Uncommitted pages (CONTRACTS.md): total − held − growth committed to admitted requests (reserve mode). */
  freePages: number;
  /** Pages of requests accepted but not yet admitted (their footprints). */
  reservedPages: number;
  /** Pages the pool's sequences hold right now (total − the pool's free pages). */
  heldPages: number;
  pageSize: number; numLayers: number; numKvHeads: number;
  running: number; waiting: number;
  /** Prompt tokens admitted and not yet prefilled: Σ over prefilling requests of n · (layers left / L), plus the
   *  whole prompt of requests preempted back into the queue (their reservations are gone), rounded up. Requests
   *  queued on their first arrival are left out: the router's reservations carry their prompt tokens. */
  prefillTokens: number;
}

interface Entry {
  req: SchedRequest;
  sink: Sink;
  arrival: number;
  /** Every token generated so far, the client's resume tokens first. */
  generated: number[];
  /** Full footprint in pages (prompt + max_new_tokens under the budget). */
  footprint: number;
  state: 'waiting' | 'running' | 'done';
  seq: number;
  /** Tokens the engine still replays in the current admission. */
  replayLeft: number;
  prefilling: boolean;
  layersDone: number;
  plannedLayers: number;
  /** Pages the request needs when (re)admitted optimistically: its prompt plus the tokens it replays. */
  admitPages: number;
  cancelled: boolean;
  /** it was preempted back into the queue (prefillTokens counts it) */
  preempted: boolean;
}

export class Scheduler {
  readonly engine: Engine;
  private readonly opts: SchedulerOptions;
  private readonly log: Logger;
  private readonly L: number;
  private readonly Hk: number;
  private readonly P: number;
  private readonly total: number;
  private waiting: Entry[] = [];
  private running: Entry[] = [];
  private readonly bySeq = new Map<number, Entry>();
  private arrivals = 0;
  private admitting = true;
  private closing = false;
  private wakeUp: (() => void) | undefined;
  private loopDone: Promise<void> | undefined;
  private idleWaiters: Array<() => void> = [];
  private snap: CapacitySnapshot;
  private readonly st: StepStats = {
    steps: 0, maxSequencesInStep: 0, maxResidentInStep: 0, maxDecodeRowsInStep: 0, splitPrefillSteps: 0, decodesDuringSplitPrefill: 0,
    preemptions: 0, admitted: 0, finished: 0, cancelled: 0, maxRunning: 0, maxWaiting: 0, pausedDecodes: 0, pausedWaits: 0,
  };

  constructor(engine: Engine, opts: SchedulerOptions) {
    this.engine = engine;
    this.opts = opts;
    this.log = opts.logger;
    const p = engine.poolStats();
    this.L = p.numLayers; this.Hk = p.numKvHeads; this.P = p.pageSize; this.total = p.totalPages;
    this.snap = {
      totalPages: p.totalPages, freePages: p.freePages, reservedPages: 0, heldPages: p.totalPages - p.freePages,
      pageSize: p.pageSize,
      numLayers: p.numLayers, numKvHeads: p.numKvHeads, running: 0, waiting: 0, prefillTokens: 0,
    };
    this.loopDone = this.loop();
  }

  get totalPages(): number { return this.total; }
  get draining(): boolean { return !this.admitting; }

  /** ledger/footprint.ts's pages for a prompt of n tokens and m new tokens under spec. */
  footprint(spec: ResolvedBudgetSpec, n: number, m: number): number {
    return requestFootprintPages({ L: this.L, Hk: this.Hk, P: this.P }, spec, n, m);
  }

  stats(): StepStats { return { ...this.st }; }

  /** Zeroes the step statistics (tests and benchmarks measure one phase at a time). */
  resetStats(): void { for (const k of Object.keys(this.st) as Array<keyof StepStats>) this.st[k] = 0; }

  capacity(): CapacitySnapshot {
    return { ...this.snap, running: this.running.length, waiting: this.waiting.length,
      reservedPages: this.waiting.reduce((a, e) => a + e.footprint, 0), prefillTokens: this.prefillTokens() };
  }

  private prefillTokens(): number {
    let t = 0;
    for (const e of this.running) if (e.prefilling) t += (e.req.prompt.length * (this.L - e.layersDone)) / this.L;
    for (const e of this.waiting) if (e.preempted) t += e.req.prompt.length;
    return Math.ceil(t);
  }

  /**
   * Queues a request. Throws DrainingError while draining, QueueFullError past maxQueue, and a RangeError when the
   * footprint can never fit the pool (the caller checks that first and answers INVALID_ARGUMENT).
   */
  submit(req: SchedRequest, sink: Sink): RequestHandle {
    if (!this.admitting || this.closing) throw new DrainingError('the worker is draining and admits no new requests');
    const footprint = this.footprint(req.spec, req.prompt.length, req.sampling.maxNewTokens);
    if (footprint > this.total) {
      throw new RangeError(`footprint of ${footprint} pages exceeds the whole pool of ${this.total} pages`);
    }
    if (this.waiting.length >= this.opts.maxQueue) {
      throw new QueueFullError(`the queue is full (${this.waiting.length} waiting, --max-queue ${this.opts.maxQueue})`);
    }
    const e: Entry = {
      req, sink, arrival: this.arrivals++, generated: [...req.resume], footprint, state: 'waiting', seq: -1,
      replayLeft: 0, prefilling: false, layersDone: 0, plannedLayers: 0, admitPages: 0, cancelled: false, preempted: false,
    };
    this.waiting.push(e);
    this.st.maxWaiting = Math.max(this.st.maxWaiting, this.waiting.length);
    this.wake();
    return { cancel: () => this.cancel(e), resume: () => this.wake() };
  }

  /** Request ids waiting in the queue, in order (the ledger keeps their reservations alive). */
  waitingIds(): string[] { return this.waiting.map((e) => e.req.requestId); }

  /** Stops admitting new requests (Drain); queued and running ones still finish. */
  stopAdmitting(): void { this.admitting = false; }
  /** Admits new requests again after stopAdmitting (an undrain order); false, and nothing changes, once closing. */
  resumeAdmitting(): boolean {
    if (this.closing) return false;
    this.admitting = true;
    return true;
  }

  /** Resolves when nothing is running or waiting. */
  idle(): Promise<void> {
    if (this.running.length === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Cancels everything (shutdown past the drain timeout). */
  cancelAll(): void {
    for (const e of [...this.waiting, ...this.running]) this.cancel(e);
  }

  /** Cancels everything, waits for the loop to stop, closes the engine. */
  async close(): Promise<void> {
    this.admitting = false;
    this.cancelAll();
    this.closing = true;
    this.wake();
    await this.loopDone;
    this.engine.close();
  }

  // ---- the loop ----

  private wake(): void {
    const w = this.wakeUp;
    this.wakeUp = undefined;
    w?.();
  }

  private cancel(e: Entry): void {
    if (e.cancelled || e.state === 'done') return;
    e.cancelled = true;
    this.st.cancelled++;
    if (e.state === 'waiting') {
      this.waiting = this.waiting.filter((x) => x !== e);
      e.state = 'done';
      this.checkIdle();
    }
    this.wake();  // a running one is released by the loop at the next point between steps
  }

  private async loop(): Promise<void> {
    for (;;) {
      this.reapCancelled();
      if (this.closing && this.running.length === 0) break;
      if (!this.closing) this.admit();
      this.refreshSnapshot();
      this.checkIdle();
      if (this.running.length === 0) {
        await new Promise<void>((r) => { this.wakeUp = r; });
        continue;
      }
      const batch = this.plan();
      if (batch.length === 0) {
        // every running request is a decode whose client is not reading: wait for one to drain (or a cancel, or
        // a new request)
        this.st.pausedWaits++;
        await new Promise<void>((r) => { this.wakeUp = r; });
        continue;
      }
      let res: StepResult;
      try {
        res = await this.engine.step(batch, false);
      } catch (err) {
        // A failed step is a bug below us; every sequence in it is in an unknown state, so each one fails.
        this.log.error({ err }, 'engine step failed; failing the running requests');
        for (const e of [...this.running]) this.finishWithError(e, err as Error);
        continue;
      }
      this.apply(batch, res);
    }
    this.refreshSnapshot();
  }

  private reapCancelled(): void {
    for (const e of [...this.running]) {
      if (!e.cancelled) continue;
      this.engine.release(e.seq);
      this.removeRunning(e);
      e.state = 'done';
    }
  }

  private heldPages(e: Entry): number { return this.engine.seqStats(e.seq).pages; }

  private admit(): void {
    while (this.waiting.length > 0 && this.running.length < this.opts.maxRunning) {
      const e = this.waiting[0];
      const n = e.req.prompt.length;
      e.admitPages = this.footprint(e.req.spec, n, e.generated.length);
      if (!this.fits(e)) break;
      this.waiting.shift();
      let seq: number;
      try {
        seq = this.engine.addSequence(e.req.prompt, e.req.sampling, e.req.budget,
          e.generated.length > 0 ? e.generated : undefined);
      } catch (err) {
        e.state = 'done';
        e.sink.fail(err as Error);
        continue;
      }
      e.seq = seq; e.state = 'running'; e.prefilling = true; e.layersDone = 0; e.replayLeft = e.generated.length;
      this.bySeq.set(seq, e);
      this.running.push(e);
      this.st.admitted++;
      this.opts.hooks?.admitted?.(e.req.requestId);
      this.st.maxRunning = Math.max(this.st.maxRunning, this.running.length);
    }
  }

  private fits(e: Entry): boolean {
    const free = this.engine.poolStats().freePages;
    if (this.opts.admission === 'reserve') {
      let committed = 0;
      for (const r of this.running) committed += Math.max(0, r.footprint - this.heldPages(r));
      return e.footprint <= free - committed;
    }
    // optimistic: prompts still prefilling will take their pages; each running decode may need one page per head.
    let committed = 0;
    for (const r of this.running) {
      committed += r.prefilling ? Math.max(0, r.admitPages - this.heldPages(r)) : this.L * this.Hk;
    }
    return e.admitPages <= free - committed;
  }

  /** Every running decode whose client is not paused, then prefills in arrival order while the step's prefill
   *  budget lasts. */
  private plan(): Array<{ id: number; maxLayers?: number }> {
    const batch: Array<{ id: number; maxLayers?: number }> = [];
    for (const e of this.running) {
      if (e.prefilling) continue;
      if (e.sink.paused?.() === true) { this.st.pausedDecodes++; continue; }
      batch.push({ id: e.seq });
    }
    let budget = this.opts.maxPrefillTokens * this.L;  // token·layers
    let prefills = 0;
    for (const e of this.running) {
      if (!e.prefilling) continue;
      const n = e.req.prompt.length, rem = this.L - e.layersDone;
      let k = Math.min(rem, Math.floor(budget / n));
      // the first prefill of a step always makes progress, at least one layer, so a long prompt cannot starve
      if (k < 1) { if (prefills > 0) break; k = 1; }
      e.plannedLayers = k;
      batch.push(k < rem ? { id: e.seq, maxLayers: k } : { id: e.seq });
      budget -= k * n;
      prefills++;
    }
    return batch;
  }

  private apply(batch: Array<{ id: number; maxLayers?: number }>, res: StepResult): void {
    this.st.steps++;
    this.st.maxSequencesInStep = Math.max(this.st.maxSequencesInStep, res.sequences);
    const inStep = new Set(batch.map((b) => b.id));
    let resident = 0;
    for (const e of this.running) if (inStep.has(e.seq) || !e.prefilling || e.layersDone > 0) resident++;
    this.st.maxResidentInStep = Math.max(this.st.maxResidentInStep, resident);
    this.opts.hooks?.step?.(res.ms, res.sequences);
    this.st.maxDecodeRowsInStep = Math.max(this.st.maxDecodeRowsInStep, res.decodeRows);
    if (batch.some((b) => b.maxLayers !== undefined)) {
      this.st.splitPrefillSteps++;
      if (res.decodeRows > 0) this.st.decodesDuringSplitPrefill++;
    }
    const outOfPages: Entry[] = [];
    const prefillFailed: Entry[] = [];
    for (const r of res.seqs) {
      const e = this.bySeq.get(r.id);
      if (!e) throw new InternalEngineError(`step returned sequence ${r.id}, which the scheduler does not hold (a bug)`);
      if (r.outOfPages) {
        (r.finish === Finish.Failed ? prefillFailed : outOfPages).push(e);
        continue;
      }
      if (e.prefilling) {
        if (r.prefillDone) e.prefilling = false;
        else e.layersDone += e.plannedLayers;
      }
      let stop = false;
      if (r.token >= 0) {
        if (r.forced) {
          const want = e.generated[e.generated.length - e.replayLeft];
          if (r.token !== want) {
            this.finishWithError(e, new InternalEngineError(`replayed token ${r.token} differs from ${want} (a bug)`));
            continue;
          }
          e.replayLeft--;
          if (e.replayLeft === 0 && e.req.stopAfterResume === true) stop = true;
        } else {
          e.generated.push(r.token);
          if (!e.cancelled) stop = e.sink.token(r.token);
        }
      }
      if (r.finish === Finish.Failed) {
        this.finishWithError(e, new InternalEngineError('the engine failed the sequence'));
      } else if (stop) {
        this.finishOk(e, 'STOP');
      } else if (r.finish !== Finish.None) {
        this.finishOk(e, r.finish === Finish.Length ? 'LENGTH' : r.finish === Finish.Eos ? 'EOS' : 'STOP');
      }
    }
    // A prefill that found no pages holds none: it waits in the queue again (its replay tokens included).
    for (const e of prefillFailed) this.preempt(e, 'prefill found no free pages');
    // A decode that found no pages was not advanced: preempt the newest running request, one per starved decode.
    for (const e of outOfPages) {
      if (e.state !== 'running') continue;
      if (this.opts.admission === 'reserve') {
        this.log.warn({ request_id: e.req.requestId }, 'decode out of pages in reserve mode (footprint too small?)');
      }
      let victim = e;
      for (const r of this.running) if (r.arrival > victim.arrival) victim = r;
      this.preempt(victim, 'decode out of pages');
    }
  }

  private preempt(e: Entry, why: string): void {
    this.engine.release(e.seq);
    this.removeRunning(e);
    this.st.preemptions++;
    this.opts.hooks?.preempted?.(e.req.requestId);
    if (e.cancelled) { e.state = 'done'; return; }
    e.state = 'waiting';
    e.seq = -1;
    e.preempted = true;
    this.log.debug({ request_id: e.req.requestId, generated: e.generated.length, why }, 'preempted by recompute');
    // keep arrival order: a preempted request goes ahead of everything that arrived after it
    let i = 0;
    while (i < this.waiting.length && this.waiting[i].arrival < e.arrival) i++;
    this.waiting.splice(i, 0, e);
  }

  private finishOk(e: Entry, reason: FinishReason): void {
    const stats = this.engine.seqStats(e.seq);
    this.engine.release(e.seq);
    this.removeRunning(e);
    e.state = 'done';
    this.st.finished++;
    if (!e.cancelled) e.sink.finish(reason, stats, e.generated);
  }

  private finishWithError(e: Entry, err: Error): void {
    try { this.engine.release(e.seq); } catch (relErr) { this.log.error({ err: relErr }, 'release failed'); }
    this.removeRunning(e);
    e.state = 'done';
    if (!e.cancelled) e.sink.fail(err);
  }

  private removeRunning(e: Entry): void {
    this.bySeq.delete(e.seq);
    this.running = this.running.filter((x) => x !== e);
  }

  private refreshSnapshot(): void {
    const p = this.engine.poolStats();
    let committed = 0;
    if (this.opts.admission === 'reserve') {
      for (const r of this.running) committed += Math.max(0, r.footprint - this.heldPages(r));
    }
    this.snap = { ...this.snap, totalPages: p.totalPages, freePages: Math.max(0, p.freePages - committed),
      heldPages: p.totalPages - p.freePages };
  }

  private checkIdle(): void {
    if (this.running.length > 0 || this.waiting.length > 0) return;
    const ws = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of ws) w();
  }
}
