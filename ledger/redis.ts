// The ledger over Redis (ioredis). Scripts are loaded with SCRIPT LOAD on every (re)connect and called by EVALSHA;
// a NOSCRIPT reply (Redis restarted, SCRIPT FLUSH) loads the script again and retries once. Every Redis failure
// becomes a LedgerError; connection errors never escape as 'error' events or unhandled rejections.
import { createHash, randomInt } from 'node:crypto';
import { Redis, type RedisOptions } from 'ioredis';
import type { BudgetSpec } from '../proto/index.ts';
import { checkRequestId, checkWorkerId, fleetKeys, type FleetKeys } from './keys.ts';
import * as lua from './lua.ts';
import {
  BudgetSpecSchema, DEFAULTS, LedgerError, checkBudgetName, checkPages, checkPolicy, checkTtl, checkWorkerFields, parseBudget, parseLedgerEvent, workerOrder,
  type HeartbeatOptions, type HeartbeatResult, type Ledger, type LedgerEvent, type LedgerSnapshot, type PickOptions,
  type PickResult, type Subscription, type WorkerFields, type WorkerSnapshot,
} from './types.ts';

export interface RedisLedgerOptions {
  /** a Redis URL (the ledger owns and closes the connection) or an ioredis client (the caller owns it) */
  redis: string | Redis;
  namespace: string;
  fleet: string;
  /** a command not answered within this many ms fails with LedgerError 'unavailable' (default 2000) */
  commandTimeoutMs?: number;
  /** batch commands issued in the same tick into one write (ioredis enableAutoPipelining; default false) */
  autoPipelining?: boolean;
  /** connection errors and background script-load failures (default: ignored; calls still reject) */
  onError?: (e: LedgerError) => void;
}

interface Script { name: string; lua: string; sha: string }

function script(name: string, text: string): Script {
  return { name, lua: text, sha: createHash('sha1').update(text).digest('hex') };
}

const SCRIPTS = {
  pick: script('pick', lua.PICK),
  heartbeat: script('heartbeat', lua.HEARTBEAT),
  release: script('release', lua.RELEASE),
  removeWorker: script('remove_worker', lua.REMOVE_WORKER),
  snapshot: script('snapshot', lua.SNAPSHOT),
  routers: script('routers', lua.ROUTERS),
} as const;

// Server replies that mean "not now" rather than "wrong": the caller may retry or go degraded.
const TRANSIENT_REPLY = /^(LOADING|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|READONLY)\b/;

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Converts whatever ioredis threw into a LedgerError (the one place this happens). */
export function toLedgerError(e: unknown, what: string): LedgerError {
  if (e instanceof LedgerError) return e;
  const msg = errorMessage(e);
  const isReply = e instanceof Error && e.name === 'ReplyError';
  const code = isReply && !TRANSIENT_REPLY.test(msg) ? 'script' : 'unavailable';
  return new LedgerError(code, `ledger ${what} failed: ${msg}`, e);
}

function isNoScript(e: unknown): boolean {
  return e instanceof Error && e.message.startsWith('NOSCRIPT');
}

function toInt(v: unknown, what: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : NaN;
  if (!Number.isFinite(n)) throw new LedgerError('invalid_reply', `ledger ${what}: expected a number, got ${JSON.stringify(v)}`);
  return n;
}

type WorkerNumberField = 'total_pages' | 'free_pages' | 'page_size' | 'num_layers' | 'num_kv_heads' | 'running' | 'waiting'
  | 'heartbeat_ms';

function workerFieldArgs(f: WorkerFields): string[] {
  return ['addr', f.addr, 'total_pages', String(f.total_pages), 'free_pages', String(f.free_pages),
    'page_size', String(f.page_size), 'num_layers', String(f.num_layers), 'num_kv_heads', String(f.num_kv_heads),
    'running', String(f.running), 'waiting', String(f.waiting), 'draining', f.draining ? '1' : '0',
    // always written, so a worker that stops publishing it does not leave an old value behind
    'prefill_tokens', String(f.prefill_tokens ?? 0), 'max_model_len', String(f.max_model_len ?? 0)];
}

export class RedisLedger implements Ledger {
  readonly namespace: string;
  readonly fleet: string;
  readonly keys: FleetKeys;
  private readonly redis: Redis;
  private readonly owned: boolean;
  private readonly onError: (e: LedgerError) => void;
  private readonly subscribers = new Set<Redis>();
  private closed = false;

  constructor(opts: RedisLedgerOptions) {
    this.keys = fleetKeys(opts.namespace, opts.fleet);
    this.namespace = opts.namespace;
    this.fleet = opts.fleet;
    this.onError = opts.onError ?? (() => {});
    if (typeof opts.redis === 'string') {
      this.redis = new Redis(opts.redis, RedisLedger.clientOptions(opts));
      this.owned = true;
    } else {
      this.redis = opts.redis;
      this.owned = false;
    }
    // An 'error' event without a listener would crash the process; ioredis keeps reconnecting on its own.
    this.redis.on('error', (e: unknown) => this.onError(toLedgerError(e, 'connection')));
    // After every (re)connect the server may be a fresh one without our scripts: load them before they are needed.
    this.redis.on('ready', () => { this.loadScripts().catch((e: unknown) => this.onError(toLedgerError(e, 'SCRIPT LOAD'))); });
  }

  /** ioredis options for a ledger-owned connection: fail fast while disconnected (a router must notice at once
   *  and go degraded), reconnect quickly forever. */
  static clientOptions(opts: Pick<RedisLedgerOptions, 'commandTimeoutMs' | 'autoPipelining'>): RedisOptions {
    return {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: opts.commandTimeoutMs ?? 2000,
      enableAutoPipelining: opts.autoPipelining ?? false,
      retryStrategy: (times: number) => Math.min(50 * times, 500),
    };
  }

  /** Creates a ledger and waits until Redis answers and the scripts are loaded (or rejects with a LedgerError). */
  static async connect(opts: RedisLedgerOptions & { connectTimeoutMs?: number }): Promise<RedisLedger> {
    const ledger = new RedisLedger(opts);
    try {
      await ledger.ready(opts.connectTimeoutMs ?? 10_000);
    } catch (e) {
      await ledger.close();
      throw e;
    }
    return ledger;
  }

  /** Resolves once the connection is ready and the scripts are loaded. */
  async ready(timeoutMs = 10_000): Promise<void> {
    const r = this.redis;
    if (r.status === 'wait') r.connect().catch(() => { /* reported through 'error'; awaited below */ });
    if (r.status !== 'ready') {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => { cleanup(); reject(new LedgerError('unavailable', `ledger: Redis not ready after ${timeoutMs} ms (status ${r.status})`)); }, timeoutMs);
        const onReady = (): void => { cleanup(); resolve(); };
        const onEnd = (): void => { cleanup(); reject(new LedgerError('closed', 'ledger: Redis connection ended')); };
        const cleanup = (): void => { clearTimeout(timer); r.off('ready', onReady); r.off('end', onEnd); };
        r.on('ready', onReady);
        r.on('end', onEnd);
      });
    }
    await this.loadScripts();
  }

  private async loadScripts(): Promise<void> {
    try {
      await Promise.all(Object.values(SCRIPTS).map(async (s) => {
        const sha = await this.redis.script('LOAD', s.lua) as string;
        if (sha !== s.sha) throw new LedgerError('invalid_reply', `ledger: SCRIPT LOAD of ${s.name} returned ${sha}, expected ${s.sha}`);
      }));
    } catch (e) {
      throw toLedgerError(e, 'SCRIPT LOAD');
    }
  }

  private async run(s: Script, keys: string[], args: (string | number)[]): Promise<unknown> {
    if (this.closed) throw new LedgerError('closed', `ledger ${s.name}: the ledger is closed`);
    try {
      try {
        return await this.redis.evalsha(s.sha, keys.length, ...keys, ...args);
      } catch (e) {
        if (!isNoScript(e)) throw e;
        await this.redis.script('LOAD', s.lua);
        return await this.redis.evalsha(s.sha, keys.length, ...keys, ...args);
      }
    } catch (e) {
      throw toLedgerError(e, s.name);
    }
  }

  private async cmd<T>(what: string, f: () => Promise<T>): Promise<T> {
    if (this.closed) throw new LedgerError('closed', `ledger ${what}: the ledger is closed`);
    try { return await f(); } catch (e) { throw toLedgerError(e, what); }
  }

  private get fleetScriptKeys(): string[] {
    return [this.keys.index, this.keys.expiring, this.keys.workers, this.keys.prefill];
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
    const fieldArgs = workerFieldArgs(fields);
    const reply = await this.run(SCRIPTS.heartbeat, this.fleetScriptKeys, [this.keys.prefix, workerId, ttl, rttl,
      fieldArgs.length / 2, ...fieldArgs, removed.length, ...removed, ...queued]) as unknown[];
    return { effective_free: toInt(reply[0], 'heartbeat'), reserved_pages: toInt(reply[1], 'heartbeat'), now_ms: toInt(reply[2], 'heartbeat') };
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
    // p2c's randomness comes from the client as a seed: the script is deterministic given its arguments.
    const reply = await this.run(SCRIPTS.pick, this.fleetScriptKeys, [this.keys.prefix, needPages, requestId, ttl, policy,
      policy === 'p2c' ? randomInt(1, 2 ** 31 - 1) : 0, tokens, ...exclude]) as unknown[] | null;
    if (reply === null) return null;
    if (!Array.isArray(reply) || reply.length !== 3) throw new LedgerError('invalid_reply', `ledger pick: unexpected reply ${JSON.stringify(reply)}`);
    return { worker_id: String(reply[0]), addr: String(reply[1]), effective_free_after: toInt(reply[2], 'pick') };
  }

  async release(workerId: string, requestId: string): Promise<number> {
    checkWorkerId(workerId);
    checkRequestId(requestId);
    return toInt(await this.run(SCRIPTS.release, this.fleetScriptKeys, [this.keys.prefix, workerId, requestId]), 'release');
  }

  async removeWorker(workerId: string): Promise<void> {
    checkWorkerId(workerId);
    await this.run(SCRIPTS.removeWorker, this.fleetScriptKeys, [this.keys.prefix, workerId]);
  }

  async snapshot(): Promise<LedgerSnapshot> {
    const reply = await this.run(SCRIPTS.snapshot, this.fleetScriptKeys, [this.keys.prefix]) as unknown[];
    const now_ms = toInt(reply[0], 'snapshot');
    const workers: WorkerSnapshot[] = [];
    for (const entry of reply.slice(1) as [string, string[], number, number][]) {
      const [worker_id, flat, reserved, count] = entry;
      const h: Record<string, string> = {};
      for (let i = 0; i + 1 < flat.length; i += 2) h[flat[i]] = flat[i + 1];
      const num = (k: WorkerNumberField): number => {
        if (h[k] === undefined) throw new LedgerError('invalid_reply', `ledger snapshot: worker '${worker_id}' has no field ${k}`);
        return toInt(h[k], `snapshot worker '${worker_id}' field ${k}`);
      };
      if (h.addr === undefined) throw new LedgerError('invalid_reply', `ledger snapshot: worker '${worker_id}' has no field addr`);
      const w: WorkerSnapshot = {
        worker_id, addr: h.addr,
        total_pages: num('total_pages'), free_pages: num('free_pages'), page_size: num('page_size'),
        num_layers: num('num_layers'), num_kv_heads: num('num_kv_heads'), running: num('running'), waiting: num('waiting'),
        draining: h.draining === '1', heartbeat_ms: num('heartbeat_ms'),
        reserved_pages: toInt(reserved, 'snapshot reserved'), reservations: toInt(count, 'snapshot reservations'),
        effective_free: 0,
        prefill_tokens: h.prefill_tokens === undefined ? 0 : toInt(h.prefill_tokens, `snapshot worker '${worker_id}' field prefill_tokens`),
        max_model_len: h.max_model_len === undefined ? 0 : toInt(h.max_model_len, `snapshot worker '${worker_id}' field max_model_len`),
      };
      w.effective_free = w.free_pages - w.reserved_pages;
      workers.push(w);
    }
    workers.sort((a, b) => Buffer.compare(Buffer.from(a.worker_id), Buffer.from(b.worker_id)));
    return { now_ms, workers };
  }

  private async routers(op: 'register' | 'unregister' | 'count', routerId: string, ttlMs: number): Promise<number> {
    checkTtl('router ttlMs', ttlMs);
    return toInt(await this.run(SCRIPTS.routers, [this.keys.routers], [op, routerId, ttlMs]), 'routers');
  }

  async registerRouter(routerId: string, ttlMs: number = DEFAULTS.routerTtlMs): Promise<number> {
    checkRequestId(routerId);
    return this.routers('register', routerId, ttlMs);
  }

  async unregisterRouter(routerId: string): Promise<void> {
    checkRequestId(routerId);
    await this.routers('unregister', routerId, DEFAULTS.routerTtlMs);
  }

  async liveRouters(ttlMs: number = DEFAULTS.routerTtlMs): Promise<number> {
    return this.routers('count', '', ttlMs);
  }

  async setBudget(name: string, spec: BudgetSpec): Promise<void> {
    checkBudgetName(name);
    const parsed = BudgetSpecSchema.parse(spec) as BudgetSpec;
    const ev: LedgerEvent = { type: 'budget', name, spec: parsed };
    // stored first, then announced, in one MULTI: a subscriber that reads on the event sees the new value
    await this.cmd('setBudget', () => this.redis.multi().hset(this.keys.budgets, name, JSON.stringify(parsed))
      .publish(this.keys.events, JSON.stringify(ev)).exec().then(checkExec));
  }

  async getBudget(name: string): Promise<BudgetSpec | null> {
    checkBudgetName(name);
    const raw = await this.cmd('getBudget', () => this.redis.hget(this.keys.budgets, name));
    return raw === null ? null : parseBudget(name, raw);
  }

  async listBudgets(): Promise<Record<string, BudgetSpec>> {
    const all = await this.cmd('listBudgets', () => this.redis.hgetall(this.keys.budgets));
    const out: Record<string, BudgetSpec> = {};
    for (const [k, v] of Object.entries(all)) out[k] = parseBudget(k, v);
    return out;
  }

  async deleteBudget(name: string): Promise<boolean> {
    checkBudgetName(name);
    const ev: LedgerEvent = { type: 'budget', name, spec: null };
    const res = await this.cmd('deleteBudget', () => this.redis.multi().hdel(this.keys.budgets, name)
      .publish(this.keys.events, JSON.stringify(ev)).exec().then(checkExec));
    return Number(res[0]) === 1;
  }

  async setDefaultBudget(name: string | null): Promise<void> {
    if (name !== null) checkBudgetName(name);
    const ev: LedgerEvent = { type: 'default_budget', name };
    const m = this.redis.multi();
    if (name === null) m.del(this.keys.budget); else m.set(this.keys.budget, name);
    await this.cmd('setDefaultBudget', () => m.publish(this.keys.events, JSON.stringify(ev)).exec().then(checkExec));
  }

  async getDefaultBudget(): Promise<string | null> {
    return this.cmd('getDefaultBudget', () => this.redis.get(this.keys.budget));
  }

  async publish(event: LedgerEvent): Promise<number> {
    const raw = JSON.stringify(event);
    const parsed = parseLedgerEvent(raw);
    if (parsed instanceof LedgerError) throw new TypeError(parsed.message);
    return this.cmd('publish', () => this.redis.publish(this.keys.events, raw));
  }

  async drain(workerId: string, reason?: string): Promise<number> {
    checkWorkerId(workerId);
    return this.publish(workerOrder('drain', workerId, reason));
  }

  async undrain(workerId: string, reason?: string): Promise<number> {
    checkWorkerId(workerId);
    return this.publish(workerOrder('undrain', workerId, reason));
  }

  async subscribe(onEvent: (e: LedgerEvent) => void, onError: (e: LedgerError) => void = this.onError): Promise<Subscription> {
    if (this.closed) throw new LedgerError('closed', 'ledger subscribe: the ledger is closed');
    // A subscribed connection can run nothing else, so each subscription has its own; ioredis re-subscribes
    // after a reconnect (autoResubscribe).
    const sub = this.redis.duplicate({ lazyConnect: true, enableOfflineQueue: true, maxRetriesPerRequest: null });
    sub.on('error', (e: unknown) => onError(toLedgerError(e, 'events connection')));
    sub.on('message', (channel: string, message: string) => {
      if (channel !== this.keys.events) return;
      const ev = parseLedgerEvent(message);
      if (ev instanceof LedgerError) { onError(ev); return; }
      try { onEvent(ev); } catch (e) { onError(new LedgerError('invalid_reply', `ledger event handler threw: ${errorMessage(e)}`, e)); }
    });
    this.subscribers.add(sub);
    const close = async (): Promise<void> => {
      if (!this.subscribers.delete(sub)) return;
      await sub.quit().catch(() => sub.disconnect());
    };
    try {
      await sub.connect();
      await sub.subscribe(this.keys.events);
    } catch (e) {
      await close();
      throw toLedgerError(e, 'subscribe');
    }
    return { close };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.subscribers].map(async (s) => { this.subscribers.delete(s); await s.quit().catch(() => s.disconnect()); }));
    if (this.owned) {
      // quit waits for pending replies; when the server is gone it rejects, and then we just drop the socket
      await this.redis.quit().catch(() => this.redis.disconnect());
    }
  }
}

function checkExec(res: [Error | null, unknown][] | null): unknown[] {
  if (res === null) throw new LedgerError('unavailable', 'ledger: transaction aborted');
  for (const [err] of res) if (err) throw err;
  return res.map(([, v]) => v);
}
