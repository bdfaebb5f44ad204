// The worker process: loads the model and tokenizer, owns one Scheduler (which owns the Engine), and serves
// kvfleet.v1.Generation, kvfleet.v1.Worker, grpc.health.v1.Health and reflection. Errors become gRPC statuses
// here and nowhere else (STYLE.md 10); every error answer is followed by a return.
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
import { WorkerConfigError, type WorkerConfig } from './config.ts';
import { TextStream } from './detok.ts';
import { parseGenerateRequest, RequestError } from './request.ts';
import { DrainingError, QueueFullError, Scheduler, type FinishReason } from './scheduler.ts';
import { Tokenizer } from './tokenizer.ts';

/** grpc.max_receive_message_length: larger requests are refused by grpc-js with RESOURCE_EXHAUSTED. */
export const MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface RunningWorker {
  readonly port: number;
  readonly address: string;
  readonly workerId: string;
  readonly scheduler: Scheduler;
  readonly engine: Engine;
  readonly tokenizer: Tokenizer;
  readonly maxModelLen: number;
  /** Worker.Drain: stop admitting (new requests UNAVAILABLE), health NOT_SERVING; returns the running count. */
  drain(): number;
  /**
   * Graceful stop (SIGTERM): drain, let running work finish for up to graceMs, cancel the rest, stop the server,
   * close the engine. Worker II hooks its drain timeout and ledger deregistration here.
   */
  shutdown(opts?: { graceMs?: number }): Promise<void>;
}

export interface StartOptions {
  logger?: Logger;
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
  if (err instanceof DrainingError) return { code: grpc.status.UNAVAILABLE, details };
  return { code: grpc.status.INTERNAL, details };
}

export async function startWorker(cfg: WorkerConfig & { podName?: string }, opts: StartOptions = {}): Promise<RunningWorker> {
  const log = opts.logger ?? pino({ level: cfg.logLevel, base: { component: 'worker' } }, pino.destination(2));
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
  if (cfg.maxModelLen !== undefined && cfg.maxModelLen > info.maxPositionEmbeddings) {
    engine.close();
    throw new WorkerConfigError(`--max-model-len (KVFLEET_MAX_MODEL_LEN): ${cfg.maxModelLen} exceeds the model's `
      + `max_position_embeddings ${info.maxPositionEmbeddings}`);
  }
  const maxModelLen = cfg.maxModelLen ?? info.maxPositionEmbeddings;
  const scheduler = new Scheduler(engine, {
    admission: cfg.admission, maxRunning: cfg.maxRunning, maxQueue: cfg.maxQueue,
    maxPrefillTokens: cfg.maxPrefillTokens, logger: log,
  });

  const server = new grpc.Server({ 'grpc.max_receive_message_length': MAX_RECEIVE_MESSAGE_BYTES });
  let workerId = '';
  let draining = false;

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
      const fail = (err: unknown) => {
        if (ended) return;
        ended = true;
        const st = toStatus(err);
        rlog.info({ code: grpc.status[st.code], details: st.details }, 'request refused');
        call.emit('error', st);
      };
      if (draining || scheduler.draining) { fail(new DrainingError('the worker is draining and admits no new requests')); return; }
      let parsed;
      try {
        parsed = parseGenerateRequest(req, { tokenizer, vocabSize: info.vocabSize, maxModelLen });
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
      let deadlineTimer: NodeJS.Timeout | undefined;
      let handle;
      try {
        handle = scheduler.submit({
          requestId, prompt: parsed.prompt, resume: parsed.resume, spec: parsed.spec, budget: parsed.budget,
          sampling: {
            maxNewTokens: parsed.maxNewTokens, seed: parsed.seed, ignoreEos: parsed.ignoreEos,
            ...(parsed.temperature !== undefined ? { temperature: parsed.temperature } : {}),
            ...(parsed.topP !== undefined ? { topP: parsed.topP } : {}),
            ...(parsed.topK !== undefined ? { topK: parsed.topK } : {}),
          },
        }, {
          token(id) {
            const r = text.push(id);
            if (!ended && !call.cancelled) call.write({ token_ids: [id], text: r.text, worker_id: workerId });
            return r.stopped;
          },
          finish(reason, stats, generated) {
            if (ended) return;
            ended = true;
            clearTimeout(deadlineTimer);
            if (call.cancelled) return;
            call.write({
              token_ids: [], text: text.flush(), finish_reason: finishName(reason), worker_id: workerId, seed: parsed.seed,
              usage: { prompt_tokens: parsed.prompt.length, completion_tokens: generated.length },
              kv_stats: kvStats(stats),
            });
            call.end();
            rlog.info({ finish: reason, prompt_tokens: parsed.prompt.length, completion_tokens: generated.length,
              kept_tokens: stats.keptTokens, peak_pages: stats.peakPages, ms: Date.now() - t0 }, 'request done');
          },
          fail(err) { clearTimeout(deadlineTimer); fail(err); },
        });
      } catch (err) { fail(err); return; }
      rlog.debug({ prompt_tokens: parsed.prompt.length, max_new_tokens: parsed.maxNewTokens, footprint: fp }, 'queued');
      const cancel = (why: string) => {
        if (ended) return;
        ended = true;
        rlog.info({ why }, 'request cancelled');
        handle.cancel();
      };
      call.on('cancelled', () => cancel('client cancelled'));
      // grpc-js answers DEADLINE_EXCEEDED itself; this timer frees the request's pages at the same moment.
      const deadline = call.getDeadline();
      const ms = deadline instanceof Date ? deadline.getTime() - Date.now() : Number(deadline) - Date.now();
      if (Number.isFinite(ms)) deadlineTimer = setTimeout(() => cancel('deadline exceeded'), Math.max(0, ms));
    },
  };

  const capacity = (): Capacity => {
    const c = scheduler.capacity();
    return {
      worker_id: workerId, total_pages: String(c.totalPages), free_pages: String(c.freePages),
      reserved_pages: String(c.reservedPages), page_size: c.pageSize, num_layers: c.numLayers,
      num_kv_heads: c.numKvHeads, running: c.running, waiting: c.waiting, draining: draining || scheduler.draining,
    };
  };
  const health = { set: (_s: 'SERVING' | 'NOT_SERVING') => { /* replaced once the server exists */ } };
  const drain = (): number => {
    if (!draining) log.info('draining: no new requests are admitted');
    draining = true;
    scheduler.stopAdmitting();
    health.set('NOT_SERVING');
    return scheduler.capacity().running;
  };
  const workerHandlers: WorkerHandlers = {
    GetCapacity(_call, cb) { cb(null, capacity()); },
    Drain(_call, cb) { cb(null, { running: drain() }); },
  };

  addGenerationService(server, generation);
  addWorkerService(server, workerHandlers);
  const h = addHealth(server, [SERVICE_NAMES.generation, SERVICE_NAMES.worker]);
  health.set = (s) => h.set(s);
  addReflection(server);
  let port: number;
  try {
    port = await bindInsecure(server, cfg.host, cfg.port);
  } catch (err) {
    await scheduler.close();
    throw new WorkerConfigError(`--port (KVFLEET_PORT): cannot listen on ${cfg.host}:${cfg.port} (${(err as Error).message})`);
  }
  const address = `${cfg.host}:${port}`;
  workerId = cfg.workerId ?? cfg.podName ?? address;

  let stopping: Promise<void> | undefined;
  const shutdown = ({ graceMs = 30_000 }: { graceMs?: number } = {}): Promise<void> => {
    stopping ??= (async () => {
      drain();
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        scheduler.idle().then(() => false),
        new Promise<boolean>((r) => { timer = setTimeout(() => r(true), graceMs); }),
      ]);
      clearTimeout(timer);
      if (timedOut) log.warn({ grace_ms: graceMs }, 'shutdown: cancelling requests still running');
      await scheduler.close();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => { server.forceShutdown(); resolve(); }, 2000);
        server.tryShutdown(() => { clearTimeout(force); resolve(); });
      });
      log.info('worker stopped');
    })();
    return stopping;
  };

  log.info({ worker_id: workerId, address, pages: scheduler.totalPages, page_size: cfg.pageSize,
    admission: cfg.admission, max_model_len: maxModelLen }, 'worker ready');
  return { port, address, workerId, scheduler, engine, tokenizer, maxModelLen, drain, shutdown };
}
