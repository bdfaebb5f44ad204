// Leader election between two operator instances (the code `kvfleet operator --leader-elect` runs) on one Lease in
// the in-process API server: one leads, the standby is ready but idle; the leader stops (SIGTERM path: release) and
// the standby leads within the lease duration; a Lease taken by someone else makes the leader stop at once; and at
// no time do the Fleet reconciles of the two instances overlap.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, inject, it } from 'vitest';
import { CoordinationV1Api, type V1Lease } from '@kubernetes/client-node';
import { FleetReconciler } from '../../operator/controllers/fleet.ts';
import { parseOperatorConfig } from '../../operator/config.ts';
import { startOperator, type RunningOperator } from '../../operator/main.ts';
import { LeaderElector } from '../../operator/runtime/leader.ts';
import { eventually } from '../kube/client.ts';
import { fleet, fleetTarget, silentLog, startCluster, type Cluster } from './helpers.ts';

const redisUrl = inject('redisUrl');
const LEASE_MS = 1500;
let c: Cluster;
let dir: string;
const running: RunningOperator[] = [];
const realReconcile = FleetReconciler.prototype.reconcile;

beforeAll(async () => {
  c = await startCluster();
  dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-op-leader-'));
});
afterAll(async () => {
  FleetReconciler.prototype.reconcile = realReconcile;
  for (const r of running) await r.stop();
  await c?.server.stop();
  rmSync(dir, { recursive: true, force: true });
});

it('one instance leads; stopped, the other leads within the lease duration; reconciles never overlap', async () => {
  const ns = await c.namespace();
  const kubeconfig = path.join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, c.kc.exportConfig());
  await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl } }) });

  // every Fleet reconcile of either instance, as [instance, start, end]
  const runs: { who: FleetReconciler; start: number; end: number }[] = [];
  FleetReconciler.prototype.reconcile = async function (this: FleetReconciler, key: string) {
    const start = performance.now();
    try { return await realReconcile.call(this, key); } finally { runs.push({ who: this, start, end: performance.now() }); }
  };

  const start = async (identity: string) => {
    const cfg = parseOperatorConfig({ kubeconfig, namespace: ns, metricsPort: 0, healthPort: 0, bindAddress: '127.0.0.1', leaderElect: true,
      logLevel: 'silent', resyncSeconds: 0 }, { KVFLEET_LEASE_NAME: 'kvfleet-leader', POD_NAMESPACE: ns, POD_NAME: identity });
    const r = await startOperator(cfg, silentLog, { leaseDurationMs: LEASE_MS, renewMs: 500, renewDeadlineMs: 1000, retryMs: 100 });
    running.push(r);
    return r;
  };
  const a = await start('op-a');
  const b = await start('op-b');
  const leader = await eventually(() => (a.elector!.isLeader ? a : b.elector!.isLeader ? b : undefined), 'a leader', 5000);
  const standby = leader === a ? b : a;
  const ids = new Map([[a, 'op-a'], [b, 'op-b']]);
  expect(standby.elector!.isLeader).toBe(false);
  const lease = () => c.server.object('coordination.k8s.io', 'leases', ns, 'kvfleet-leader') as { spec: { holderIdentity: string; leaseTransitions?: number } };
  expect(lease().spec.holderIdentity).toBe(ids.get(leader));
  // the leader reconciles (the Fleet gets a status); the standby's controllers are stopped but it is ready
  await eventually(() => (c.server.object('kvfleet.io', 'fleets', ns, 'llm')!.status as { observedGeneration?: number } | undefined)?.observedGeneration === 1,
    'the leader to reconcile the Fleet');
  expect(leader.operator.controllersRunning).toBe(true);
  expect(standby.operator.controllersRunning).toBe(false);
  for (const r of [leader, standby]) expect((await fetch(`http://127.0.0.1:${r.healthPort}/readyz`)).status).toBe(200);
  expect((await leader.operator.metrics.leader.get()).values[0].value).toBe(1);
  expect((await standby.operator.metrics.leader.get()).values[0].value).toBe(0);
  const leaderReconciler = leader.operator.reconciler('fleet');
  const standbyReconciler = standby.operator.reconciler('fleet');
  await new Promise((r) => setTimeout(r, 600)); // a renewal or two
  expect(runs.some((x) => x.who === leaderReconciler)).toBe(true);
  expect(runs.some((x) => x.who === standbyReconciler)).toBe(false);

  // the leader stops (what SIGTERM does): controllers finish, the Lease is released, the standby takes over
  const t0 = performance.now();
  await leader.stop();
  const stoppedAt = performance.now();
  await eventually(() => standby.elector!.isLeader, 'the standby to lead', LEASE_MS);
  expect(performance.now() - t0).toBeLessThan(LEASE_MS);
  expect(lease().spec.holderIdentity).toBe(ids.get(standby));
  // the new leader reconciles (resync on start queues every Fleet)
  await eventually(() => runs.some((x) => x.who === standbyReconciler && x.start >= stoppedAt), 'a reconcile by the new leader');
  expect(runs.filter((x) => x.who === leaderReconciler).every((x) => x.end <= stoppedAt)).toBe(true);

  // someone else writes the Lease (its renewal then sees another holder, or gets 409): the leader stops at once
  const l = lease();
  c.server.put({ ...l, spec: { ...l.spec, holderIdentity: 'intruder', renewTime: new Date().toISOString() } } as never);
  await eventually(() => !standby.elector!.isLeader, 'the leader to step down', 2000);
  expect(standby.operator.controllersRunning).toBe(false);

  // no two reconciles of different instances ever overlapped in time
  const byA = runs.filter((x) => x.who === leaderReconciler);
  const byB = runs.filter((x) => x.who === standbyReconciler);
  for (const x of byA) for (const y of byB) expect(x.end <= y.start || y.end <= x.start).toBe(true);
}, 60_000);

it('a leader whose Lease calls hang (a black-holed connection) stops leading at its renew deadline; never two leaders', async () => {
  const ns = await c.namespace();
  const real = c.kc.makeApiClient(CoordinationV1Api);
  let partitioned = false;
  const hang = new Promise<never>(() => { /* no RST, no client timeout */ });
  const blackHoled = {
    readNamespacedLease: (a: { name: string; namespace: string }) => (partitioned ? hang : real.readNamespacedLease(a)),
    createNamespacedLease: (a: { namespace: string; body: V1Lease }) => (partitioned ? hang : real.createNamespacedLease(a)),
    replaceNamespacedLease: (a: { name: string; namespace: string; body: V1Lease }) => (partitioned ? hang : real.replaceNamespacedLease(a)),
  };
  // when each candidate leads, from its own point of view: [start, end)
  const spans: Record<string, Array<[number, number]>> = { A: [], B: [] };
  const mk = (identity: 'A' | 'B', api: typeof blackHoled) => new LeaderElector({ api, namespace: ns, name: 'lease', identity,
    leaseDurationMs: LEASE_MS, renewMs: 500, renewDeadlineMs: 1000, retryMs: 100, log: silentLog,
    onStart: () => { spans[identity].push([performance.now(), Infinity]); },
    onStop: () => { spans[identity].at(-1)![1] = performance.now(); } });
  const A = mk('A', blackHoled), B = mk('B', real);
  try {
    A.start();
    await eventually(() => A.isLeader, 'A to lead', 3000);
    B.start();
    await new Promise((r) => setTimeout(r, 700));
    expect(B.isLeader).toBe(false);
    partitioned = true;
    const cut = performance.now();
    await eventually(() => B.isLeader, 'B to take over after the lease expires', 4 * LEASE_MS);
    // A stepped down on its own clock, within its renew deadline of its last renewal, so before B could take over
    expect(A.isLeader).toBe(false);
    expect(spans.A).toHaveLength(1);
    expect(spans.A[0][1] - cut).toBeLessThan(1000 + 100);
    expect(spans.A[0][1]).toBeLessThanOrEqual(spans.B[0][0]);
    // A's loop goes on (each hung call is abandoned): healed, it is a standby that sees B holding the Lease
    partitioned = false;
    await new Promise((r) => setTimeout(r, 3 * 500));
    expect(A.isLeader).toBe(false);
    expect(B.isLeader).toBe(true);
  } finally {
    await A.release();
    await B.release();
  }
}, 30_000);
