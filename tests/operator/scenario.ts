// The operator end to end, as the Helm chart deploys it (`--leader-elect`, every namespace, its Lease in its own
// namespace), against the in-process API server and a real redis-server, doing everything it can do: KVBudget and
// Fleet reconciles, a managed Redis (password Secret created), a Fleet switched to an external Redis (the managed one
// deleted), autoscaling up through the scale subresource and down with a drain (pods patched with
// pod-deletion-cost), status updates, and the Lease released on stop. Returns the API server's record of the
// operator's calls: tests/packaging/rbac.test.ts checks the chart's RBAC grants exactly these.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { RedisLedger, type WorkerFields } from '../../ledger/index.ts';
import { parseOperatorConfig } from '../../operator/config.ts';
import { startOperator } from '../../operator/main.ts';
import type { CallRecord } from '../kube/apiserver.ts';
import { eventually } from '../kube/client.ts';
import type { JsonObject } from '../kube/patch.ts';
import { budgetTarget, fleet, fleetTarget, kvBudget, silentLog, startCluster } from './helpers.ts';

/** The Fleets' namespace: unique per run, so concurrent runs never share ledger keys in the one redis-server. */
export const SCENARIO_FLEET_NS = `ml-${randomUUID().slice(0, 8)}`;
export const SCENARIO_OPERATOR_NS = 'kvfleet';

export async function operatorScenario(redisUrl: string): Promise<CallRecord[]> {
  const c = await startCluster();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-op-scenario-'));
  const ledger = await RedisLedger.connect({ redis: redisUrl, namespace: SCENARIO_FLEET_NS, fleet: 'llm' });
  let beat: NodeJS.Timeout | undefined;
  try {
    const ns = SCENARIO_FLEET_NS;
    for (const name of [ns, SCENARIO_OPERATOR_NS]) await c.core.createNamespace({ body: { metadata: { name } } });
    const kubeconfig = path.join(dir, 'kubeconfig');
    writeFileSync(kubeconfig, c.kc.exportConfig());
    await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'snap', { method: 'AdaSnapKV', tokensPerHead: 512 }) });
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, budgetRef: { name: 'snap' },
      workers: { replicas: 1 }, autoscaling: { enabled: true, minReplicas: 1, maxReplicas: 4, scaleUpStabilizationSeconds: 0,
        scaleDownStabilizationSeconds: 0, drainTimeoutSeconds: 30 } }) });
    const managed = await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'managed', {}) }) as { metadata: { uid: string } };
    // the ServiceAccount an earlier operator version made for it, named after the Fleet: deleted on upgrade
    c.server.put({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'managed', namespace: ns, ownerReferences: [{ apiVersion: 'kvfleet.io/v1alpha1',
      kind: 'Fleet', name: 'managed', uid: managed.metadata.uid, controller: true, blockOwnerDeletion: true }] } });
    for (const name of ['llm-workers-a', 'llm-workers-b']) {
      c.server.put({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: ns, labels: { 'app.kubernetes.io/name': 'kvfleet',
        'app.kubernetes.io/component': 'worker', 'app.kubernetes.io/instance': 'llm' } }, spec: { containers: [{ name: 'worker', image: 'x' }] } });
      c.server.setStatus('', 'pods', ns, name, { phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }] });
    }
    // worker a is pressed (90 of 100 pages committed): pressure 0.9 over 1 ready worker asks for 2
    const fields: Record<string, WorkerFields> = {
      'llm-workers-a': { addr: '10.0.0.1:50051', total_pages: 100, free_pages: 10, page_size: 16, num_layers: 2, num_kv_heads: 2, running: 4, waiting: 0, draining: false },
    };
    const heartbeat = async () => { for (const [id, f] of Object.entries(fields)) await ledger.heartbeat(id, f); };
    await heartbeat();
    beat = setInterval(() => { void heartbeat().catch(() => undefined); }, 200);

    c.server.clearCalls(); // from here on, every call is the operator's
    const cfg = parseOperatorConfig({ kubeconfig, metricsPort: 0, bindAddress: '127.0.0.1', leaderElect: true, logLevel: 'silent', resyncSeconds: 0 },
      { KVFLEET_LEASE_NAME: 'kvfleet-leader', POD_NAMESPACE: SCENARIO_OPERATOR_NS, POD_NAME: 'kvfleet-operator-0', KVFLEET_IMAGE: 'kvfleet:test' });
    const op = await startOperator(cfg, silentLog, { leaseDurationMs: 1500, renewMs: 300, retryMs: 100 });
    try {
      const spec = (name: string) => c.server.object('kvfleet.io', 'fleets', ns, name)!.spec as { workers: { replicas: number } };
      await eventually(() => c.server.object('apps', 'deployments', ns, 'llm-workers') !== undefined, 'the worker Deployment', 10_000);
      c.server.setDeploymentStatus(ns, 'llm-workers');
      await eventually(() => spec('llm').workers.replicas === 2, 'a scale-up to 2', 10_000);
      // both serve now, idle: the fleet asks for 1 again; the drained worker has no work, so the step is quick
      fields['llm-workers-a'] = { ...fields['llm-workers-a'], free_pages: 100, running: 0 };
      fields['llm-workers-b'] = { ...fields['llm-workers-a'], addr: '10.0.0.2:50051', running: 1, free_pages: 95 };
      await heartbeat();
      await eventually(() => (c.server.object('apps', 'deployments', ns, 'llm-workers')!.spec as { replicas: number }).replicas === 2, 'the Deployment at 2', 10_000);
      c.server.setDeploymentStatus(ns, 'llm-workers');
      await eventually(() => spec('llm').workers.replicas === 1, 'a scale-down to 1', 10_000);
      // the managed Redis exists, then the Fleet moves to an external Redis and the operator deletes the managed one
      await eventually(() => c.server.object('apps', 'deployments', ns, 'managed-redis') !== undefined, 'the managed Redis', 10_000);
      await eventually(() => c.server.object('', 'serviceaccounts', ns, 'managed') === undefined, 'the old ServiceAccount deleted', 10_000);
      if (!c.server.object('', 'serviceaccounts', ns, 'managed-kvfleet')) throw new Error('scenario: the ServiceAccount managed-kvfleet is missing');
      const m = c.server.object('kvfleet.io', 'fleets', ns, 'managed')!;
      c.server.put({ ...m, spec: { ...(m.spec as JsonObject), redis: { url: redisUrl } } });
      await eventually(() => c.server.object('apps', 'deployments', ns, 'managed-redis') === undefined, 'the managed Redis removed', 10_000);
    } finally {
      await op.stop();
    }
    return c.server.calls();
  } finally {
    clearInterval(beat);
    await ledger.close();
    await c.server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
