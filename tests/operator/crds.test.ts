// The CRDs: generated YAML is current, the schemas are structural, and the API server admits exactly the objects
// CONTRACTS.md allows (422 naming the field otherwise), filling the documented defaults.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renderCrdFiles } from '../../operator/api/render.ts';
import type { JsonSchema } from '../../operator/api/schema.ts';
import { CRDS, FLEET_CRD, KVBUDGET_CRD } from '../../operator/api/v1alpha1.ts';
import { REPO_ROOT } from '../harness/proc.ts';
import { apiStatus } from '../kube/client.ts';
import { validateSchema, type Cause, type Schema } from '../kube/schema.ts';
import type { Json } from '../kube/patch.ts';
import { budgetTarget, fleet, fleetTarget, kvBudget, startCluster, type Cluster } from './helpers.ts';

describe('generated CRD YAML', () => {
  it('the committed copies in manifests/crds and charts/kvfleet/crds match the schemas in operator/', () => {
    const files = renderCrdFiles();
    expect([...files.keys()].sort()).toEqual([
      'charts/kvfleet/crds/fleets.kvfleet.io.yaml', 'charts/kvfleet/crds/kvbudgets.kvfleet.io.yaml',
      'charts/kvfleet/values.schema.json',
      'manifests/crds/fleets.kvfleet.io.yaml', 'manifests/crds/kvbudgets.kvfleet.io.yaml',
    ]);
    for (const [rel, text] of files) {
      let committed: string;
      try { committed = readFileSync(path.join(REPO_ROOT, rel), 'utf8'); } catch { committed = '(missing)'; }
      expect(committed, `${rel} is stale: run node_modules/.bin/node scripts/gen-crds.ts`).toBe(text);
    }
  });
});

/** Kubernetes' structural-schema rules, as far as they constrain what we write: a type on every node (int-or-string
 *  nodes excepted, which need anyOf integer|string), items on arrays, defaults that pass their own schema. */
function structuralProblems(s: JsonSchema, at: string, out: string[]): void {
  if (s['x-kubernetes-int-or-string']) {
    if (s.type !== undefined) out.push(`${at}: int-or-string must not set type`);
    const types = (s.anyOf ?? []).map((a) => a.type).sort();
    if (types.join() !== 'integer,string') out.push(`${at}: int-or-string needs anyOf [integer, string]`);
  } else if (s.type === undefined) {
    out.push(`${at}: no type`);
  }
  if (s.type === 'array' && !s.items) out.push(`${at}: array without items`);
  if (s.type === 'object' && !s.properties && !s.additionalProperties && !s['x-kubernetes-preserve-unknown-fields'] && at !== '.metadata') {
    out.push(`${at}: object with neither properties, additionalProperties nor preserve-unknown-fields`);
  }
  if (s.properties && s.additionalProperties) out.push(`${at}: both properties and additionalProperties`);
  if (s.default !== undefined) {
    const causes: Cause[] = [];
    validateSchema(s.default as Json, s as Schema, at, causes);
    if (causes.length > 0) out.push(`${at}: default fails its schema: ${causes.map((c) => c.message).join('; ')}`);
  }
  for (const r of s.required ?? []) if (!s.properties?.[r]) out.push(`${at}: required ${r} is not a property`);
  for (const [k, v] of Object.entries(s.properties ?? {})) structuralProblems(v, `${at}.${k}`, out);
  if (s.items) structuralProblems(s.items, `${at}[*]`, out);
  if (s.additionalProperties) structuralProblems(s.additionalProperties, `${at}[*]`, out);
  for (const a of s.anyOf ?? []) {
    if (a.properties || a.items || a.default !== undefined) out.push(`${at}: anyOf branches must not declare structure`);
  }
}

describe('CRD definitions', () => {
  it('are structural schemas', () => {
    for (const crd of CRDS) {
      const problems: string[] = [];
      structuralProblems(crd.spec.versions[0].schema.openAPIV3Schema, '', problems);
      expect(problems, crd.metadata.name).toEqual([]);
    }
  });

  it('name kvfleet.io/v1alpha1 resources with the short names, subresources and printer columns of CONTRACTS.md', () => {
    expect(FLEET_CRD.spec).toMatchObject({ group: 'kvfleet.io', scope: 'Namespaced', names: { kind: 'Fleet', plural: 'fleets', shortNames: ['kvf'] } });
    const fv = FLEET_CRD.spec.versions[0];
    expect(fv.name).toBe('v1alpha1');
    expect(fv.subresources).toEqual({ status: {}, scale: { specReplicasPath: '.spec.workers.replicas', statusReplicasPath: '.status.replicas',
      labelSelectorPath: '.status.selector' } });
    expect(fv.additionalPrinterColumns.map((c) => c.name)).toEqual(['Ready', 'Replicas', 'KVPressure', 'Budget', 'Age']);
    expect(KVBUDGET_CRD.spec.names).toMatchObject({ kind: 'KVBudget', plural: 'kvbudgets', shortNames: ['kvb'] });
    const bv = KVBUDGET_CRD.spec.versions[0];
    expect(bv.subresources).toEqual({ status: {} });
    expect(bv.additionalPrinterColumns.map((c) => c.name)).toEqual(['Method', 'TokensPerHead', 'KeepRatio', 'Age']);
  });
});

describe('admission by the API server', () => {
  let c: Cluster;
  let ns: string;
  beforeAll(async () => { c = await startCluster(); ns = await c.namespace(); });
  afterAll(async () => { await c?.server.stop(); });

  let n = 0;
  async function rejectBudget(spec: Record<string, unknown>): Promise<{ field: string; message: string }[]> {
    const err = await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, `bad${++n}`, spec) })
      .then(() => undefined, (e: unknown) => e);
    const s = apiStatus(err);
    expect(s, `spec ${JSON.stringify(spec)} should be rejected`).toBeDefined();
    expect(s!.code).toBe(422);
    expect(s!.reason).toBe('Invalid');
    return (s!.details?.causes ?? []).map(({ field, message }) => ({ field, message }));
  }
  const fields = async (spec: Record<string, unknown>) => (await rejectBudget(spec)).map((x) => x.field);

  it('rejects a KVBudget with both tokensPerHead and keepRatio, naming keepRatio', async () => {
    const causes = await rejectBudget({ method: 'AdaSnapKV', tokensPerHead: 512, keepRatio: 0.5 });
    expect(causes).toEqual([{ field: 'spec.keepRatio', message: expect.stringContaining('set exactly one of tokensPerHead and keepRatio') }]);
  });

  it('rejects a KVBudget with neither tokensPerHead nor keepRatio unless the method is Full', async () => {
    const causes = await rejectBudget({ method: 'SnapKV' });
    expect(causes).toEqual([{ field: 'spec.tokensPerHead', message: expect.stringContaining('required unless method is Full') }]);
    const full = await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'full', { method: 'Full' }) }) as { spec: object };
    expect(full.spec).toEqual({ method: 'Full', window: 32, poolKernel: 7, pooling: 'Max', gqaReduce: 'Mean', floorAlpha: 0.2,
      pyramidBeta: 20, decodeMaxTokensPerHead: 0 });
  });

  it('rejects keepRatio 0 and keepRatio above 1', async () => {
    expect(await fields({ method: 'AdaSnapKV', keepRatio: 0 })).toEqual(['spec.keepRatio']);
    expect(await fields({ method: 'AdaSnapKV', keepRatio: 1.5 })).toEqual(['spec.keepRatio']);
  });

  it('rejects floorAlpha 2, window 0, an even poolKernel, pyramidBeta 1 and an unknown method, each by its field', async () => {
    expect(await fields({ method: 'AdaSnapKV', tokensPerHead: 512, floorAlpha: 2 })).toEqual(['spec.floorAlpha']);
    expect(await fields({ method: 'AdaSnapKV', tokensPerHead: 512, window: 0 })).toEqual(['spec.window']);
    expect(await fields({ method: 'AdaSnapKV', tokensPerHead: 512, poolKernel: 6 })).toEqual(['spec.poolKernel']);
    expect(await fields({ method: 'PyramidKV', tokensPerHead: 512, pyramidBeta: 1 })).toEqual(['spec.pyramidBeta']);
    const m = await rejectBudget({ method: 'H2O', tokensPerHead: 512 });
    expect(m.map((x) => x.field)).toContain('spec.method');
    expect(m.find((x) => x.field === 'spec.method')!.message).toContain('supported values: "Full", "SnapKV", "PyramidKV", "AdaSnapKV", "AdaPyramidKV"');
  });

  it('rejects tokensPerHead below window + 1 and a decode cap below window + 1', async () => {
    expect(await fields({ method: 'AdaSnapKV', tokensPerHead: 32 })).toEqual(['spec.tokensPerHead']);
    expect(await fields({ method: 'AdaSnapKV', tokensPerHead: 512, window: 8, decodeMaxTokensPerHead: 8 })).toEqual(['spec.decodeMaxTokensPerHead']);
  });

  it('admits a valid KVBudget and fills the documented defaults', async () => {
    const b = await c.custom.createNamespacedCustomObject({ ...budgetTarget(ns), body: kvBudget(ns, 'ok', { method: 'AdaSnapKV', keepRatio: 0.125 }) }) as
      { spec: object };
    expect(b.spec).toEqual({ method: 'AdaSnapKV', keepRatio: 0.125, window: 32, poolKernel: 7, pooling: 'Max', gqaReduce: 'Mean',
      floorAlpha: 0.2, pyramidBeta: 20, decodeMaxTokensPerHead: 0 });
  });

  it('admits a minimal Fleet with every default of CONTRACTS.md filled', async () => {
    const f = await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'minimal', {}) }) as { spec: object };
    expect(f.spec).toEqual({
      model: { source: 'pvc://models/llama' },
      engine: { pageSize: 16, kvMemoryFraction: 0.9, maxRunning: 256, admission: 'reserve' },
      workers: { replicas: 1 },
      router: { replicas: 2, serviceType: 'ClusterIP', policy: 'least-prefill' },
      redis: { managed: true },
      autoscaling: { enabled: false, minReplicas: 1, maxReplicas: 16, targetKVPressure: 0.7, scaleUpStabilizationSeconds: 15,
        scaleDownStabilizationSeconds: 300, drainTimeoutSeconds: 600 },
    });
  });

  it('rejects a Fleet with both redis.url and managed, minReplicas above maxReplicas, or a bad policy', async () => {
    const reject = async (name: string, spec: Record<string, unknown>) => {
      const err = await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, name, spec) }).then(() => undefined, (e: unknown) => e);
      const s = apiStatus(err);
      expect(s?.code, name).toBe(422);
      return s!.details!.causes!.map((x) => x.field);
    };
    expect(await reject('both', { redis: { url: 'redis://r:6379', managed: true } })).toEqual(['spec.redis']);
    expect(await reject('neither', { redis: { managed: false } })).toEqual(['spec.redis']);
    expect(await reject('pw', { redis: { managed: true, passwordSecretRef: { name: 's', key: 'k' } } })).toEqual(['spec.redis.passwordSecretRef']);
    expect(await reject('order', { autoscaling: { minReplicas: 5, maxReplicas: 2 } })).toEqual(['spec.autoscaling.minReplicas']);
    expect(await reject('policy', { router: { policy: 'random' } })).toEqual(['spec.router.policy']);
    expect(await reject('source', { model: { source: 's3://bucket/model' } })).toEqual(['spec.model.source']);
    expect(await reject('gpu', { workers: { resources: { limits: { 'nvidia.com/gpu': 'lots' } } } })).toEqual(['spec.workers.resources.limits[nvidia.com/gpu]']);
  });

  it('rejects a Fleet whose name cannot prefix its Services, a model path with .. or the node root, and tolerations the Pod API refuses', async () => {
    const reject = async (name: string, spec: Record<string, unknown>) => {
      const err = await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, name, spec) }).then(() => undefined, (e: unknown) => e);
      const s = apiStatus(err);
      expect(s?.code, name).toBe(422);
      return s!.details!.causes!.map((x) => `${x.field}: ${x.message}`);
    };
    for (const name of ['my.fleet', '1x', 'a'.repeat(53)]) {
      expect((await reject(name, {})).join(), name).toMatch(/a Fleet name must be a DNS-1035 label .* at most 52 characters/);
    }
    expect(await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'a'.repeat(52), {}) })).toBeDefined();
    expect((await reject('dotdot', { model: { source: 'pvc://models/../../etc' } })).join()).toMatch(/^spec\.model\.source: .*\.\. segment/);
    expect((await reject('hostdotdot', { model: { source: 'hostPath:///models/../etc' } })).join()).toMatch(/\.\. segment/);
    expect((await reject('root', { model: { source: 'hostPath:///' } })).join()).toMatch(/^spec\.model\.source/);
    expect((await reject('root2', { model: { source: 'hostPath:////' } })).join()).toMatch(/not the node's root/);
    expect(await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'dots-in-names', { model: { source: 'hostPath:///models/llama..3' } }) }))
      .toBeDefined();
    expect(await reject('tol1', { workers: { tolerations: [{ key: 'gpu', operator: 'Exists', value: 'x' }] } }))
      .toEqual(['spec.workers.tolerations[0].value: Invalid value: "object": value must be empty when operator is Exists']);
    expect(await reject('tol2', { workers: { tolerations: [{ key: 'gpu', operator: 'Equal', value: 'x', effect: 'NoSchedule', tolerationSeconds: 30 }] } }))
      .toEqual(['spec.workers.tolerations[0].tolerationSeconds: Invalid value: "object": tolerationSeconds applies only with effect NoExecute']);
  });

  it('serves the Fleet scale subresource from spec.workers.replicas and status', async () => {
    await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'scaled', {
      redis: { url: 'redis://127.0.0.1:6379' }, workers: { replicas: 3, resources: { limits: { 'nvidia.com/gpu': 1, memory: '64Gi' } } } }) });
    c.server.setStatus('kvfleet.io', 'fleets', ns, 'scaled', { replicas: 2, selector: 'app.kubernetes.io/name=kvfleet-worker' });
    const scale = await c.custom.getNamespacedCustomObjectScale({ ...fleetTarget(ns), name: 'scaled' }) as
      { spec: { replicas: number }; status: { replicas: number; selector: string } };
    expect(scale.spec.replicas).toBe(3);
    expect(scale.status).toEqual({ replicas: 2, selector: 'app.kubernetes.io/name=kvfleet-worker' });
  });
});
