// The Helm chart, rendered by the real helm binary: lint, Kubernetes schema validity of every object for several
// value sets, restricted pod security, the operator's shape, Redis modes, NetworkPolicies, monitoring, dashboard,
// and values.schema.json rejecting bad values with the field named.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { CHART, find, helm, helmPath, render, VALUE_SETS, type K8sObject } from './helm.ts';
import { podSpecOf, promShapeErrors, restrictedViolations, schemaErrors, unknownFields } from './validate.ts';

type Json = Record<string, unknown>;
const rendered = new Map<string, K8sObject[]>();

beforeAll(() => {
  helmPath(); // fetch once, with a clear error, before any test times out on it
  for (const [name, args] of Object.entries(VALUE_SETS)) rendered.set(name, render(args));
}, 240_000);

const objs = (set: string): K8sObject[] => rendered.get(set)!;
const container = (d: K8sObject, name: string): Json =>
  ((podSpecOf(d)!.containers as Json[]).find((c) => c.name === name))!;
const envOf = (c: Json): Map<string, Json> => new Map((c.env as Json[]).map((e) => [e.name as string, e]));

describe('helm lint --strict', () => {
  for (const [name, args] of Object.entries(VALUE_SETS)) {
    it(`passes with ${name}`, () => {
      const r = helm(['lint', '--strict', CHART, '--namespace', 'kvfleet', ...args]);
      expect(r.stderr + r.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
      expect(r.code).toBe(0);
    });
  }
});

describe('rendered objects', () => {
  for (const name of Object.keys(VALUE_SETS)) {
    it(`validate against the Kubernetes schemas with ${name}`, async () => {
      const errors: string[] = [];
      for (const o of objs(name)) {
        if (o.apiVersion === 'monitoring.coreos.com/v1') { errors.push(...promShapeErrors(o)); continue; }
        if (o.apiVersion === 'kvfleet.io/v1alpha1') continue; // our CRDs: tests/packaging/crd-examples (see report)
        errors.push(...await schemaErrors(o));
        errors.push(...unknownFields(o).map((p) => `${o.kind}/${o.metadata.name}${p}: unknown field`));
      }
      expect(errors).toEqual([]);
    });

    it(`run every pod under the restricted pod security standard with ${name}`, () => {
      const pods = objs(name).filter((o) => podSpecOf(o));
      expect(pods.length).toBeGreaterThan(0);
      const violations = pods.flatMap((o) => restrictedViolations(podSpecOf(o)!, `${o.kind}/${o.metadata.name}`));
      expect(violations).toEqual([]);
    });

    it(`carry the standard labels and unique names with ${name}`, () => {
      const keys = objs(name).map((o) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`);
      expect(new Set(keys).size).toBe(keys.length);
      for (const o of objs(name)) {
        expect(o.metadata.labels?.['app.kubernetes.io/name'], `${o.kind}/${o.metadata.name}`).toBe('kvfleet');
        expect(o.metadata.labels?.['app.kubernetes.io/instance']).toBe('kvfleet');
        expect(o.metadata.labels?.['app.kubernetes.io/component']).toBeTruthy();
      }
    });
  }

  it('the restricted check itself catches a root container and a missing drop ALL', () => {
    const v = restrictedViolations({ securityContext: { seccompProfile: { type: 'RuntimeDefault' } },
      containers: [{ name: 'c', securityContext: { runAsUser: 0, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true } }] }, 'pod');
    expect(v).toEqual(['pod container c: runAsNonRoot is not true', 'pod container c: runAsUser is 0', 'pod container c: capabilities.drop lacks ALL']);
  });

  it('the unknown-field check names a misspelt field', () => {
    const [d] = find(objs('defaults'), 'Deployment');
    const bad = structuredClone(d);
    ((bad.spec as Json).template as { spec: Json }).spec.securityContex = {};
    expect(unknownFields(bad)).toEqual(['/spec/template/spec/securityContex']);
  });
});

describe('operator', () => {
  it('runs 2 replicas of `kvfleet operator --leader-elect --metrics-port 9402` with probes on /healthz and /readyz', () => {
    const [d] = find(objs('defaults'), 'Deployment', 'kvfleet-operator');
    expect((d.spec as Json).replicas).toBe(2);
    const c = container(d, 'operator');
    expect(c.image).toBe('ghcr.io/kvfleet/kvfleet:0.1.0');
    expect(c.args).toEqual(['operator', '--leader-elect', '--metrics-port', '9402', '--log-level', 'info']);
    expect(c.ports).toEqual([{ name: 'metrics', containerPort: 9402, protocol: 'TCP' }]);
    expect((c.livenessProbe as Json).httpGet).toEqual({ path: '/healthz', port: 'metrics' });
    expect((c.readinessProbe as Json).httpGet).toEqual({ path: '/readyz', port: 'metrics' });
    expect(envOf(c).get('KVFLEET_LEASE_NAME')?.value).toBe('kvfleet-leader');
    expect(find(objs('defaults'), 'PodDisruptionBudget', 'kvfleet-operator')).toHaveLength(1);
  });

  it('passes allowedHostPaths as --allowed-host-paths, and nothing when empty', () => {
    const args = (set: K8sObject[]) => container(find(set, 'Deployment', 'kvfleet-operator')[0], 'operator').args as string[];
    expect(args(objs('defaults'))).not.toContain('--allowed-host-paths');
    const a = args(render(['--set-json', 'operator.allowedHostPaths=["/srv/models","/data"]']));
    expect(a.slice(a.indexOf('--allowed-host-paths'), a.indexOf('--allowed-host-paths') + 2)).toEqual(['--allowed-host-paths', '/srv/models,/data']);
  });

  it('one replica: no PodDisruptionBudget (it would block every drain)', () => {
    const set = objs('examples on, one replica, no network policies');
    expect((find(set, 'Deployment', 'kvfleet-operator')[0].spec as Json).replicas).toBe(1);
    expect(find(set, 'PodDisruptionBudget')).toEqual([]);
  });

  it('binds its ServiceAccount to the ClusterRole and the lease Role', () => {
    const set = objs('defaults');
    const [d] = find(set, 'Deployment', 'kvfleet-operator');
    const sa = podSpecOf(d)!.serviceAccountName;
    expect(find(set, 'ServiceAccount', sa as string)).toHaveLength(1);
    for (const kind of ['ClusterRoleBinding', 'RoleBinding']) {
      const [b] = find(set, kind);
      expect(b.subjects).toEqual([{ kind: 'ServiceAccount', name: sa, namespace: 'kvfleet' }]);
      expect((b.roleRef as Json).name).toBe(find(set, kind.replace('Binding', ''))[0].metadata.name);
    }
  });
});

describe('redis', () => {
  it('managed by default: StatefulSet redis:7-alpine, generated password Secret, Service, no persistence', () => {
    const set = objs('defaults');
    const [sts] = find(set, 'StatefulSet', 'kvfleet-redis');
    expect((sts.spec as Json).replicas).toBe(1);
    expect((sts.spec as Json).volumeClaimTemplates).toBeUndefined();
    const c = container(sts, 'redis');
    expect(c.image).toBe('redis:7-alpine');
    expect((c.args as string[])[0]).toMatch(/--requirepass "\$REDIS_PASSWORD".*--save "" --appendonly no$/);
    const [secret] = find(set, 'Secret', 'kvfleet-redis');
    const pw = Buffer.from((secret.data as Json).password as string, 'base64').toString();
    expect(pw).toMatch(/^[A-Za-z0-9]{32}$/);
    expect(envOf(c).get('REDIS_PASSWORD')?.valueFrom).toEqual({ secretKeyRef: { name: 'kvfleet-redis', key: 'password' } });
    expect(find(set, 'Service', 'kvfleet-redis')[0].spec).toMatchObject({ ports: [{ name: 'redis', port: 6379, targetPort: 'redis' }] });
  });

  it('gives the operator only environment variables it reads (it once got a Redis URL it ignored)', () => {
    const src = ['operator/config.ts', 'operator/main.ts'].map((f) => readFileSync(path.join(CHART, '../..', f), 'utf8')).join('\n');
    const read = new Set([...src.matchAll(/\benv\.([A-Z_][A-Z0-9_]*)/g)].map((m) => m[1]));
    expect(read.has('KVFLEET_IMAGE')).toBe(true);
    for (const set of ['defaults', 'external redis', 'managed redis, persistence, existing secret']) {
      const names = [...envOf(container(find(objs(set), 'Deployment', 'kvfleet-operator')[0], 'operator')).keys()];
      expect(names.filter((n) => !read.has(n)), set).toEqual([]);
    }
  });

  it('managed with persistence and an existing Secret: a volume claim, no generated Secret', () => {
    const set = objs('managed redis, persistence, existing secret');
    expect(find(set, 'Secret')).toEqual([]);
    const [sts] = find(set, 'StatefulSet', 'kvfleet-redis');
    expect((sts.spec as Json).volumeClaimTemplates).toEqual([{ metadata: { name: 'data' },
      spec: { accessModes: ['ReadWriteOnce'], storageClassName: 'fast', resources: { requests: { storage: '8Gi' } } } }]);
    expect((container(sts, 'redis').args as string[])[0]).toContain('--appendonly yes');
    expect(envOf(container(sts, 'redis')).get('REDISCLI_AUTH')?.valueFrom).toEqual({ secretKeyRef: { name: 'my-redis', key: 'password' } });
    const [f] = find(render([...VALUE_SETS['managed redis, persistence, existing secret'], '--set', 'examples.enabled=true']), 'Fleet');
    expect((f.spec as Json).redis).toEqual({ url: 'redis://kvfleet-redis.kvfleet.svc:6379', passwordSecretRef: { name: 'my-redis', key: 'password' } });
  });

  it('external: no Redis objects; the example Fleet names the external URL and its password Secret', () => {
    const set = objs('external redis');
    expect(set.filter((o) => o.metadata.labels?.['app.kubernetes.io/component'] === 'redis')).toEqual([]);
    const [f] = find(render([...VALUE_SETS['external redis'], '--set', 'examples.enabled=true']), 'Fleet');
    expect((f.spec as Json).redis).toEqual({ url: 'rediss://ledger.example.internal:6380', passwordSecretRef: { name: 'ledger-auth', key: 'token' } });
  });

  it('the operator mounts no Redis password (it reads each Fleet\'s own)', () => {
    for (const set of ['defaults', 'external redis']) {
      expect((podSpecOf(find(objs(set), 'Deployment', 'kvfleet-operator')[0])!.volumes as Json[]).map((v) => v.name)).toEqual(['tmp']);
    }
  });
});

describe('network policies', () => {
  it('workers: gRPC from routers only, metrics from the monitoring namespace only, in every Fleet namespace', () => {
    const set = objs('monitoring on');
    const workers = find(set, 'NetworkPolicy', 'kvfleet-workers');
    expect(workers.map((w) => w.metadata.namespace).sort()).toEqual(['kvfleet', 'llm']);
    for (const w of workers) {
      expect(w.spec).toEqual({
        podSelector: { matchLabels: { 'app.kubernetes.io/name': 'kvfleet', 'app.kubernetes.io/component': 'worker' } },
        policyTypes: ['Ingress'],
        ingress: [
          { from: [{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'kvfleet', 'app.kubernetes.io/component': 'router' } } }],
            ports: [{ port: 'grpc', protocol: 'TCP' }] },
          { from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }],
            ports: [{ port: 'metrics', protocol: 'TCP' }] },
        ],
      });
    }
  });

  it('redis: only kvfleet pods of the release and Fleet namespaces, on the redis port', () => {
    const [p] = find(objs('monitoring on'), 'NetworkPolicy', 'kvfleet-redis');
    expect((p.spec as Json).ingress).toEqual([{
      from: [{
        namespaceSelector: { matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'In', values: ['llm', 'kvfleet'] }] },
        podSelector: { matchLabels: { 'app.kubernetes.io/name': 'kvfleet' } },
      }],
      ports: [{ port: 'redis', protocol: 'TCP' }],
    }]);
    expect(find(objs('external redis'), 'NetworkPolicy', 'kvfleet-redis')).toEqual([]);
  });

  it('select the operator\'s pods by the label the operator sets (kvfleet), whatever nameOverride says', () => {
    const set = render(['--set', 'nameOverride=llm', '--set', 'monitoring.podMonitor.enabled=true']);
    const [w] = find(set, 'NetworkPolicy', 'kvfleet-llm-workers');
    expect((w.spec as Json).podSelector).toEqual({ matchLabels: { 'app.kubernetes.io/name': 'kvfleet', 'app.kubernetes.io/component': 'worker' } });
    const [p] = find(set, 'NetworkPolicy', 'kvfleet-llm-redis');
    // fleet pods (kvfleet) in the fleet namespaces, and the operator's own pod (the chart's name) in the release namespace
    expect(((p.spec as Json).ingress as Json[])[0].from).toEqual([
      { namespaceSelector: { matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'In', values: ['kvfleet'] }] },
        podSelector: { matchLabels: { 'app.kubernetes.io/name': 'kvfleet' } } },
      { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'kvfleet' } }, podSelector: { matchLabels: { 'app.kubernetes.io/name': 'llm' } } },
    ]);
    const [op] = find(set, 'Deployment', 'kvfleet-llm-operator');
    expect((((op.spec as Json).template as Json).metadata as Json).labels).toMatchObject({ 'app.kubernetes.io/name': 'llm' });
    const [pm] = find(set, 'PodMonitor');
    expect(((pm.spec as Json).selector as Json).matchLabels).toEqual({ 'app.kubernetes.io/name': 'kvfleet' });
  });

  it('can be turned off', () => {
    expect(find(objs('examples on, one replica, no network policies'), 'NetworkPolicy')).toEqual([]);
  });
});

describe('monitoring', () => {
  it('off by default; on: a ServiceMonitor for the operator and a PodMonitor for workers and routers', () => {
    expect(find(objs('defaults'), 'ServiceMonitor')).toEqual([]);
    expect(find(objs('defaults'), 'PodMonitor')).toEqual([]);
    const set = objs('monitoring on');
    const [sm] = find(set, 'ServiceMonitor');
    expect(sm.metadata.labels?.release).toBe('prom');
    const svc = find(set, 'Service', 'kvfleet-operator-metrics')[0];
    expect((svc.spec as Json).selector).toEqual(((sm.spec as Json).selector as Json).matchLabels);
    expect((sm.spec as Json).endpoints).toEqual([{ port: 'metrics', path: '/metrics', interval: '30s' }]);
    const [pm] = find(set, 'PodMonitor');
    expect((pm.spec as Json).namespaceSelector).toEqual({ matchNames: ['llm', 'kvfleet'] });
    expect(((pm.spec as Json).selector as Json).matchExpressions).toEqual([{ key: 'app.kubernetes.io/component', operator: 'In', values: ['worker', 'router'] }]);
  });

  it('the dashboard ConfigMap carries the Grafana label and panels over the documented metrics', () => {
    const [cm] = find(objs('defaults'), 'ConfigMap', 'kvfleet-dashboard');
    expect(cm.metadata.labels?.grafana_dashboard).toBe('1');
    const dash = JSON.parse((cm.data as Json)['kvfleet.json'] as string) as { panels: { title: string; targets: { expr: string }[] }[] };
    const titles = dash.panels.map((p) => p.title).join(' | ');
    for (const want of ['KV pressure', 'Compression ratio', 'Pages', 'Time to first token', 'Tokens/s per worker']) expect(titles).toContain(want);
    const readme = readFileSync(path.join(CHART, 'README.md'), 'utf8');
    const documented = new Set([...readme.matchAll(/^\| `([a-z_:]+)`/gm)].map((m) => m[1]));
    const used = new Set(dash.panels.flatMap((p) => p.targets.flatMap((t) => [...t.expr.matchAll(/\b((?:vllm:|kvfleet_)[a-z_:]+?)(?:_bucket)?\{/g)].map((m) => m[1]))));
    expect(used.size).toBeGreaterThanOrEqual(8);
    expect([...used].filter((m) => !documented.has(m))).toEqual([]);
  });
});

describe('examples', () => {
  it('off by default; on: a KVBudget and a Fleet that uses it and the chart Redis', () => {
    expect(objs('defaults').filter((o) => o.apiVersion === 'kvfleet.io/v1alpha1')).toEqual([]);
    const set = objs('examples on, one replica, no network policies');
    const [b] = find(set, 'KVBudget');
    expect(b.spec).toMatchObject({ method: 'AdaSnapKV', tokensPerHead: 512 });
    const [f] = find(set, 'Fleet');
    expect(f.spec).toMatchObject({
      budgetRef: { name: 'default' },
      redis: { url: 'redis://kvfleet-redis.kvfleet.svc:6379', passwordSecretRef: { name: 'kvfleet-redis', key: 'password' } },
      router: { policy: 'least-prefill' }, engine: { admission: 'reserve' },
    });
  });
});

describe('values.schema.json rejects bad values, naming the field', () => {
  const cases: [string, string[], RegExp][] = [
    ['negative operator replicas', ['--set', 'operator.replicas=-1'], /at '\/operator\/replicas': minimum: got -1, want 0/],
    ['unknown router policy', ['--set', 'examples.fleet.spec.router.policy=round-robin'], /at '\/examples\/fleet\/spec\/router\/policy': value must be one of 'most-free', 'best-fit', 'p2c', 'least-prefill'/],
    ['unknown admission', ['--set', 'examples.fleet.spec.engine.admission=eager'], /at '\/examples\/fleet\/spec\/engine\/admission': value must be one of 'reserve', 'optimistic'/],
    ['unknown budget method', ['--set', 'examples.budget.spec.method=H2O'], /at '\/examples\/budget\/spec\/method': value must be one of/],
    ['both tokensPerHead and keepRatio', ['--set-json', 'examples.budget.spec.keepRatio=0.25'], /at '\/examples\/budget\/spec': 'oneOf' failed/],
    ['negative worker replicas', ['--set', 'examples.fleet.spec.workers.replicas=-2'], /at '\/examples\/fleet\/spec\/workers\/replicas': minimum: got -2, want 0/],
    ['external Redis without a URL', ['--set', 'redis.managed=false'], /at '\/redis\/url': minLength: got 0, want 1/],
    ['a Redis URL that is not redis://', ['--set', 'redis.managed=false', '--set', 'redis.url=http://r:6379'], /at '\/redis\/url': '.*' does not match pattern/],
    ['bad image pull policy', ['--set', 'image.pullPolicy=Sometimes'], /at '\/image\/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'/],
    ['metrics port 0 (the probes need it)', ['--set', 'operator.metricsPort=0'], /at '\/operator\/metricsPort': minimum: got 0, want 1/],
    ['2 replicas without leader election', ['--set', 'operator.leaderElection.enabled=false'], /at '\/operator\/leaderElection\/enabled': value must be true/],
    ['a misspelt key', ['--set', 'operater.replicas=1'], /additional properties 'operater' not allowed/],
    ['an example Fleet in another namespace than the chart Redis\'s password Secret',
      ['--set', 'examples.enabled=true', '--set', 'examples.namespace=serving'],
      /examples.namespace "serving": the example Fleet would use the chart's Redis, whose password Secret "kvfleet-redis" lives in the release namespace/],
    // the example specs' schemas are generated from the CRDs: what the API server would refuse fails the install first
    ['an example Fleet with minReplicas 0 (the CRD\'s minimum is 1)', ['--set', 'examples.fleet.spec.autoscaling.minReplicas=0'],
      /at '\/examples\/fleet\/spec\/autoscaling\/minReplicas': minimum: got 0, want 1/],
    ['an example Fleet with pageSize 4096', ['--set', 'examples.fleet.spec.engine.pageSize=4096'], /at '\/examples\/fleet\/spec\/engine\/pageSize': maximum/],
    ['an example KVBudget with an even poolKernel', ['--set', 'examples.budget.spec.poolKernel=4'], /at '\/examples\/budget\/spec\/poolKernel': 'not' failed/],
    ['a misspelt key in the example Fleet spec', ['--set', 'examples.fleet.spec.enginee.pageSize=4'], /additional properties 'enginee' not allowed/],
    ['a bad monitoring namespace', ['--set', 'networkPolicy.monitoringNamespace=Mon_itoring'], /at '\/networkPolicy\/monitoringNamespace': .*does not match pattern/],
  ];
  for (const [what, args, message] of cases) {
    it(what, () => {
      const r = helm(['template', 'kvfleet', CHART, ...args]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(message);
    });
  }
});
