// Admission by compressed footprint (ledger/footprint.ts): a small pool queues instead of failing, a prompt that
// can never fit is refused at once, optimistic admission preempts by recompute without the client noticing, and
// the queue and running caps hold.
//
// tiny: L = 2, Hk = 2, P = 16. A prompt of 8 tokens + 56 new tokens, uncompressed (8 ≤ 1024 default budget):
// footprint = L·Hk·(ceil(64/16) + 1) = 20 pages; it really holds up to L·Hk·ceil(63/16) = 16.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { requestFootprintPages, BUILTIN_DEFAULT_BUDGET } from '../../ledger/footprint.ts';
import { capacity, generate, greedy, inProcessWorker, settledPages, tinyModel } from './helpers.ts';

const MAX_NEW = 56;
const prompt = (i: number) => [0, 10 + i, 20 + i, 30, 40, 50 + i, 60, 70];
let model: ReturnType<typeof tinyModel>;
beforeAll(() => { model = tinyModel(); });
afterAll(() => model?.cleanup());

describe('admission', () => {
  it('the footprint of the test requests is 20 pages (ledger/footprint.ts)', () => {
    expect(requestFootprintPages({ L: 2, Hk: 2, P: 16 }, BUILTIN_DEFAULT_BUDGET, 8, MAX_NEW)).toBe(20);
  });

  it('reserve: with a pool for one request at a time, requests queue and then run, never preempted', async () => {
    const big = await inProcessWorker(model.dir, { numPages: 4096 });
    const small = await inProcessWorker(model.dir, { numPages: 24 });
    try {
      const ref = [];
      for (let i = 0; i < 4; i++) ref.push(await generate(big.gen, { token_ids: { ids: prompt(i) }, sampling: greedy(MAX_NEW) }));
      small.w.scheduler.resetStats();
      const pending = Array.from({ length: 4 }, (_, i) =>
        generate(small.gen, { token_ids: { ids: prompt(i) }, sampling: greedy(MAX_NEW) }));
      // while one runs, the others wait in the queue (visible in GetCapacity)
      let cap = await capacity(small.wc);
      for (let i = 0; i < 200 && !(cap.running === 1 && (cap.waiting ?? 0) >= 1); i++) cap = await capacity(small.wc);
      expect(cap.running).toBe(1);
      expect(cap.waiting).toBeGreaterThanOrEqual(1);
      expect(Number(cap.reserved_pages)).toBe(20 * (cap.waiting ?? 0));
      const res = await Promise.all(pending);
      for (let i = 0; i < 4; i++) {
        expect(res[i].error).toBeUndefined();
        expect(res[i].tokens).toEqual(ref[i].tokens);
      }
      const st = small.w.scheduler.stats();
      expect(st.maxRunning).toBe(1);
      expect(st.maxWaiting).toBeGreaterThanOrEqual(1);
      expect(st.preemptions).toBe(0);
      expect(Number(cap.total_pages)).toBe(24);
      expect(Number(cap.free_pages)).toBeLessThanOrEqual(4);  // 24 − one footprint of 20 committed
      const pages = await settledPages(small.w);
      expect(pages.free).toBe(24);
    } finally {
      await big.stop();
      await small.stop();
    }
  });

  it('a prompt whose footprint can never fit the pool is INVALID_ARGUMENT at once', async () => {
    const small = await inProcessWorker(model.dir, { numPages: 24 });
    try {
      const t0 = Date.now();
      const r = await generate(small.gen, { token_ids: { ids: prompt(0) }, sampling: greedy(200) });
      expect(r.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(r.error?.details).toMatch(/never fit.*56 pages.*24/);
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(small.w.scheduler.stats().admitted).toBe(0);
    } finally { await small.stop(); }
  });

  for (const sampling of [greedy(MAX_NEW), { max_new_tokens: MAX_NEW, temperature: 0.9, seed: '77', ignore_eos: true }]) {
    const label = sampling.temperature === 0 ? 'greedy' : 'seeded temperature 0.9';
    it(`optimistic (${label}): a forced preemption still yields the uninterrupted tokens`, async () => {
      const big = await inProcessWorker(model.dir, { numPages: 4096 });
      const small = await inProcessWorker(model.dir, { numPages: 24, admission: 'optimistic' });
      try {
        const ref = [];
        for (let i = 0; i < 3; i++) ref.push(await generate(big.gen, { token_ids: { ids: prompt(i) }, sampling }));
        const res = await Promise.all(Array.from({ length: 3 }, (_, i) =>
          generate(small.gen, { token_ids: { ids: prompt(i) }, sampling })));
        const st = small.w.scheduler.stats();
        // two sequences of 64 tokens need 32 pages: more than 24, so someone was preempted
        expect(st.preemptions).toBeGreaterThan(0);
        expect(st.maxRunning).toBeGreaterThanOrEqual(2);
        for (let i = 0; i < 3; i++) {
          expect(res[i].error).toBeUndefined();
          expect(res[i].tokens).toEqual(ref[i].tokens);   // one unbroken stream: no gap, no repeat
          expect(res[i].text).toBe(ref[i].text);
          expect(res[i].last?.usage?.completion_tokens).toBe(MAX_NEW);
        }
        const pages = await settledPages(small.w);
        expect(pages.free).toBe(24);
      } finally {
        await big.stop();
        await small.stop();
      }
    });
  }

  it('past --max-queue requests are RESOURCE_EXHAUSTED; --max-running caps running sequences', async () => {
    const w = await inProcessWorker(model.dir, { numPages: 4096, maxRunning: 1, maxQueue: 2 });
    try {
      const calls = Array.from({ length: 5 }, (_, i) =>
        generate(w.gen, { token_ids: { ids: prompt(i) }, sampling: greedy(3000) }, { cancelAfterTokens: 1 }));
      const res = await Promise.all(calls);
      const exhausted = res.filter((r) => r.error?.code === grpc.status.RESOURCE_EXHAUSTED);
      const served = res.filter((r) => r.error?.code === grpc.status.CANCELLED);
      expect(exhausted).toHaveLength(2);
      expect(exhausted[0].error?.details).toMatch(/queue is full/);
      expect(served).toHaveLength(3);
      expect(w.w.scheduler.stats().maxRunning).toBe(1);
      const pages = await settledPages(w.w);
      expect(pages.free).toBe(pages.total);
    } finally { await w.stop(); }
  });
});
