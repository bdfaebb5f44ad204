// `kvfleet operator` as a child process against the in-process API server (a kubeconfig file written here) and a
// real redis-server: it reconciles a KVBudget into the fleet's ledger, serves /metrics, /healthz and /readyz, and
// exits 0 on SIGTERM.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, inject, it } from 'vitest';
import { RedisLedger } from '../../ledger/index.ts';
import { freePort } from '../harness/ports.ts';
import { spawnKvfleet, type KvfleetProcess } from '../harness/proc.ts';
import { eventually } from '../kube/client.ts';
import { budgetTarget, fleet, fleetTarget, kvBudget, startCluster, type Cluster } from './helpers.ts';

const redisUrl = inject('redisUrl');
let c: Cluster;
let dir: string;
let proc: KvfleetProcess | undefined;
let ledger: RedisLedger | undefined;

beforeAll(async () => {
  c = await startCluster();
  dir = mkdtempSync(path.join(os.tmpdir(), 'kvfleet-operator-'));
});
afterAll(async () => {
  await proc?.stop();
  await ledger?.close();
  await c?.server.stop();
  rmSync(dir, { recursive: true, force: true });
});

it('runs from a kubeconfig file, reconciles a KVBudget, serves metrics and health, and stops on SIGTERM', async () => {
  const ns = await c.namespace();
  const kubeconfig = path.join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, c.kc.exportConfig()); // JSON is YAML: what kubectl would read
  await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, budgetRef: { name: 'snap' } }) });
  await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'snap', { method: 'SnapKV', tokensPerHead: 300 }) });

  // --namespace: a budget elsewhere is never reconciled
  const other = await c.namespace();
  await c.custom.createNamespacedCustomObject({ ...budgetTarget(other), body: kvBudget(other, 'x', { method: 'Full' }) });

  const metricsPort = await freePort();
  proc = spawnKvfleet(['operator', '--kubeconfig', kubeconfig, '--namespace', ns, '--metrics-port', String(metricsPort),
    '--bind-address', '127.0.0.1', '--log-level', 'debug']);
  await proc.waitFor(/operator running/, 30_000);

  ledger = await RedisLedger.connect({ redis: redisUrl, namespace: ns, fleet: 'llm' });
  await eventually(async () => (await ledger!.getBudget('snap'))?.tokens_per_head === 300
    && (await ledger!.getDefaultBudget()) === 'snap', 'the budget and the default in the fleet ledger', 10_000);
  const b = await eventually(async () => {
    const x = await c.custom.getNamespacedCustomObject({ ...budgetTarget(ns), name: 'snap' }) as
      { status?: { conditions?: { type: string; status: string }[]; fleets?: string[] } };
    return x.status?.conditions?.some((k) => k.type === 'Accepted' && k.status === 'True') && x;
  }, 'Accepted=True');
  expect(b.status!.fleets).toEqual(['llm']);

  const base = `http://127.0.0.1:${metricsPort}`;
  expect((await fetch(`${base}/healthz`)).status).toBe(200);
  expect((await fetch(`${base}/readyz`)).status).toBe(200);
  const metrics = await (await fetch(`${base}/metrics`)).text();
  const m = metrics.match(/^kvfleet_operator_reconcile_total\{controller="kvbudget",result="success"\} (\d+)$/m);
  expect(m, metrics.slice(0, 2000)).not.toBeNull();
  expect(Number(m![1])).toBeGreaterThanOrEqual(1);
  expect(metrics).toMatch(/^kvfleet_operator_ledger_writes_total\{op="set_budget"\} 1$/m);
  expect(metrics).toMatch(/^kvfleet_operator_reconcile_duration_seconds_count\{controller="kvbudget"\} \d+$/m);

  const code = await proc.stop(10_000);
  expect(code).toBe(0);
  expect(proc.output()).toMatch(/shutdown complete/);
  expect(c.server.object('kvfleet.io', 'kvbudgets', other, 'x')!.status).toBeUndefined();
});

it('stops on SIGTERM while the API server is unreachable (its caches never sync)', async () => {
  // a kubeconfig whose server refuses every connection
  const kubeconfig = path.join(dir, 'kubeconfig-unreachable');
  const port = await freePort();
  const kc = JSON.parse(c.kc.exportConfig()) as { clusters: { cluster: { server: string } }[] };
  for (const x of kc.clusters) x.cluster.server = `http://127.0.0.1:${port}`;
  writeFileSync(kubeconfig, JSON.stringify(kc));
  const p = spawnKvfleet(['operator', '--kubeconfig', kubeconfig, '--metrics-port', '0', '--log-level', 'info']);
  try {
    await p.waitFor(/operator listening/, 30_000);
    await new Promise((r) => setTimeout(r, 1000));   // the informers are retrying
    const t0 = Date.now();
    const code = await p.stop(10_000);   // SIGTERM; SIGKILL only after 10 s
    expect(code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(p.output()).toMatch(/stopped before the caches synced/);
  } finally {
    await p.stop(1000);
  }
}, 60_000);
