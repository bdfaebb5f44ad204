// Issue 16's end-to-end check: `kubectl apply` of a changed KVBudget reaches a running worker (Worker II) through
// the ledger, without a restart, and the worker's next request compresses with it.
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { eventually } from '../kube/client.ts';
import { budgetTarget, fleet, fleetTarget, kvBudget, startCluster, testOperator, type Cluster } from './helpers.ts';
import { generate, inProcessWorker, tinyModel, type TestWorker } from '../worker/helpers.ts';
import { PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';

const redisUrl = inject('redisUrl');

describe('KVBudget -> ledger -> worker', () => {
  let c: Cluster;
  let model: ReturnType<typeof tinyModel>;
  beforeAll(async () => { c = await startCluster(); model = tinyModel(); });
  afterAll(async () => { await c?.server.stop(); model?.cleanup(); });

  it('a changed KVBudget is used by the next request of a running worker within 10 s', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, budgetRef: { name: 'house' } }) });
    await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'house', { method: 'AdaSnapKV', tokensPerHead: 40, window: 8 }) });
    const op = testOperator(c.kc);
    await op.start();
    let w: TestWorker | undefined;
    try {
      w = await inProcessWorker(model.dir, { redis: redisUrl, fleet: `${ns}/llm` });
      // tiny: L = 2, Hk = 2; a 200-token prompt, one new token: the cache holds exactly L * Hk * B prompt tokens
      const req = { token_ids: { ids: Array.from({ length: 200 }, (_, i) => 3 + ((i * 13) % 400)) },
        sampling: { max_new_tokens: 1, temperature: 0, ignore_eos: true } };
      const kept = async () => Number((await generate(w!.gen, req)).last?.kv_stats?.kept_tokens);
      await eventually(async () => (await kept()) === 2 * 2 * 40, 'the worker uses the budget of 40 tokens per head');
      const t0 = Date.now();
      await c.custom.patchNamespacedCustomObject({ ...budgetTarget(ns), name: 'house', body: { spec: { tokensPerHead: 64 } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
      await eventually(async () => (await kept()) === 2 * 2 * 64, 'the worker uses the changed budget of 64 tokens per head');
      expect(Date.now() - t0).toBeLessThan(10_000);
    } finally {
      await w?.stop();
      await op.stop();
    }
  });
});
