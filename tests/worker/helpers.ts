// Shared pieces of the worker tests: a tiny model written once per suite, in-process workers on free loopback
// ports, and a client helper that records a whole Generate stream.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { pino } from 'pino';
import { generationClient, workerClient, type Capacity, type GenerateRequest, type GenerateResponse,
  type GenerationClient, type WorkerClient } from '../../proto/index.ts';
import { writeSynthModel } from '../../worker/model/synth.ts';
import { parseWorkerConfig, type WorkerConfigInput } from '../../worker/config.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';

export function tinyModel(): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-worker-'));
  writeSynthModel({ out: dir, preset: 'tiny', seed: 11 });
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface TestWorker {
  w: RunningWorker;
  gen: GenerationClient;
  wc: WorkerClient;
  addr: string;
  stop(): Promise<void>;
}

/**
 * A worker in this process (the same code `kvfleet worker` runs), through the same option parser. Metrics are off
 * unless opts.metricsPort is given (no fixed ports in tests); env supplies POD_NAME/POD_IP-style identity.
 */
export async function inProcessWorker(model: string, opts: WorkerConfigInput = {},
  more: { env?: NodeJS.ProcessEnv; creds?: grpc.ChannelCredentials; clientOptions?: grpc.ClientOptions } = {}): Promise<TestWorker> {
  const cfg = parseWorkerConfig({ model, port: 0, numPages: 4096, logLevel: 'silent', metricsPort: 0, ...opts }, more.env ?? {});
  const w = await startWorker(cfg, { logger: pino({ level: 'silent' }) });
  const creds = more.creds ?? grpc.credentials.createInsecure();
  const gen = generationClient(w.address, creds, { 'grpc.max_send_message_length': 64 << 20, ...more.clientOptions });
  const wc = workerClient(w.address, creds, more.clientOptions);
  return {
    w, gen, wc, addr: w.address,
    async stop() { gen.close(); wc.close(); await w.shutdown({ graceMs: 0 }); },
  };
}

export type HealthClient = grpc.Client & {
  Check(req: { service: string }, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void): void;
};
/** A grpc.health.v1.Health client (what kubelet's gRPC probe calls). */
export function healthClient(addr: string, creds = grpc.credentials.createInsecure()): HealthClient {
  const def = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } } };
  return new pkg.grpc.health.v1.Health(addr, creds) as unknown as HealthClient;
}
/** Health.Check of one service ('' is the server as a whole): 'SERVING', 'NOT_SERVING', ... */
export const check = (h: HealthClient, service = '') =>
  new Promise<string>((resolve, reject) => h.Check({ service }, (e, r) => (e ? reject(e) : resolve(r!.status))));

export interface StreamResult {
  /** Streamed token ids (every message's token_ids, in order). */
  tokens: number[];
  /** Each message's text, in order (the last message's included). */
  chunks: string[];
  text: string;
  messages: GenerateResponse[];
  last?: GenerateResponse;
  error?: grpc.ServiceError;
  /** The x-kvfleet-request-id response header. */
  requestId?: string;
}

export function generate(gen: GenerationClient, req: GenerateRequest,
  opts: { deadlineMs?: number; cancelAfterTokens?: number } = {}): Promise<StreamResult> {
  const callOpts: grpc.CallOptions = opts.deadlineMs !== undefined ? { deadline: Date.now() + opts.deadlineMs } : {};
  const call = gen.Generate(req, new grpc.Metadata(), callOpts);
  const r: StreamResult = { tokens: [], chunks: [], text: '', messages: [] };
  return new Promise((resolve) => {
    call.on('metadata', (md: grpc.Metadata) => { r.requestId = md.get('x-kvfleet-request-id')[0] as string | undefined; });
    call.on('data', (m: GenerateResponse) => {
      r.messages.push(m);
      r.tokens.push(...(m.token_ids ?? []));
      r.chunks.push(m.text ?? '');
      r.text += m.text ?? '';
      if (m.finish_reason !== undefined) r.last = m;
      if (opts.cancelAfterTokens !== undefined && r.tokens.length >= opts.cancelAfterTokens) call.cancel();
    });
    call.on('error', (e: grpc.ServiceError) => { r.error = e; });
    call.on('close', () => resolve(r));
  });
}

export function capacity(wc: WorkerClient): Promise<Capacity> {
  return new Promise((resolve, reject) => wc.GetCapacity({}, (e, c) => (e ? reject(e) : resolve(c!))));
}

/** Waits until the scheduler holds nothing, then returns the pool's free and total pages. */
export async function settledPages(w: RunningWorker): Promise<{ free: number; total: number }> {
  await w.scheduler.idle();
  // the loop releases cancelled sequences at its next point between steps; idle() already waited for that
  for (let i = 0; i < 100; i++) {
    const p = w.engine.poolStats();
    if (p.freePages === p.totalPages) return { free: p.freePages, total: p.totalPages };
    await new Promise((r) => setTimeout(r, 10));
  }
  const p = w.engine.poolStats();
  return { free: p.freePages, total: p.totalPages };
}

/** Tokens the worker has generated so far (kvfleet_worker_generation_tokens_total). */
export async function generatedTokens(w: RunningWorker): Promise<number> {
  return Number(/^kvfleet_worker_generation_tokens_total (\d+)$/m.exec(await w.metrics.registry.metrics())![1]);
}

/**
 * Polls `read` every 100 ms until it returns the same value 5 times in a row (unchanged for 500 ms), for at most 90 s
 * (bounds generous: on a loaded 2-core machine the tiny model decodes slowly; the loop ends early). Returns the last
 * value and whether it settled.
 */
export async function settledValue(read: () => Promise<number>): Promise<{ value: number; settled: boolean }> {
  let last = -1, stable = 0;
  for (let i = 0; i < 900 && stable < 5; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const v = await read();
    stable = v === last ? stable + 1 : 0;
    last = v;
  }
  return { value: last, settled: stable === 5 };
}

export function greedy(maxNew: number, extra: Record<string, unknown> = {}) {
  return { max_new_tokens: maxNew, temperature: 0, ignore_eos: true, ...extra };
}
