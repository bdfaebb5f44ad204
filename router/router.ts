// The router: one Generation service in front of a fleet. Each request lands on the worker with the most remaining
// *compressed* KV capacity (ledger pick = atomic reservation of the request's footprint), streams through, and is
// released at the end. A worker failing before the first token: pick another. After it: migrate (resume_token_ids =
// tokens already streamed) so the client sees one unbroken, identical stream. Redis down: degraded mode from the last
// snapshot, reserving at most a 1/R share of each worker's free pages (CONTRACTS.md).
import { randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { pino, type Logger } from 'pino';
import client from 'prom-client';
import {
  RedisLedger, LedgerError, requestFootprintPages, resolveBudgetSpec, BUILTIN_DEFAULT_BUDGET, BudgetSpecError,
  degradedShare, budgetChoice, lookupBudgetName, BudgetSelectorError, DEFAULT_BUDGET_NAME, type BudgetChoice, type Ledger, type LedgerSnapshot, type PickResult, type WorkerSnapshot, type PickPolicy,
} from '../ledger/index.ts';
import {
  addGenerationService, addHealth, addReflection, SERVICE_NAMES,
  type BudgetSpec, type GenerateRequest, type GenerateResponse, type GenerationClient,
} from '../proto/index.ts';
import { Tokenizer } from '../worker/tokenizer.ts';
import { DEADLINE_SLACK_MS, DEFAULT_MAX_NEW_TOKENS, plannedNewTokens, RequestError } from '../worker/request.ts';
import { bearerAuthInterceptor } from '../worker/security.ts';
import type { RouterConfig } from './config.ts';
import { workerGenerationClient } from './wire.ts';

/** A gRPC error with a status code, raised inside the router and answered at the edge. */
export class RouterStatusError extends Error {
  readonly code: grpc.status;
  constructor(code: grpc.status, message: string) { super(message); this.code = code; this.name = 'RouterStatusError'; }
}

// Worker replies that say the request itself is wrong, or was stopped on purpose (ABORTED: its client read nothing
// for the worker's --stall-timeout-ms; moving it would only stall another worker): answered to the client as they
// are, never retried.
const FINAL_CODES = new Set([grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND, grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED, grpc.status.FAILED_PRECONDITION, grpc.status.OUT_OF_RANGE, grpc.status.ABORTED]);

/**
 * How the router takes a worker call's error (the client still waiting), by its status code and the state of the
 * channel to that worker right after it, never by its message:
 * - final: the request itself is wrong (FINAL_CODES): answered to the client as it is;
 * - unreachable: the channel is no longer READY (connection refused, dropped, keepalive timeout): whatever the code,
 *   the transport failed, so the worker is taken out of the ledger until it heartbeats again;
 * - busy: RESOURCE_EXHAUSTED or UNAVAILABLE answered by a worker whose channel is fine (full, draining, budgets not
 *   read yet): it is alive and stays in the ledger, its own heartbeats flag it;
 * - failed: anything else (INTERNAL, UNKNOWN, ...) from a reachable worker: this request failed there; it moves on,
 *   the worker stays in the ledger (one failing request says nothing about the others).
 * The worker sets no structured error trailer today (worker/server.ts answers code and details only), so there is
 * none to read here.
 */
export function classifyWorkerError(code: grpc.status, channel: grpc.connectivityState): 'final' | 'unreachable' | 'busy' | 'failed' {
  if (FINAL_CODES.has(code)) return 'final';
  if (channel !== grpc.connectivityState.READY) return 'unreachable';
  if (code === grpc.status.RESOURCE_EXHAUSTED || code === grpc.status.UNAVAILABLE) return 'busy';
  return 'failed';
}

interface ModelShape { L: number; Hk: number; P: number }

/** One request's way through this router (performance.now() ms), reported to `Router.onTiming` when set: what the
 *  router itself spends, without the network hops on either side. The pick/forward marks are those of the attempt
 *  that delivered the first token. */
export interface RequestTiming {
  /** the Generate handler began */ received: number;
  /** prompt tokenization, ms (0 for token ids) */ tokenizeMs: number;
  /** the ledger pick was sent */ pickStart: number;
  /** the pick answered with a reservation (waiting for room included) */ placed: number;
  /** the worker call was issued */ forwarded: number;
  /** the first worker message that carries tokens arrived */ firstIn: number;
  /** ... and was handed to the client stream */ firstOut: number;
  attempts: number;
}

/** A reservation this router made while the ledger was unreachable. */
export interface DegradedReservation { pages: number; promptTokens: number }

/**
 * Degraded-mode placement from the last ledger snapshot. Each worker's room is this router's share of its effective
 * free pages (degradedShare) less what this router reserved there since; a worker that is draining or excluded, or
 * has no room for `need`, is out. least-prefill (the default policy) then takes the worker with the least prefill
 * work: the snapshot's pending prompt tokens plus those this router sent there since (the snapshot does not see
 * them), ties to the most room; every other policy takes the most room. Ties last by worker id, so the choice is
 * deterministic.
 */
export function chooseDegraded(workers: readonly WorkerSnapshot[], need: number, policy: PickPolicy, liveRouters: number,
    local: ReadonlyMap<string, ReadonlyMap<string, DegradedReservation>>, exclude: ReadonlySet<string>):
    { w: WorkerSnapshot; room: number } | undefined {
  let best: { w: WorkerSnapshot; room: number; prefill: number } | undefined;
  for (const w of workers) {
    if (w.draining || exclude.has(w.worker_id)) continue;
    let pages = 0, tokens = 0;
    for (const r of local.get(w.worker_id)?.values() ?? []) { pages += r.pages; tokens += r.promptTokens; }
    const room = degradedShare(w.effective_free, liveRouters) - pages;
    if (room < need) continue;
    const prefill = policy === 'least-prefill' ? (w.prefill_tokens ?? 0) + tokens : 0;
    const better = !best || prefill < best.prefill || (prefill === best.prefill
      && (room > best.room || (room === best.room && w.worker_id < best.w.worker_id)));
    if (better) best = { w, room, prefill };
  }
  return best && { w: best.w, room: best.room };
}

/** Whether the call's deadline (if it has one) has passed, or is within DEADLINE_SLACK_MS, by the worker's rule: the
 *  client's own timer cancels the stream at its deadline, and grpc-js computes this server's copy when it processes
 *  the headers, later on a busy event loop, so the deadline's cancel arrives up to that lag early. */
function deadlinePassed(call: grpc.ServerWritableStream<GenerateRequest, GenerateResponse>): boolean {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : Number(d);
  return Number.isFinite(ms) && Date.now() >= ms - DEADLINE_SLACK_MS;
}

/** Why a client stream ended before its answer: its deadline passed (DEADLINE_EXCEEDED, which grpc-js answers
 *  itself), else the client cancelled (CANCELLED). */
function clientGoneCode(call: grpc.ServerWritableStream<GenerateRequest, GenerateResponse>): grpc.status {
  return deadlinePassed(call) ? grpc.status.DEADLINE_EXCEEDED : grpc.status.CANCELLED;
}

// Sampling seeds (the router fixes one per request, so a migrated stream draws the same tokens) come from a pool of
// random bytes refilled 128 seeds at a time: one CSPRNG call per 128 requests instead of one per request.
const SEED_POOL_BYTES = 8 * 128;
let seedPool = Buffer.alloc(0);
let seedOffset = 0;
function random64(): bigint {
  if (seedOffset + 8 > seedPool.length) { seedPool = randomBytes(SEED_POOL_BYTES); seedOffset = 0; }
  const v = seedPool.readBigUInt64BE(seedOffset);
  seedOffset += 8;
  return v;
}
function randomSeed(): string { return random64().toString(); }

/**
 * The ledger reservation id of one attempt of a request: the client's request id (which several requests in flight
 * may share: a retried call, an id reused per conversation) plus 64 random bits, so two requests never share, replace
 * or release each other's reservation. The router forwards it to the worker as the request's request_id, which is how
 * the worker names the reservation in its heartbeats (admitted / rejected / queued; worker/fleet.ts); the client's id
 * stays its prefix, so worker logs still lead back to it.
 */
export function reservationId(requestId: string): string {
  return `${requestId}/${random64().toString(36)}`;
}

export class Router {
  readonly config: RouterConfig;
  readonly id: string;
  port = 0;
  private readonly log: Logger;
  private readonly server: grpc.Server;
  private readonly ledger: Ledger;
  private readonly tokenizer: Tokenizer | undefined;
  private readonly clients = new Map<string, GenerationClient>();
  private snapshot: LedgerSnapshot | undefined;
  private lastShape: ModelShape | undefined;
  // the fleet's budgets, re-read with every snapshot (500 ms): a request costs no ledger round trip to resolve one
  private budgets: { all: Record<string, BudgetSpec>; def: string | null } | undefined;
  private liveRouters = 1;
  private degraded = false;
  // degraded-mode reservations made by this router: worker id -> reservation id -> pages and prompt tokens
  private readonly localReserved = new Map<string, Map<string, DegradedReservation>>();
  // streams being forwarded, by worker id: addr, and a function that abandons the stream (it then moves on)
  private readonly streams = new Map<string, Set<{ addr: string; abandon: (why: string) => void }>>();
  // worker id -> when a snapshot first missed that worker while streams were on it (Date.now() ms)
  private readonly missingSince = new Map<string, number>();
  /** the unusable fleet default last logged (name and spec), so it is logged once per change */
  private badDefaultLogged = '';
  /** the last refresh read the ledger (see abandonGoneWorkers) */
  private lastRefreshOk = true;
  private timers: NodeJS.Timeout[] = [];
  private metricsServer: http.Server | undefined;
  private closed = false;
  private readonly workerToken: string | undefined;
  private readonly serverCreds: grpc.ServerCredentials;
  private readonly workerCreds: grpc.ChannelCredentials;
  readonly registry = new client.Registry();
  private readonly m;
  // the requests counter's child per status code, so counting a request hashes no label set
  private readonly requestsByCode = new Map<grpc.status, { inc(): void }>();
  /** Called once per request that got a first token, with where its time went (benchmarks; unset in service). */
  onTiming: ((t: RequestTiming) => void) | undefined;

  private constructor(cfg: RouterConfig, log: Logger, ledger?: Ledger) {
    this.config = cfg;
    this.id = cfg.routerId ?? `router-${randomUUID().slice(0, 8)}`;
    this.log = log;
    const [namespace, fleet] = cfg.fleet.split('/');
    if (ledger) {
      this.ledger = ledger;
    } else {
      if (!cfg.redis) throw new Error('--redis: the router needs the fleet ledger (a redis:// URL)');
      let url = cfg.redis;
      if (cfg.redisPasswordFile) {
        const u = new URL(url);
        u.password = readFileSync(cfg.redisPasswordFile, 'utf8').trim();
        url = u.toString();
      }
      this.ledger = new RedisLedger({ redis: url, namespace, fleet, onError: (e) => this.onLedgerError(e) });
    }
    this.tokenizer = cfg.tokenizer ? Tokenizer.load(cfg.tokenizer) : undefined;
    const secret = (flag: string, file: string) => {
      try { return readFileSync(file); } catch (err) {
        throw new Error(`${flag}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)})`, { cause: err });
      }
    };
    const clientToken = cfg.authTokenFile ? secret('--auth-token-file', cfg.authTokenFile).toString('utf8').trim() : undefined;
    this.workerToken = cfg.workerTokenFile ? secret('--worker-token-file', cfg.workerTokenFile).toString('utf8').trim() : undefined;
    this.serverCreds = cfg.tlsCert && cfg.tlsKey
      ? grpc.ServerCredentials.createSsl(cfg.tlsClientCa ? secret('--tls-client-ca', cfg.tlsClientCa) : null,
        [{ cert_chain: secret('--tls-cert', cfg.tlsCert), private_key: secret('--tls-key', cfg.tlsKey) }], !!cfg.tlsClientCa)
      : grpc.ServerCredentials.createInsecure();
    this.workerCreds = cfg.workerTlsCa || cfg.workerTlsCert
      ? grpc.credentials.createSsl(cfg.workerTlsCa ? secret('--worker-tls-ca', cfg.workerTlsCa) : null,
        cfg.workerTlsKey ? secret('--worker-tls-key', cfg.workerTlsKey) : null,
        cfg.workerTlsCert ? secret('--worker-tls-cert', cfg.workerTlsCert) : null)
      : grpc.credentials.createInsecure();
    this.server = new grpc.Server({
      'grpc.max_receive_message_length': cfg.maxMessageBytes,
      'grpc.max_send_message_length': cfg.maxMessageBytes,
      interceptors: clientToken ? [bearerAuthInterceptor(clientToken, (method, why) => log.warn({ method, why }, 'call refused'))] : [],
    });
    const r = this.registry;
    this.m = {
      requests: new client.Counter({ name: 'kvfleet_router_requests_total', help: 'Generate calls by final status code', labelNames: ['code'], registers: [r] }),
      retries: new client.Counter({ name: 'kvfleet_router_retries_total', help: 'worker failures before the first token that led to another pick', registers: [r] }),
      migrations: new client.Counter({ name: 'kvfleet_router_migrations_total', help: 'streams moved to another worker after their first token', registers: [r] }),
      pauses: new client.Counter({ name: 'kvfleet_router_backpressure_pauses_total', help: 'times a worker stream was paused because its client stream was full (a client reading slower than tokens come)', registers: [r] }),
      degraded: new client.Gauge({ name: 'kvfleet_router_degraded', help: '1 while the ledger is unreachable and routing runs from the last snapshot', registers: [r] }),
      pick: new client.Histogram({ name: 'kvfleet_router_pick_seconds', help: 'time to place a request (pick + waiting for room)', buckets: [0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5], registers: [r] }),
      // what this router itself adds to a request's time to first token: handler start → worker call issued (token
      // ids: validation, budget, pick), plus first worker message in → handed to the client stream
      overhead: new client.Histogram({ name: 'kvfleet_router_overhead_seconds', help: 'time the router adds before the first token: tokenization, placement and forwarding (not the network hops or the worker)', buckets: [0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1, 1], registers: [r] }),
      ttft: new client.Histogram({ name: 'kvfleet_router_time_to_first_token_seconds', help: 'time from request to first streamed token', buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [r] }),
      tokenize: new client.Histogram({ name: 'kvfleet_router_tokenize_seconds', help: 'prompt tokenization time', buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05], registers: [r] }),
    };
  }

  /** Starts a router over the Redis ledger of cfg.redis, or over `ledger` when given (the in-memory ledger of a
   *  one-process local stack). */
  static async start(cfg: RouterConfig, log: Logger = pino({ name: 'kvfleet-router' }), ledger?: Ledger): Promise<Router> {
    const router = new Router(cfg, log, ledger);
    try {
      if (router.ledger instanceof RedisLedger) await router.ledger.ready(10_000);
    } catch (err) {
      await router.ledger.close();
      throw new Error(`router: the ledger at ${(cfg.redis ?? '').replace(/\/\/[^@]*@/, '//')} is unreachable: ${(err as Error).message}`, { cause: err });
    }
    await router.refresh();
    addGenerationService(router.server, { Generate: (call) => { void router.generate(call); } });
    addHealth(router.server, [SERVICE_NAMES.generation]);
    addReflection(router.server);
    router.port = await new Promise<number>((resolve, reject) => {
      router.server.bindAsync(`${cfg.host}:${cfg.port}`, router.serverCreds,
        (err, p) => (err ? reject(err) : resolve(p)));
    });
    router.timers.push(setInterval(() => { void router.refresh(); }, 500));
    if (cfg.metricsPort > 0) router.metricsServer = await router.serveMetrics(cfg.metricsPort, cfg.host);
    log.info({ router: router.id, port: router.port, fleet: cfg.fleet, policy: cfg.policy }, 'router listening');
    return router;
  }

  /** Keeps the snapshot (model shape, degraded mode) and the router registration fresh. */
  private async refresh(): Promise<void> {
    try {
      // one round trip: the four reads go out together (a pick sent meanwhile waits behind one answer, not three)
      const [routers, snapshot, all, def] = await Promise.all([this.ledger.registerRouter(this.id), this.ledger.snapshot(),
        this.ledger.listBudgets(), this.ledger.getDefaultBudget()]);
      this.liveRouters = routers;
      this.snapshot = snapshot;
      // a worker's absence counts only across consecutive good snapshots: after a failed refresh (Redis down or
      // restarting) workers are re-registering, and the time the ledger was out of sight proves nothing
      if (!this.lastRefreshOk) this.missingSince.clear();
      this.lastRefreshOk = true;
      this.budgets = { all, def };
      if (this.degraded) this.log.info('ledger reachable again: leaving degraded mode');
      this.setDegraded(false);
      this.localReserved.clear();
      this.abandonGoneWorkers(snapshot);
      // channels of workers gone from the ledger are closed, unless a stream still runs on one
      const live = new Set(this.snapshot.workers.map((w) => w.addr));
      for (const set of this.streams.values()) for (const s of set) live.add(s.addr);
      for (const [addr, c] of this.clients) if (!live.has(addr)) { c.close(); this.clients.delete(addr); }
    } catch (err) {
      this.lastRefreshOk = false;
      if (err instanceof LedgerError && err.code === 'unavailable') this.setDegraded(true);
      else this.log.warn({ err }, 'ledger refresh failed');
    }
  }

  /** A worker that streams run on and that has been absent from every snapshot for workerGoneMs left the ledger by
   *  its TTL (it stopped heartbeating: frozen, partitioned, killed without a word), or was removed: its streams are
   *  cancelled there and moved to other workers (mid-stream migration). The grace keeps a moment without workers (a
   *  Redis restart, workers re-registering) from moving healthy streams. */
  private abandonGoneWorkers(snapshot: LedgerSnapshot): void {
    const live = new Set(snapshot.workers.map((w) => w.worker_id));
    const now = Date.now();
    for (const id of [...this.missingSince.keys()]) if (live.has(id) || !this.streams.has(id)) this.missingSince.delete(id);
    for (const [id, set] of this.streams) {
      if (live.has(id)) continue;
      const since = this.missingSince.get(id) ?? now;
      this.missingSince.set(id, since);
      if (now - since < this.config.workerGoneMs) continue;
      this.log.warn({ worker: id, streams: set.size, missing_ms: now - since }, 'worker left the ledger: moving its streams');
      for (const s of [...set]) s.abandon(`worker ${id} left the ledger (no heartbeat for its TTL) ${now - since} ms ago`);
    }
  }

  private setDegraded(on: boolean): void {
    if (on && !this.degraded) this.log.warn('ledger unreachable: routing from the last snapshot (degraded mode)');
    this.degraded = on;
    this.m.degraded.set(on ? 1 : 0);
  }

  private onLedgerError(e: LedgerError): void {
    if (e.code === 'unavailable') this.setDegraded(true);
  }

  get isDegraded(): boolean { return this.degraded; }

  /** The fleet's model shape (every worker of a fleet serves one model). It is remembered across snapshots, so a
   *  moment with no live worker (a Redis restart, workers re-registering) waits for room instead of failing. */
  private async shape(deadline: number): Promise<ModelShape> {
    for (;;) {
      const w = this.snapshot?.workers.find((x) => !x.draining) ?? this.snapshot?.workers[0];
      if (w) this.lastShape = { L: w.num_layers, Hk: w.num_kv_heads, P: w.page_size };
      if (this.lastShape) return this.lastShape;
      if (Date.now() >= deadline) throw new RouterStatusError(grpc.status.RESOURCE_EXHAUSTED, 'no live worker in the fleet (retry later)');
      await new Promise((r) => setTimeout(r, 50));
      await this.refresh();
    }
  }

  private clientFor(addr: string): GenerationClient {
    let c = this.clients.get(addr);
    if (!c) {
      c = workerGenerationClient(addr, this.workerCreds, {
        'grpc.max_receive_message_length': this.config.maxMessageBytes,
        'grpc.max_send_message_length': this.config.maxMessageBytes,
        // a worker that stops answering (frozen, partitioned) fails its channel, and the streams on it move on;
        // grpc-js servers answer pings without policing them, so workers need no option for this
        'grpc.keepalive_time_ms': this.config.workerKeepaliveMs,
        'grpc.keepalive_timeout_ms': this.config.workerKeepaliveTimeoutMs,
        'grpc.keepalive_permit_without_calls': 1,
      });
      this.clients.set(addr, c);
    }
    return c;
  }

  /** The request's budget as an inline spec: a name the fleet allows, an inline spec, else the fleet default, by the
   *  selector and name rules the worker applies (ledger/budget-names.ts). */
  private async resolveBudget(req: GenerateRequest): Promise<BudgetSpec> {
    let choice: BudgetChoice;
    try {
      choice = budgetChoice(req.budget);
    } catch (err) {
      if (err instanceof BudgetSelectorError) throw new RouterStatusError(grpc.status.INVALID_ARGUMENT, err.message);
      throw err;
    }
    if (choice.kind === 'spec') return this.checkSpec(choice.spec, 'budget.spec');
    const name = choice.kind === 'name' ? choice.name : undefined;
    try {
      if (name !== undefined) {
        const spec = await this.namedBudget(name);
        if (spec) return spec;
        // the name stands for the fleet's default budget
      }
      const cached = this.budgets;
      if (cached && !this.degraded) return this.defaultSpec(cached.def, cached.def ? cached.all[cached.def] : undefined);
      const def = await this.ledger.getDefaultBudget();
      return this.defaultSpec(def, def ? await this.ledger.getBudget(def) : undefined);
    } catch (err) {
      if (err instanceof LedgerError && err.code === 'unavailable') {
        // degraded: the fleet default is the built-in one; a name other than the default's cannot be resolved
        if (name !== undefined && name !== DEFAULT_BUDGET_NAME) {
          throw new RouterStatusError(grpc.status.UNAVAILABLE, `budget '${name}' cannot be resolved while the ledger is unreachable`);
        }
        return { ...BUILTIN_DEFAULT_BUDGET } as BudgetSpec;
      }
      throw err;
    }
  }

  /** A budget name by the shared rules (lookupBudgetName): the stored budget's spec, undefined when the name means the
   *  fleet's default budget, NOT_FOUND when the fleet does not allow it. The cached budgets answer first; a name
   *  they do not know may have been allowed since the last refresh, so the ledger decides. */
  private async namedBudget(name: string): Promise<BudgetSpec | undefined> {
    const cached = this.budgets;
    if (cached && !this.degraded) {
      const r = lookupBudgetName(name, (n) => cached.all[n]);
      if (r.kind === 'stored') return this.checkSpec(r.entry, `budget '${name}'`);
      if (r.kind === 'default') return undefined;
    }
    const stored = await this.ledger.getBudget(name);
    const r = lookupBudgetName(name, () => stored);
    if (r.kind === 'stored') return this.checkSpec(r.entry, `budget '${name}'`);
    if (r.kind === 'default') return undefined;
    throw new RouterStatusError(grpc.status.NOT_FOUND, `budget '${name}' is not allowed in fleet ${this.config.fleet}`);
  }

  /** The fleet default budget `name` (stored as `spec`): as the worker takes it (worker/budgets.ts), a missing or
   *  unusable default is the built-in default budget, and an unusable one is logged once per change. */
  private defaultSpec(name: string | null | undefined, spec: BudgetSpec | null | undefined): BudgetSpec {
    if (!name || !spec) return { ...BUILTIN_DEFAULT_BUDGET } as BudgetSpec;
    try {
      return this.checkSpec(spec, `default budget '${name}'`);
    } catch (err) {
      if (!(err instanceof RouterStatusError)) throw err;
      const key = `${name}\u0000${JSON.stringify(spec)}`;
      if (this.badDefaultLogged !== key) {
        this.badDefaultLogged = key;
        this.log.warn({ default_budget: name, err: err.message }, 'the fleet default budget is unusable; using the built-in default');
      }
      return { ...BUILTIN_DEFAULT_BUDGET } as BudgetSpec;
    }
  }

  private checkSpec(spec: BudgetSpec, what: string): BudgetSpec {
    try {
      resolveBudgetSpec(spec);
      return spec;
    } catch (err) {
      if (err instanceof BudgetSpecError) throw new RouterStatusError(grpc.status.INVALID_ARGUMENT, `${what}: ${err.message}`);
      throw err;
    }
  }

  /** The longest prompt + new tokens the fleet serves, as the snapshot shows it: the largest max_model_len a live
   *  worker publishes (workers with a smaller one are passed over for longer requests); undefined when there is no
   *  snapshot or some live worker publishes none (only it can judge). */
  private fleetMaxModelLen(): number | undefined {
    const workers = this.snapshot?.workers ?? [];
    if (workers.length === 0) return undefined;
    let max = 0;
    for (const w of workers) {
      if (!w.max_model_len) return undefined;
      max = Math.max(max, w.max_model_len);
    }
    return max;
  }

  /** The new tokens a request of n prompt tokens is planned with (its footprint), checked as a worker checks them
   *  when the fleet's max_model_len is known: a prompt that leaves no room, or max_new_tokens beyond the room, is
   *  INVALID_ARGUMENT at once (no worker could ever serve it); an absent max_new_tokens is the default within the
   *  room, as the worker takes it. */
  private newTokens(n: number, maxNew: number | undefined, promptField: string): number {
    const maxLen = this.fleetMaxModelLen();
    if (maxLen === undefined) return maxNew ?? DEFAULT_MAX_NEW_TOKENS;
    try {
      return plannedNewTokens(n, maxNew, maxLen, promptField);
    } catch (err) {
      if (err instanceof RequestError) throw new RouterStatusError(grpc.status.INVALID_ARGUMENT, err.message);
      throw err;
    }
  }

  /** A request whose footprint exceeds the total pages of every live worker can never be placed: INVALID_ARGUMENT
   *  at once, as the worker answers it, instead of RESOURCE_EXHAUSTED after maxQueueMs. The snapshot is read again
   *  first, so a larger worker that joined in the last refresh interval is seen; with no live worker known, the
   *  request waits for one as before. */
  private async checkCanFit(need: number, n: number, m: number, spec: BudgetSpec): Promise<void> {
    const tooSmall = () => {
      const workers = this.snapshot?.workers ?? [];
      return workers.length > 0 && workers.every((w) => w.total_pages < need);
    };
    if (!tooSmall()) return;
    if (!this.degraded) await this.refresh();
    if (!tooSmall()) return;
    const largest = Math.max(...this.snapshot!.workers.map((w) => w.total_pages));
    throw new RouterStatusError(grpc.status.INVALID_ARGUMENT, `prompt: can never fit: ${n} prompt tokens + max_new_tokens `
      + `${m} under budget ${spec.method ?? 'METHOD_UNSPECIFIED'} need ${need} KV pages; the largest worker of fleet `
      + `${this.config.fleet} has ${largest}`);
  }

  /** Picks a worker with room and reserves `need` pages there under reservation id `rid` (reservationId), waiting up
   *  to maxQueueMs, or null as soon as `gone()` (the client went away); degraded mode picks from the last snapshot. promptTokens go with the reservation (the prefill
   *  work promised to the worker, which least-prefill weighs). */
  private async place(need: number, promptTokens: number, rid: string, exclude: Set<string>, gone: () => boolean): Promise<PickResult | null> {
    const t0 = performance.now();
    const deadline = Date.now() + this.config.maxQueueMs;
    let wait = 10;
    for (;;) {
      // a client that went away while its request waited stops the wait: nothing is reserved for it
      if (gone()) return null;
      let picked: PickResult | null = null;
      try {
        if (!this.degraded) {
          picked = await this.ledger.pick(need, rid, { policy: this.config.policy as PickPolicy,
            ttlMs: this.config.reservationTtlMs, promptTokens, exclude: [...exclude] });
        }
      } catch (err) {
        if (!(err instanceof LedgerError && err.code === 'unavailable')) throw err;
        this.setDegraded(true);
      }
      if (this.degraded) picked = this.pickDegraded(need, promptTokens, rid, exclude);
      if (picked) {
        this.m.pick.observe((performance.now() - t0) / 1000);
        return picked;
      }
      if (Date.now() >= deadline) {
        throw new RouterStatusError(grpc.status.RESOURCE_EXHAUSTED,
          `no worker has room for ${need} KV pages right now (waited ${this.config.maxQueueMs} ms); retry later`);
      }
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(100, wait * 2);
    }
  }

  /** Degraded pick from the last snapshot (chooseDegraded), reserved locally until released. */
  private pickDegraded(need: number, promptTokens: number, rid: string, exclude: Set<string>): PickResult | null {
    const best = chooseDegraded(this.snapshot?.workers ?? [], need, this.config.policy as PickPolicy, this.liveRouters,
      this.localReserved, exclude);
    if (!best) return null;
    let m = this.localReserved.get(best.w.worker_id);
    if (!m) this.localReserved.set(best.w.worker_id, (m = new Map()));
    m.set(rid, { pages: need, promptTokens });
    return { worker_id: best.w.worker_id, addr: best.w.addr, effective_free_after: best.room - need };
  }

  private async releaseQuietly(workerId: string, rid: string): Promise<void> {
    this.localReserved.get(workerId)?.delete(rid);
    try { await this.ledger.release(workerId, rid); } catch { /* expires on its own */ }
  }

  private async generate(call: grpc.ServerWritableStream<GenerateRequest, GenerateResponse>): Promise<void> {
    const t0 = performance.now();
    let code = grpc.status.OK;
    try {
      code = await this.serve(call, t0);
    } catch (err) {
      code = err instanceof RouterStatusError ? err.code : grpc.status.INTERNAL;
      const message = err instanceof Error ? err.message : String(err);
      if (code === grpc.status.INTERNAL) this.log.error({ err }, 'generate failed');
      // a client that went away never sees this answer: it is counted by why the client went
      if (call.cancelled) code = clientGoneCode(call); else call.emit('error', { code, details: message });
    } finally {
      let counter = this.requestsByCode.get(code);
      if (!counter) this.requestsByCode.set(code, (counter = this.m.requests.labels(grpc.status[code])));
      counter.inc();
    }
  }

  /** Serves one request; returns the status it ended with when no error was thrown: OK, or CANCELLED /
   *  DEADLINE_EXCEEDED when the client went away (cancelled, or its deadline passed) before the end. */
  private async serve(call: grpc.ServerWritableStream<GenerateRequest, GenerateResponse>, t0: number): Promise<grpc.status> {
    const req = call.request;
    const requestId = req.request_id || randomUUID();
    const timing: RequestTiming = { received: t0, tokenizeMs: 0, pickStart: 0, placed: 0, forwarded: 0, firstIn: 0, firstOut: 0, attempts: 0 };
    let prompt: number[];
    if (req.prompt === 'token_ids') {
      prompt = req.token_ids?.ids ?? [];
    } else if (req.prompt === 'text') {
      if (!this.tokenizer) throw new RouterStatusError(grpc.status.INVALID_ARGUMENT, 'text: this router has no tokenizer (--tokenizer); send token_ids');
      const tt = performance.now();
      prompt = this.tokenizer.encode(req.text ?? '');
      const ms = performance.now() - tt;
      this.m.tokenize.observe(ms / 1000);
      timing.tokenizeMs = ms;
    } else {
      throw new RouterStatusError(grpc.status.INVALID_ARGUMENT, 'prompt: give text or token_ids');
    }
    if (prompt.length === 0) throw new RouterStatusError(grpc.status.INVALID_ARGUMENT, 'prompt: is empty');
    const sampling = { ...(req.sampling ?? {}) };
    // the router fixes the seed, so a migrated stream draws the same tokens on the next worker
    if (sampling.seed === undefined) sampling.seed = randomSeed();
    if (sampling.max_new_tokens !== undefined && sampling.max_new_tokens <= 0) {
      throw new RouterStatusError(grpc.status.INVALID_ARGUMENT, 'sampling.max_new_tokens: must be > 0');
    }
    const spec = await this.resolveBudget(req);
    const shape = await this.shape(Date.now() + this.config.maxQueueMs);
    const m = this.newTokens(prompt.length, sampling.max_new_tokens, req.prompt === 'text' ? 'text' : 'token_ids.ids');
    const need = requestFootprintPages(shape, spec, prompt.length, m);
    await this.checkCanFit(need, prompt.length, m, spec);
    const streamed: number[] = [...(req.resume_token_ids ?? [])];
    // workers whose own max_model_len is too small for this request (a mixed fleet, or a rollout that changes it):
    // they would refuse it with a final INVALID_ARGUMENT although a larger worker can serve it
    const exclude = new Set((this.snapshot?.workers ?? [])
      .filter((w) => w.max_model_len && prompt.length + m > w.max_model_len).map((w) => w.worker_id));
    let firstToken = true;
    for (let attempt = 1; ; attempt++) {
      const pickStart = performance.now();
      const rid = reservationId(requestId);
      const picked = await this.place(need, prompt.length, rid, exclude, () => call.cancelled);
      if (!picked) return clientGoneCode(call);
      const placed = performance.now();
      let forwarded = 0;
      const outcome = await this.forward(call, picked, {
        request_id: rid, token_ids: { ids: prompt }, sampling, budget: { spec }, resume_token_ids: streamed,
      }, () => { forwarded = performance.now(); }, (tokens) => {
        if (firstToken && tokens.length > 0) {
          firstToken = false;
          const now = performance.now();
          this.m.ttft.observe((now - t0) / 1000);
          timing.pickStart = pickStart; timing.placed = placed; timing.forwarded = forwarded; timing.firstIn = now; timing.attempts = attempt;
        }
        streamed.push(...tokens);
      }, () => {
        // the first token has been handed to the client stream: observe and report, once
        if (timing.firstIn > 0 && timing.firstOut === 0) {
          timing.firstOut = performance.now();
          this.m.overhead.observe((timing.forwarded - timing.received + timing.firstOut - timing.firstIn) / 1000);
          this.onTiming?.(timing);
        }
      });
      await this.releaseQuietly(picked.worker_id, rid);
      if (outcome.kind === 'done') return grpc.status.OK;
      if (outcome.kind === 'cancelled') return clientGoneCode(call);
      if (outcome.kind === 'final') throw new RouterStatusError(outcome.code, outcome.message);
      // the request moves on from this worker; only an unreachable one leaves the ledger (until its next heartbeat):
      // a full, draining or alive-but-failing worker is flagged by its own heartbeats, and serves other requests
      exclude.add(picked.worker_id);
      if (outcome.kind === 'unreachable') {
        try { await this.ledger.removeWorker(picked.worker_id); } catch { /* stale entries expire */ }
      }
      if (streamed.length > (req.resume_token_ids?.length ?? 0)) this.m.migrations.inc(); else this.m.retries.inc();
      this.log.warn({ request: requestId, reservation: rid, worker: picked.worker_id, attempt, tokens: streamed.length, err: outcome.message },
        'worker failed; moving the request');
      if (attempt >= this.config.maxAttempts) {
        throw new RouterStatusError(grpc.status.UNAVAILABLE, `request ${requestId}: ${attempt} workers failed (last: ${outcome.message}); retry`);
      }
    }
  }

  /** Streams one worker's answer to the client. How a worker error is taken (classifyWorkerError): final (the
   *  request is wrong: answered as it is), busy (the worker is alive but full, draining or not ready), failed (this
   *  request failed there) or unreachable (the channel to the worker failed: the only case that takes the worker out
   *  of the ledger).
   *
   *  Backpressure: when the client stream's buffer is full (call.write returns false: a client reading slower than
   *  tokens come), the worker stream is paused until the client stream drains. grpc-js then stops reading that HTTP/2
   *  stream, its receive window fills, the worker's own write returns false and the worker pauses this request (its
   *  decodes wait, the batch goes on). What the router holds per stream is bounded by the two streams' buffers and
   *  windows, and only this stream waits: Node's HTTP/2 gives the connection window back as data arrives, so other
   *  streams on the same worker channel go on. A paused stream keeps every liveness check: a transport failure or
   *  keepalive timeout, a cancel (client gone, its deadline, the worker left the ledger) ends the worker call with a
   *  non-OK status, which grpc-js reports at once, paused or not; the worker messages still buffered then were
   *  never written to the client, so they are not in the resumed tokens either, and they are dropped. */
  private forward(call: grpc.ServerWritableStream<GenerateRequest, GenerateResponse>, picked: PickResult,
    wreq: GenerateRequest, onIssued: () => void, onTokens: (t: number[]) => void, onWritten: () => void):
    Promise<{ kind: 'done' } | { kind: 'cancelled' } | { kind: 'final'; code: grpc.status; message: string } |
      { kind: 'failed' | 'busy' | 'unreachable'; message: string }> {
    type Outcome = Awaited<ReturnType<Router['forward']>>;
    return new Promise((resolve) => {
      // the client went away while the request was being placed: nothing to forward (the caller releases)
      if (call.cancelled) { resolve({ kind: 'cancelled' }); return; }
      const deadline = call.getDeadline();
      const opts: grpc.CallOptions = deadline instanceof Date || typeof deadline === 'number' ? { deadline } : {};
      const md = new grpc.Metadata();
      if (this.workerToken) md.set('authorization', `Bearer ${this.workerToken}`);
      const wc = this.clientFor(picked.addr);
      const ws = wc.Generate(wreq, md, opts);
      onIssued();
      let finished = false;
      // set once the outcome is decided: what the worker stream does later is not forwarded (nor resumed)
      let over = false;
      let paused = false;
      const onDrain = () => { paused = false; if (!over) ws.resume(); };
      const pause = () => {
        if (paused) return;
        paused = true;
        this.m.pauses.inc();
        ws.pause();
        call.once('drain', onDrain);
      };
      // while it runs, the stream can be abandoned (its worker left the ledger): cancelled there, moved on
      let abandoned: string | undefined;
      const entry = { addr: picked.addr, abandon: (why: string) => { abandoned = why; ws.cancel(); } };
      let set = this.streams.get(picked.worker_id);
      if (!set) this.streams.set(picked.worker_id, (set = new Set()));
      set.add(entry);
      const end = (outcome: Outcome) => {
        if (over) return;
        over = true;
        call.removeListener('cancelled', onCancel);
        call.removeListener('drain', onDrain);
        const s = this.streams.get(picked.worker_id);
        s?.delete(entry);
        if (s?.size === 0) this.streams.delete(picked.worker_id);
        resolve(outcome);
      };
      // the client went away (cancelled, or its deadline passed): the worker call goes too, paused or not
      const onCancel = () => { ws.cancel(); end({ kind: 'cancelled' }); };
      call.on('cancelled', onCancel);
      ws.on('data', (msg: GenerateResponse) => {
        if (over) return;
        onTokens(msg.token_ids ?? []);
        const room = call.write(msg);
        onWritten();
        if (msg.finish_reason && msg.finish_reason !== 'FINISH_REASON_UNSPECIFIED') finished = true;
        if (!room) pause();
      });
      ws.on('error', (err: grpc.ServiceError) => {
        // the worker call carries the client's deadline: its expiry is the client's, not a worker failure
        if (call.cancelled || (err.code === grpc.status.DEADLINE_EXCEEDED && deadlinePassed(call))) { end({ kind: 'cancelled' }); return; }
        if (abandoned !== undefined) { end({ kind: 'unreachable', message: abandoned }); return; }
        const kind = classifyWorkerError(err.code, wc.getChannel().getConnectivityState(false));
        if (kind === 'final') end({ kind, code: err.code, message: err.details });
        else end({ kind, message: `${grpc.status[err.code]}: ${err.details}` });
      });
      ws.on('end', () => {
        if (finished) { if (!over) call.end(); end({ kind: 'done' }); } else end({ kind: 'failed', message: 'stream ended without a finish reason' });
      });
      // a stream that moved here from another worker may find the client stream still full
      if (call.writableNeedDrain) pause();
    });
  }

  private serveMetrics(port: number, host: string): Promise<http.Server> {
    const srv = http.createServer((req, res) => {
      if (req.url === '/metrics') {
        this.registry.metrics().then((body) => {
          res.writeHead(200, { 'content-type': this.registry.contentType });
          res.end(body);
        }, () => { res.writeHead(500); res.end(); });
      } else if (req.url === '/healthz') {
        res.writeHead(200); res.end(this.degraded ? 'degraded\n' : 'ok\n');
      } else { res.writeHead(404); res.end(); }
    });
    return new Promise((resolve, reject) => { srv.once('error', reject); srv.listen(port, host, () => resolve(srv)); });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    await new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
    for (const c of this.clients.values()) c.close();
    try { await this.ledger.unregisterRouter(this.id); } catch { /* it ages out */ }
    await this.ledger.close();
    await new Promise<void>((resolve) => (this.metricsServer ? this.metricsServer.close(() => resolve()) : resolve()));
  }
}
