// Backpressure: a client that reads slower than tokens come must not make the worker buffer its stream without
// limit. The scheduler leaves a paused sink's decodes out of the steps (keeping its pages) while the rest of the
// batch goes on, and its stream continues identically once resumed; the server pauses a request when call.write
// reports the stream's buffer full and resumes it on 'drain'.
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUILTIN_DEFAULT_BUDGET } from '../../ledger/footprint.ts';
import { generationClient, type GenerateResponse } from '../../proto/index.ts';
import { Engine } from '../../worker/engine.ts';
import { engineBudget } from '../../worker/request.ts';
import { Scheduler, type SchedRequest, type Sink } from '../../worker/scheduler.ts';
import { generate, generatedTokens, greedy, inProcessWorker, settledValue, tinyModel } from './helpers.ts';

let model: ReturnType<typeof tinyModel>;
beforeAll(() => { model = tinyModel(); });
afterAll(() => { model?.cleanup(); });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function request(id: string, prompt: number[], maxNewTokens: number): SchedRequest {
  return {
    requestId: id, prompt, sampling: { temperature: 0.8, maxNewTokens, seed: '5', ignoreEos: true },
    budget: engineBudget(BUILTIN_DEFAULT_BUDGET), spec: BUILTIN_DEFAULT_BUDGET, resume: [],
  };
}

describe('backpressure', () => {
  it('the scheduler holds a paused stream (pages kept) while the others run, and it resumes identically', async () => {
    const engine = await Engine.load(model.dir, { numPages: 4096 });
    const s = new Scheduler(engine, { admission: 'reserve', maxRunning: 8, maxQueue: 8, maxPrefillTokens: 2048,
      logger: pino({ level: 'silent' }) });
    try {
      const run = (req: SchedRequest, sink: Partial<Sink> = {}) => new Promise<number[]>((resolve, reject) => {
        s.submit(req, { token: () => false, finish: (_r, _st, g) => resolve(g), fail: reject, ...sink });
      });
      const ref = await run(request('ref', [5, 6, 7], 60));
      // 'slow' stops taking tokens after 5 (its client's buffer is full)
      let slowTokens = 0, paused = false;
      const slowReq = request('slow', [5, 6, 7], 60);
      let handle!: { resume(): void };
      const slow = new Promise<number[]>((resolve, reject) => {
        handle = s.submit(slowReq, {
          token: () => { if (++slowTokens === 5) paused = true; return false; },
          paused: () => paused,
          finish: (_r, _st, g) => resolve(g), fail: reject,
        });
      });
      // another request runs to its end meanwhile: the batch was not stalled by the paused one
      const other = await run(request('other', [9, 8, 7, 6], 40));
      expect(other).toHaveLength(40);
      await sleep(50);
      expect(slowTokens).toBe(5);
      expect(s.stats().pausedDecodes).toBeGreaterThan(0);
      expect(s.capacity().running).toBe(1);  // still running: its pages are held
      expect(engine.poolStats().freePages).toBeLessThan(engine.poolStats().totalPages);
      // every running request paused: the loop waits (no busy steps) until resumed
      const steps = s.stats().steps;
      await sleep(50);
      expect(s.stats().steps).toBe(steps);
      expect(s.stats().pausedWaits).toBeGreaterThan(0);
      paused = false;
      handle.resume();
      expect(await slow).toEqual(ref);  // sampled (temperature 0.8): same seed, same draws per position
    } finally {
      await s.close();
    }
  });

  it('a client that stops reading pauses its request on the worker, not the others; reading again finishes it', async () => {
    const t = await inProcessWorker(model.dir, { numPages: 4096, stallTimeoutMs: 0 });   // paused as long as the test needs
    // a small HTTP/2 window so the transport's own buffers fill sooner
    const slowClient = generationClient(t.addr, grpc.credentials.createInsecure(), { 'grpc-node.flow_control_window': 4096 });
    try {
      const N = 5000;
      const call = slowClient.Generate({ token_ids: { ids: [5, 6, 7] }, sampling: greedy(N) });
      const got: GenerateResponse[] = [];
      let ended = false, error: grpc.ServiceError | undefined;
      call.on('data', (m: GenerateResponse) => { got.push(m); if (got.length === 1) call.pause(); });
      call.on('error', (e: grpc.ServiceError) => { error = e; });
      call.on('end', () => { ended = true; });
      const generated = () => generatedTokens(t.w);
      // the worker stops generating for it: the count settles (unchanged for 500 ms) well below N
      const { value: last, settled } = await settledValue(generated);
      expect(settled).toBe(true);
      expect(last).toBeLessThan(N);
      expect(got.length).toBe(1);
      expect(t.w.scheduler.stats().pausedDecodes).toBeGreaterThan(0);
      // another client is served while that one is paused
      const other = await generate(t.gen, { token_ids: { ids: [9, 8, 7] }, sampling: greedy(20) });
      expect(other.tokens).toHaveLength(20);
      expect(await generated()).toBe(last + 20);
      call.resume();
      for (let i = 0; i < 1200 && !ended && !error; i++) await sleep(100);
      expect(error).toBeUndefined();
      expect(ended).toBe(true);
      expect(got.flatMap((m) => m.token_ids ?? [])).toHaveLength(N);
      expect(got.at(-1)?.finish_reason).toBe('LENGTH');
    } finally {
      slowClient.close();
      await t.stop();
    }
  }, 300_000);

  it('a client that reads nothing for --stall-timeout-ms loses its request (ABORTED) and the pages come back', async () => {
    const t = await inProcessWorker(model.dir, { numPages: 4096, stallTimeoutMs: 400 });
    const slowClient = generationClient(t.addr, grpc.credentials.createInsecure(), { 'grpc-node.flow_control_window': 4096 });
    try {
      const call = slowClient.Generate({ token_ids: { ids: [5, 6, 7] }, sampling: greedy(5000) });
      let error: grpc.ServiceError | undefined;
      let n = 0;
      call.on('data', () => { if (++n === 1) call.pause(); });
      call.on('error', (e: grpc.ServiceError) => { error = e; });
      const codes = async () => [...(await t.w.metrics.registry.metrics()).matchAll(/^kvfleet_worker_requests_total\{code="(\w+)"\} (\d+)$/gm)]
        .map((m) => `${m[1]}=${m[2]}`);
      // paused, then stopped after the stall timeout: nothing running, every page free, counted ABORTED
      for (let i = 0; i < 900 && !(await codes()).includes('ABORTED=1'); i++) await sleep(100);
      expect(await codes()).toContain('ABORTED=1');
      expect(t.w.scheduler.capacity().running).toBe(0);
      const pool = t.w.engine.poolStats();
      expect(pool.freePages).toBe(pool.totalPages);
      // the client, reading again, gets what was buffered and then the reason
      call.resume();
      for (let i = 0; i < 1200 && !error; i++) await sleep(50);
      expect(error?.code).toBe(grpc.status.ABORTED);
      expect(error?.details).toMatch(/read nothing for 400 ms while its stream buffer was full/);
      // a client that reads is never stalled: the same worker serves a long stream to the end
      const ok = await generate(t.gen, { token_ids: { ids: [9, 8, 7] }, sampling: greedy(300) });
      expect(ok.tokens).toHaveLength(300);
    } finally {
      slowClient.close();
      await t.stop();
    }
  }, 300_000);
});
