// Backpressure through the router: a client that reads slower than tokens come must not make the router buffer the
// worker's stream without limit. The router pauses reading the worker stream while the client stream is full, so
// the worker's own stream fills and the worker pauses that request (tests/worker/backpressure.test.ts), and only it.
// Real gRPC: test client -> router -> worker (in this process, in the fleet through the shared redis-server).
import * as grpc from '@grpc/grpc-js';
import http2 from 'node:http2';
import { getDefaultHighWaterMark } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { RedisLedger } from '../../ledger/index.ts';
import { generationClient, type GenerateRequest, type GenerateResponse } from '../../proto/index.ts';
import { parseRouterConfig } from '../../router/config.ts';
import { Router } from '../../router/router.ts';
import { generate, generatedTokens, greedy, inProcessWorker, settledValue, tinyModel, type TestWorker } from '../worker/helpers.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// every message carries the worker id, so it sets the least bytes a one-token message takes: a pod name as a
// Deployment names them (CONTRACTS.md, "Worker identity")
const WORKER_ID = 'kvfleet-worker-backpressure-7d9f8b6c5d-x2k4p';
const WINDOW = 4096;   // the slow client's HTTP/2 window (grpc-node.flow_control_window)
const N = 8000;        // tokens asked for (the tiny model's room is 8192 positions)

/**
 * The most tokens the worker can generate for a stream whose client stopped reading after its first message: what
 * the pipe between the worker's scheduler and that client can hold.
 * - bytes, per HTTP/2 hop (router -> slow client: WINDOW; worker -> router: the router's worker channel, with Node's
 *   default stream window): the window (data sent, not yet consumed by the receiver); the receiving Http2Stream's
 *   readable buffer (consumed from the window as it fills: up to the default highWaterMark, plus the one frame that
 *   crosses it); and the frame grpc-js has taken from it and split into messages not yet pushed. The sending side
 *   holds no bytes beyond that: grpc-js takes its next message only when the HTTP/2 write of the last has completed,
 *   which needs window.
 * - messages: four object-mode buffers of 16 (the worker's call write, the router's worker-call read, the router's
 *   call write, the client's read) and 16 more in hand (pushes under way, the scheduler's step).
 * A one-token message is at least 10 bytes + the worker id: 5 bytes gRPC framing, token_ids (tag, length, a one-byte
 * id), worker_id (tag, length, id); its text, when not empty, adds to that.
 */
function bound(): number {
  const { initialWindowSize = 65535, maxFrameSize = 16384 } = http2.getDefaultSettings();
  const hop = (window: number) => window + getDefaultHighWaterMark(false) + 2 * maxFrameSize;
  return Math.ceil((hop(WINDOW) + hop(initialWindowSize)) / (10 + WORKER_ID.length)) + 5 * 16;
}

describe('router backpressure', () => {
  let model: ReturnType<typeof tinyModel>;
  let worker: TestWorker;
  let router: Router;
  let ledger: RedisLedger;
  beforeAll(async () => {
    model = tinyModel();
    const redis = inject('redisUrl');
    const fleet = `rbp-${process.pid}/f1`;
    const [namespace, name] = fleet.split('/');
    ledger = await RedisLedger.connect({ redis, namespace, fleet: name });
    worker = await inProcessWorker(model.dir, { numPages: 4096, redis, fleet, workerId: WORKER_ID, stallTimeoutMs: 0 });
    for (let i = 0; i < 200 && (await ledger.snapshot()).workers.length === 0; i++) await sleep(25);
    router = await Router.start(parseRouterConfig({ port: 0, redis, fleet, metricsPort: 0 }), pino({ level: 'silent' }));
  });
  afterAll(async () => {
    await router?.close();
    await worker?.stop();
    await ledger?.close();
    model?.cleanup();
  });

  it('a client that stops reading pauses its request on the worker, not the others; reading again gets every token', async () => {
    const addr = `127.0.0.1:${router.port}`;
    const fast = generationClient(addr);
    const slow = generationClient(addr, grpc.credentials.createInsecure(), { 'grpc-node.flow_control_window': WINDOW });
    const generated = () => generatedTokens(worker.w);
    const pauses = async () => (await router.registry.getSingleMetric('kvfleet_router_backpressure_pauses_total')?.get())?.values[0]?.value ?? 0;
    const calls: grpc.ClientReadableStream<GenerateResponse>[] = [];
    try {
      // sampled, so an identical stream means the same draws at the same positions
      const req: GenerateRequest = { token_ids: { ids: [5, 6, 7] },
        sampling: { max_new_tokens: N, temperature: 0.8, seed: '4242', ignore_eos: true } };
      const ref = await generate(fast, req);
      expect(ref.error).toBeUndefined();
      expect(ref.tokens).toHaveLength(N);
      const before = await generated();

      const call = slow.Generate(req);
      calls.push(call);
      const got: GenerateResponse[] = [];
      let ended = false, error: grpc.ServiceError | undefined;
      call.on('data', (m: GenerateResponse) => { got.push(m); if (got.length === 1) call.pause(); });
      call.on('error', (e: grpc.ServiceError) => { error = e; });
      call.on('end', () => { ended = true; });
      // the worker stops generating for it: its count settles (unchanged for 500 ms) within what the pipe holds
      const { value: last, settled } = await settledValue(generated);
      const held = last - before;
      expect(settled).toBe(true);
      expect(held).toBeGreaterThan(0);
      expect(held, `the worker generated ${held} of ${N} tokens for a client that reads nothing`).toBeLessThan(bound());
      expect(got).toHaveLength(1);
      expect(await pauses()).toBeGreaterThan(0);
      expect(worker.w.scheduler.stats().pausedDecodes).toBeGreaterThan(0);

      // another client is served through the same router and worker (one HTTP/2 connection) meanwhile
      const other = await generate(fast, { token_ids: { ids: [9, 8, 7] }, sampling: greedy(20) });
      expect(other.error).toBeUndefined();
      expect(other.tokens).toHaveLength(20);
      expect(await generated()).toBe(last + 20);

      // reading again: every token, identical to the unpaused run
      call.resume();
      for (let i = 0; i < 2400 && !ended && !error; i++) await sleep(50);
      expect(error).toBeUndefined();
      expect(ended).toBe(true);
      expect(got.flatMap((m) => m.token_ids ?? [])).toEqual(ref.tokens);
      expect(got.map((m) => m.text ?? '').join('')).toBe(ref.text);
      expect(got.at(-1)?.finish_reason).toBe('LENGTH');
      expect(await generated()).toBe(before + N + 20);
    } finally {
      for (const c of calls) c.cancel();  // a failed run must not leave the router's shutdown waiting on it
      fast.close();
      slow.close();
    }
  }, 300_000);
  it('a client that cancels while its stream is paused: the worker request ends and the router lets go of it', async () => {
    const slow = generationClient(`127.0.0.1:${router.port}`, grpc.credentials.createInsecure(),
      { 'grpc-node.flow_control_window': WINDOW });
    const count = async (code: string) => (await router.registry.getSingleMetric('kvfleet_router_requests_total')?.get())
      ?.values.find((v) => v.labels.code === code)?.value ?? 0;
    const pauses = async () => (await router.registry.getSingleMetric('kvfleet_router_backpressure_pauses_total')?.get())?.values[0]?.value ?? 0;
    try {
      const cancelled = await count('CANCELLED'), paused = await pauses();
      const pausedDecodes = worker.w.scheduler.stats().pausedDecodes;
      const call = slow.Generate({ token_ids: { ids: [11, 12, 13] }, sampling: greedy(N) });
      let got = 0, error: grpc.ServiceError | undefined;
      call.on('data', () => { if (++got === 1) call.pause(); });
      call.on('error', (e: grpc.ServiceError) => { error = e; });
      // both ends paused: the router's read of the worker and the worker's decodes of this request
      for (let i = 0; i < 1200 && (await pauses() === paused || worker.w.scheduler.stats().pausedDecodes === pausedDecodes); i++) await sleep(50);
      expect(await pauses()).toBeGreaterThan(paused);
      expect(worker.w.scheduler.stats().pausedDecodes).toBeGreaterThan(pausedDecodes);
      expect(worker.w.scheduler.capacity().running).toBe(1);
      call.cancel();
      for (let i = 0; i < 400 && (worker.w.scheduler.capacity().running > 0 || await count('CANCELLED') === cancelled); i++) await sleep(50);
      expect(error?.code).toBe(grpc.status.CANCELLED);
      expect(worker.w.scheduler.capacity().running).toBe(0);
      expect(await count('CANCELLED')).toBe(cancelled + 1);
    } finally {
      slow.close();
    }
  }, 300_000);
});
