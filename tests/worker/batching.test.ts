// Continuous batching over real gRPC: concurrent streams equal one-at-a-time runs token for token, many sequences
// share engine steps, and every page comes back after completion, cancellation and deadlines.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { capacity, generate, greedy, inProcessWorker, settledPages, tinyModel, type TestWorker } from './helpers.ts';

const N = 32;
const MAX_NEW = 24;
let model: ReturnType<typeof tinyModel>;
let t: TestWorker;

beforeAll(async () => {
  model = tinyModel();
  t = await inProcessWorker(model.dir, { numPages: 16384 });
});
afterAll(async () => { await t?.stop(); model?.cleanup(); });

const prompt = (i: number) => `request ${i}: the quick brown fox`;

describe('continuous batching', () => {
  for (const mode of ['greedy', 'seeded temperature 0.8'] as const) {
    it(`${N} concurrent streams (${mode}) give the same tokens as one-at-a-time runs, >= 8 sequences per step`, async () => {
      const sampling = (i: number) => (mode === 'greedy' ? greedy(MAX_NEW)
        : { max_new_tokens: MAX_NEW, temperature: 0.8, top_p: 0.95, seed: String(1000 + i), ignore_eos: true });
      t.w.scheduler.resetStats();
      const solo = [];
      for (let i = 0; i < N; i++) solo.push(await generate(t.gen, { text: prompt(i), sampling: sampling(i) }));
      const before = t.w.scheduler.stats();
      t.w.scheduler.resetStats();
      const together = await Promise.all(Array.from({ length: N }, (_, i) =>
        generate(t.gen, { text: prompt(i), sampling: sampling(i) })));
      const after = t.w.scheduler.stats();
      for (let i = 0; i < N; i++) {
        expect(solo[i].error).toBeUndefined();
        expect(together[i].error).toBeUndefined();
        expect(solo[i].tokens).toHaveLength(MAX_NEW);
        expect(together[i].tokens).toEqual(solo[i].tokens);
        expect(together[i].text).toBe(solo[i].text);
        expect(together[i].last?.finish_reason).toBe('LENGTH');
        expect(together[i].last?.usage?.completion_tokens).toBe(MAX_NEW);
      }
      // distinct prompts and seeds give distinct streams (the comparison above is not vacuous)
      expect(new Set(solo.map((s) => s.tokens.join(','))).size).toBeGreaterThan(N / 2);
      expect(before.maxSequencesInStep).toBe(1);
      expect(after.maxSequencesInStep).toBeGreaterThanOrEqual(8);
      expect(after.preemptions).toBe(0);
      const pages = await settledPages(t.w);
      expect(pages.free).toBe(pages.total);
      const cap = await capacity(t.wc);
      expect(Number(cap.free_pages)).toBe(Number(cap.total_pages));
      expect(cap.running).toBe(0);
    });
  }

  it('frees every page after 10 clients cancel mid-stream, while other streams go on', async () => {
    const cancelledBefore = t.w.scheduler.stats().cancelled;
    const reference = await generate(t.gen, { text: prompt(99), sampling: greedy(300) });
    const streams = Array.from({ length: 10 }, (_, i) =>
      generate(t.gen, { text: prompt(i), sampling: greedy(4000) }, { cancelAfterTokens: 3 + i }));
    const survivor = generate(t.gen, { text: prompt(99), sampling: greedy(300) });
    const results = await Promise.all(streams);
    for (const r of results) {
      expect(r.error?.code).toBe(grpc.status.CANCELLED);
      expect(r.last).toBeUndefined();
      expect(r.tokens.length).toBeLessThan(4000);
    }
    const s = await survivor;
    expect(s.error).toBeUndefined();
    expect(s.tokens).toEqual(reference.tokens);
    const pages = await settledPages(t.w);
    expect(pages.free).toBe(pages.total);
    expect(t.w.scheduler.stats().cancelled - cancelledBefore).toBe(10);
  });

  it('frees every page when deadlines expire mid-stream', async () => {
    const cancelledBefore = t.w.scheduler.stats().cancelled;
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) =>
      generate(t.gen, { text: prompt(i), sampling: greedy(6000) }, { deadlineMs: 500 })));
    for (const r of results) {
      expect(r.error?.code).toBe(grpc.status.DEADLINE_EXCEEDED);
      expect(r.tokens.length).toBeGreaterThan(0);
      expect(r.tokens.length).toBeLessThan(6000);
    }
    const pages = await settledPages(t.w);
    expect(pages.free).toBe(pages.total);
    expect(t.w.scheduler.stats().cancelled - cancelledBefore).toBe(6);
  });
});
