// The in-memory ledger: the same interface and semantics as RedisLedger (tests/ledger/conformance.ts checks both),
// for a one-process local stack and for simulations on a virtual clock. Each method body runs synchronously, so it
// is atomic like a Lua script. One MemoryLedgerBackend plays one Redis server: ledgers of several fleets (and
// several "clients" of one fleet) share it. The logic mirrors ledger/lua.ts step for step, tie-breaks included.
import type { BudgetSpec } from '../proto/index.ts';
import { checkRequestId, checkWorkerId, fleetKeys } from './keys.ts';
import { EXPIRE_BATCH, LEAST_PREFILL_SCAN } from './lua.ts';
import {
  BudgetSpecSchema, DEFAULTS, LedgerError, checkBudgetName, checkPages, checkPolicy, checkTtl, checkWorkerFields, parseBudget, parseLedgerEvent, workerOrder,
  type HeartbeatOptions, type HeartbeatResult, type Ledger, type LedgerEvent, type LedgerSnapshot, type PickOptions,
  type PickPolicy, type PickResult, type Subscription, type WorkerFields, type WorkerSnapshot,
} from './types.ts';

/** A clock you move by hand. */
export class VirtualClock {
  private t: number;
  constructor(startMs = 1_000_000) { this.t = startMs; }
  now = (): number => this.t;
  advance(ms: number): void {
    if (!(ms >= 0)) throw new RangeError(`VirtualClock.advance: ms must be >= 0, got ${ms}`);
    this.t += ms;
  }
}

interface WorkerRecord { fields: WorkerFields; heartbeat_ms: number; ttl_ms: number }
/** tokens: the prompt tokens it was picked with (0: none, the `tokens:<id>` hash has no entry) */
interface Reservation { pages: number; expires_ms: number; tokens: number }

interface FleetState {
  /** the workers SET; a worker id may stay here after its hash expired, until something meets it */
  members: Set<string>;
  /** worker hashes; a record is "expired" (the Redis key gone) when now − heartbeat_ms > ttl_ms */
  workers: Map<string, WorkerRecord>;
  /** reserved:<id> + reservations:<id>; the fleet-wide expiry ZSET is implied by scanning these */
  reserved: Map<string, Map<string, Reservation>>;
  /** the pick index: worker id → effective free pages */
  index: Map<string, number>;
  /** the prefill index (same members as index): worker id → prefill_tokens + Σ reservation tokens */
  prefill: Map<string, number>;
  routers: Map<string, number>;
  budgets: Map<string, string>;
  defaultBudget: string | null;
}

/** Byte order of the UTF-8 encodings, as Redis orders equal-score ZSET members. */
function cmpBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

export interface MemoryLedgerBackendOptions {
  /** ms since some epoch (default Date.now); floored like Redis TIME in ms */
  clock?: () => number;
  /** uniform in [0, 1), for p2c (default Math.random) */
  random?: () => number;
}

/** One in-process "Redis": the fleets' state and the events channels. */
export class MemoryLedgerBackend {
  readonly clock: () => number;
  readonly random: () => number;
  private readonly fleets = new Map<string, FleetState>();
  private readonly channels = new Map<string, Set<(raw: string) => void>>();

  constructor(opts: MemoryLedgerBackendOptions = {}) {
    this.clock = opts.clock ?? Date.now;
    this.random = opts.random ?? Math.random;
  }

  now(): number { return Math.floor(this.clock()); }

  fleet(prefix: string): FleetState {
    let f = this.fleets.get(prefix);
    if (!f) {
      f = { members: new Set(), workers: new Map(), reserved: new Map(), index: new Map(), prefill: new Map(), routers: new Map(),
        budgets: new Map(), defaultBudget: null };
      this.fleets.set(prefix, f);
    }
    return f;
  }

  /** Delivers asynchronously, like pub/sub; returns the number of subscribers. */
  publish(channel: string, raw: string): number {
    const subs = this.channels.get(channel);
    if (!subs) return 0;
    for (const s of subs) setImmediate(() => s(raw));
    return subs.size;
  }

  subscribe(channel: string, fn: (raw: string) => void): () => void {
    let subs = this.channels.get(channel);
    if (!subs) { subs = new Set(); this.channels.set(channel, subs); }
    subs.add(fn);
    return () => { subs.delete(fn); };
  }

  /** A ledger of one fleet on this backend (one "client"). */
  ledger(namespace: string, fleet: string): MemoryLedger {
    return new MemoryLedger(this, namespace, fleet);
  }
}

export class MemoryLedger implements Ledger {
  readonly namespace: string;
  readonly fleet: string;
  private readonly backend: MemoryLedgerBackend;
  private readonly prefix: string;
  private readonly channel: string;
  private readonly subs = new Set<() => void>();
  private closed = false;

  constructor(backend: MemoryLedgerBackend, namespace: string, fleet: string) {
    const keys = fleetKeys(namespace, fleet);
    this.backend = backend;
    this.namespace = namespace;
    this.fleet = fleet;
    this.prefix = keys.prefix;
    this.channel = keys.events;
  }

  private state(what: string): FleetState {
    if (this.closed) throw new LedgerError('closed', `ledger ${what}: the ledger is closed`);
    return this.backend.fleet(this.prefix);
  }

  // ---- the Lua prelude, mirrored ----
  private static unindex(s: FleetState, id: string): void {
    s.index.delete(id);
    s.prefill.delete(id);
  }

  private static dropReservation(s: FleetState, id: string, rid: string): number {
    const m = s.reserved.get(id);
    const r = m?.get(rid);
    if (!m || !r) return 0;
    m.delete(rid);
    if (m.size === 0) s.reserved.delete(id);
    const load = s.prefill.get(id);
    if (r.tokens > 0 && load !== undefined) s.prefill.set(id, load - r.tokens);
    const score = s.index.get(id);
    if (score !== undefined) s.index.set(id, score + r.pages);
    return r.pages;
  }

  /** Drops up to EXPIRE_BATCH expired reservations in the order of the `expiring` ZSET (expiry, then member bytes). */
  private static expireDue(s: FleetState, now: number): void {
    const due: { id: string; rid: string; exp: number; member: string }[] = [];
    for (const [id, m] of s.reserved) {
      for (const [rid, r] of m) if (r.expires_ms <= now) due.push({ id, rid, exp: r.expires_ms, member: `${id}\n${rid}` });
    }
    if (due.length > EXPIRE_BATCH) due.sort((a, b) => a.exp - b.exp || cmpBytes(a.member, b.member));
    for (const d of due.slice(0, EXPIRE_BATCH)) MemoryLedger.dropReservation(s, d.id, d.rid);
  }

  /** The worker hash as Redis would hold it: undefined once its PEXPIRE has passed. */
  private static liveRecord(s: FleetState, id: string, now: number): WorkerRecord | undefined {
    const w = s.workers.get(id);
    if (w && now - w.heartbeat_ms > w.ttl_ms) { s.workers.delete(id); return undefined; }
    return w;
  }

  private static pickableAddr(s: FleetState, id: string, now: number): string | null {
    const w = MemoryLedger.liveRecord(s, id, now);
    if (!w) { MemoryLedger.unindex(s, id); s.members.delete(id); return null; }
    if (w.fields.draining) { MemoryLedger.unindex(s, id); return null; }
    return w.fields.addr;
  }

  /** The index in ZSET order: score ascending, then member bytes ascending. */
  private static sortedIndex(s: FleetState): [string, number][] {
    return MemoryLedger.zsetOrder(s.index);
  }

  /** A ZSET's order: score ascending, then member bytes ascending. */
  private static zsetOrder(m: Map<string, number>): [string, number][] {
    return [...m].sort((a, b) => a[1] - b[1] || cmpBytes(a[0], b[0]));
  }

  async heartbeat(workerId: string, fields: WorkerFields, opts: HeartbeatOptions = {}): Promise<HeartbeatResult> {
    checkWorkerId(workerId);
    checkWorkerFields(fields);
    const ttl = opts.ttlMs ?? DEFAULTS.workerTtlMs;
    const rttl = opts.reservationTtlMs ?? DEFAULTS.reservationTtlMs;
    checkTtl('heartbeat ttlMs', ttl); checkTtl('heartbeat reservationTtlMs', rttl);
    const removed = [...(opts.admitted ?? []), ...(opts.rejected ?? [])];
    const queued = opts.queued ?? [];
    for (const id of removed) checkRequestId(id);
    for (const id of queued) checkRequestId(id);
    const s = this.state('heartbeat');
    const now = this.backend.now();
    MemoryLedger.expireDue(s, now);
    s.workers.set(workerId, { fields: { ...fields }, heartbeat_ms: now, ttl_ms: ttl });
    s.members.add(workerId);
    for (const rid of removed) MemoryLedger.dropReservation(s, workerId, rid);
    const m = s.reserved.get(workerId);
    for (const rid of queued) {
      const r = m?.get(rid);
      if (r) r.expires_ms = Math.max(r.expires_ms, now + rttl);
    }
    let sum = 0;
    let load = fields.prefill_tokens ?? 0;
    for (const r of m?.values() ?? []) { sum += r.pages; load += r.tokens; }
    const eff = fields.free_pages - sum;
    if (fields.draining) MemoryLedger.unindex(s, workerId);
    else { s.index.set(workerId, eff); s.prefill.set(workerId, load); }
    return { effective_free: eff, reserved_pages: sum, now_ms: now };
  }

  async pick(needPages: number, requestId: string, opts: PickOptions = {}): Promise<PickResult | null> {
    checkPages('pick needPages', needPages, 1);
    checkRequestId(requestId);
    const ttl = opts.ttlMs ?? DEFAULTS.reservationTtlMs;
    checkTtl('pick ttlMs', ttl);
    const policy = opts.policy ?? DEFAULTS.policy;
    checkPolicy(policy);
    const tokens = opts.promptTokens ?? 0;
    checkPages('pick promptTokens', tokens, 0);
    const exclude = opts.exclude ?? [];
    for (const id of exclude) checkWorkerId(id);
    const s = this.state('pick');
    const now = this.backend.now();
    MemoryLedger.expireDue(s, now);
    // excluded workers leave both indexes for the choice and come back with their scores (as the script does)
    const excluded: [string, number, number | undefined][] = [];
    for (const id of exclude) {
      const free = s.index.get(id);
      if (free === undefined) continue;
      excluded.push([id, free, s.prefill.get(id)]);
      MemoryLedger.unindex(s, id);
    }
    try {
      return this.choose(s, now, needPages, requestId, ttl, policy, tokens);
    } finally {
      for (const [id, free, load] of excluded) {
        s.index.set(id, free);
        if (load !== undefined) s.prefill.set(id, load);
      }
    }
  }

  /** pick's choice among the indexed workers (the script's choose()). */
  private choose(s: FleetState, now: number, needPages: number, requestId: string, ttl: number, policy: PickPolicy,
    tokens: number): PickResult | null {
    const reserve = (id: string, addr: string): PickResult => {
      MemoryLedger.dropReservation(s, id, requestId);
      let m = s.reserved.get(id);
      if (!m) { m = new Map(); s.reserved.set(id, m); }
      m.set(requestId, { pages: needPages, expires_ms: now + ttl, tokens });
      const load = s.prefill.get(id);
      if (tokens > 0 && load !== undefined) s.prefill.set(id, load + tokens);
      const after = s.index.get(id)! - needPages;
      s.index.set(id, after);
      return { worker_id: id, addr, effective_free_after: after };
    };

    // Each loop either returns or removes one index entry, so it ends.
    for (;;) {
      const sorted = MemoryLedger.sortedIndex(s);
      const fitFrom = sorted.findIndex(([, score]) => score >= needPages);
      if (fitFrom < 0) return null;
      if (policy === 'best-fit') {
        const [id] = sorted[fitFrom];
        const addr = MemoryLedger.pickableAddr(s, id, now);
        if (addr !== null) return reserve(id, addr);
      } else if (policy === 'p2c') {
        const fit = sorted.length - fitFrom;
        const a = fitFrom + Math.floor(this.backend.random() * fit);
        let b = a;
        if (fit > 1) {
          b = fitFrom + Math.floor(this.backend.random() * (fit - 1));
          if (b >= a) b += 1;
        }
        const [ida, sa] = sorted[a];
        const [idb, sb] = sorted[b];
        const addrA = MemoryLedger.pickableAddr(s, ida, now);
        const addrB = b !== a ? MemoryLedger.pickableAddr(s, idb, now) : addrA;
        if (addrA !== null && addrB !== null) return sb > sa ? reserve(idb, addrB) : reserve(ida, addrA);
      } else if (policy === 'least-prefill') {
        let best: { id: string; load: number; free: number } | undefined;
        for (const [id, load] of MemoryLedger.zsetOrder(s.prefill).slice(0, LEAST_PREFILL_SCAN)) {
          const free = s.index.get(id);
          if (free === undefined || free < needPages) continue;
          if (!best || load < best.load || (load === best.load && free > best.free)) best = { id, load, free };
        }
        // none of them fits: the largest effective free, as most-free (one exists: fitFrom >= 0)
        const id = best?.id ?? sorted[sorted.length - 1][0];
        const addr = MemoryLedger.pickableAddr(s, id, now);
        if (addr !== null) return reserve(id, addr);
      } else {
        const [id] = sorted[sorted.length - 1];
        const addr = MemoryLedger.pickableAddr(s, id, now);
        if (addr !== null) return reserve(id, addr);
      }
    }
  }

  async release(workerId: string, requestId: string): Promise<number> {
    checkWorkerId(workerId);
    checkRequestId(requestId);
    return MemoryLedger.dropReservation(this.state('release'), workerId, requestId);
  }

  async removeWorker(workerId: string): Promise<void> {
    checkWorkerId(workerId);
    const s = this.state('removeWorker');
    s.workers.delete(workerId);
    s.members.delete(workerId);
    MemoryLedger.unindex(s, workerId);
  }

  async snapshot(): Promise<LedgerSnapshot> {
    const s = this.state('snapshot');
    const now = this.backend.now();
    MemoryLedger.expireDue(s, now);
    const workers: WorkerSnapshot[] = [];
    for (const id of [...s.members]) {
      const w = MemoryLedger.liveRecord(s, id, now);
      if (!w) { s.members.delete(id); MemoryLedger.unindex(s, id); continue; }
      let sum = 0; let count = 0;
      for (const r of s.reserved.get(id)?.values() ?? []) { sum += r.pages; count++; }
      workers.push({ ...w.fields, worker_id: id, heartbeat_ms: w.heartbeat_ms, reserved_pages: sum, reservations: count,
        effective_free: w.fields.free_pages - sum, prefill_tokens: w.fields.prefill_tokens ?? 0,
        max_model_len: w.fields.max_model_len ?? 0 });
    }
    workers.sort((a, b) => cmpBytes(a.worker_id, b.worker_id));
    return { now_ms: now, workers };
  }

  private routers(op: 'register' | 'unregister' | 'count', routerId: string, ttlMs: number): number {
    checkTtl('router ttlMs', ttlMs);
    const s = this.state('routers');
    const now = this.backend.now();
    if (op === 'register') s.routers.set(routerId, now);
    else if (op === 'unregister') s.routers.delete(routerId);
    for (const [id, seen] of s.routers) if (seen < now - ttlMs) s.routers.delete(id);
    return s.routers.size;
  }

  async registerRouter(routerId: string, ttlMs: number = DEFAULTS.routerTtlMs): Promise<number> {
    checkRequestId(routerId);
    return this.routers('register', routerId, ttlMs);
  }

  async unregisterRouter(routerId: string): Promise<void> {
    checkRequestId(routerId);
    this.routers('unregister', routerId, DEFAULTS.routerTtlMs);
  }

  async liveRouters(ttlMs: number = DEFAULTS.routerTtlMs): Promise<number> {
    return this.routers('count', '', ttlMs);
  }

  async setBudget(name: string, spec: BudgetSpec): Promise<void> {
    checkBudgetName(name);
    const parsed = BudgetSpecSchema.parse(spec) as BudgetSpec;
    this.state('setBudget').budgets.set(name, JSON.stringify(parsed));
    this.emit({ type: 'budget', name, spec: parsed });
  }

  async getBudget(name: string): Promise<BudgetSpec | null> {
    checkBudgetName(name);
    const raw = this.state('getBudget').budgets.get(name);
    return raw === undefined ? null : parseBudget(name, raw);
  }

  async listBudgets(): Promise<Record<string, BudgetSpec>> {
    const out: Record<string, BudgetSpec> = {};
    for (const [k, v] of this.state('listBudgets').budgets) out[k] = parseBudget(k, v);
    return out;
  }

  async deleteBudget(name: string): Promise<boolean> {
    checkBudgetName(name);
    const existed = this.state('deleteBudget').budgets.delete(name);
    this.emit({ type: 'budget', name, spec: null });
    return existed;
  }

  async setDefaultBudget(name: string | null): Promise<void> {
    if (name !== null) checkBudgetName(name);
    this.state('setDefaultBudget').defaultBudget = name;
    this.emit({ type: 'default_budget', name });
  }

  async getDefaultBudget(): Promise<string | null> {
    return this.state('getDefaultBudget').defaultBudget;
  }

  private emit(event: LedgerEvent): number {
    return this.backend.publish(this.channel, JSON.stringify(event));
  }

  async publish(event: LedgerEvent): Promise<number> {
    this.state('publish');
    const raw = JSON.stringify(event);
    const parsed = parseLedgerEvent(raw);
    if (parsed instanceof LedgerError) throw new TypeError(parsed.message);
    return this.backend.publish(this.channel, raw);
  }

  async drain(workerId: string, reason?: string): Promise<number> {
    checkWorkerId(workerId);
    return this.publish(workerOrder('drain', workerId, reason));
  }

  async undrain(workerId: string, reason?: string): Promise<number> {
    checkWorkerId(workerId);
    return this.publish(workerOrder('undrain', workerId, reason));
  }

  async subscribe(onEvent: (e: LedgerEvent) => void, onError: (e: LedgerError) => void = () => {}): Promise<Subscription> {
    this.state('subscribe');
    const unsubscribe = this.backend.subscribe(this.channel, (raw) => {
      const ev = parseLedgerEvent(raw);
      if (ev instanceof LedgerError) { onError(ev); return; }
      try { onEvent(ev); } catch (e) { onError(new LedgerError('invalid_reply', `ledger event handler threw: ${e instanceof Error ? e.message : String(e)}`, e)); }
    });
    this.subs.add(unsubscribe);
    return { close: async () => { if (this.subs.delete(unsubscribe)) unsubscribe(); } };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const u of this.subs) u();
    this.subs.clear();
  }
}
