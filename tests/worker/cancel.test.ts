// How a request that ends early is counted and freed: an expired deadline is DEADLINE_EXCEEDED in
// kvfleet_worker_requests_total (grpc-js reports it to the handler as a cancellation), a client cancel is CANCELLED,
// and a call already cancelled when the handler runs (its one 'cancelled' event gone before the listener existed)
// is cancelled at once instead of running to the end with its pages.
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { GenerateRequest, GenerationHandlers } from '../../proto/index.ts';
import { generate, greedy, inProcessWorker, settledPages, tinyModel } from './helpers.ts';

// the worker's Generation handlers, to call one with a call object of our own
const captured = vi.hoisted(() => ({ handlers: [] as GenerationHandlers[] }));
vi.mock('../../proto/index.ts', async (importOriginal) => {
  const orig = await importOriginal<typeof import('../../proto/index.ts')>();
  return {
    ...orig,
    addGenerationService: (server: grpc.Server, impl: GenerationHandlers) => {
      captured.handlers.push(impl);
      orig.addGenerationService(server, impl);
    },
  };
});

let model: ReturnType<typeof tinyModel>;
beforeAll(() => { model = tinyModel(); });
afterAll(() => model?.cleanup());

async function requestCodes(t: Awaited<ReturnType<typeof inProcessWorker>>): Promise<Record<string, number>> {
  const text = await t.w.metrics.registry.metrics();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^kvfleet_worker_requests_total\{code="(\w+)"\} (\d+)$/gm)) out[m[1]] = Number(m[2]);
  return out;
}

describe('requests that end early', () => {
  it('an expired deadline counts as DEADLINE_EXCEEDED, a client cancel as CANCELLED; pages come back', async () => {
    const t = await inProcessWorker(model.dir, { numPages: 4096 });
    try {
      const r = await generate(t.gen, { token_ids: { ids: [5, 6, 7] }, sampling: greedy(6000) }, { deadlineMs: 300 });
      expect(r.error?.code).toBe(grpc.status.DEADLINE_EXCEEDED);
      expect(r.tokens.length).toBeGreaterThan(0);
      const c = await generate(t.gen, { token_ids: { ids: [5, 6, 7] }, sampling: greedy(6000) }, { cancelAfterTokens: 2 });
      expect(c.error?.code).toBe(grpc.status.CANCELLED);
      const pages = await settledPages(t.w);
      expect(pages.free).toBe(pages.total);
      expect(await requestCodes(t)).toEqual({ DEADLINE_EXCEEDED: 1, CANCELLED: 1 });
    } finally { await t.stop(); }
  });

  it('a call already cancelled when the handler runs is cancelled at once: nothing generated, nothing written', async () => {
    captured.handlers.length = 0;
    const t = await inProcessWorker(model.dir, { numPages: 4096 });
    try {
      expect(captured.handlers).toHaveLength(1);
      const writes: unknown[] = [];
      // what grpc-js hands the handler: a ServerWritableStream, here one whose client went away already
      const call = Object.assign(new EventEmitter(), {
        request: { request_id: 'gone-1', token_ids: { ids: [5, 6, 7] }, sampling: greedy(200) } as GenerateRequest,
        cancelled: true,
        sendMetadata() { /* headers */ },
        getDeadline: () => Infinity,
        write(m: unknown) { writes.push(m); return true; },
        end() { writes.push('end'); },
      });
      captured.handlers[0].Generate(call as unknown as Parameters<GenerationHandlers['Generate']>[0]);
      await t.w.scheduler.idle();
      await settledPages(t.w);
      expect(t.w.scheduler.stats().cancelled).toBe(1);
      expect(t.w.scheduler.stats().finished).toBe(0);
      expect(writes).toEqual([]);
      expect(await requestCodes(t)).toEqual({ CANCELLED: 1 });
      const text = await t.w.metrics.registry.metrics();
      expect(text).toMatch(/^kvfleet_worker_generation_tokens_total 0$/m);
    } finally { await t.stop(); }
  });
});
