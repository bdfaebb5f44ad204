// The worker process: loads the model and tokenizer, owns one Scheduler (which owns the Engine), and serves
// kvfleet.v1.Generation, kvfleet.v1.Worker, grpc.health.v1.Health and reflection. Errors become gRPC statuses
// here and nowhere else (STYLE.md 10); every error answer is followed by a return.
//
// In a fleet (--redis/--fleet) it also heartbeats into the ledger and takes its budgets and drain orders from it
// (worker/fleet.ts); it serves Prometheus metrics (worker/metrics.ts), and optionally TLS and bearer-token auth
// (worker/security.ts).
//
// Reservation ids: a request's GenerateRequest.request_id IS its ledger reservation id (the router picks with it).
// The worker reports it `admitted` once its pages are committed, `rejected` when it is refused or leaves the queue
// (cancel, deadline), and `queued` while it waits; an id the worker assigned itself has no reservation and is
// reported anyway (a no-op in the ledger).
import { randomUUID } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { pino, type Logger } from 'pino';
import {
  addGenerationService, addHealth, addReflection, addWorkerService, bindInsecure, SERVICE_NAMES,
  type Capacity, type GenerateRequest, type GenerateResponse, type GenerationHandlers, type WorkerHandlers,
} from '../proto/index.ts';
import { BadArgumentError, BadModelError, deviceInfo, Engine, OutOfPagesError, type EngineOptions,
  type SeqStats } from './engine.ts';
import { fleetName, WorkerConfigError, type Identity, type WorkerConfig } from './config.ts';
import { TextStream } from './detok.ts';
import { DEADLINE_SLACK_MS, parseGenerateRequest, RequestError } from './request.ts';
import { DrainingError, QueueFullError, Scheduler, type CapacitySnapshot, type FinishReason } from './scheduler.ts';
import { Tokenizer } from './tokenizer.ts';
import { BudgetsUnavailableError } from './budgets.ts';
import { FleetMember } from './fleet.ts';
import { WorkerMetrics } from './metrics.ts';
import { bearerAuthInterceptor, readSecretFile, serverCredentials } from './security.ts';
import type { Ledger } from '../ledger/index.ts';


/** grpc.max_receive_message_length: larger requests are refused by grpc-js with RESOURCE_EXHAUSTED. */
export const MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface RunningWorker {
  readonly port: number;
  /** host:port the server is bound to */
  readonly address: string;
  /** the address published in the ledger: POD_IP:port, else 127.0.0.1:port for a wildcard host, else host:port */
  readonly advertisedAddress: string;
  readonly workerId: string;
  /** the fleet membership (ledger heartbeat, budgets), when --redis/--fleet are set */
  readonly fleet: FleetMember | undefined;
  readonly metrics: WorkerMetrics;
  /** the bound Prometheus port, undefined when --metrics-port is 0 */
  readonly metricsPort: number | undefined;
  readonly scheduler: Scheduler;
  readonly engine: Engine;
  readonly tokenizer: Tokenizer;
  readonly maxModelLen: number;
  /** Worker.Drain: stop admitting (new requests UNAVAILABLE), health NOT_SERVING, an immediate heartbeat with
   *  draining=1 (whose delivery the returned promise awaits); resolves with the running count. */
  drain(): Promise<number>;
  /** Takes a drain order back (the operator's undrain order): admits again, health SERVING, an immediate heartbeat
   *  with draining=0. Resolves false, changing nothing, once shutdown has begun or when the drain came from
   *  Worker.Drain: SIGTERM's and an admin's drains are never taken back by the operator. */
  undrain(): Promise<boolean>;
  readonly draining: boolean;
  /**
   * Graceful stop (SIGTERM): drain, let running and queued work finish for up to graceMs (default
   * --drain-timeout-ms), cancel the rest, stop the server, leave the ledger (removeWorker), close the engine.
   */
  shutdown(opts?: { graceMs?: number }): Promise<void>;
}

export interface StartOptions {
  logger?: Logger;
  // --- in-process ledger (kvfleet up without Redis) ---
  /** join the fleet of this ledger instance (its namespace/fleet) instead of --redis/--fleet: the in-memory ledger
   *  a one-process local stack shares between its router and workers. The caller owns it and closes it. */
  ledger?: Ledger;
  // --- end in-process ledger ---
}

/** Pool size for the engine from the options (config.ts documents the defaults). */
export function poolOptions(cfg: WorkerConfig, modelDir: string): Pick<EngineOptions, 'numPages' | 'kvMemoryBytes'> {
  if (cfg.numPages !== undefined) return { numPages: cfg.numPages };
  if (cfg.kvMemory !== undefined) return { kvMemoryBytes: cfg.kvMemory };
  let cuda = false, total = 0;
  try { const d = deviceInfo(); cuda = d.cudaUsable; total = d.totalMemory; } catch { /* no addon info: CPU */ }
  if (cuda) {
    const f = cfg.kvMemoryFraction ?? 0.9;
    let weights = 0;
    for (const f2 of readdirSync(modelDir)) if (f2.endsWith('.safetensors')) weights += statSync(path.join(modelDir, f2)).size;
    return { kvMemoryBytes: Math.max(1, Math.floor(f * total - weights)) };
  }
  return { kvMemoryBytes: Math.max(1, Math.floor((cfg.kvMemoryFraction ?? 0.5) * os.freemem())) };
}

function finishName(reason: FinishReason): 'LENGTH' | 'STOP' | 'EOS' { return reason; }

function kvStats(s: SeqStats) {
  return {
    kept_tokens: String(s.keptTokens), full_tokens: String(s.fullTokens),
    min_head_tokens: s.minHeadTokens, max_head_tokens: s.maxHeadTokens, pages: s.pages, peak_pages: s.peakPages,
  };
}

/** Error classes → gRPC status, at the edge only. */
function toStatus(err: unknown): { code: grpc.status; details: string } {
  const details = err instanceof Error ? err.message : String(err);
  if (err instanceof RequestError) {
    return { code: err.code === 'NOT_FOUND' ? grpc.status.NOT_FOUND : grpc.status.INVALID_ARGUMENT, details };
  }
  if (err instanceof BadArgumentError) return { code: grpc.status.INVALID_ARGUMENT, details };
  if (err instanceof QueueFullError || err instanceof OutOfPagesError) return { code: grpc.status.RESOURCE_EXHAUSTED, details };
  if (err instanceof DrainingError || err instanceof BudgetsUnavailableError) return { code: grpc.status.UNAVAILABLE, details };
  return { code: grpc.status.INTERNAL, details };
}

/** The ledger address: POD_IP:port in a pod; locally 127.0.0.1:port for a wildcard bind, else host:port. */
export function advertisedAddress(cfg: WorkerConfig & Identity, port: number): string {
  const host = cfg.podIp ?? (['0.0.0.0', '::', '[::]', ''].includes(cfg.host) ? '127.0.0.1' : cfg.host);
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}

export async function startWorker(cfg: WorkerConfig & Identity, opts: StartOptions = {}): Promise<RunningWorker> {
  const log = opts.logger ?? pino({ level: cfg.logLevel, base: { component: 'worker' } }, pino.destination(2));
  // Files named by options are read first, so a bad path fails before the model loads. Their contents are secrets:
  // they are passed on, never logged.
  const authToken = cfg.authTokenFile !== undefined ? readSecretFile('authTokenFile', cfg.authTokenFile) : undefined;
  const redisPassword = cfg.redisPasswordFile !== undefined ? readSecretFile('redisPasswordFile', cfg.redisPasswordFile) : undefined;
  const credentials = serverCredentials(cfg);
  const modelDir = path.resolve(cfg.model);
  const tokenizer = Tokenizer.load(modelDir);
  let engine: Engine;
  try {
    engine = await Engine.load(modelDir, { ...poolOptions(cfg, modelDir), pageSize: cfg.pageSize, kvDtype: cfg.kvDtype });
  } catch (err) {
    if (err instanceof BadModelError) throw new WorkerConfigError(`--model (KVFLEET_MODEL): ${err.message}`);
    throw err;
  }
  const info = engine.info;
  log.info({ backend: info.backend, ops: info.ops, architecture: info.architecture, layers: info.numLayers,
    weightDtype: info.weightDtype }, 'engine loaded');
  if (cfg.maxModelLen !== undefined && cfg.maxModelLen > info.maxPositionEmbeddings) {
    engine.close();
    throw new WorkerConfigError(`--max-model-len (KVFLEET_MAX_MODEL_LEN): ${cfg.maxModelLen} exceeds the model's `
      + `max_position_embeddings ${info.maxPositionEmbeddings}`);
  }
  const maxModelLen = cfg.maxModelLen ?? info.maxPositionEmbeddings;
  let fleet: FleetMember | undefined;
  let draining = false;
  // the capacity every reader shares (GetCapacity, metrics, heartbeats): reserved pages are the ledger's Σ
  // reservations on this worker once a heartbeat has reported them, else the footprints queued here
  const snapshot = (): CapacitySnapshot => {
    const c = scheduler.capacity();
    const ledgerReserved = fleet?.reservedPages;
    return ledgerReserved !== undefined ? { ...c, reservedPages: ledgerReserved } : c;
  };
  const metrics = new WorkerMetrics({ capacity: snapshot, draining: () => draining || scheduler.draining });
  const scheduler = new Scheduler(engine, {
    admission: cfg.admission, maxRunning: cfg.maxRunning, maxQueue: cfg.maxQueue,
    maxPrefillTokens: cfg.maxPrefillTokens, logger: log,
    hooks: {
      admitted: (id) => fleet?.admitted(id),
      preempted: () => metrics.preempted(),
      step: (ms, sequences) => metrics.step(ms, sequences),
    },
  });

  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_RECEIVE_MESSAGE_BYTES,
    ...(authToken !== undefined ? {
      interceptors: [bearerAuthInterceptor(authToken, (method, why) => {
        metrics.request('UNAUTHENTICATED');
        log.warn({ method, why }, 'call refused: UNAUTHENTICATED');
      })],
    } : {}),
  });
  let workerId = '';
  // requests accepted by the scheduler and not ended: a drain timeout answers each of them UNAVAILABLE
  const live = new Map<object, (err: Error) => void>();

  const generation: GenerationHandlers = {
    Generate(call: grpc.ServerWritableStream<GenerateRequest, GenerateResponse>) {
      const req = call.request;
      const requestId = req.request_id || randomUUID();
      const rlog = log.child({ request_id: requestId });
      // the id (assigned here when the client sent none) travels back in the response headers
      const md = new grpc.Metadata();
      md.set('x-kvfleet-request-id', requestId);
      call.sendMetadata(md);
      let ended = false;
      const liveKey = {};  // this request's entry in `live`
      const fail = (err: unknown) => {
        if (ended) return;
        ended = true;
        live.delete(liveKey);
        const st = toStatus(err);
        fleet?.rejected(requestId);
        metrics.request(grpc.status[st.code]);
        rlog.info({ code: grpc.status[st.code], details: st.details }, 'request refused');
        call.emit('error', st);
      };
      if (draining || scheduler.draining) { fail(new DrainingError('the worker is draining and admits no new requests')); return; }
      let parsed;
      try {
        parsed = parseGenerateRequest(req, { tokenizer, vocabSize: info.vocabSize, maxModelLen, budgets: fleet?.budgets });
      } catch (err) { fail(err); return; }
      const fp = scheduler.footprint(parsed.spec, parsed.prompt.length, parsed.maxNewTokens);
      if (fp > scheduler.totalPages) {
        fail(new RequestError('INVALID_ARGUMENT', 'prompt', `can never fit: ${parsed.prompt.length} prompt tokens + `
          + `max_new_tokens ${parsed.maxNewTokens} under budget ${parsed.spec.method} need ${fp} pages; the pool has `
          + `${scheduler.totalPages}`));
        return;
      }
      const text = new TextStream(tokenizer, parsed.stop, parsed.resume);
      const t0 = Date.now();
      let lastToken = 0;
      let deadlineTimer: NodeJS.Timeout | undefined;
      // backpressure: once call.write reports the stream's buffer full (a client reading slower than tokens come),
      // this request's decodes wait until it drains; a bounded buffer per stream, the batch goes on
      let paused = false;
      // ... but not forever: a client that reads nothing for --stall-timeout-ms gives its pages back (ABORTED)
      let stallTimer: NodeJS.Timeout | undefined;
      const stalled = () => {
        if (!paused || !cancel('ABORTED')) return;
        call.emit('error', { code: grpc.status.ABORTED, details: `the client read nothing for ${cfg.stallTimeoutMs} ms while its `
          + 'stream buffer was full (--stall-timeout-ms); the request was stopped to free its KV pages' });
      };
      let handle: ReturnType<typeof scheduler.submit>;
      try {
        handle = scheduler.submit({
          requestId, prompt: parsed.prompt, resume: parsed.resume, spec: parsed.spec, budget: parsed.budget,
          stopAfterResume: text.stoppedInPrime,
          sampling: {
            maxNewTokens: parsed.maxNewTokens, seed: parsed.seed, ignoreEos: parsed.ignoreEos,
            ...(parsed.temperature !== undefined ? { temperature: parsed.temperature } : {}),
            ...(parsed.topP !== undefined ? { topP: parsed.topP } : {}),
            ...(parsed.topK !== undefined ? { topK: parsed.topK } : {}),
          },
        }, {
          token(id) {
            const now = performance.now();
            if (lastToken === 0) metrics.firstToken((Date.now() - t0) / 1000); else metrics.interToken((now - lastToken) / 1000);
            lastToken = now;
            metrics.token();
            const r = text.push(id);
            if (!ended && !call.cancelled && !call.write({ token_ids: [id], text: r.text, worker_id: workerId }) && !paused) {
              paused = true;
              if (cfg.stallTimeoutMs > 0) stallTimer = setTimeout(stalled, cfg.stallTimeoutMs);
              call.once('drain', () => { paused = false; clearTimeout(stallTimer); if (!ended) handle.resume(); });
            }
            return r.stopped;
          },
          paused: () => paused,
          finish(reason, stats, generated) {
            clearTimeout(stallTimer);
            if (ended) return;
            ended = true;
            live.delete(liveKey);
            clearTimeout(deadlineTimer);
            metrics.finished(stats.keptTokens, stats.fullTokens, parsed.prompt.length);
            if (call.cancelled) return;
            metrics.request('OK');
            call.write({
              token_ids: [], text: text.flush(), finish_reason: finishName(reason), worker_id: workerId, seed: parsed.seed,
              usage: { prompt_tokens: parsed.prompt.length, completion_tokens: generated.length },
              kv_stats: kvStats(stats),
            });
            call.end();
            rlog.info({ finish: reason, prompt_tokens: parsed.prompt.length, completion_tokens: generated.length,
              kept_tokens: stats.keptTokens, peak_pages: stats.peakPages, ms: Date.now() - t0 }, 'request done');
          },
          fail(err) { clearTimeout(deadlineTimer); clearTimeout(stallTimer); fail(err); },
        });
      } catch (err) { fail(err); return; }
      rlog.debug({ prompt_tokens: parsed.prompt.length, max_new_tokens: parsed.maxNewTokens, footprint: fp }, 'queued');
      live.set(liveKey, (err: Error) => { if (ended) return; clearTimeout(deadlineTimer); handle.cancel(); fail(err); });
      // ends the request before its finish, once: pages back, the outcome counted; false when it had already ended
      const cancel = (code: 'CANCELLED' | 'DEADLINE_EXCEEDED' | 'ABORTED'): boolean => {
        clearTimeout(stallTimer);
        if (ended) return false;
        ended = true;
        live.delete(liveKey);
        clearTimeout(deadlineTimer);
        if (code === 'ABORTED') {
          rlog.warn({ stall_timeout_ms: cfg.stallTimeoutMs }, 'request stopped: its client read nothing while its stream buffer was full');
        } else {
          rlog.info({ code }, code === 'CANCELLED' ? 'request cancelled' : 'request cancelled: deadline exceeded');
        }
        metrics.request(code);
        handle.cancel();
        fleet?.rejected(requestId);  // a queued request's reservation goes now; a running one's is already gone
        return true;
      };
      const deadline = call.getDeadline();
      const deadlineAt = deadline instanceof Date ? deadline.getTime() : Number(deadline);  // Infinity: none
      // grpc-js answers DEADLINE_EXCEEDED itself when the deadline passes, then reports the call cancelled: a
      // cancellation at the deadline (its timer may fire a few ms before Date.now() reaches it) is the deadline's
      const onCancelled = () => cancel(Date.now() >= deadlineAt - DEADLINE_SLACK_MS ? 'DEADLINE_EXCEEDED' : 'CANCELLED');
      call.on('cancelled', onCancelled);
      // 'cancelled' is emitted once: a call cancelled before the listener was there would never be seen, and the
      // request would run to the end holding its pages
      if (call.cancelled) onCancelled();
      // this timer frees the request's pages at the moment grpc-js answers DEADLINE_EXCEEDED
      const ms = deadlineAt - Date.now();
      if (!ended && Number.isFinite(ms)) deadlineTimer = setTimeout(() => cancel('DEADLINE_EXCEEDED'), Math.max(0, ms));
    },
  };

  const capacity = (): Capacity => {
    const c = snapshot();
    return {
      worker_id: workerId, total_pages: String(c.totalPages), free_pages: String(c.freePages),
      reserved_pages: String(c.reservedPages), page_size: c.pageSize, num_layers: c.numLayers,
      num_kv_heads: c.numKvHeads, running: c.running, waiting: c.waiting, draining: draining || scheduler.draining,
    };
  };
  const health = { set: (_s: 'SERVING' | 'NOT_SERVING') => { /* replaced once the server exists */ } };
  // who drained the worker: only the operator's own drain order may be taken back by its undrain order (not an
  // admin's Worker.Drain call, not SIGTERM)
  let drainedBy: 'order' | 'rpc' | 'shutdown' | undefined;
  const drain = async (by: 'order' | 'rpc' | 'shutdown' = 'rpc'): Promise<number> => {
    if (!draining) log.info({ running: scheduler.capacity().running, by }, 'draining: no new requests are admitted');
    if (drainedBy !== 'rpc' && drainedBy !== 'shutdown') drainedBy = by;
    draining = true;
    scheduler.stopAdmitting();
    health.set('NOT_SERVING');
    await fleet?.heartbeatNow();  // draining=1 in the ledger now, not at the next period
    return scheduler.capacity().running;
  };
  let stopping: Promise<void> | undefined;
  // by 'order' (the operator's undrain order): takes back only a drain order; by 'rpc' (Worker.Undrain, an admin):
  // any drain but SIGTERM's
  const undrain = async (by: 'order' | 'rpc' = 'order'): Promise<boolean> => {
    if (stopping !== undefined) {
      log.info({ by }, 'undrain ignored: the worker is shutting down');
      return false;
    }
    if (!draining) return true;
    if (by === 'order' && drainedBy !== 'order') {
      log.info('undrain order ignored: the worker was drained through Worker.Drain, not by a drain order');
      return false;
    }
    if (!scheduler.resumeAdmitting()) return false;
    log.info('undrained: admitting new requests again');
    draining = false;
    drainedBy = undefined;
    health.set('SERVING');
    await fleet?.heartbeatNow();  // draining=0 in the ledger (and back in the pick index) now
    return true;
  };
  const workerHandlers: WorkerHandlers = {
    GetCapacity(_call, cb) { cb(null, capacity()); },
    Drain(_call, cb) { void drain().then((running) => cb(null, { running })); },
    Undrain(_call, cb) { void undrain('rpc').then((admitting) => cb(null, { admitting })); },
  };

  addGenerationService(server, generation);
  addWorkerService(server, workerHandlers);
  const h = addHealth(server, [SERVICE_NAMES.generation, SERVICE_NAMES.worker]);
  health.set = (s) => h.set(s);
  addReflection(server);
  let port: number;
  try {
    port = await bindInsecure(server, cfg.host, cfg.port, credentials);
  } catch (err) {
    await scheduler.close();
    throw new WorkerConfigError(`--port (KVFLEET_PORT): cannot listen on ${cfg.host}:${cfg.port} (${(err as Error).message})`);
  }
  const address = `${cfg.host}:${port}`;
  workerId = cfg.workerId ?? cfg.podName ?? address;
  const advertised = advertisedAddress(cfg, port);

  let metricsServer: { port: number; close(): Promise<void> } | undefined;
  if (cfg.metricsPort > 0) {
    try {
      metricsServer = await metrics.serve(cfg.host, cfg.metricsPort);
    } catch (err) {
      server.forceShutdown();
      await scheduler.close();
      throw new WorkerConfigError(`--metrics-port (KVFLEET_METRICS_PORT): cannot listen on ${cfg.host}:${cfg.metricsPort} `
        + `(${(err as Error).message}); 0 turns metrics off`);
    }
  }
  const fn = opts.ledger !== undefined ? { namespace: opts.ledger.namespace, fleet: opts.ledger.fleet } : fleetName(cfg);
  if ((cfg.redis !== undefined || opts.ledger !== undefined) && fn !== undefined) {
    fleet = await FleetMember.start({
      ...(opts.ledger !== undefined ? { ledger: opts.ledger } : { redisUrl: cfg.redis, redisPassword }),
      namespace: fn.namespace, fleet: fn.fleet, workerId, addr: advertised,
      heartbeatMs: cfg.heartbeatMs, budgetRefreshMs: cfg.budgetRefreshMs, log, maxModelLen,
      capacity: snapshot, draining: () => draining || scheduler.draining, queued: () => scheduler.waitingIds(),
      onDrainOrder: () => { void drain('order'); },
      onUndrainOrder: () => { void undrain('order'); },
    });
  }

  const shutdown = ({ graceMs = cfg.drainTimeoutMs }: { graceMs?: number } = {}): Promise<void> => {
    stopping ??= (async () => {
      await drain('shutdown');
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        scheduler.idle().then(() => false),
        new Promise<boolean>((r) => { timer = setTimeout(() => r(true), graceMs); }),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        log.warn({ grace_ms: graceMs, requests: live.size }, 'shutdown: drain timeout passed; ending the requests still running');
        // UNAVAILABLE: retryable; a router moves the stream to another worker with its resume tokens
        for (const a of [...live.values()]) a(new DrainingError(`the worker shut down: the drain timeout (${graceMs} ms) passed before this request finished`));
      }
      await scheduler.close();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => { server.forceShutdown(); resolve(); }, 2000);
        server.tryShutdown(() => { clearTimeout(force); resolve(); });
      });
      await fleet?.close();
      await metricsServer?.close();
      log.info('worker stopped');
    })();
    return stopping;
  };

  log.info({ worker_id: workerId, address, advertised, pages: scheduler.totalPages, page_size: cfg.pageSize,
    admission: cfg.admission, max_model_len: maxModelLen, fleet: cfg.fleet, metrics_port: metricsServer?.port,
    tls: cfg.tlsCert !== undefined, mtls: cfg.tlsClientCa !== undefined, auth: authToken !== undefined }, 'worker ready');
  return {
    port, address, advertisedAddress: advertised, workerId, fleet, metrics, metricsPort: metricsServer?.port,
    scheduler, engine, tokenizer, maxModelLen, drain, undrain, shutdown,
    get draining() { return draining || scheduler.draining; },
  };
}
