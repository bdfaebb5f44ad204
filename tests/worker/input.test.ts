// Bad input: each case gets its status with the field named, at once, and the streams already running are not
// disturbed (they finish with exactly the tokens of an undisturbed run).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import type { GenerateRequest } from '../../proto/index.ts';
import { generate, greedy, inProcessWorker, settledPages, tinyModel, type TestWorker } from './helpers.ts';

const MAX_MODEL_LEN = 160;
let model: ReturnType<typeof tinyModel>;
let t: TestWorker;
beforeAll(async () => {
  model = tinyModel();
  t = await inProcessWorker(model.dir, { numPages: 4096, maxModelLen: MAX_MODEL_LEN });
});
afterAll(async () => { await t?.stop(); model?.cleanup(); });

const ok: GenerateRequest = { token_ids: { ids: [0, 5, 6, 7] }, sampling: greedy(4) };
const ids = (n: number) => Array.from({ length: n }, (_, i) => 2 + (i % 200));

const CASES: Array<{ name: string; req: GenerateRequest; code: grpc.status; field: RegExp }> = [
  { name: 'empty text prompt', req: { text: '', sampling: greedy(4) }, code: grpc.status.INVALID_ARGUMENT, field: /^text: .*empty/ },
  { name: 'empty token_ids prompt', req: { token_ids: { ids: [] }, sampling: greedy(4) }, code: grpc.status.INVALID_ARGUMENT, field: /token_ids.ids: .*empty/ },
  { name: 'no prompt at all', req: { sampling: greedy(4) }, code: grpc.status.INVALID_ARGUMENT, field: /^prompt: missing/ },
  { name: 'prompt over max-model-len', req: { token_ids: { ids: ids(MAX_MODEL_LEN + 5) }, sampling: greedy(4) }, code: grpc.status.INVALID_ARGUMENT, field: /token_ids.ids: .*165 tokens.*max_model_len is 160/ },
  { name: 'max_new_tokens 0', req: { ...ok, sampling: greedy(0) }, code: grpc.status.INVALID_ARGUMENT, field: /sampling.max_new_tokens: must be at least 1/ },
  { name: 'max_new_tokens beyond the room', req: { ...ok, sampling: greedy(MAX_MODEL_LEN - 3) }, code: grpc.status.INVALID_ARGUMENT, field: /sampling.max_new_tokens: .*room/ },
  { name: 'negative temperature', req: { ...ok, sampling: { max_new_tokens: 4, temperature: -0.5 } }, code: grpc.status.INVALID_ARGUMENT, field: /sampling.temperature: must be >= 0/ },
  { name: 'top_p 0', req: { ...ok, sampling: { max_new_tokens: 4, top_p: 0 } }, code: grpc.status.INVALID_ARGUMENT, field: /sampling.top_p: must be in \(0, 1\]/ },
  { name: 'top_p 1.5', req: { ...ok, sampling: { max_new_tokens: 4, top_p: 1.5 } }, code: grpc.status.INVALID_ARGUMENT, field: /sampling.top_p/ },
  { name: 'token id outside the vocabulary', req: { token_ids: { ids: [0, 5, 512] }, sampling: greedy(4) }, code: grpc.status.INVALID_ARGUMENT, field: /token_ids.ids\[2\]: token id 512 is outside the vocabulary \[0, 512\)/ },
  { name: 'resume token outside the vocabulary', req: { ...ok, resume_token_ids: [3, 9000] }, code: grpc.status.INVALID_ARGUMENT, field: /resume_token_ids\[1\]/ },
  { name: 'more resume tokens than max_new_tokens', req: { ...ok, resume_token_ids: [3, 4, 5, 6, 7] }, code: grpc.status.INVALID_ARGUMENT, field: /resume_token_ids: 5 resume tokens exceed max_new_tokens 4/ },
  { name: 'empty stop string', req: { ...ok, sampling: { ...greedy(4), stop: ['x', ''] } }, code: grpc.status.INVALID_ARGUMENT, field: /sampling.stop\[1\]/ },
  { name: 'budget keep_ratio 2', req: { ...ok, budget: { spec: { method: 'ADA_SNAPKV', keep_ratio: 2 } } }, code: grpc.status.INVALID_ARGUMENT, field: /budget.spec.keep_ratio: .*\(0, 1\]/ },
  { name: 'budget tokens_per_head < window + 1', req: { ...ok, budget: { spec: { method: 'SNAPKV', tokens_per_head: 20, window: 32 } } }, code: grpc.status.INVALID_ARGUMENT, field: /budget.spec.tokens_per_head: .*window \+ 1 \(33\)/ },
  { name: 'budget with both tokens_per_head and keep_ratio', req: { ...ok, budget: { spec: { method: 'ADA_SNAPKV', tokens_per_head: 64, keep_ratio: 0.5 } } }, code: grpc.status.INVALID_ARGUMENT, field: /exactly one of tokens_per_head and keep_ratio/ },
  { name: 'budget with an even pool_kernel', req: { ...ok, budget: { spec: { method: 'ADA_SNAPKV', tokens_per_head: 64, pool_kernel: 4 } } }, code: grpc.status.INVALID_ARGUMENT, field: /budget.spec.pool_kernel: must be odd/ },
  { name: 'budget floor_alpha 1.5', req: { ...ok, budget: { spec: { method: 'ADA_SNAPKV', tokens_per_head: 64, floor_alpha: 1.5 } } }, code: grpc.status.INVALID_ARGUMENT, field: /budget.spec.floor_alpha/ },
  { name: 'unknown budget name', req: { ...ok, budget: { name: 'long-context' } }, code: grpc.status.NOT_FOUND, field: /budget.name: unknown budget 'long-context'/ },
  { name: 'oversized message (5 MiB of text > 4 MiB limit)', req: { text: 'a'.repeat(5 << 20), sampling: greedy(4) }, code: grpc.status.RESOURCE_EXHAUSTED, field: /./ },
];

describe('bad input', () => {
  it('each case has its status and names the field; concurrent streams are unaffected', async () => {
    const background = (i: number): GenerateRequest => ({ token_ids: { ids: [0, 40 + i, 41, 42] }, sampling: greedy(120) });
    const reference = [];
    for (let i = 0; i < 3; i++) reference.push(await generate(t.gen, background(i)));
    const admittedBefore = t.w.scheduler.stats().admitted;
    const running = Array.from({ length: 3 }, (_, i) => generate(t.gen, background(i)));
    const bad = await Promise.all(CASES.map(async (c) => ({ c, r: await generate(t.gen, c.req) })));
    for (const { c, r } of bad) {
      expect(r.error?.code, c.name).toBe(c.code);
      expect(r.error?.details, c.name).toMatch(c.field);
      expect(r.tokens, c.name).toEqual([]);
    }
    const res = await Promise.all(running);
    for (let i = 0; i < 3; i++) {
      expect(res[i].error).toBeUndefined();
      expect(res[i].tokens).toEqual(reference[i].tokens);
    }
    // none of the bad requests reached the engine
    expect(t.w.scheduler.stats().admitted - admittedBefore).toBe(3);
    const pages = await settledPages(t.w);
    expect(pages.free).toBe(pages.total);
  });

  it('the built-in "default" budget name resolves; an inline budget compresses the prompt', async () => {
    const byName = await generate(t.gen, { ...ok, budget: { name: 'default' } });
    const none = await generate(t.gen, ok);
    expect(byName.error).toBeUndefined();
    expect(byName.tokens).toEqual(none.tokens);
    const prompt = ids(100);
    const full = await generate(t.gen, { token_ids: { ids: prompt }, sampling: greedy(8), budget: { spec: { method: 'FULL' } } });
    const ada = await generate(t.gen, { token_ids: { ids: prompt }, sampling: greedy(8),
      budget: { spec: { method: 'ADA_SNAPKV', tokens_per_head: 40, window: 8 } } });
    expect(full.error).toBeUndefined();
    expect(ada.error).toBeUndefined();
    const fk = full.last!.kv_stats!, ak = ada.last!.kv_stats!;
    expect(Number(fk.kept_tokens)).toBe(Number(fk.full_tokens));
    expect(Number(ak.full_tokens)).toBe(Number(fk.full_tokens));
    expect(Number(ak.kept_tokens)).toBeLessThan(Number(fk.kept_tokens));
    expect(ak.min_head_tokens!).toBeLessThanOrEqual(ak.max_head_tokens!);
    expect(ak.peak_pages!).toBeLessThan(fk.peak_pages!);
  });
});
