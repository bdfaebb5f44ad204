// The worker as a fleet member: its ledger heartbeat, the fleet's budgets, and drain orders from the events
// channel. Redis being away never stops the worker: every ledger call here is caught, the worker keeps serving with
// its last known budgets, heartbeats resume when Redis answers again (the worker hash is recreated by the first one,
// RedisLedger reloads its scripts on reconnect), and ioredis re-subscribes to the events channel by itself.
//
// Heartbeat invariants (CONTRACTS.md, ARCHITECTURE.md "Request path" step 3):
// - one heartbeat at a time; each carries ONE synchronous reading of the scheduler (capacity and queued ids taken
//   in the same tick as the admitted ids are drained), so a request reported `admitted` is always inside that
//   heartbeat's free_pages (uncommitted pages) and never counted twice by a router (reservation + free_pages);
// - the reservation id of a request is its GenerateRequest.request_id (the router sets it to the id it picked with);
// - ids not yet delivered (Redis away) are sent with a later heartbeat; the sets are bounded, since reservations
//   expire by themselves (30 s) and an old id is harmless to drop;
// - draining is published by an immediate heartbeat, not the next periodic one.
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { DEFAULTS, LedgerError, RedisLedger, type Ledger, type LedgerEvent, type Subscription, type WorkerFields } from '../ledger/index.ts';
import { FleetBudgets } from './budgets.ts';
import type { CapacitySnapshot } from './scheduler.ts';

/** Pending admitted/rejected ids kept at most while Redis is away (oldest dropped first). */
const MAX_PENDING_IDS = 100_000;

export interface FleetMemberOptions {
  /** the fleet's Redis; this member opens and owns its connection. Exactly one of redisUrl and ledger. */
  redisUrl?: string;
  // --- in-process ledger (kvfleet up without Redis) ---
  /** a ledger instance to join through instead of Redis (a MemoryLedger on a backend the router shares, in one
   *  process); the caller owns it: close() leaves the fleet but does not close it */
  ledger?: Ledger;
  // --- end in-process ledger ---
  /** the Redis password (from --redis-password-file); overrides one in the URL */
  redisPassword?: string;
  namespace: string;
  fleet: string;
  workerId: string;
  /** the address routers dial, published in the ledger */
  addr: string;
  heartbeatMs: number;
  budgetRefreshMs: number;
  /** worker hash TTL in the ledger (default 3000 ms) */
  ttlMs?: number;
  log: Logger;
  /** the longest prompt + new tokens this worker serves (--max-model-len, else the model's max_position_embeddings),
   *  published as the ledger field max_model_len so routers can refuse what can never fit; absent: not published */
  maxModelLen?: number;
  /** the scheduler's capacity snapshot (synchronous) */
  capacity(): CapacitySnapshot;
  draining(): boolean;
  /** request ids waiting in the queue */
  queued(): string[];
  /** a drain order for this worker arrived on the events channel */
  onDrainOrder(reason: string | undefined): void;
  /** an order taking back a drain order for this worker arrived */
  onUndrainOrder(reason: string | undefined): void;
}

/** A URL with any password replaced, for logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch { return '(unparsable URL)'; }
}

function addBounded(set: Set<string>, id: string): void {
  set.delete(id);
  set.add(id);
  if (set.size > MAX_PENDING_IDS) set.delete(set.values().next().value as string);
}

export class FleetMember {
  readonly ledger: Ledger;
  readonly budgets: FleetBudgets;
  private readonly o: FleetMemberOptions;
  /** undefined when joined through a given ledger instance */
  private readonly redis: Redis | undefined;
  private readonly log: Logger;
  private readonly admittedIds = new Set<string>();
  private readonly rejectedIds = new Set<string>();
  private sub: Subscription | undefined;
  private subscribing = false;
  private timers: NodeJS.Timeout[] = [];
  private closed = false;
  private down = false;
  // heartbeat pump: one in flight; callers waiting for the next one to complete
  private beating = false;
  private wanted = false;
  private waiters: Array<() => void> = [];
  // budget reads: one in flight; a request during it runs another after it
  private reading: Promise<void> | undefined;
  private readAgain = false;
  private lastReserved: number | undefined;
  private heartbeats = 0;

  private constructor(o: FleetMemberOptions) {
    this.o = o;
    this.log = o.log.child({ fleet: `${o.namespace}/${o.fleet}`, worker_id: o.workerId });
    if ((o.redisUrl === undefined) === (o.ledger === undefined)) throw new TypeError('FleetMember: give exactly one of redisUrl and ledger');
    this.budgets = new FleetBudgets(`${o.namespace}/${o.fleet}`, this.log);
    if (o.ledger !== undefined) { this.ledger = o.ledger; this.redis = undefined; return; }
    // One connection for heartbeats and reads, owned here (RedisLedger gets it as a client, so it does not close it).
    // Fail fast while disconnected: a heartbeat that cannot be delivered is simply retried by the next one.
    this.redis = new Redis(o.redisUrl!, {
      ...RedisLedger.clientOptions({ commandTimeoutMs: 2000 }),
      ...(o.redisPassword !== undefined ? { password: o.redisPassword } : {}),
    });
    this.ledger = new RedisLedger({
      redis: this.redis, namespace: o.namespace, fleet: o.fleet,
      onError: (e) => this.ledgerDown(e),
    });
  }

  /**
   * Joins the fleet: waits up to connectTimeoutMs for Redis (not longer: a worker serves without it), publishes a
   * first heartbeat, reads the budgets and subscribes to the events channel; whatever fails is retried in the
   * background.
   */
  static async start(o: FleetMemberOptions, connectTimeoutMs = 5000): Promise<FleetMember> {
    const f = new FleetMember(o);
    try {
      if (f.ledger instanceof RedisLedger) await f.ledger.ready(connectTimeoutMs);
    } catch (err) {
      f.ledgerDown(err);
    }
    // Subscribing is left until Redis answers (here, or after the first heartbeat that gets through), so a worker
    // that starts before Redis does not spin on failing subscriptions; each success is followed by a budget read,
    // which catches up on changes announced before the subscription was active.
    let timer: NodeJS.Timeout | undefined;
    await Promise.all([f.heartbeatNow(), f.refreshBudgets(), f.down ? Promise.resolve()
      : Promise.race([f.subscribe(), new Promise<void>((r) => { timer = setTimeout(r, connectTimeoutMs); })])]);
    clearTimeout(timer);
    f.timers.push(setInterval(() => { f.wanted = true; void f.pump(); }, o.heartbeatMs));
    f.timers.push(setInterval(() => { void f.refreshBudgets(); }, o.budgetRefreshMs));
    for (const t of f.timers) t.unref();
    f.log.info({ redis: o.redisUrl !== undefined ? redactUrl(o.redisUrl) : '(in-process ledger)', addr: o.addr, heartbeat_ms: o.heartbeatMs, connected: !f.down },
      'joined the fleet ledger');
    return f;
  }

  /** Σ pages reserved on this worker in the ledger, as of the last heartbeat (undefined before the first). */
  get reservedPages(): number | undefined { return this.lastReserved; }
  /** Heartbeats delivered so far. */
  get delivered(): number { return this.heartbeats; }
  get connected(): boolean { return !this.down; }

  /** The request's pages are committed: its reservation goes with the next heartbeat. */
  admitted(requestId: string): void { if (!this.closed) addBounded(this.admittedIds, requestId); }
  /** The request was refused or left the queue: its reservation goes with the next heartbeat. */
  rejected(requestId: string): void { if (!this.closed) addBounded(this.rejectedIds, requestId); }

  /** Resolves once a heartbeat that started after this call has finished (delivered or failed). */
  heartbeatNow(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.wanted = true;
      void this.pump();
    });
  }

  private async pump(): Promise<void> {
    if (this.beating) return;
    this.beating = true;
    try {
      while (this.wanted && !this.closed) {
        this.wanted = false;
        const waiters = this.waiters;
        this.waiters = [];
        await this.beatOnce();
        for (const w of waiters) w();
      }
    } finally {
      this.beating = false;
      if (this.closed) { for (const w of this.waiters.splice(0)) w(); }
    }
  }

  private async beatOnce(): Promise<void> {
    // one synchronous reading: capacity, queue and the ids admitted so far belong to the same moment
    const c = this.o.capacity();
    const fields: WorkerFields = {
      addr: this.o.addr, total_pages: c.totalPages, free_pages: c.freePages, page_size: c.pageSize,
      num_layers: c.numLayers, num_kv_heads: c.numKvHeads, running: c.running, waiting: c.waiting,
      draining: this.o.draining(), prefill_tokens: c.prefillTokens,
      ...(this.o.maxModelLen !== undefined ? { max_model_len: this.o.maxModelLen } : {}),
    };
    const admitted = [...this.admittedIds];
    const rejected = [...this.rejectedIds];
    const queued = this.o.queued();
    try {
      const r = await this.ledger.heartbeat(this.o.workerId, fields, {
        admitted, rejected, queued, ttlMs: this.o.ttlMs ?? DEFAULTS.workerTtlMs,
      });
      for (const id of admitted) this.admittedIds.delete(id);
      for (const id of rejected) this.rejectedIds.delete(id);
      this.lastReserved = r.reserved_pages;
      this.heartbeats++;
      if (this.down) {
        this.down = false;
        this.log.info('ledger reachable: heartbeats delivered');
        void this.refreshBudgets();
      }
      if (!this.sub) void this.subscribe();
    } catch (err) {
      this.ledgerDown(err);
    }
  }

  private ledgerDown(err: unknown): void {
    if (this.closed) return;
    const e = err instanceof LedgerError ? err : new LedgerError('unavailable', String(err));
    if (!this.down) {
      this.down = true;
      this.log.warn({ err: e.message, code: e.code }, 'ledger unreachable: serving on, heartbeats will resume when it answers');
    }
  }

  /** Reads the fleet's budgets and default name in one transaction and replaces the cache. */
  refreshBudgets(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.reading) { this.readAgain = true; return this.reading; }
    this.reading = (async () => {
      do {
        this.readAgain = false;
        try {
          if (this.redis !== undefined && this.ledger instanceof RedisLedger) {
            const k = this.ledger.keys;
            const res = await this.redis.multi().hgetall(k.budgets).get(k.budget).exec();
            if (res === null) throw new LedgerError('unavailable', 'budget read: transaction aborted');
            for (const [err] of res) if (err) throw err;
            this.budgets.replace(res[0][1] as Record<string, string>, res[1][1] as string | null);
          } else {
            // in-process ledger: two reads in one tick of a single-threaded store, so they see one state
            const [specs, def] = await Promise.all([this.ledger.listBudgets(), this.ledger.getDefaultBudget()]);
            this.budgets.replace(Object.fromEntries(Object.entries(specs).map(([n, spec]) => [n, JSON.stringify(spec)])), def);
          }
        } catch (err) {
          this.ledgerDown(err instanceof LedgerError ? err : new LedgerError('unavailable', `budget read failed: ${(err as Error).message}`));
        }
      } while (this.readAgain && !this.closed);
    })().finally(() => { this.reading = undefined; });
    return this.reading;
  }

  private onEvent(ev: LedgerEvent): void {
    if (ev.type === 'drain' || ev.type === 'undrain') {
      if (ev.worker_id === this.o.workerId) {
        this.log.info({ reason: ev.reason }, `${ev.type} order from the events channel`);
        if (ev.type === 'drain') this.o.onDrainOrder(ev.reason); else this.o.onUndrainOrder(ev.reason);
      }
      return;
    }
    // budget or default_budget: the ledger stored the change before announcing it, so a fresh read sees it
    void this.refreshBudgets();
  }

  /** Subscribes to the events channel once; a failed attempt is retried by the next delivered heartbeat. After
   *  the first success ioredis re-subscribes after reconnects by itself. */
  private async subscribe(): Promise<void> {
    if (this.closed || this.sub || this.subscribing) return;
    this.subscribing = true;
    try {
      const sub = await this.ledger.subscribe((ev) => this.onEvent(ev),
        (e) => { if (e.code === 'invalid_reply') this.log.warn({ err: e.message }, 'bad message on the events channel'); else this.ledgerDown(e); });
      if (this.closed) await sub.close(); else this.sub = sub;
      // budget changes announced before the subscription was active: one read catches them up
      void this.refreshBudgets();
    } catch (err) {
      this.ledgerDown(err);
    } finally {
      this.subscribing = false;
    }
  }

  /** Leaves the fleet: stops heartbeats, removes this worker from the ledger (best effort), closes connections. */
  async close(): Promise<void> {
    if (this.closed) return;
    // let a heartbeat in flight land first, so it cannot recreate the hash after the removal
    while (this.beating) await new Promise((r) => setTimeout(r, 5));
    this.closed = true;
    for (const t of this.timers) { clearInterval(t); clearTimeout(t); }
    try {
      await this.ledger.removeWorker(this.o.workerId);
      this.log.info('left the fleet ledger');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not remove this worker from the ledger; its entry expires on its own');
    }
    await this.sub?.close().catch(() => undefined);
    if (this.redis === undefined) return;  // a given ledger stays open: its owner closes it
    const redis = this.redis;
    await this.ledger.close();
    await redis.quit().catch(() => redis.disconnect());
  }
}
