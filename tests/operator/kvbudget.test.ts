// The KVBudget reconciler against the in-process API server and a real redis-server: conditions, the fleets'
// ledgers (budgets hash, default key, events channel), idempotence, and informers that outlive 410s and restarts.
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { Redis } from 'ioredis';
import { RedisLedger, fleetKeys, type LedgerEvent } from '../../ledger/index.ts';
import { KVBUDGET_CONTROLLER } from '../../operator/controllers/kvbudget.ts';
import { fleetRedis, FleetRedisError } from '../../operator/ledgers.ts';
import type { Operator } from '../../operator/manager.ts';
import { eventually } from '../kube/client.ts';
import { budgetTarget, fleet, fleetTarget, kubeEvents, kvBudget, startCluster, testOperator, writes, type Cluster } from './helpers.ts';

const redisUrl = inject('redisUrl');

interface BudgetObj {
  metadata: { generation: number };
  status?: { observedGeneration?: number; fleets?: string[];
    conditions?: { type: string; status: string; reason: string; message: string; observedGeneration?: number; lastTransitionTime: string }[] };
}

let c: Cluster;
let redis: Redis;
const ledgers: RedisLedger[] = [];
const stops: (() => Promise<void>)[] = [];

beforeAll(async () => {
  c = await startCluster();
  redis = new Redis(redisUrl);
});
afterEach(async () => { for (const s of stops.splice(0).reverse()) await s(); });
afterAll(async () => {
  for (const l of ledgers) await l.close();
  redis?.disconnect();
  await c?.server.stop();
});

async function ledgerOf(ns: string, name: string): Promise<RedisLedger> {
  const l = await RedisLedger.connect({ redis: redisUrl, namespace: ns, fleet: name });
  ledgers.push(l);
  return l;
}

async function subscribe(l: RedisLedger): Promise<LedgerEvent[]> {
  const events: LedgerEvent[] = [];
  const sub = await l.subscribe((e) => events.push(e));
  stops.push(() => sub.close());
  return events;
}

async function running(ns?: string): Promise<Operator> {
  const op = testOperator(c.kc, { namespace: ns });
  stops.push(() => op.stop());
  await op.start();
  return op;
}

const getBudget = async (ns: string, name: string) =>
  await c.custom.getNamespacedCustomObject({ ...budgetTarget(ns), name }) as BudgetObj;
const accepted = (b: BudgetObj) => b.status?.conditions?.find((x) => x.type === 'Accepted');

describe('KVBudget reconciler', () => {
  it('accepts a valid budget, writes it to the ledger of the fleet that names it and sets the fleet default', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, budgetRef: { name: 'snap' } }) });
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'other', { redis: { url: redisUrl } }) });
    await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'snap', { method: 'AdaSnapKV', tokensPerHead: 512 }) });
    await running();
    const b = await eventually(async () => { const x = await getBudget(ns, 'snap'); return accepted(x)?.status === 'True' && x; }, 'Accepted=True');
    expect(accepted(b)).toMatchObject({ status: 'True', reason: 'Valid', observedGeneration: 1, message: 'valid AdaSnapKV budget: 512 tokens per KV head' });
    expect(b.status).toMatchObject({ observedGeneration: 1, fleets: ['llm'] });
    const l = await ledgerOf(ns, 'llm');
    expect(await l.getBudget('snap')).toEqual({ method: 'ADA_SNAPKV', tokens_per_head: 512, window: 32, pool_kernel: 7, pooling: 'MAX',
      gqa_reduce: 'MEAN', floor_alpha: 0.2, pyramid_beta: 20, decode_max_tokens_per_head: 0 });
    expect(await l.getDefaultBudget()).toBe('snap');
    // a fleet that does not name the budget gets nothing
    expect(await redis.exists(fleetKeys(ns, 'other').budgets, fleetKeys(ns, 'other').budget)).toBe(0);
  });

  it('reports Accepted=False naming the field when the engine refuses what the schema let through, and writes nothing', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, allowedBudgets: ['tiny'] }) });
    // 1e-50 is inside the schema's (0, 1], but it is 0 as the engine's float32: no budget at all
    await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'tiny', { method: 'SnapKV', keepRatio: 1e-50 }) });
    await running();
    const b = await eventually(async () => { const x = await getBudget(ns, 'tiny'); return accepted(x) && x; }, 'an Accepted condition');
    expect(accepted(b)).toMatchObject({ status: 'False', reason: 'InvalidSpec', observedGeneration: 1 });
    expect(accepted(b)!.message).toMatch(/^spec\.keepRatio must be in \(0, 1\]/);
    expect(b.status!.fleets).toEqual(['llm']);
    expect(await redis.exists(fleetKeys(ns, 'llm').budgets)).toBe(0);
    // `kubectl describe kvbudget tiny` says why, once
    const evs = await eventually(() => { const e = kubeEvents(c.server, ns, 'KVBudget', 'tiny'); return e.length > 0 && e; }, 'a KVBudget Event');
    expect(evs.map((e) => [e.type, e.reason, e.action])).toEqual([['Warning', 'InvalidSpec', 'Validate']]);
    expect(evs[0].note).toBe(accepted(b)!.message);
    expect(evs[0].eventTime).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/);
  });

  it('a changed KVBudget reaches the fleet ledger and its events channel within 10 s, without a restart', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, budgetRef: { name: 'b' } }) });
    await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'b', { method: 'AdaSnapKV', tokensPerHead: 256 }) });
    await running();
    const l = await ledgerOf(ns, 'llm');
    await eventually(async () => (await l.getBudget('b'))?.tokens_per_head === 256, 'the first version in the ledger');
    const events = await subscribe(l);
    const t0 = Date.now();
    await c.custom.patchNamespacedCustomObject({ ...budgetTarget(ns), name: 'b', body: { spec: { tokensPerHead: null, keepRatio: 0.25, method: 'AdaPyramidKV' } } },
      (await import('../../operator/runtime/kube.ts')).MERGE_PATCH);
    const ev = await eventually(() => events.find((e) => e.type === 'budget'), 'a budget event', 10_000);
    const elapsed = Date.now() - t0;
    const want = { method: 'ADA_PYRAMIDKV', keep_ratio: 0.25, window: 32, pool_kernel: 7, pooling: 'MAX', gqa_reduce: 'MEAN', floor_alpha: 0.2,
      pyramid_beta: 20, decode_max_tokens_per_head: 0 };
    expect(ev).toEqual({ type: 'budget', name: 'b', spec: want });
    expect(await l.getBudget('b')).toEqual(want);
    expect(elapsed).toBeLessThan(10_000);
    await eventually(async () => (await getBudget(ns, 'b')).status?.observedGeneration === 2, 'observedGeneration 2');
  });

  it('reconciling twice changes nothing the second time: no API writes, no ledger writes, no events', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, budgetRef: { name: 'b' },
      allowedBudgets: ['b', 'long'] }) });
    await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'b', { method: 'SnapKV', keepRatio: 0.5 }) });
    // informers only: the test drives the reconciler itself
    const op = testOperator(c.kc, { namespace: ns });
    stops.push(() => op.stop());
    await op.startInformers();
    const l = await ledgerOf(ns, 'llm');
    const events = await subscribe(l);
    const r = op.reconciler(KVBUDGET_CONTROLLER);
    c.server.clearCalls();
    await r.reconcile(`${ns}/b`);
    await op.events.flush();
    expect(writes(c.server, ns).map((w) => `${w.verb} ${w.resource}/${w.subresource}`)).toEqual(['patch kvbudgets/status', 'create events/']);
    expect(kubeEvents(c.server, ns, 'KVBudget', 'b').map((e) => [e.type, e.reason])).toEqual([['Normal', 'Valid']]);
    await eventually(() => events.length === 2, 'set budget and default events');
    expect(events.map((e) => e.type)).toEqual(['budget', 'default_budget']);
    const first = await getBudget(ns, 'b');
    c.server.clearCalls();
    await r.reconcile(`${ns}/b`);
    await op.events.flush();
    expect(writes(c.server, ns)).toEqual([]);
    await new Promise((res) => setTimeout(res, 200)); // an event would have arrived by now
    expect(events).toHaveLength(2);
    expect(await getBudget(ns, 'b')).toEqual(first);
  });

  it('removes the budget from a fleet that stops naming it and from every fleet when it is deleted', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'a', { redis: { url: redisUrl }, budgetRef: { name: 'b' } }) });
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'z', { redis: { url: redisUrl }, allowedBudgets: ['b'] }) });
    await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'b', { method: 'Full' }) });
    await running(ns);
    const [la, lz] = [await ledgerOf(ns, 'a'), await ledgerOf(ns, 'z')];
    await eventually(async () => (await la.getDefaultBudget()) === 'b' && (await lz.getBudget('b')) !== null, 'both ledgers');
    expect(await lz.getDefaultBudget()).toBeNull();
    expect((await getBudget(ns, 'b')).status?.fleets).toEqual(['a', 'z']);

    const { MERGE_PATCH } = await import('../../operator/runtime/kube.ts');
    await c.custom.patchNamespacedCustomObject({ ...fleetTarget(ns), name: 'z', body: { spec: { allowedBudgets: [] } } }, MERGE_PATCH);
    await eventually(async () => (await lz.getBudget('b')) === null, 'b removed from fleet z');
    await eventually(async () => (await getBudget(ns, 'b')).status?.fleets?.join() === 'a', 'status.fleets without z');

    await c.custom.deleteNamespacedCustomObject({ ...budgetTarget(ns), name: 'b' });
    await eventually(async () => (await la.getBudget('b')) === null && (await la.getDefaultBudget()) === null, 'b and the default gone from fleet a');
  });

  it('reads the Redis password from the Secret named by passwordSecretRef', async () => {
    const ns = await c.namespace();
    const user = `op-${process.pid}`;
    await redis.call('ACL', 'SETUSER', user, 'on', '>s3cret pw', '~*', '&*', '+@all');
    const url = `redis://${user}@${new URL(redisUrl).host}`;
    await c.core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'redis' }, stringData: { password: 's3cret pw' } } });
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'secure', { budgetRef: { name: 'b' },
      redis: { url, passwordSecretRef: { name: 'redis', key: 'password' } } }) });
    const f = c.server.object('kvfleet.io', 'fleets', ns, 'secure') as never;
    expect(await fleetRedis(f, c.core)).toEqual({ url, password: 's3cret pw' });
    const missingKey = structuredClone(f) as { spec: { redis: { passwordSecretRef: { key: string } } } };
    missingKey.spec.redis.passwordSecretRef.key = 'nope';
    await expect(fleetRedis(missingKey as never, c.core)).rejects.toThrow(FleetRedisError);
    await expect(fleetRedis(missingKey as never, c.core)).rejects.toThrow(/spec\.redis\.passwordSecretRef: Secret redis has no key 'nope'/);

    await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'b', { method: 'AdaSnapKV', tokensPerHead: 100 }) });
    await running(ns);
    const l = await ledgerOf(ns, 'secure');
    await eventually(async () => (await l.getBudget('b'))?.tokens_per_head === 100, 'the budget through the password-protected user');
    await redis.call('ACL', 'DELUSER', user);
  });
});

describe('informers under API server failures', () => {
  it('keep reconciling after a 410 Gone and after an API server restart', async () => {
    const own = await startCluster();
    stops.push(() => own.server.stop());
    const ns = await own.namespace();
    await own.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, budgetRef: { name: 'b' } }) });
    await own.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'b', { method: 'AdaSnapKV', tokensPerHead: 64 }) });
    const op = testOperator(own.kc);
    stops.push(() => op.stop());
    await op.start();
    const l = await ledgerOf(ns, 'llm');
    await eventually(async () => (await l.getBudget('b'))?.tokens_per_head === 64, 'the first version');
    // the first reconcile has finished (its status is written) before the API server goes away
    await eventually(() => (own.server.object('kvfleet.io', 'kvbudgets', ns, 'b')?.status as BudgetObj['status'])?.observedGeneration === 1,
      'the status of the first version');

    // The API server goes away; a change lands meanwhile and the watch history is compacted, so the informer's
    // resume gets 410 Gone and has to relist to see it.
    const budgetLists = () => own.server.calls().filter((x) => x.verb === 'list' && x.resource === 'kvbudgets').length;
    const listsBefore = budgetLists();
    await own.server.stop();
    const b = own.server.object('kvfleet.io', 'kvbudgets', ns, 'b')!;
    own.server.put({ ...b, spec: { ...(b.spec as object), tokensPerHead: 128 } });
    own.server.compact();
    await new Promise((r) => setTimeout(r, 300)); // let the informers fail and back off
    await own.server.resume();
    // the informer's cache can only get it by relisting (the watch history is gone)
    await eventually(() => op.budgets.get('b', ns)?.spec.tokensPerHead === 128, 'the informer cache to hold the change', 10_000);
    expect(budgetLists()).toBeGreaterThan(listsBefore);
    await eventually(async () => (await l.getBudget('b'))?.tokens_per_head === 128, 'the change made while the API server was down', 10_000);

    // A restart that keeps state: the watch resumes, and later changes still arrive.
    await own.server.restart({ keepState: true });
    const { MERGE_PATCH } = await import('../../operator/runtime/kube.ts');
    await own.custom.patchNamespacedCustomObject({ ...budgetTarget(ns), name: 'b', body: { spec: { tokensPerHead: 200 } } }, MERGE_PATCH);
    await eventually(() => op.budgets.get('b', ns)?.spec.tokensPerHead === 200, 'the informer to see a change after the restart', 10_000);
    await eventually(async () => (await l.getBudget('b'))?.tokens_per_head === 200, 'a change after the restart', 10_000);
    expect(await op.metrics.informerRestarts.get().then((m) => m.values.reduce((s, v) => s + v.value, 0))).toBeGreaterThan(0);
  });
});
