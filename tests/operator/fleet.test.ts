// The Fleet reconciler against the in-process API server and a real redis-server: the children it creates (and
// nothing else), owner references and fields, idempotence by the call record, a spec change rolling the workers,
// garbage collection of the children, BudgetResolved following the KVBudget, and status from the Deployment and
// the ledger.
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { RedisLedger, type WorkerFields } from '../../ledger/index.ts';
import { FLEET_CONTROLLER } from '../../operator/controllers/fleet.ts';
import { CONFIG_HASH_ANNOTATION } from '../../operator/controllers/fleet-objects.ts';
import type { Operator } from '../../operator/manager.ts';
import { MERGE_PATCH } from '../../operator/runtime/kube.ts';
import { eventually } from '../kube/client.ts';
import type { JsonObject } from '../kube/patch.ts';
import { budgetTarget, fleet, fleetTarget, kubeEvents, kvBudget, startCluster, testOperator, writes, type Cluster } from './helpers.ts';

const redisUrl = inject('redisUrl');

interface Cond { type: string; status: string; reason: string; message: string; observedGeneration?: number }
interface FleetObj {
  metadata: { uid: string; generation: number };
  status?: { observedGeneration?: number; replicas?: number; readyReplicas?: number; selector?: string; kvPressure?: number;
    capacityTokens?: number; budget?: string; conditions?: Cond[] };
}

let c: Cluster;
const ledgers: RedisLedger[] = [];
const stops: (() => Promise<void>)[] = [];

beforeAll(async () => { c = await startCluster(); });
afterEach(async () => { for (const s of stops.splice(0).reverse()) await s(); });
afterAll(async () => {
  for (const l of ledgers) await l.close();
  await c?.server.stop();
});

async function informersOnly(ns: string): Promise<Operator> {
  const op = testOperator(c.kc, { namespace: ns });
  stops.push(() => op.stop());
  await op.startInformers();
  return op;
}

async function running(ns: string): Promise<Operator> {
  const op = testOperator(c.kc, { namespace: ns });
  stops.push(() => op.stop());
  await op.start();
  return op;
}

const getFleet = async (ns: string, name: string) => await c.custom.getNamespacedCustomObject({ ...fleetTarget(ns), name }) as FleetObj;
const cond = (f: FleetObj, type: string) => f.status?.conditions?.find((x) => x.type === type);

/** Every object in the namespace except what the API server seeds, as kind/name. */
function children(ns: string): string[] {
  const kinds: [string, string, string][] = [['apps', 'deployments', 'Deployment'], ['', 'services', 'Service'], ['', 'configmaps', 'ConfigMap'],
    ['', 'serviceaccounts', 'ServiceAccount'], ['policy', 'poddisruptionbudgets', 'PodDisruptionBudget'], ['', 'secrets', 'Secret'], ['', 'pods', 'Pod']];
  return kinds.flatMap(([g, p, k]) => c.server.objects(g, p, ns).map((o) => `${k}/${(o.metadata as { name: string }).name}`)).sort();
}

type Container = { name: string; image: string; args: string[]; env: JsonObject[]; envFrom: JsonObject[]; ports: JsonObject[];
  readinessProbe: JsonObject; resources: JsonObject; securityContext: JsonObject; volumeMounts: JsonObject[] };
type Deploy = { metadata: { ownerReferences: JsonObject[]; labels: Record<string, string> }; spec: { replicas: number; selector: JsonObject;
  template: { metadata: { labels: Record<string, string>; annotations: Record<string, string> }; spec: { containers: Container[];
    volumes: JsonObject[]; terminationGracePeriodSeconds: number; securityContext: JsonObject; serviceAccountName: string; nodeSelector?: JsonObject } } } };
const deployment = (ns: string, name: string) => c.server.object('apps', 'deployments', ns, name) as unknown as Deploy;

describe('Fleet reconciler: children', () => {
  it('creates exactly the expected children, each owned by the Fleet, with the expected fields; a second reconcile writes nothing', async () => {
    const ns = await c.namespace();
    await c.core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'redis-auth' }, stringData: { pw: 'not-used-here' } } });
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', {
      model: { source: 'pvc://models/llama-3/8b', maxModelLen: 8192 },
      engine: { pageSize: 32, maxRunning: 64, admission: 'optimistic' },
      workers: { replicas: 3, image: 'example.com/kvfleet:1.2', resources: { limits: { 'nvidia.com/gpu': 1, memory: '64Gi' } },
        nodeSelector: { 'nvidia.com/gpu.product': 'H100' } },
      router: { replicas: 2, serviceType: 'LoadBalancer', policy: 'p2c' },
      redis: { url: 'redis://ledger.example:6379', passwordSecretRef: { name: 'redis-auth', key: 'pw' } },
      autoscaling: { drainTimeoutSeconds: 120 },
    }) });
    const op = await informersOnly(ns);
    const r = op.reconciler(FLEET_CONTROLLER);
    c.server.clearCalls();
    await r.reconcile(`${ns}/llm`).catch(() => undefined); // the ledger at ledger.example is unreachable: Degraded, not a failure
    await op.events.flush();
    const created = writes(c.server, ns).map((w) => `${w.verb} ${w.resource}${w.subresource ? `/${w.subresource}` : ''} ${w.name}`);
    expect(created).toEqual([
      'patch serviceaccounts llm-kvfleet', 'patch configmaps llm-engine', 'patch deployments llm-workers', 'patch services llm-workers',
      'patch poddisruptionbudgets llm-workers', 'patch deployments llm-router', 'patch services llm-router', 'patch poddisruptionbudgets llm-router',
      'patch fleets/status llm', 'create events ',
    ]);
    // what `kubectl describe fleet llm` shows: why it is degraded
    expect(kubeEvents(c.server, ns, 'Fleet', 'llm').map((e) => [e.type, e.reason, e.action, e.reportingController]))
      .toEqual([['Warning', 'LedgerUnavailable', 'Reconcile', 'kvfleet.io/operator']]);
    expect(kubeEvents(c.server, ns, 'Fleet', 'llm')[0].note).toMatch(/ledger/i);
    expect(children(ns)).toEqual(['ConfigMap/llm-engine', 'Deployment/llm-router', 'Deployment/llm-workers', 'PodDisruptionBudget/llm-router',
      'PodDisruptionBudget/llm-workers', 'Secret/redis-auth', 'Service/llm-router', 'Service/llm-workers', 'ServiceAccount/llm-kvfleet']);

    const f = await getFleet(ns, 'llm');
    const owner = { apiVersion: 'kvfleet.io/v1alpha1', kind: 'Fleet', name: 'llm', uid: f.metadata.uid, controller: true, blockOwnerDeletion: true };
    for (const child of children(ns).filter((x) => x !== 'Secret/redis-auth')) {
      const [kind, name] = child.split('/');
      const [g, p] = { Deployment: ['apps', 'deployments'], Service: ['', 'services'], ConfigMap: ['', 'configmaps'], ServiceAccount: ['', 'serviceaccounts'],
        PodDisruptionBudget: ['policy', 'poddisruptionbudgets'] }[kind]!;
      expect((c.server.object(g, p, ns, name)!.metadata as JsonObject).ownerReferences, child).toEqual([owner]);
    }

    const w = deployment(ns, 'llm-workers');
    const sel = { 'app.kubernetes.io/name': 'kvfleet', 'app.kubernetes.io/component': 'worker', 'app.kubernetes.io/instance': 'llm' };
    expect(w.spec.replicas).toBe(3);
    expect(w.spec.selector).toEqual({ matchLabels: sel });
    expect(w.spec.template.metadata.labels).toMatchObject(sel);
    const pod = w.spec.template.spec;
    expect(pod.terminationGracePeriodSeconds).toBe(135); // drainTimeoutSeconds + 15 s for the worker's own timeout to fire first
    expect(pod.serviceAccountName).toBe('llm-kvfleet');
    expect(pod.nodeSelector).toEqual({ 'nvidia.com/gpu.product': 'H100' });
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    const [wc] = pod.containers;
    expect(wc.image).toBe('example.com/kvfleet:1.2');
    expect(wc.args).toEqual(['worker', '--model', '/model', '--host', '0.0.0.0', '--port', '50051', '--metrics-port', '9400',
      '--redis', 'redis://ledger.example:6379', '--fleet', `${ns}/llm`, '--redis-password-file', '/var/run/secrets/kvfleet/redis/password',
      '--drain-timeout-ms', '120000']);
    expect(wc.envFrom).toEqual([{ configMapRef: { name: 'llm-engine' } }]);
    expect(wc.env).toEqual([{ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } }]);
    expect(wc.ports.map((p) => p.name)).toEqual(['grpc', 'metrics']);
    expect(wc.readinessProbe).toMatchObject({ grpc: { port: 50051 } });
    expect(wc.resources).toEqual({ limits: { 'nvidia.com/gpu': '1', memory: '64Gi' } });
    expect(wc.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ['ALL'] } });
    expect(wc.volumeMounts).toContainEqual({ name: 'model', mountPath: '/model', readOnly: true, subPath: 'llama-3/8b' });
    expect(pod.volumes).toContainEqual({ name: 'model', persistentVolumeClaim: { claimName: 'models', readOnly: true } });
    expect(pod.volumes).toContainEqual({ name: 'redis-password', secret: { secretName: 'redis-auth', items: [{ key: 'pw', path: 'password' }] } });

    const rt = deployment(ns, 'llm-router');
    expect(rt.spec.replicas).toBe(2);
    const [rc] = rt.spec.template.spec.containers;
    expect(rc.args).toEqual(['router', '--host', '0.0.0.0', '--port', '50051', '--metrics-port', '9401', '--redis', 'redis://ledger.example:6379',
      '--fleet', `${ns}/llm`, '--redis-password-file', '/var/run/secrets/kvfleet/redis/password', '--tokenizer', '/model']);
    expect(rc.volumeMounts).toContainEqual({ name: 'model', mountPath: '/model', readOnly: true, subPath: 'llama-3/8b' });
    expect(rt.spec.template.metadata.labels).toMatchObject({ 'app.kubernetes.io/component': 'router', 'app.kubernetes.io/instance': 'llm' });

    expect((c.server.object('', 'configmaps', ns, 'llm-engine') as { data: unknown }).data).toEqual({ KVFLEET_PAGE_SIZE: '32',
      KVFLEET_KV_MEMORY_FRACTION: '0.9', KVFLEET_MAX_RUNNING: '64', KVFLEET_ADMISSION: 'optimistic', KVFLEET_MAX_MODEL_LEN: '8192',
      KVFLEET_ROUTER_POLICY: 'p2c' });
    const ws = c.server.object('', 'services', ns, 'llm-workers') as { spec: JsonObject };
    expect(ws.spec).toMatchObject({ clusterIP: 'None', selector: sel });
    expect((c.server.object('', 'services', ns, 'llm-router') as { spec: JsonObject }).spec).toMatchObject({ type: 'LoadBalancer',
      ports: [{ name: 'grpc', port: 50051, targetPort: 'grpc', protocol: 'TCP' }] });
    expect((c.server.object('policy', 'poddisruptionbudgets', ns, 'llm-workers') as { spec: JsonObject }).spec)
      .toEqual({ maxUnavailable: 1, selector: { matchLabels: sel } });

    const s = (await getFleet(ns, 'llm')).status!;
    expect(s).toMatchObject({ observedGeneration: 1, replicas: 0, readyReplicas: 0,
      selector: 'app.kubernetes.io/component=worker,app.kubernetes.io/instance=llm,app.kubernetes.io/name=kvfleet' });
    expect(cond(await getFleet(ns, 'llm'), 'Degraded')).toMatchObject({ status: 'True', reason: 'LedgerUnavailable', observedGeneration: 1 });

    // the same world again: reads only
    c.server.clearCalls();
    await r.reconcile(`${ns}/llm`);
    await op.events.flush();
    expect(writes(c.server, ns)).toEqual([]);
    expect(c.server.calls().filter((x) => x.namespace === ns).every((x) => x.verb === 'get')).toBe(true);
  });

  it('a spec change rolls the pods that read it (config hash on the pod template) and a second pass is quiet again', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl } }) });
    const op = await informersOnly(ns);
    const r = op.reconciler(FLEET_CONTROLLER);
    await r.reconcile(`${ns}/llm`);
    await op.events.flush();
    const before = deployment(ns, 'llm-workers').spec.template.metadata.annotations[CONFIG_HASH_ANNOTATION];
    expect(before).toMatch(/^[0-9a-f]{16}$/);
    await c.custom.patchNamespacedCustomObject({ ...fleetTarget(ns), name: 'llm', body: { spec: { engine: { kvMemoryFraction: 0.5 } } } }, MERGE_PATCH);
    c.server.clearCalls();
    await r.reconcile(`${ns}/llm`);
    await op.events.flush();
    // an engine setting rolls the workers, not the routers (they don't read it)
    expect(writes(c.server, ns).map((w) => `${w.resource} ${w.name}`)).toEqual(['configmaps llm-engine', 'deployments llm-workers', 'fleets llm']);
    const after = deployment(ns, 'llm-workers').spec.template.metadata.annotations[CONFIG_HASH_ANNOTATION];
    expect(after).not.toBe(before);
    expect((c.server.object('', 'configmaps', ns, 'llm-engine') as { data: Record<string, string> }).data.KVFLEET_KV_MEMORY_FRACTION).toBe('0.5');
    // the pick policy rolls the routers, not the GPU workers
    const routerBefore = deployment(ns, 'llm-router').spec.template.metadata.annotations[CONFIG_HASH_ANNOTATION];
    await c.custom.patchNamespacedCustomObject({ ...fleetTarget(ns), name: 'llm', body: { spec: { router: { policy: 'most-free' } } } }, MERGE_PATCH);
    c.server.clearCalls();
    await r.reconcile(`${ns}/llm`);
    await op.events.flush();
    expect(writes(c.server, ns).map((w) => `${w.resource} ${w.name}`)).toEqual(['configmaps llm-engine', 'deployments llm-router', 'fleets llm']);
    expect(deployment(ns, 'llm-router').spec.template.metadata.annotations[CONFIG_HASH_ANNOTATION]).not.toBe(routerBefore);
    expect(deployment(ns, 'llm-workers').spec.template.metadata.annotations[CONFIG_HASH_ANNOTATION]).toBe(after);
    // a replica change reaches the worker Deployment and nothing else
    await c.custom.patchNamespacedCustomObject({ ...fleetTarget(ns), name: 'llm', body: { spec: { workers: { replicas: 4 } } } }, MERGE_PATCH);
    c.server.clearCalls();
    await r.reconcile(`${ns}/llm`);
    await op.events.flush();
    expect(writes(c.server, ns).map((w) => `${w.resource} ${w.name}`)).toEqual(['deployments llm-workers', 'fleets llm']);
    expect(deployment(ns, 'llm-workers').spec.replicas).toBe(4);
    // drift: a hand edit of an owned field is put back
    await c.core.patchNamespacedService({ namespace: ns, name: 'llm-workers', body: { spec: { selector: { 'app.kubernetes.io/instance': 'other' } } } },
      (await import('../../operator/runtime/kube.ts')).MERGE_PATCH);
    c.server.clearCalls();
    await r.reconcile(`${ns}/llm`);
    await op.events.flush();
    expect(writes(c.server, ns).map((w) => `${w.resource} ${w.name}`)).toEqual(['services llm-workers']);
    c.server.clearCalls();
    await r.reconcile(`${ns}/llm`);
    await op.events.flush();
    expect(writes(c.server, ns)).toEqual([]);
  });

  it('a managed Redis gets a Deployment, a Service named as managedRedisUrl expects and a password Secret made once', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'm', { model: { source: 'hostPath:///srv/models/tiny' },
      imagePullSecrets: [{ name: 'registry-a' }, { name: 'registry-b' }] }) });
    const op = await informersOnly(ns);
    const r = op.reconciler(FLEET_CONTROLLER);
    await r.reconcile(`${ns}/m`);
    await op.events.flush();
    expect(children(ns)).toEqual(['ConfigMap/m-engine', 'Deployment/m-redis', 'Deployment/m-router', 'Deployment/m-workers', 'PodDisruptionBudget/m-router',
      'PodDisruptionBudget/m-workers', 'Secret/m-redis', 'Service/m-redis', 'Service/m-router', 'Service/m-workers', 'ServiceAccount/m-kvfleet']);
    const secret = c.server.object('', 'secrets', ns, 'm-redis') as { data: { password: string }; metadata: { ownerReferences: JsonObject[] } };
    expect(Buffer.from(secret.data.password, 'base64').toString().length).toBeGreaterThanOrEqual(32);
    expect(secret.metadata.ownerReferences[0]).toMatchObject({ kind: 'Fleet', name: 'm', controller: true });
    expect((c.server.object('', 'services', ns, 'm-redis') as { spec: JsonObject }).spec).toMatchObject({ ports: [{ port: 6379, targetPort: 'redis' }],
      selector: { 'app.kubernetes.io/component': 'redis', 'app.kubernetes.io/instance': 'm' } });
    const [wc] = deployment(ns, 'm-workers').spec.template.spec.containers;
    expect(wc.args).toEqual(expect.arrayContaining(['--redis', `redis://m-redis.${ns}.svc:6379`, '--redis-password-file']));
    expect(deployment(ns, 'm-workers').spec.template.spec.volumes).toContainEqual({ name: 'model', hostPath: { path: '/srv/models/tiny', type: 'Directory' } });
    // a private registry: every pod the Fleet runs carries its pull Secrets
    for (const d of ['m-workers', 'm-router', 'm-redis']) {
      expect((deployment(ns, d).spec.template.spec as { imagePullSecrets?: JsonObject[] }).imagePullSecrets, d)
        .toEqual([{ name: 'registry-a' }, { name: 'registry-b' }]);
    }
    expect(deployment(ns, 'm-redis').spec.template.spec.containers[0].env).toEqual([{ name: 'REDIS_PASSWORD',
      valueFrom: { secretKeyRef: { name: 'm-redis', key: 'password' } } }]);
    c.server.clearCalls();
    await r.reconcile(`${ns}/m`);
    await op.events.flush();
    expect(writes(c.server, ns)).toEqual([]);
    expect(c.server.object('', 'secrets', ns, 'm-redis')).toEqual(secret as unknown as JsonObject);

    // switching to an external Redis removes the managed one (the Secret stays until the Fleet goes: clients may still hold it)
    await c.custom.patchNamespacedCustomObject({ ...fleetTarget(ns), name: 'm', body: { spec: { redis: { managed: null, url: redisUrl } } } }, MERGE_PATCH);
    await r.reconcile(`${ns}/m`);
    await op.events.flush();
    expect(children(ns)).not.toContain('Deployment/m-redis');
    expect(children(ns)).not.toContain('Service/m-redis');
  });

  it('deleting the Fleet removes its children', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'gone', {}) });
    await running(ns);
    await eventually(() => children(ns).length === 11, 'the children of a managed-Redis fleet', 10_000);
    await c.custom.deleteNamespacedCustomObject({ ...fleetTarget(ns), name: 'gone' });
    await eventually(() => children(ns).length === 0, 'every child garbage-collected');
  });
});

describe('Fleet reconciler: names already taken', () => {
  it('never takes over an object it does not control: Degraded ChildConflict naming it, the object untouched; recovers once it is gone', async () => {
    const ns = await c.namespace();
    // a user's ConfigMap with the name the Fleet's engine ConfigMap would have
    await c.core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'llm-engine', labels: { team: 'search' } }, data: { mine: 'yes' } } });
    // and a ServiceAccount named as the Fleet (what earlier versions named theirs): not the Fleet's, so it stays
    await c.core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: 'llm' } } });
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl } }) });
    const op = await informersOnly(ns);
    const r = op.reconciler(FLEET_CONTROLLER);
    await expect(r.reconcile(`${ns}/llm`)).rejects.toThrow(/ConfigMap .*\/llm-engine already exists and is controlled by nothing/);
    const degraded = cond(await getFleet(ns, 'llm'), 'Degraded')!;
    expect(degraded).toMatchObject({ status: 'True', reason: 'ChildConflict' });
    expect(degraded.message).toMatch(/llm-engine/);
    const cm = c.server.object('', 'configmaps', ns, 'llm-engine') as { metadata: JsonObject; data: Record<string, string> };
    expect(cm.data).toEqual({ mine: 'yes' });
    expect(cm.metadata.ownerReferences).toBeUndefined();
    expect(cm.metadata.labels).toEqual({ team: 'search' });
    // the ServiceAccount is <fleet>-kvfleet, never the bare Fleet name (a Fleet `default` was the namespace's own)
    expect(children(ns).filter((x) => x.startsWith('ServiceAccount/'))).toEqual(['ServiceAccount/llm', 'ServiceAccount/llm-kvfleet']);

    await c.core.deleteNamespacedConfigMap({ namespace: ns, name: 'llm-engine' });
    await r.reconcile(`${ns}/llm`);
    expect(cond(await getFleet(ns, 'llm'), 'Degraded')).toMatchObject({ status: 'False' });
    expect(c.server.object('', 'serviceaccounts', ns, 'llm')).toBeDefined();
    expect((c.server.object('', 'configmaps', ns, 'llm-engine')!.metadata as JsonObject).ownerReferences).toHaveLength(1);
  });
});

describe('Fleet reconciler: host paths', () => {
  it('with --allowed-host-paths, a hostPath model outside them is Degraded InvalidSpec and runs no pod; inside, it is served', async () => {
    const ns = await c.namespace();
    const op = testOperator(c.kc, { namespace: ns, allowedHostPaths: ['/srv/models'] });
    stops.push(() => op.stop());
    await op.startInformers();
    const r = op.reconciler(FLEET_CONTROLLER);
    for (const [name, source] of [['etc', 'hostPath:///etc'], ['sibling', 'hostPath:///srv/models-other/x']]) {
      await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, name, { model: { source }, redis: { url: redisUrl } }) });
      await r.reconcile(`${ns}/${name}`);
      const d = cond(await getFleet(ns, name), 'Degraded')!;
      expect(d, name).toMatchObject({ status: 'True', reason: 'InvalidSpec' });
      expect(d.message).toMatch(/is outside the node directories this operator allows \(--allowed-host-paths \/srv\/models\)/);
      expect(c.server.object('apps', 'deployments', ns, `${name}-workers`), name).toBeUndefined();
    }
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'ok', { model: { source: 'hostPath:///srv/models/llama' },
      redis: { url: redisUrl } }) });
    await r.reconcile(`${ns}/ok`);
    expect(cond(await getFleet(ns, 'ok'), 'Degraded')).toMatchObject({ status: 'False' });
    expect(deployment(ns, 'ok-workers').spec.template.spec.volumes).toContainEqual({ name: 'model', hostPath: { path: '/srv/models/llama', type: 'Directory' } });
  });
});

describe('Fleet reconciler: status', () => {
  it('BudgetResolved is False with a reason while the KVBudget is missing and recovers when it appears', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, budgetRef: { name: 'long' } }) });
    await running(ns);
    const f1 = await eventually(async () => { const f = await getFleet(ns, 'llm'); return cond(f, 'BudgetResolved') && f; }, 'a BudgetResolved condition');
    expect(cond(f1, 'BudgetResolved')).toMatchObject({ status: 'False', reason: 'BudgetNotFound', observedGeneration: 1,
      message: `spec.budgetRef: KVBudget long not found in namespace ${ns}` });
    expect(f1.status!.budget).toBeUndefined();
    await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'long', { method: 'AdaSnapKV', tokensPerHead: 2048 }) });
    const f2 = await eventually(async () => { const f = await getFleet(ns, 'llm'); return cond(f, 'BudgetResolved')?.status === 'True' && f; },
      'BudgetResolved=True', 10_000);
    expect(cond(f2, 'BudgetResolved')).toMatchObject({ reason: 'Resolved', message: 'default budget: KVBudget long (valid AdaSnapKV budget: 2048 tokens per KV head)' });
    expect(f2.status!.budget).toBe('long');
    // an invalid budget is reported as such
    await c.custom.patchNamespacedCustomObject({ ...budgetTarget(ns), name: 'long', body: { spec: { tokensPerHead: null, keepRatio: 1e-50 } } }, MERGE_PATCH);
    const f3 = await eventually(async () => { const f = await getFleet(ns, 'llm'); return cond(f, 'BudgetResolved')?.reason === 'BudgetInvalid' && f; },
      'BudgetResolved=False BudgetInvalid', 10_000);
    expect(cond(f3, 'BudgetResolved')!.message).toMatch(/KVBudget long is not accepted: spec\.keepRatio/);
  });

  it('reflects ready replicas from the worker Deployment and KV pressure and capacity from the ledger', async () => {
    const ns = await c.namespace();
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, workers: { replicas: 2 } }) });
    const ledger = await RedisLedger.connect({ redis: redisUrl, namespace: ns, fleet: 'llm' });
    ledgers.push(ledger);
    const base: WorkerFields = { addr: '10.0.0.1:50051', total_pages: 100, free_pages: 100, page_size: 16, num_layers: 2, num_kv_heads: 2,
      running: 0, waiting: 0, draining: false };
    // worker a: 60 of 100 pages committed; worker b: 20 committed; a draining worker counts for neither figure
    const beat = async () => {
      await ledger.heartbeat('llm-workers-a', { ...base, free_pages: 40, running: 3 }, { ttlMs: 60_000 });
      await ledger.heartbeat('llm-workers-b', { ...base, addr: '10.0.0.2:50051', free_pages: 80, running: 1 }, { ttlMs: 60_000 });
      await ledger.heartbeat('llm-workers-c', { ...base, addr: '10.0.0.3:50051', free_pages: 0, running: 9, draining: true }, { ttlMs: 60_000 });
    };
    await beat();
    await running(ns);
    const f1 = await eventually(async () => { const f = await getFleet(ns, 'llm'); return f.status?.kvPressure !== undefined && f; }, 'kvPressure', 10_000);
    // mean of 0.6 and 0.2, queue term 0; capacity (40 + 80) free pages × 16 tokens
    expect(f1.status).toMatchObject({ kvPressure: 0.4, capacityTokens: 1920, readyReplicas: 0 });
    expect(cond(f1, 'Available')).toMatchObject({ status: 'False', reason: 'WorkersUnavailable' });
    expect(cond(f1, 'Progressing')).toMatchObject({ status: 'True', reason: 'RolloutInProgress' });
    expect(cond(f1, 'Degraded')).toMatchObject({ status: 'False', reason: 'AsExpected' });

    c.server.setDeploymentStatus(ns, 'llm-workers', { readyReplicas: 1, availableReplicas: 1 });
    c.server.setDeploymentStatus(ns, 'llm-router');
    const f2 = await eventually(async () => { const f = await getFleet(ns, 'llm'); return f.status?.readyReplicas === 1 && f; }, 'readyReplicas 1', 10_000);
    expect(f2.status!.replicas).toBe(2);
    expect(cond(f2, 'Available')).toMatchObject({ status: 'True', reason: 'MinimumReplicasAvailable', message: '1 of 2 workers ready, 2 routers ready' });
    c.server.setDeploymentStatus(ns, 'llm-workers');
    const f3 = await eventually(async () => { const f = await getFleet(ns, 'llm'); return f.status?.readyReplicas === 2 && f; }, 'readyReplicas 2', 10_000);
    expect(cond(f3, 'Progressing')).toMatchObject({ status: 'False', reason: 'RolloutComplete' });
    // the scale subresource reports the Fleet's replicas and selector (what HPA/KEDA read)
    const scale = await c.custom.getNamespacedCustomObjectScale({ ...fleetTarget(ns), name: 'llm' }) as { spec: { replicas: number }; status: JsonObject };
    expect(scale.spec.replicas).toBe(2);
    expect(scale.status).toEqual({ replicas: 2, selector: 'app.kubernetes.io/component=worker,app.kubernetes.io/instance=llm,app.kubernetes.io/name=kvfleet' });
    // more pressure on the ledger shows up at the next status refresh (test operator: every 200 ms)
    await ledger.heartbeat('llm-workers-b', { ...base, addr: '10.0.0.2:50051', free_pages: 0, running: 4, waiting: 2 }, { ttlMs: 60_000 });
    const f4 = await eventually(async () => { const f = await getFleet(ns, 'llm'); return f.status?.kvPressure !== 0.4 && f; }, 'a new kvPressure', 10_000);
    // kv (0.6 + 1.0) / 2 = 0.8, queue 2 / 7
    expect(f4.status!.kvPressure).toBeCloseTo(0.8 + 2 / 7, 3);
    expect(f4.status!.capacityTokens).toBe(640);
  });
});

describe('Fleet reconciler: replicas and the autoscaler', () => {
  it('with autoscaling disabled never writes replicas under pressure; enabled, scales up through the scale subresource', async () => {
    const ns = await c.namespace();
    const ledger = await RedisLedger.connect({ redis: redisUrl, namespace: ns, fleet: 'llm' });
    ledgers.push(ledger);
    await ledger.heartbeat('llm-workers-a', { addr: '10.0.0.1:50051', total_pages: 100, free_pages: 0, page_size: 16, num_layers: 2,
      num_kv_heads: 2, running: 8, waiting: 8, draining: false }, { ttlMs: 60_000 });
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', { redis: { url: redisUrl }, workers: { replicas: 1 },
      autoscaling: { enabled: false, scaleUpStabilizationSeconds: 0, maxReplicas: 8 } }) });
    await running(ns);
    await eventually(() => c.server.object('apps', 'deployments', ns, 'llm-workers') !== undefined, 'the worker Deployment');
    c.server.setDeploymentStatus(ns, 'llm-workers');
    await eventually(async () => (await getFleet(ns, 'llm')).status?.kvPressure === 2, 'pressure 2 (full pages, queue term 1)', 10_000);
    await new Promise((r) => setTimeout(r, 1000)); // five status refreshes
    expect(c.server.calls().filter((x) => x.namespace === ns && x.subresource === 'scale')).toEqual([]);
    expect((c.server.object('kvfleet.io', 'fleets', ns, 'llm')!.spec as { workers: { replicas: number } }).workers.replicas).toBe(1);
    // an HPA-style write to the scale subresource reaches the worker Deployment
    await c.custom.patchNamespacedCustomObjectScale({ ...fleetTarget(ns), name: 'llm', body: { spec: { replicas: 3 } } }, MERGE_PATCH);
    await eventually(() => (c.server.object('apps', 'deployments', ns, 'llm-workers')!.spec as { replicas: number }).replicas === 3, 'the Deployment at 3');
    c.server.setDeploymentStatus(ns, 'llm-workers');
    c.server.clearCalls();
    await c.custom.patchNamespacedCustomObject({ ...fleetTarget(ns), name: 'llm', body: { spec: { autoscaling: { enabled: true } } } }, MERGE_PATCH);
    // 3 ready at pressure 2 over target 0.7 ask for 9; one step doubles at most: 6; the next step (the 3 new pods
    // are not ready yet, pressure over the ready ones unchanged) goes on to the maximum, 8
    const seen: number[] = [];
    await eventually(() => {
      const n = (c.server.object('kvfleet.io', 'fleets', ns, 'llm')!.spec as { workers: { replicas: number } }).workers.replicas;
      if (seen.at(-1) !== n) seen.push(n);
      return n === 8;
    }, 'a scale-up to 8', 10_000);
    const scales = c.server.calls().filter((x) => x.namespace === ns && x.verb === 'patch' && x.resource === 'fleets' && x.subresource === 'scale');
    expect(scales).toHaveLength(2); // 3 → 6 → 8, nothing in between
    expect(seen.every((n) => [3, 6, 8].includes(n))).toBe(true);
  });
});
