// A scale-down drain survives a change of operator (leader failover, restart): the first operator records the drain
// in the Fleet's status and orders the least-loaded worker to drain; it stops while that worker still runs work.
// A second operator, with nothing in memory, must finish that drain (the same worker marked for removal, the count
// lowered once it is idle) and must not choose another worker to drain. Workers here are scripted ledger entries
// that behave as real ones do: a drain order makes the worker report draining, an undrain order takes it back.
// And a drain dropped because the count changed under it (a user set spec.workers.replicas) takes its orders back.
import { PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { afterAll, beforeAll, expect, inject, it } from 'vitest';
import { RedisLedger, type WorkerFields } from '../../ledger/index.ts';
import { DRAINED_COST, POD_DELETION_COST } from '../../operator/autoscaler.ts';
import { eventually } from '../kube/client.ts';
import type { JsonObject } from '../kube/patch.ts';
import { fleet, fleetTarget, kubeEvents, readyWorkerPod, startCluster, testOperator, type Cluster } from './helpers.ts';

const redisUrl = inject('redisUrl');
let c: Cluster;
const stops: (() => Promise<void>)[] = [];
beforeAll(async () => { c = await startCluster(); });
afterAll(async () => {
  for (const s of stops.reverse()) await s();
  await c?.server.stop();
});

const ann = (ns: string, name: string) =>
  ((c.server.object('', 'pods', ns, name)!.metadata as JsonObject).annotations as Record<string, string> | undefined) ?? {};

type FleetObj = { spec: { workers: { replicas: number } }; status?: { scaleDown?: JsonObject } };

/** A Fleet of 2 ready worker pods, autoscaled, with both workers in the ledger as scripted entries that follow
 *  drain and undrain orders: a (one stream, the least loaded) and b (five streams). */
async function twoWorkerFleet(ns: string) {
  await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', {
    redis: { url: redisUrl }, workers: { replicas: 2 },
    autoscaling: { enabled: true, minReplicas: 1, maxReplicas: 4, targetKVPressure: 0.7, scaleUpStabilizationSeconds: 0,
      scaleDownStabilizationSeconds: 0, drainTimeoutSeconds: 300 },
  }) });
  for (const name of ['llm-workers-a', 'llm-workers-b']) readyWorkerPod(c.server, ns, 'llm', name);
  const ledger = await RedisLedger.connect({ redis: redisUrl, namespace: ns, fleet: 'llm' });
  stops.push(() => ledger.close());
  const fields: Record<string, WorkerFields> = {
    'llm-workers-a': { addr: '127.0.0.1:1', total_pages: 100, free_pages: 95, page_size: 16, num_layers: 2, num_kv_heads: 2, running: 1, waiting: 0, draining: false },
    'llm-workers-b': { addr: '127.0.0.1:2', total_pages: 100, free_pages: 90, page_size: 16, num_layers: 2, num_kv_heads: 2, running: 5, waiting: 0, draining: false },
  };
  const orders: string[] = [], undrains: string[] = [];
  const sub = await ledger.subscribe((ev) => {
    if (ev.type !== 'drain' && ev.type !== 'undrain') return;
    (ev.type === 'drain' ? orders : undrains).push(ev.worker_id);
    if (fields[ev.worker_id]) fields[ev.worker_id].draining = ev.type === 'drain';
  });
  stops.push(() => sub.close());
  const beatAll = () => Promise.all(Object.entries(fields).map(([id, f]) => ledger.heartbeat(id, f).catch(() => undefined)));
  const beat = setInterval(() => { void beatAll(); }, 100);
  stops.push(async () => clearInterval(beat));
  await beatAll();
  const fleetObj = () => c.server.object('kvfleet.io', 'fleets', ns, 'llm')! as FleetObj;
  return { fields, orders, undrains, fleetObj };
}

/** twoWorkerFleet with an operator running and its Deployment rolled out, once the autoscaler's scale-down 2 -> 1
 *  has worker a (the least loaded, still running its stream) draining. */
async function drainingFleet(ns: string) {
  const f = await twoWorkerFleet(ns);
  const op = testOperator(c.kc, { namespace: ns });
  stops.push(() => op.stop());
  await op.start();
  await eventually(() => c.server.object('apps', 'deployments', ns, 'llm-workers') !== undefined, 'the worker Deployment');
  c.server.setDeploymentStatus(ns, 'llm-workers');
  await eventually(() => f.fields['llm-workers-a'].draining, 'worker a draining', 10_000);
  return { ...f, op };
}

it('a second operator finishes the first one\'s scale-down drain and drains no other worker', async () => {
  const ns = await c.namespace();
  const { fields, orders, undrains, fleetObj, op: op1 } = await drainingFleet(ns);
  expect(orders).toEqual(['llm-workers-a']);
  await eventually(() => fleetObj().status?.scaleDown !== undefined, 'the drain recorded in status', 10_000);
  expect(fleetObj().status!.scaleDown).toMatchObject({ fromReplicas: 2, targetReplicas: 1, pods: ['llm-workers-a'] });
  await new Promise((r) => setTimeout(r, 300)); // a few drain polls: a still runs its stream, nothing is lowered
  expect(fleetObj().spec.workers.replicas).toBe(2);
  await op1.stop();

  // the next leader knows nothing but what the API server and the ledger say
  const op2 = testOperator(c.kc, { namespace: ns });
  stops.push(() => op2.stop());
  await op2.start();
  await new Promise((r) => setTimeout(r, 1000)); // several reconciles while a is still busy
  expect(fleetObj().spec.workers.replicas).toBe(2);
  expect(orders.filter((o) => o === 'llm-workers-b')).toEqual([]);

  fields['llm-workers-a'].running = 0; // a's stream finishes
  await eventually(() => fleetObj().spec.workers.replicas === 1, 'the Fleet scaled to 1', 15_000);
  expect(ann(ns, 'llm-workers-a')[POD_DELETION_COST]).toBe(DRAINED_COST);
  expect(ann(ns, 'llm-workers-b')[POD_DELETION_COST]).toBeUndefined();
  expect(orders.filter((o) => o === 'llm-workers-b')).toEqual([]);
  expect(undrains).toEqual([]);
  await eventually(() => fleetObj().status?.scaleDown === undefined, 'the record removed once done', 10_000);
  // what `kubectl describe fleet llm` shows: each step once, from whichever operator took it
  await op2.stop();
  const steps = kubeEvents(c.server, ns, 'Fleet', 'llm').map((e) => [e.type, e.reason]);
  expect(steps).toEqual([['Normal', 'DrainingWorkers'], ['Normal', 'ScaleDownResumed'], ['Normal', 'ScaledDown']]);
  expect(kubeEvents(c.server, ns, 'Fleet', 'llm')[2].note).toMatch(/^workers 2 -> 1 after draining llm-workers-a/);
}, 60_000);

it('a scale-down dropped because spec.workers.replicas changed under it takes its drain orders back', async () => {
  const ns = await c.namespace();
  const { fields, orders, undrains, fleetObj, op } = await drainingFleet(ns);
  expect(fleetObj().status?.scaleDown).toMatchObject({ fromReplicas: 2, targetReplicas: 1, pods: ['llm-workers-a'] });
  expect(undrains).toEqual([]);
  // a user wants three workers, and no fewer, while a still runs its stream
  // as if a leader had marked a's pod for removal and stopped before lowering the count: the drop takes it back
  await c.core.patchNamespacedPod({ namespace: ns, name: 'llm-workers-a', body: { metadata: { annotations: { [POD_DELETION_COST]: DRAINED_COST } } } },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
  await c.custom.patchNamespacedCustomObject({ ...fleetTarget(ns), name: 'llm',
    body: { spec: { workers: { replicas: 3 }, autoscaling: { minReplicas: 3 } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
  await eventually(() => undrains.includes('llm-workers-a'), 'an undrain order to worker a', 10_000);
  await eventually(() => !fields['llm-workers-a'].draining, 'worker a serving again');
  await eventually(() => fleetObj().status?.scaleDown === undefined, 'the dropped drain\'s record removed', 10_000);
  await new Promise((r) => setTimeout(r, 500)); // a few reconciles: nothing drains again, nothing is lowered
  expect(fleetObj().spec.workers.replicas).toBe(3);
  expect(orders).toEqual(['llm-workers-a']);
  // sent again while the ledger still showed a draining (until its next heartbeat): only ever to a
  expect([...new Set(undrains)]).toEqual(['llm-workers-a']);
  expect(fields['llm-workers-a'].draining).toBe(false);
  expect(ann(ns, 'llm-workers-a')[POD_DELETION_COST]).toBeUndefined();
  await op.stop();
  const dropped = kubeEvents(c.server, ns, 'Fleet', 'llm').filter((e) => e.reason === 'ScaleDownDropped');
  expect(dropped.map((e) => [e.type, e.action])).toEqual([['Warning', 'Undrain']]);
  expect(dropped[0].note).toMatch(/spec\.workers\.replicas changed to 3 during the scale-down from 2 to 1: dropped it; llm-workers-a admit requests again/);
}, 60_000);

it('turning autoscaling off during a scale-down drops it and takes its drain orders back', async () => {
  const ns = await c.namespace();
  const { fields, undrains, fleetObj } = await drainingFleet(ns);
  await c.custom.patchNamespacedCustomObject({ ...fleetTarget(ns), name: 'llm', body: { spec: { autoscaling: { enabled: false } } } },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
  await eventually(() => undrains.includes('llm-workers-a'), 'an undrain order to worker a', 10_000);
  await eventually(() => fleetObj().status?.scaleDown === undefined, 'the dropped drain\'s record removed', 10_000);
  expect(fleetObj().spec.workers.replicas).toBe(2);
  expect(fields['llm-workers-a'].draining).toBe(false);
}, 60_000);

it('a count set to the drain\'s own target by hand removes exactly the drained worker', async () => {
  const ns = await c.namespace();
  const { undrains, fleetObj } = await drainingFleet(ns);
  expect(ann(ns, 'llm-workers-a')[POD_DELETION_COST]).toBeUndefined(); // a is still busy: not marked yet
  await c.custom.patchNamespacedCustomObject({ ...fleetTarget(ns), name: 'llm', body: { spec: { workers: { replicas: 1 } } } },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
  await eventually(() => fleetObj().status?.scaleDown === undefined, 'the record removed', 10_000);
  expect(ann(ns, 'llm-workers-a')[POD_DELETION_COST]).toBe(DRAINED_COST);
  expect(ann(ns, 'llm-workers-b')[POD_DELETION_COST]).toBeUndefined();
  expect(undrains).toEqual([]);
}, 60_000);

it('a replica that lost leadership and leads again starts from the Fleet\'s status, not from the drain it remembers', async () => {
  const ns = await c.namespace();
  const { fields, orders, fleetObj, op: op1 } = await drainingFleet(ns);
  await eventually(() => fleetObj().status?.scaleDown !== undefined, 'the drain recorded in status', 10_000);
  await op1.stopControllers();   // leadership lost (informers stay, as under leader election)

  // the next leader finishes the drain (2 -> 1, a removed) ...
  const op2 = testOperator(c.kc, { namespace: ns });
  stops.push(() => op2.stop());
  await op2.start();
  fields['llm-workers-a'].running = 0;
  await eventually(() => fleetObj().spec.workers.replicas === 1 && fleetObj().status?.scaleDown === undefined, 'op2 to finish the drain', 15_000);
  await op2.stop();
  delete fields['llm-workers-a'];
  await c.core.deleteNamespacedPod({ namespace: ns, name: 'llm-workers-a' });
  // ... and the count goes back to 2 (a new worker c, busy): the count op1's stale drain started from
  await c.custom.patchNamespacedCustomObject({ ...fleetTarget(ns), name: 'llm', body: { spec: { workers: { replicas: 2 } } } },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
  fields['llm-workers-c'] = { addr: '127.0.0.1:3', total_pages: 100, free_pages: 60, page_size: 16, num_layers: 2, num_kv_heads: 2, running: 3, waiting: 0, draining: false };
  readyWorkerPod(c.server, ns, 'llm', 'llm-workers-c');
  const ordersBefore = orders.length;

  // op1 leads again. Acting on its remembered drain (from 2, of a) would lower the count to 1 at once, with no
  // drain order to anyone: a serving worker removed mid-stream
  op1.startControllers();
  const t0 = performance.now();
  while (performance.now() - t0 < 1500 && fleetObj().spec.workers.replicas === 2) await new Promise((r) => setTimeout(r, 50));
  if (fleetObj().spec.workers.replicas < 2) {
    const newOrders = orders.slice(ordersBefore);
    expect(newOrders.length, 'a scale-down without a drain order first').toBeGreaterThan(0);
    expect(newOrders).not.toContain('llm-workers-a');
  }
}, 60_000);
