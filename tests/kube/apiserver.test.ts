import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  ApiextensionsV1Api, AppsV1Api, CoordinationV1Api, CoreV1Api, CustomObjectsApi, KubernetesObjectApi, PatchStrategy,
  Watch, makeInformer, ApisApi, VersionApi, RbacAuthorizationV1Api,
  type KubeConfig, type V1ConfigMap, type V1Deployment, type V1CustomResourceDefinition,
} from '@kubernetes/client-node';
import { KubeApiServer } from './apiserver.ts';
import { apiStatus, eventually, kubeConfigFor, patchOptions, runInformer } from './client.ts';

let server: KubeApiServer;
let kc: KubeConfig;
let core: CoreV1Api;
let apps: AppsV1Api;
let custom: CustomObjectsApi;

beforeAll(async () => {
  server = await KubeApiServer.start({ bookmarkIntervalMs: 200 });
  kc = kubeConfigFor(server);
  core = kc.makeApiClient(CoreV1Api);
  apps = kc.makeApiClient(AppsV1Api);
  custom = kc.makeApiClient(CustomObjectsApi);
});
afterAll(async () => { await server?.stop(); });

let nsCounter = 0;
/** A fresh namespace per test keeps tests independent on the one shared server. */
async function freshNamespace(): Promise<string> {
  const name = `t${++nsCounter}`;
  await core.createNamespace({ body: { metadata: { name } } });
  return name;
}

/** The Status a call failed with (the test fails if it succeeded). */
async function failure(p: Promise<unknown>) {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err, 'the call should have failed').toBeDefined();
  const s = apiStatus(err);
  expect(s, `not a Status: ${String(err)}`).toBeDefined();
  return s!;
}

function deployment(name: string, extra: Partial<V1Deployment['spec']> = {}): V1Deployment {
  return {
    metadata: { name, labels: { app: name } },
    spec: {
      selector: { matchLabels: { app: name } },
      template: { metadata: { labels: { app: name } }, spec: { containers: [{ name: 'worker', image: 'kvfleet/worker:1.0' }] } },
      ...extra,
    },
  };
}

describe('transport and discovery', () => {
  it('listens on a free loopback port and refuses requests without the bearer token', async () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const anon = await fetch(`${server.url}/api/v1/namespaces`);
    expect(anon.status).toBe(401);
    const body = await anon.json() as { kind: string; reason: string };
    expect(body).toMatchObject({ kind: 'Status', reason: 'Unauthorized', code: 401 });
    const ok = await fetch(`${server.url}/api/v1/namespaces`, { headers: { Authorization: `Bearer ${server.token}` } });
    expect(ok.status).toBe(200);
  });

  it('serves /api, /apis, group versions and /version the way client-node reads them', async () => {
    const groups = await kc.makeApiClient(ApisApi).getAPIVersions();
    const names = groups.groups.map((g) => g.name);
    for (const g of ['apps', 'policy', 'coordination.k8s.io', 'events.k8s.io', 'apiextensions.k8s.io', 'rbac.authorization.k8s.io']) {
      expect(names).toContain(g);
    }
    const v1 = await core.getAPIResources();
    const byName = new Map(v1.resources.map((r) => [r.name, r]));
    expect(byName.get('configmaps')).toMatchObject({ kind: 'ConfigMap', namespaced: true });
    expect(byName.get('namespaces')).toMatchObject({ namespaced: false });
    expect(byName.has('pods/status')).toBe(true);
    const appsRes = await apps.getAPIResources();
    expect(appsRes.resources.find((r) => r.name === 'deployments/scale')).toMatchObject({ kind: 'Scale', group: 'autoscaling' });
    const version = await kc.makeApiClient(VersionApi).getCode();
    expect(version.major).toBe('1');
  });
});

describe('CRUD with resourceVersion semantics', () => {
  it('creates, reads, lists, replaces and deletes a ConfigMap, with uid, timestamps and namespace defaulting', async () => {
    const ns = await freshNamespace();
    const created = await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'cfg' }, data: { a: '1' } } });
    expect(created.metadata?.namespace).toBe(ns);
    expect(created.metadata?.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(created.metadata?.creationTimestamp).toBeInstanceOf(Date);
    expect(Number(created.metadata?.resourceVersion)).toBeGreaterThan(0);
    const read = await core.readNamespacedConfigMap({ name: 'cfg', namespace: ns });
    expect(read.data).toEqual({ a: '1' });
    read.data = { a: '2' };
    const replaced = await core.replaceNamespacedConfigMap({ name: 'cfg', namespace: ns, body: read });
    expect(replaced.data).toEqual({ a: '2' });
    expect(Number(replaced.metadata!.resourceVersion)).toBeGreaterThan(Number(created.metadata!.resourceVersion));
    expect(replaced.metadata?.uid).toBe(created.metadata?.uid);
    const list = await core.listNamespacedConfigMap({ namespace: ns });
    expect(list.items.map((c) => c.metadata?.name)).toEqual(['cfg']);
    expect(Number(list.metadata?.resourceVersion)).toBeGreaterThanOrEqual(Number(replaced.metadata!.resourceVersion));
    await core.deleteNamespacedConfigMap({ name: 'cfg', namespace: ns });
    const gone = await failure(core.readNamespacedConfigMap({ name: 'cfg', namespace: ns }));
    expect(gone).toMatchObject({ kind: 'Status', code: 404, reason: 'NotFound', message: 'configmaps "cfg" not found',
      details: { name: 'cfg', kind: 'configmaps' } });
  });

  it('answers a duplicate create with 409 AlreadyExists and a stale update with 409 Conflict', async () => {
    const ns = await freshNamespace();
    const first = await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'x' } } });
    const dup = await failure(core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'x' } } }));
    expect(dup).toMatchObject({ code: 409, reason: 'AlreadyExists', details: { name: 'x', kind: 'configmaps' } });
    await core.replaceNamespacedConfigMap({ name: 'x', namespace: ns, body: { ...first, data: { v: 'new' } } });
    const stale = await failure(core.replaceNamespacedConfigMap({ name: 'x', namespace: ns, body: { ...first, data: { v: 'stale' } } }));
    expect(stale).toMatchObject({ code: 409, reason: 'Conflict' });
    expect(stale.message).toContain('the object has been modified');
    expect((await core.readNamespacedConfigMap({ name: 'x', namespace: ns })).data).toEqual({ v: 'new' });
  });

  it('does not bump resourceVersion for a write that changes nothing', async () => {
    const ns = await freshNamespace();
    const a = await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'same' }, data: { k: 'v' } } });
    const b = await core.replaceNamespacedConfigMap({ name: 'same', namespace: ns, body: a });
    expect(b.metadata?.resourceVersion).toBe(a.metadata?.resourceVersion);
  });

  it('refuses creates in a missing namespace and names that are not DNS subdomains', async () => {
    const missing = await failure(core.createNamespacedConfigMap({ namespace: 'nope', body: { metadata: { name: 'a' } } }));
    expect(missing).toMatchObject({ code: 404, message: 'namespaces "nope" not found' });
    const ns = await freshNamespace();
    const bad = await failure(core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'Bad_Name' } } }));
    expect(bad.code).toBe(422);
    expect(bad.details?.causes?.[0].field).toBe('metadata.name');
  });

  it('filters lists by label selector (=, !=, in, notin, exists, !exists) and field selector', async () => {
    const ns = await freshNamespace();
    const mk = (name: string, labels: Record<string, string>) =>
      core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name, labels } } });
    await mk('a', { tier: 'gpu', zone: 'x' });
    await mk('b', { tier: 'cpu' });
    await mk('c', { tier: 'gpu', zone: 'y' });
    const names = async (labelSelector?: string, fieldSelector?: string) =>
      (await core.listNamespacedConfigMap({ namespace: ns, labelSelector, fieldSelector })).items.map((i) => i.metadata!.name);
    expect(await names('tier=gpu')).toEqual(['a', 'c']);
    expect(await names('tier==cpu')).toEqual(['b']);
    expect(await names('tier!=gpu')).toEqual(['b']);
    expect(await names('zone in (x,z)')).toEqual(['a']);
    expect(await names('zone notin (x)')).toEqual(['b', 'c']);
    expect(await names('zone')).toEqual(['a', 'c']);
    expect(await names('!zone')).toEqual(['b']);
    expect(await names('tier=gpu,zone=y')).toEqual(['c']);
    expect(await names(undefined, 'metadata.name=b')).toEqual(['b']);
    expect(await names(undefined, `metadata.namespace=${ns},metadata.name!=b`)).toEqual(['a', 'c']);
    const unsupported = await failure(core.listNamespacedConfigMap({ namespace: ns, fieldSelector: 'data.x=1' }));
    expect(unsupported).toMatchObject({ code: 400, reason: 'BadRequest' });
  });

  it('pages a list with limit and continue', async () => {
    const ns = await freshNamespace();
    for (const n of ['p1', 'p2', 'p3']) await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: n } } });
    const page1 = await core.listNamespacedConfigMap({ namespace: ns, limit: 2 });
    expect(page1.items.map((i) => i.metadata!.name)).toEqual(['p1', 'p2']);
    const page2 = await core.listNamespacedConfigMap({ namespace: ns, limit: 2, _continue: page1.metadata!._continue });
    expect(page2.items.map((i) => i.metadata!.name)).toEqual(['p3']);
    expect(page2.metadata?._continue).toBeUndefined();
  });

  it('turns Secret stringData into base64 data', async () => {
    const ns = await freshNamespace();
    const s = await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'tok' }, stringData: { token: 'hello' } } });
    expect(s.data).toEqual({ token: Buffer.from('hello').toString('base64') });
    expect(s.type).toBe('Opaque');
  });

  it('serves ServiceAccounts, Services (with a cluster IP), Pods, PodDisruptionBudgets and both Event APIs', async () => {
    const ns = await freshNamespace();
    await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: 'op' } } });
    const svc = await core.createNamespacedService({ namespace: ns, body: { metadata: { name: 'svc' },
      spec: { selector: { app: 'w' }, ports: [{ name: 'grpc', port: 50051 }] } } });
    expect(svc.spec?.clusterIP).toMatch(/^10\.96\.\d+\.\d+$/);
    expect(svc.spec?.ports?.[0]).toMatchObject({ protocol: 'TCP', targetPort: 50051 });
    const pod = await core.createNamespacedPod({ namespace: ns, body: { metadata: { name: 'p' },
      spec: { containers: [{ name: 'c', image: 'busybox' }] } } });
    expect(pod.status?.phase).toBe('Pending');
    expect(pod.spec?.containers[0].imagePullPolicy).toBe('Always');
    const pdbs = kc.makeApiClient((await import('@kubernetes/client-node')).PolicyV1Api);
    const pdb = await pdbs.createNamespacedPodDisruptionBudget({ namespace: ns, body: { metadata: { name: 'pdb' },
      spec: { minAvailable: 1, selector: { matchLabels: { app: 'w' } } } } });
    expect(pdb.metadata?.generation).toBe(1);
    await core.createNamespacedEvent({ namespace: ns, body: { metadata: { name: 'e1' }, involvedObject: { kind: 'Pod', name: 'p', namespace: ns },
      reason: 'Scaled', message: 'm', type: 'Normal' } });
    const evs = kc.makeApiClient((await import('@kubernetes/client-node')).EventsV1Api);
    const ev = { metadata: { name: 'e2' }, eventTime: '2026-12-05T17:20:45.123456Z' as unknown as Date, type: 'Normal', reason: 'Scaled',
      action: 'Scale', reportingController: 'kvfleet.io/operator', reportingInstance: 'op-1', regarding: { kind: 'Pod', name: 'p', namespace: ns } };
    // as the real API server: eventTime must be a MicroTime (a Date as client-node writes it, three digits, fails decoding),
    // the reporting fields are required, and the object an event is about is in the event's namespace
    const code = (body: typeof ev) => evs.createNamespacedEvent({ namespace: ns, body }).then(() => 201, (e: { code: number }) => e.code);
    expect(await code({ ...ev, eventTime: new Date() })).toBe(400);
    expect(await code({ ...ev, reportingInstance: '' })).toBe(422);
    expect(await code({ ...ev, type: 'Fatal' })).toBe(422);
    expect(await code({ ...ev, regarding: { ...ev.regarding, namespace: 'elsewhere' } })).toBe(422);
    await evs.createNamespacedEvent({ namespace: ns, body: ev });
    const coreEvents = await core.listNamespacedEvent({ namespace: ns, fieldSelector: 'involvedObject.name=p' });
    expect(coreEvents.items.map((e) => e.reason)).toEqual(['Scaled']);
    expect((await evs.listNamespacedEvent({ namespace: ns })).items.map((e) => e.metadata?.name)).toEqual(['e2']);
  });

  it('strategic merge patch directives: $patch delete in a keyed list and $deleteFromPrimitiveList for finalizers', async () => {
    const ns = await freshNamespace();
    await apps.createNamespacedDeployment({ namespace: ns, body: { ...deployment('d'), metadata: { name: 'd', finalizers: ['a/x', 'b/y'] },
      spec: { ...deployment('d').spec!, template: { metadata: { labels: { app: 'd' } }, spec: { containers: [
        { name: 'worker', image: 'w:1', env: [{ name: 'A', value: '1' }, { name: 'B', value: '2' }] }, { name: 'sidecar', image: 's:1' }] } } } } });
    const p = await apps.patchNamespacedDeployment({ name: 'd', namespace: ns, body: {
      metadata: { '$deleteFromPrimitiveList/finalizers': ['a/x'] },
      spec: { template: { spec: { containers: [{ name: 'sidecar', $patch: 'delete' }, { name: 'worker', env: [{ name: 'B', value: '3' }] }] } } } } },
    patchOptions(PatchStrategy.StrategicMergePatch));
    expect(p.metadata?.finalizers).toEqual(['b/y']);
    expect(p.spec?.template.spec?.containers.map((c) => c.name)).toEqual(['worker']);
    expect(p.spec?.template.spec?.containers[0].env).toEqual([{ name: 'A', value: '1' }, { name: 'B', value: '3' }]);
  });

  it('serves Roles and RoleBindings', async () => {
    const ns = await freshNamespace();
    const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
    await rbac.createNamespacedRole({ namespace: ns, body: { metadata: { name: 'r' }, rules: [{ apiGroups: [''], resources: ['configmaps'], verbs: ['get'] }] } });
    await rbac.createNamespacedRoleBinding({ namespace: ns, body: { metadata: { name: 'rb' }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'r' },
      subjects: [{ kind: 'ServiceAccount', name: 'op', namespace: ns }] } });
    expect((await rbac.listNamespacedRoleBinding({ namespace: ns })).items.map((b) => b.roleRef.name)).toEqual(['r']);
  });

  it('drives generic objects through KubernetesObjectApi, which discovers resources first', async () => {
    const ns = await freshNamespace();
    const objs = KubernetesObjectApi.makeApiClient(kc);
    const cm = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'generic', namespace: ns }, data: { a: '1' } };
    await objs.create(cm);
    const patched = await objs.patch({ ...cm, data: { b: '2' } });
    expect((patched as V1ConfigMap).data).toEqual({ a: '1', b: '2' });
    const read = await objs.read({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'generic', namespace: ns } });
    expect((read as V1ConfigMap).data).toEqual({ a: '1', b: '2' });
    await objs.delete(read);
    expect(server.object('', 'configmaps', ns, 'generic')).toBeUndefined();
  });

  it('uses Leases for leader election: acquire, renew with the resourceVersion, and a rival with a stale one loses', async () => {
    const ns = await freshNamespace();
    const leases = kc.makeApiClient(CoordinationV1Api);
    const lease = await leases.createNamespacedLease({ namespace: ns, body: { metadata: { name: 'kvfleet-operator' },
      spec: { holderIdentity: 'a', leaseDurationSeconds: 15, acquireTime: new Date(), renewTime: new Date() } } });
    const renewed = await leases.replaceNamespacedLease({ name: 'kvfleet-operator', namespace: ns,
      body: { ...lease, spec: { ...lease.spec, renewTime: new Date(Date.now() + 1000) } } });
    expect(renewed.spec?.holderIdentity).toBe('a');
    const rival = await failure(leases.replaceNamespacedLease({ name: 'kvfleet-operator', namespace: ns,
      body: { ...lease, spec: { ...lease.spec, holderIdentity: 'b' } } }));
    expect(rival.code).toBe(409);
  });
});

describe('patch content types (client-node 2.x: setHeaderOptions Content-Type)', () => {
  it('applies merge, JSON, strategic merge patches and server-side apply to a Deployment', async () => {
    const ns = await freshNamespace();
    await apps.createNamespacedDeployment({ namespace: ns, body: deployment('w') });
    const target = { name: 'w', namespace: ns };

    const merged = await apps.patchNamespacedDeployment({ ...target, body: { metadata: { labels: { tier: 'gpu' } }, spec: { replicas: 2 } } },
      patchOptions(PatchStrategy.MergePatch));
    expect(merged.metadata?.labels).toEqual({ app: 'w', tier: 'gpu' });
    expect(merged.spec?.replicas).toBe(2);

    const jp = await apps.patchNamespacedDeployment({ ...target, body: [
      { op: 'test', path: '/spec/replicas', value: 2 },
      { op: 'replace', path: '/spec/replicas', value: 3 },
      { op: 'add', path: '/metadata/annotations', value: { note: 'x' } },
    ] }, patchOptions(PatchStrategy.JsonPatch));
    expect(jp.spec?.replicas).toBe(3);
    expect(jp.metadata?.annotations).toEqual({ note: 'x' });
    const failedTest = await failure(apps.patchNamespacedDeployment({ ...target, body: [{ op: 'test', path: '/spec/replicas', value: 9 }] },
      patchOptions(PatchStrategy.JsonPatch)));
    expect(failedTest.code).toBe(422);

    // Strategic merge: containers merge by name, so the sidecar is added and worker's image changed in place.
    const smp = await apps.patchNamespacedDeployment({ ...target, body: { spec: { template: { spec: { containers: [
      { name: 'worker', image: 'kvfleet/worker:2.0' }, { name: 'sidecar', image: 'envoy:1' }] } } } } },
    patchOptions(PatchStrategy.StrategicMergePatch));
    expect(smp.spec?.template.spec?.containers.map((c) => [c.name, c.image])).toEqual([['worker', 'kvfleet/worker:2.0'], ['sidecar', 'envoy:1']]);
    const merge = await apps.patchNamespacedDeployment({ ...target, body: { spec: { template: { spec: { containers: [
      { name: 'sidecar', image: 'envoy:2' }] } } } } }, patchOptions(PatchStrategy.MergePatch));
    expect(merge.spec?.template.spec?.containers.map((c) => c.name)).toEqual(['sidecar']); // merge patch replaces lists

    // Merge patch of a stale resourceVersion is a precondition failure.
    const stale = await failure(apps.patchNamespacedDeployment({ ...target, body: { metadata: { resourceVersion: '1' }, spec: { replicas: 5 } } },
      patchOptions(PatchStrategy.MergePatch)));
    expect(stale.code).toBe(409);
  });

  it('server-side apply creates when missing and, for one manager, removes fields it stopped applying', async () => {
    const ns = await freshNamespace();
    const applied = (labels: Record<string, string>, replicas: number) => ({ apiVersion: 'apps/v1', kind: 'Deployment',
      ...deployment('ssa', { replicas }), metadata: { name: 'ssa', namespace: ns, labels } });
    const first = await apps.patchNamespacedDeployment({ name: 'ssa', namespace: ns, body: applied({ app: 'ssa', owner: 'op' }, 2),
      fieldManager: 'kvfleet-operator', force: true }, patchOptions(PatchStrategy.ServerSideApply));
    expect(first.metadata?.labels).toEqual({ app: 'ssa', owner: 'op' });
    // someone else adds a label; the manager then stops applying `owner`
    await apps.patchNamespacedDeployment({ name: 'ssa', namespace: ns, body: { metadata: { labels: { other: 'yes' } } } },
      patchOptions(PatchStrategy.MergePatch));
    const second = await apps.patchNamespacedDeployment({ name: 'ssa', namespace: ns, body: applied({ app: 'ssa' }, 4),
      fieldManager: 'kvfleet-operator', force: true }, patchOptions(PatchStrategy.ServerSideApply));
    expect(second.metadata?.labels).toEqual({ app: 'ssa', other: 'yes' });
    expect(second.spec?.replicas).toBe(4);
    expect(second.spec?.template.spec?.restartPolicy).toBe('Always'); // defaults survive an apply
    const noManager = await failure(apps.patchNamespacedDeployment({ name: 'ssa', namespace: ns, body: applied({ app: 'ssa' }, 1) },
      patchOptions(PatchStrategy.ServerSideApply)));
    expect(noManager.code).toBe(400);
  });

  it('bumps generation on spec changes only, and main writes ignore status', async () => {
    const ns = await freshNamespace();
    const d = await apps.createNamespacedDeployment({ namespace: ns, body: deployment('gen') });
    expect(d.metadata?.generation).toBe(1);
    expect(d.spec).toMatchObject({ replicas: 1, revisionHistoryLimit: 10, progressDeadlineSeconds: 600 });
    const labelled = await apps.patchNamespacedDeployment({ name: 'gen', namespace: ns, body: { metadata: { labels: { x: 'y' } } } },
      patchOptions(PatchStrategy.MergePatch));
    expect(labelled.metadata?.generation).toBe(1);
    const withStatus = await apps.patchNamespacedDeployment({ name: 'gen', namespace: ns, body: { status: { readyReplicas: 7 } } },
      patchOptions(PatchStrategy.MergePatch));
    expect(withStatus.status?.readyReplicas).toBeUndefined();
    expect(withStatus.metadata?.generation).toBe(1);
    const scaled = await apps.patchNamespacedDeployment({ name: 'gen', namespace: ns, body: { spec: { replicas: 3 } } },
      patchOptions(PatchStrategy.MergePatch));
    expect(scaled.metadata?.generation).toBe(2);
  });
});

describe('status and scale subresources', () => {
  it('a Deployment status set as the controller would is read through /status; /status writes change only status', async () => {
    const ns = await freshNamespace();
    await apps.createNamespacedDeployment({ namespace: ns, body: deployment('st', { replicas: 3 }) });
    server.setDeploymentStatus(ns, 'st', { readyReplicas: 2 });
    const st = await apps.readNamespacedDeploymentStatus({ name: 'st', namespace: ns });
    expect(st.status).toMatchObject({ replicas: 3, readyReplicas: 2, observedGeneration: 1 });
    const viaStatus = await apps.patchNamespacedDeploymentStatus({ name: 'st', namespace: ns,
      body: { spec: { replicas: 9 }, status: { readyReplicas: 3 } } }, patchOptions(PatchStrategy.MergePatch));
    expect(viaStatus.spec?.replicas).toBe(3);
    expect(viaStatus.status?.readyReplicas).toBe(3);
  });

  it('Deployment scale: GET returns autoscaling/v1 Scale with the selector; PUT and PATCH change spec.replicas', async () => {
    const ns = await freshNamespace();
    await apps.createNamespacedDeployment({ namespace: ns, body: deployment('sc', { replicas: 2 }) });
    const scale = await apps.readNamespacedDeploymentScale({ name: 'sc', namespace: ns });
    expect(scale).toMatchObject({ kind: 'Scale', apiVersion: 'autoscaling/v1', spec: { replicas: 2 }, status: { selector: 'app=sc' } });
    await apps.replaceNamespacedDeploymentScale({ name: 'sc', namespace: ns, body: { ...scale, spec: { replicas: 4 } } });
    expect((await apps.readNamespacedDeployment({ name: 'sc', namespace: ns })).spec?.replicas).toBe(4);
    const patched = await apps.patchNamespacedDeploymentScale({ name: 'sc', namespace: ns, body: { spec: { replicas: 5 } } },
      patchOptions(PatchStrategy.MergePatch));
    expect(patched.spec?.replicas).toBe(5);
    const stale = await failure(apps.replaceNamespacedDeploymentScale({ name: 'sc', namespace: ns, body: { ...scale, spec: { replicas: 1 } } }));
    expect(stale.code).toBe(409);
  });
});

// The shape of the operator's CRDs: defaults, an enum, bounds, CEL rules (mutual exclusion, ordering, a transition rule),
// status and scale subresources.
const fleetCrd: V1CustomResourceDefinition = {
  metadata: { name: 'fleets.kvfleet.io' },
  spec: {
    group: 'kvfleet.io', scope: 'Namespaced',
    names: { kind: 'Fleet', plural: 'fleets', singular: 'fleet', listKind: 'FleetList' },
    versions: [{
      name: 'v1alpha1', served: true, storage: true,
      subresources: { status: {}, scale: { specReplicasPath: '.spec.replicas', statusReplicasPath: '.status.replicas', labelSelectorPath: '.status.selector' } },
      schema: { openAPIV3Schema: {
        type: 'object',
        properties: {
          spec: {
            type: 'object', required: ['model'],
            x_kubernetes_validations: [
              { rule: 'self.autoscaling.minReplicas <= self.autoscaling.maxReplicas', message: 'minReplicas must not exceed maxReplicas',
                fieldPath: '.autoscaling.minReplicas' },
              { rule: 'self.model == oldSelf.model', message: 'model is immutable' },
            ],
            properties: {
              model: { type: 'string', minLength: 1 },
              replicas: { type: 'integer', minimum: 0, _default: 1 },
              compression: {
                type: 'object', _default: {},
                x_kubernetes_validations: [{ rule: "has(self.tokensPerHead) != has(self.keepRatio) || self.method == 'Full'",
                  message: 'exactly one of tokensPerHead and keepRatio unless method is Full', fieldPath: '.keepRatio' }],
                properties: {
                  method: { type: 'string', _enum: ['Full', 'SnapKV', 'PyramidKV', 'AdaKV'], _default: 'AdaKV' },
                  tokensPerHead: { type: 'integer', minimum: 1 },
                  keepRatio: { type: 'number', exclusiveMinimum: true, minimum: 0, maximum: 1 },
                },
              },
              autoscaling: {
                type: 'object', _default: {},
                properties: {
                  minReplicas: { type: 'integer', minimum: 0, _default: 1 },
                  maxReplicas: { type: 'integer', minimum: 1, _default: 4 },
                  targetKVPressure: { type: 'number', _default: 0.7 },
                },
              },
              tags: { type: 'array', maxItems: 2, items: { type: 'string', pattern: '^[a-z]+$' },
                x_kubernetes_validations: [{ rule: "size(self) == 0 || (self.all(t, t.startsWith('x') || size(t) <= 12) && !self.exists(t, t == 'reserved'))",
                  message: 'tag "reserved" is reserved' }] },
              extra: { type: 'object', x_kubernetes_preserve_unknown_fields: true },
            },
          },
          status: { type: 'object', properties: {
            replicas: { type: 'integer' }, selector: { type: 'string' }, observedGeneration: { type: 'integer' },
          } },
        },
      } },
    }],
  },
} as V1CustomResourceDefinition;

describe('custom resources admitted from their CRD', () => {
  const fleet = (ns: string, name: string, spec: object) => ({ apiVersion: 'kvfleet.io/v1alpha1', kind: 'Fleet', metadata: { name, namespace: ns }, spec });
  const target = (ns: string) => ({ group: 'kvfleet.io', version: 'v1alpha1', namespace: ns, plural: 'fleets' });

  beforeAll(async () => {
    const crds = kc.makeApiClient(ApiextensionsV1Api);
    const created = await crds.createCustomResourceDefinition({ body: fleetCrd });
    expect(created.status?.conditions?.find((c) => c.type === 'Established')?.status).toBe('True');
  });

  it('rejects a CRD whose CEL rule does not parse, naming the rule', async () => {
    const crds = kc.makeApiClient(ApiextensionsV1Api);
    const bad = structuredClone(fleetCrd);
    bad.metadata = { name: 'budgets.kvfleet.io' };
    bad.spec.names = { kind: 'KVBudget', plural: 'budgets' };
    bad.spec.versions[0].schema!.openAPIV3Schema!.x_kubernetes_validations = [{ rule: 'self.spec.(' }];
    const s = await failure(crds.createCustomResourceDefinition({ body: bad }));
    expect(s.code).toBe(422);
    expect(s.details?.causes?.[0].field).toBe('spec.versions[0].schema.openAPIV3Schema.x-kubernetes-validations[0].rule');
  });

  it('is discovered and served under its group and applies schema defaults', async () => {
    const res = await (await fetch(`${server.url}/apis/kvfleet.io/v1alpha1`, { headers: { Authorization: `Bearer ${server.token}` } })).json() as
      { resources: { name: string }[] };
    expect(res.resources.map((r) => r.name)).toEqual(['fleets', 'fleets/status', 'fleets/scale']);
    const ns = await freshNamespace();
    const created = await custom.createNamespacedCustomObject({ ...target(ns), body: fleet(ns, 'f', { model: 'llama', compression: { tokensPerHead: 64 } }) }) as
      { spec: Record<string, unknown>; metadata: { generation: number } };
    expect(created.spec).toEqual({ model: 'llama', replicas: 1, compression: { method: 'AdaKV', tokensPerHead: 64 },
      autoscaling: { minReplicas: 1, maxReplicas: 4, targetKVPressure: 0.7 } });
    expect(created.metadata.generation).toBe(1);
  });

  it('a CEL violation is 422 Invalid naming the field path and the rule message', async () => {
    const ns = await freshNamespace();
    const both = await failure(custom.createNamespacedCustomObject({ ...target(ns),
      body: fleet(ns, 'bad', { model: 'm', compression: { method: 'SnapKV', tokensPerHead: 8, keepRatio: 0.5 } }) }));
    expect(both).toMatchObject({ code: 422, reason: 'Invalid', details: { name: 'bad', group: 'kvfleet.io', kind: 'Fleet' } });
    expect(both.details?.causes).toEqual([{ reason: 'FieldValueInvalid', field: 'spec.compression.keepRatio',
      message: 'Invalid value: "object": exactly one of tokensPerHead and keepRatio unless method is Full' }]);
    // method Full allows neither
    await custom.createNamespacedCustomObject({ ...target(ns), body: fleet(ns, 'full', { model: 'm', compression: { method: 'Full' } }) });
    const order = await failure(custom.createNamespacedCustomObject({ ...target(ns),
      body: fleet(ns, 'order', { model: 'm', compression: { keepRatio: 0.3 }, autoscaling: { minReplicas: 5, maxReplicas: 2 } }) }));
    expect(order.details?.causes?.map((c) => c.field)).toEqual(['spec.autoscaling.minReplicas']);
  });

  it('supports size(), all(), exists() and string methods in rules', async () => {
    const ns = await freshNamespace();
    const s = await failure(custom.createNamespacedCustomObject({ ...target(ns),
      body: fleet(ns, 'tags', { model: 'm', compression: { keepRatio: 0.5 }, tags: ['ok', 'reserved'] }) }));
    expect(s.details?.causes).toEqual([{ reason: 'FieldValueInvalid', field: 'spec.tags', message: 'Invalid value: "array": tag "reserved" is reserved' }]);
    await custom.createNamespacedCustomObject({ ...target(ns), body: fleet(ns, 'tags', { model: 'm', compression: { keepRatio: 0.5 }, tags: ['ok'] }) });
  });

  it('serves cluster-scoped custom resources', async () => {
    const crds = kc.makeApiClient(ApiextensionsV1Api);
    await crds.createCustomResourceDefinition({ body: { metadata: { name: 'kvbudgets.kvfleet.io' }, spec: {
      group: 'kvfleet.io', scope: 'Cluster', names: { kind: 'KVBudget', plural: 'kvbudgets' },
      versions: [{ name: 'v1alpha1', served: true, storage: true, schema: { openAPIV3Schema: { type: 'object', properties: {
        spec: { type: 'object', properties: { pagesPerHead: { type: 'integer', minimum: 1, _default: 16 } } } } } } }] } } });
    const t = { group: 'kvfleet.io', version: 'v1alpha1', plural: 'kvbudgets' };
    const b = await custom.createClusterCustomObject({ ...t, body: { apiVersion: 'kvfleet.io/v1alpha1', kind: 'KVBudget', metadata: { name: 'small' }, spec: {} } }) as
      { metadata: { namespace?: string }; spec: { pagesPerHead: number } };
    expect(b.spec.pagesPerHead).toBe(16);
    expect(b.metadata.namespace).toBeUndefined();
    const list = await custom.listClusterCustomObject(t) as { items: { metadata: { name: string } }[] };
    expect(list.items.map((i) => i.metadata.name)).toEqual(['small']);
    // KubernetesObjectApi defaults to strategic merge patch, which custom resources refuse (415, as on a real server).
    const objs = KubernetesObjectApi.makeApiClient(kc);
    const spec = { apiVersion: 'kvfleet.io/v1alpha1', kind: 'KVBudget', metadata: { name: 'small' }, spec: { pagesPerHead: 32 } };
    expect((await failure(objs.patch(spec))).code).toBe(415);
    const patched = await objs.patch(spec, undefined, undefined, undefined, undefined, PatchStrategy.MergePatch) as unknown as { spec: { pagesPerHead: number } };
    expect(patched.spec.pagesPerHead).toBe(32);
  });

  it('checks OpenAPI types, required, enum, bounds, pattern and maxItems, each cause naming its field', async () => {
    const ns = await freshNamespace();
    const s = await failure(custom.createNamespacedCustomObject({ ...target(ns), body: fleet(ns, 'types', {
      replicas: 'two', compression: { method: 'Magic', keepRatio: 0 }, tags: ['ok', 'NOPE', 'x'] }) }));
    const byField = Object.fromEntries(s.details!.causes!.map((c) => [c.field, c.reason]));
    expect(byField).toEqual({
      'spec.model': 'FieldValueRequired', 'spec.replicas': 'FieldValueTypeInvalid', 'spec.compression.method': 'FieldValueNotSupported',
      'spec.compression.keepRatio': 'FieldValueInvalid', 'spec.tags': 'FieldValueTooMany', 'spec.tags[1]': 'FieldValueInvalid',
    });
  });

  it('prunes unknown fields (warning) except under x-kubernetes-preserve-unknown-fields, and rejects them with fieldValidation=Strict', async () => {
    const ns = await freshNamespace();
    const created = await custom.createNamespacedCustomObject({ ...target(ns), body: fleet(ns, 'prune',
      { model: 'm', compression: { keepRatio: 0.5 }, bogus: 1, extra: { anything: { goes: true } } }) }) as { spec: Record<string, unknown> };
    expect(created.spec.bogus).toBeUndefined();
    expect(created.spec.extra).toEqual({ anything: { goes: true } });
    const strict = await failure(custom.createNamespacedCustomObject({ ...target(ns), fieldValidation: 'Strict',
      body: fleet(ns, 'strict', { model: 'm', compression: { keepRatio: 0.5 }, bogus: 1 }) }));
    expect(strict.code).toBe(400);
    expect(strict.message).toContain('unknown field "spec.bogus"');
  });

  it('evaluates transition rules with oldSelf on update only, and requires resourceVersion on update', async () => {
    const ns = await freshNamespace();
    const f = await custom.createNamespacedCustomObject({ ...target(ns), body: fleet(ns, 'tr', { model: 'a', compression: { keepRatio: 0.5 } }) }) as
      { metadata: { resourceVersion: string }; spec: { model: string } };
    const changed = await failure(custom.patchNamespacedCustomObject({ ...target(ns), name: 'tr', body: { spec: { model: 'b' } } },
      patchOptions(PatchStrategy.MergePatch)));
    expect(changed.details?.causes).toEqual([{ reason: 'FieldValueInvalid', field: 'spec', message: 'Invalid value: "object": model is immutable' }]);
    const noRv = structuredClone(f) as { metadata: { resourceVersion?: string } };
    delete noRv.metadata.resourceVersion;
    const unconditional = await failure(custom.replaceNamespacedCustomObject({ ...target(ns), name: 'tr', body: noRv }));
    expect(unconditional.details?.causes?.[0].field).toBe('metadata.resourceVersion');
  });

  it('status subresource: main writes ignore status, /status writes ignore spec; generation follows spec only', async () => {
    const ns = await freshNamespace();
    await custom.createNamespacedCustomObject({ ...target(ns), body: { ...fleet(ns, 's', { model: 'm', compression: { keepRatio: 0.5 } }), status: { replicas: 9 } } });
    const afterCreate = server.object('kvfleet.io', 'fleets', ns, 's')!;
    expect(afterCreate.status).toBeUndefined();
    const st = await custom.patchNamespacedCustomObjectStatus({ ...target(ns), name: 's', body: { spec: { replicas: 5 }, status: { replicas: 2, selector: 'app=s', observedGeneration: 1 } } },
      patchOptions(PatchStrategy.MergePatch)) as { spec: { replicas: number }; status: { replicas: number }; metadata: { generation: number } };
    expect(st.spec.replicas).toBe(1);
    expect(st.status.replicas).toBe(2);
    expect(st.metadata.generation).toBe(1);
    const main = await custom.patchNamespacedCustomObject({ ...target(ns), name: 's', body: { spec: { replicas: 3 }, status: { replicas: 0 } } },
      patchOptions(PatchStrategy.MergePatch)) as typeof st;
    expect(main.status.replicas).toBe(2);
    expect(main.metadata.generation).toBe(2);
  });

  it('scale subresource follows the CRD paths', async () => {
    const ns = await freshNamespace();
    await custom.createNamespacedCustomObject({ ...target(ns), body: fleet(ns, 'sc', { model: 'm', replicas: 2, compression: { keepRatio: 0.5 } }) });
    await custom.patchNamespacedCustomObjectStatus({ ...target(ns), name: 'sc', body: { status: { replicas: 2, selector: 'fleet=sc' } } },
      patchOptions(PatchStrategy.MergePatch));
    const scale = await custom.getNamespacedCustomObjectScale({ ...target(ns), name: 'sc' }) as { spec: { replicas: number }; status: object };
    expect(scale).toMatchObject({ kind: 'Scale', spec: { replicas: 2 }, status: { replicas: 2, selector: 'fleet=sc' } });
    await custom.patchNamespacedCustomObjectScale({ ...target(ns), name: 'sc', body: { spec: { replicas: 6 } } }, patchOptions(PatchStrategy.MergePatch));
    expect((server.object('kvfleet.io', 'fleets', ns, 'sc')!.spec as { replicas: number }).replicas).toBe(6);
  });

  it('server-side apply of a custom resource creates it, then merges', async () => {
    const ns = await freshNamespace();
    const body = fleet(ns, 'ap', { model: 'm', compression: { keepRatio: 0.5 } });
    await custom.patchNamespacedCustomObject({ ...target(ns), name: 'ap', body, fieldManager: 'kvfleet' }, patchOptions(PatchStrategy.ServerSideApply));
    const again = await custom.patchNamespacedCustomObject({ ...target(ns), name: 'ap', fieldManager: 'kvfleet',
      body: fleet(ns, 'ap', { model: 'm', compression: { keepRatio: 0.25 } }) }, patchOptions(PatchStrategy.ServerSideApply)) as
      { spec: { compression: { keepRatio: number; method: string } } };
    expect(again.spec.compression).toEqual({ keepRatio: 0.25, method: 'AdaKV' });
  });
});

describe('watches', () => {
  type Ev = { type: string; name?: string; rv?: string; code?: number };
  /** Opens a client-node Watch and collects its events until done. */
  async function watchConfigMaps(ns: string, params: Record<string, string | number | boolean | undefined>) {
    const events: Ev[] = [];
    let ended: unknown = 'open';
    const req = await new Watch(kc).watch(`/api/v1/namespaces/${ns}/configmaps`, params,
      (type, obj: { metadata?: { name?: string; resourceVersion?: string }; code?: number }) => {
        events.push({ type, name: obj.metadata?.name, rv: obj.metadata?.resourceVersion, code: obj.code });
      }, (err) => { ended = err ?? null; });
    return { events, req, ended: () => ended };
  }

  it('streams ADDED, MODIFIED, DELETED in order after the list resourceVersion, with bookmarks', async () => {
    const ns = await freshNamespace();
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'before' } } });
    const list = await core.listNamespacedConfigMap({ namespace: ns });
    const w = await watchConfigMaps(ns, { resourceVersion: list.metadata!.resourceVersion, allowWatchBookmarks: true });
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'w' }, data: { a: '1' } } });
    await core.patchNamespacedConfigMap({ name: 'w', namespace: ns, body: { data: { a: '2' } } }, patchOptions(PatchStrategy.MergePatch));
    await core.deleteNamespacedConfigMap({ name: 'w', namespace: ns });
    await eventually(() => w.events.some((e) => e.type === 'BOOKMARK') && w.events.filter((e) => e.type !== 'BOOKMARK').length >= 3, 'events and a bookmark');
    const changes = w.events.filter((e) => e.type !== 'BOOKMARK');
    expect(changes.map((e) => `${e.type} ${e.name}`)).toEqual(['ADDED w', 'MODIFIED w', 'DELETED w']);
    const rvs = changes.map((e) => Number(e.rv));
    expect(rvs).toEqual([...rvs].sort((a, b) => a - b));
    expect(rvs[0]).toBeGreaterThan(Number(list.metadata!.resourceVersion));
    w.req.abort();
  });

  it('replays from a past resourceVersion, filters by label selector, and honours timeoutSeconds', async () => {
    const ns = await freshNamespace();
    const start = (await core.listNamespacedConfigMap({ namespace: ns })).metadata!.resourceVersion;
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'gpu', labels: { tier: 'gpu' } } } });
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'cpu', labels: { tier: 'cpu' } } } });
    // cpu moves into the selection: a watch sees that as ADDED
    await core.patchNamespacedConfigMap({ name: 'cpu', namespace: ns, body: { metadata: { labels: { tier: 'gpu' } } } }, patchOptions(PatchStrategy.MergePatch));
    const w = await watchConfigMaps(ns, { resourceVersion: start, labelSelector: 'tier=gpu', timeoutSeconds: 1 });
    await eventually(() => w.ended() !== 'open', 'the watch to end on timeoutSeconds', 5000);
    expect(w.ended()).toBeNull();
    expect(w.events.map((e) => `${e.type} ${e.name}`)).toEqual(['ADDED gpu', 'ADDED cpu']);
  });

  it('answers a watch from a compacted resourceVersion with an ERROR event carrying a 410 Status', async () => {
    const ns = await freshNamespace();
    const old = (await core.listNamespacedConfigMap({ namespace: ns })).metadata!.resourceVersion;
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'c' } } });
    server.compact();
    const w = await watchConfigMaps(ns, { resourceVersion: old });
    await eventually(() => w.ended() !== 'open', 'the watch to end');
    expect(w.events).toEqual([{ type: 'ERROR', code: 410, name: undefined, rv: undefined }]);
    // from the current resourceVersion the watch is fine
    const cur = (await core.listNamespacedConfigMap({ namespace: ns })).metadata!.resourceVersion;
    const ok = await watchConfigMaps(ns, { resourceVersion: cur });
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'd' } } });
    await eventually(() => ok.events.length === 1, 'the ADDED event');
    expect(ok.events[0]).toMatchObject({ type: 'ADDED', name: 'd' });
    ok.req.abort();
  });

  it('trims history to the configured window', async () => {
    const small = await KubeApiServer.start({ eventWindow: 2 });
    try {
      const c = kubeConfigFor(small).makeApiClient(CoreV1Api);
      const rv = (await c.listNamespacedConfigMap({ namespace: 'default' })).metadata!.resourceVersion;
      for (const n of ['a', 'b', 'c']) await c.createNamespacedConfigMap({ namespace: 'default', body: { metadata: { name: n } } });
      const r = await fetch(`${small.url}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=${rv}`,
        { headers: { Authorization: `Bearer ${small.token}` } });
      const line = JSON.parse((await r.text()).trim()) as { type: string; object: { code: number; reason: string } };
      expect(line).toMatchObject({ type: 'ERROR', object: { code: 410, reason: 'Expired' } });
    } finally { await small.stop(); }
  });
});

describe('informers', () => {
  // Restarts and compaction affect every client, so these tests get a server of their own.
  let own: KubeApiServer;
  let ownCore: CoreV1Api;
  let ownKc: KubeConfig;
  beforeAll(async () => {
    own = await KubeApiServer.start();
    ownKc = kubeConfigFor(own);
    ownCore = ownKc.makeApiClient(CoreV1Api);
  });
  afterAll(async () => { await own?.stop(); });
  let stops: (() => Promise<void>)[] = [];
  afterEach(async () => { for (const s of stops) await s(); stops = []; });

  function configMapInformer(ns: string) {
    const inf = makeInformer<V1ConfigMap>(ownKc, `/api/v1/namespaces/${ns}/configmaps`, () => ownCore.listNamespacedConfigMap({ namespace: ns }));
    const seen: string[] = [];
    inf.on('add', (o) => seen.push(`add ${o.metadata?.name}`));
    inf.on('update', (o) => seen.push(`update ${o.metadata?.name}`));
    inf.on('delete', (o) => seen.push(`delete ${o.metadata?.name}`));
    stops.push(runInformer(inf, { minDelayMs: 50 }));
    return { inf, seen };
  }
  const lists = (ns: string) => own.calls().filter((c) => c.verb === 'list' && c.resource === 'configmaps' && c.namespace === ns).length;

  it('relists after a 410 when its watch resumes from a compacted resourceVersion', async () => {
    const ns = 'default';
    await ownCore.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'a' } } });
    const { inf, seen } = configMapInformer(ns);
    await eventually(() => inf.get('a', ns), 'the initial list');
    expect(lists(ns)).toBe(1);
    // The watch drops; meanwhile an object is added and history compacted, so the resume gets 410 and must relist.
    await own.stop();
    own.put({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'b', namespace: ns } });
    own.compact();
    await own.resume();
    await eventually(() => inf.get('b', ns), 'b after the relist');
    expect(lists(ns)).toBe(2);
    expect(seen).toEqual(['add a', 'add b']);
  });

  it('survives a restart that keeps state without relisting, and sees a restart that drops state as deletions', async () => {
    const ns = 'kube-public';
    await ownCore.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'a' } } });
    const { inf, seen } = configMapInformer(ns);
    await eventually(() => inf.get('a', ns), 'the initial list');
    await own.restart({ keepState: true });
    await ownCore.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'b' } } });
    await eventually(() => inf.get('b', ns), 'b through the resumed watch');
    expect(lists(ns)).toBe(1);
    await own.restart({ keepState: false });
    await eventually(() => inf.list(ns).length === 0, 'the informer to drop everything');
    expect(lists(ns)).toBeGreaterThanOrEqual(2);
    expect(seen).toEqual(['add a', 'add b', 'delete a', 'delete b']);
  });
});

describe('garbage collection and finalizers', () => {
  it('deleting an owner deletes its dependents in the background; Orphan keeps them without the reference', async () => {
    const ns = await freshNamespace();
    const owner = await apps.createNamespacedDeployment({ namespace: ns, body: deployment('owner') });
    const ref = { apiVersion: 'apps/v1', kind: 'Deployment', name: 'owner', uid: owner.metadata!.uid!, controller: true, blockOwnerDeletion: true };
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'child', ownerReferences: [ref] } } });
    await core.createNamespacedService({ namespace: ns, body: { metadata: { name: 'child-svc', ownerReferences: [ref] }, spec: { ports: [{ port: 80 }] } } });
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'unrelated' } } });
    await apps.deleteNamespacedDeployment({ name: 'owner', namespace: ns });
    await eventually(() => !server.object('', 'configmaps', ns, 'child') && !server.object('', 'services', ns, 'child-svc'), 'the children to be collected');
    expect(server.object('', 'configmaps', ns, 'unrelated')).toBeDefined();

    const owner2 = await apps.createNamespacedDeployment({ namespace: ns, body: deployment('owner2') });
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'orphan', ownerReferences: [{ ...ref, name: 'owner2', uid: owner2.metadata!.uid! }] } } });
    await apps.deleteNamespacedDeployment({ name: 'owner2', namespace: ns, propagationPolicy: 'Orphan' });
    await eventually(() => !server.object('apps', 'deployments', ns, 'owner2'), 'the orphaning owner to go');
    const kept = server.object('', 'configmaps', ns, 'orphan');
    expect(kept).toBeDefined();
    expect((kept!.metadata as { ownerReferences?: unknown }).ownerReferences).toBeUndefined();
  });

  it('Foreground deletion keeps the owner until its blocking dependents are gone', async () => {
    const ns = await freshNamespace();
    const owner = await apps.createNamespacedDeployment({ namespace: ns, body: deployment('fg') });
    const ref = { apiVersion: 'apps/v1', kind: 'Deployment', name: 'fg', uid: owner.metadata!.uid!, blockOwnerDeletion: true };
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'held', ownerReferences: [ref], finalizers: ['kvfleet.io/hold'] } } });
    await apps.deleteNamespacedDeployment({ name: 'fg', namespace: ns, propagationPolicy: 'Foreground' });
    await eventually(() => (server.object('', 'configmaps', ns, 'held')?.metadata as { deletionTimestamp?: string })?.deletionTimestamp, 'the dependent to be deleting');
    expect((server.object('apps', 'deployments', ns, 'fg')!.metadata as { finalizers: string[] }).finalizers).toEqual(['foregroundDeletion']);
    await core.patchNamespacedConfigMap({ name: 'held', namespace: ns, body: [{ op: 'remove', path: '/metadata/finalizers' }] }, patchOptions(PatchStrategy.JsonPatch));
    await eventually(() => !server.object('apps', 'deployments', ns, 'fg'), 'the owner to go once the dependent is gone');
  });

  it('a finalizer holds deletion: deletionTimestamp is set, and removing the finalizer deletes the object', async () => {
    const ns = await freshNamespace();
    const target = { group: 'kvfleet.io', version: 'v1alpha1', namespace: ns, plural: 'fleets' };
    await custom.createNamespacedCustomObject({ ...target, body: { apiVersion: 'kvfleet.io/v1alpha1', kind: 'Fleet',
      metadata: { name: 'fin', finalizers: ['kvfleet.io/cleanup'] }, spec: { model: 'm', compression: { keepRatio: 0.5 } } } });
    const deleting = await custom.deleteNamespacedCustomObject({ ...target, name: 'fin' }) as { metadata: { deletionTimestamp?: string } };
    expect(deleting.metadata.deletionTimestamp).toBeDefined();
    const still = await custom.getNamespacedCustomObject({ ...target, name: 'fin' }) as { metadata: { deletionTimestamp?: string; finalizers: string[]; resourceVersion: string } };
    expect(still.metadata.finalizers).toEqual(['kvfleet.io/cleanup']);
    const addFinalizer = await failure(custom.patchNamespacedCustomObject({ ...target, name: 'fin', body: { metadata: { finalizers: ['kvfleet.io/cleanup', 'more'] } } },
      patchOptions(PatchStrategy.MergePatch)));
    expect(addFinalizer.code).toBe(422);
    await custom.patchNamespacedCustomObject({ ...target, name: 'fin', body: { metadata: { finalizers: null } } }, patchOptions(PatchStrategy.MergePatch));
    const gone = await failure(custom.getNamespacedCustomObject({ ...target, name: 'fin' }));
    expect(gone).toMatchObject({ code: 404, message: 'fleets.kvfleet.io "fin" not found' });
  });

  it('deleting a namespace deletes its contents, then the namespace', async () => {
    const ns = await freshNamespace();
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'in-ns' } } });
    const terminating = await core.deleteNamespace({ name: ns }) as unknown as { status?: { phase?: string } };
    expect(terminating.status?.phase).toBe('Terminating');
    await eventually(() => !server.object('', 'namespaces', '', ns), 'the namespace to go');
    expect(server.object('', 'configmaps', ns, 'in-ns')).toBeUndefined();
  });
});

describe('call record', () => {
  it('records every (verb, group, resource, subresource, namespace) and folds them into RBAC rules', async () => {
    const ns = await freshNamespace();
    server.clearCalls();
    await apps.createNamespacedDeployment({ namespace: ns, body: deployment('rbac') });
    await apps.readNamespacedDeployment({ name: 'rbac', namespace: ns });
    await apps.listDeploymentForAllNamespaces();
    await apps.patchNamespacedDeploymentScale({ name: 'rbac', namespace: ns, body: { spec: { replicas: 2 } } }, patchOptions(PatchStrategy.MergePatch));
    await apps.replaceNamespacedDeployment({ name: 'rbac', namespace: ns, body: await apps.readNamespacedDeployment({ name: 'rbac', namespace: ns }) });
    await custom.listNamespacedCustomObject({ group: 'kvfleet.io', version: 'v1alpha1', namespace: ns, plural: 'fleets' });
    await custom.patchNamespacedCustomObjectStatus({ group: 'kvfleet.io', version: 'v1alpha1', namespace: ns, plural: 'fleets', name: 'none', body: {} },
      patchOptions(PatchStrategy.MergePatch)).catch(() => undefined);
    const req = await new Watch(kc).watch(`/api/v1/namespaces/${ns}/configmaps`, {}, () => undefined, () => undefined);
    await eventually(() => server.calls().some((c) => c.verb === 'watch'), 'the watch call');
    req.abort();
    await core.deleteCollectionNamespacedConfigMap({ namespace: ns });
    await custom.listClusterCustomObject({ group: 'kvfleet.io', version: 'v1alpha1', plural: 'notyet' }).catch(() => undefined);
    const calls = server.calls();
    expect(calls.at(-1)).toMatchObject({ verb: 'list', group: 'kvfleet.io', resource: 'notyet', code: 404 });
    expect(calls[0]).toEqual({ verb: 'create', group: 'apps', resource: 'deployments', subresource: '', namespace: ns, name: '', code: 201 });
    expect(calls.find((c) => c.verb === 'list' && c.resource === 'deployments')).toMatchObject({ namespace: '' });
    expect(calls.find((c) => c.subresource === 'status')).toMatchObject({ verb: 'patch', resource: 'fleets', code: 404 });
    expect(server.rbacRules()).toEqual([
      { apiGroups: [''], resources: ['configmaps'], verbs: ['deletecollection', 'watch'] },
      { apiGroups: ['apps'], resources: ['deployments'], verbs: ['create', 'get', 'list', 'update'] },
      { apiGroups: ['apps'], resources: ['deployments/scale'], verbs: ['patch'] },
      { apiGroups: ['kvfleet.io'], resources: ['fleets'], verbs: ['list'] },
      { apiGroups: ['kvfleet.io'], resources: ['fleets/status'], verbs: ['patch'] },
      { apiGroups: ['kvfleet.io'], resources: ['notyet'], verbs: ['list'] },
    ]);
  });
});
