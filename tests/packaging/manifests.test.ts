// manifests/ is generated from the chart by scripts/gen-manifests.ts; this fails when the committed copy is stale.
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { committedManifests, staleManifests } from '../../scripts/gen-manifests.ts';
import { helmPath, parseDocs, ROOT } from './helm.ts';
import { podSpecOf, restrictedViolations, schemaErrors, unknownFields } from './validate.ts';

describe('manifests/', () => {
  it('is what scripts/gen-manifests.ts renders from the chart (run it after changing the chart)', () => {
    expect(staleManifests(helmPath())).toEqual([]);
  }, 120_000);

  it('holds the namespace, RBAC, operator, Redis and both examples, all valid Kubernetes objects', async () => {
    const files = committedManifests();
    for (const f of ['namespace.yaml', 'rbac.yaml', 'operator.yaml', 'redis.yaml', 'examples/fleet.yaml', 'examples/kvbudget.yaml']) expect(files).toContain(f);
    const errors: string[] = [];
    for (const f of files) {
      for (const o of parseDocs(readFileSync(path.join(ROOT, 'manifests', f), 'utf8'))) {
        expect(o.metadata.labels?.['app.kubernetes.io/managed-by'], `${f}: ${o.kind}`).toBeUndefined();
        if (o.apiVersion === 'kvfleet.io/v1alpha1') continue; // crd-examples.test.ts
        errors.push(...await schemaErrors(o), ...unknownFields(o).map((p) => `${f} ${o.kind}${p}: unknown field`));
        const pod = podSpecOf(o);
        if (pod) errors.push(...restrictedViolations(pod, `${f} ${o.kind}/${o.metadata.name}`));
      }
    }
    expect(errors).toEqual([]);
  }, 60_000);

  it('the staleness check names an edited, a missing and an extra file, and ignores crds/', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kvfleet-manifests-'));
    try {
      cpSync(path.join(ROOT, 'manifests'), dir, { recursive: true });
      mkdirSync(path.join(dir, 'crds'), { recursive: true });
      writeFileSync(path.join(dir, 'crds/anything.yaml'), 'kind: CustomResourceDefinition\n');
      expect(staleManifests(helmPath(), dir)).toEqual([]);
      const op = path.join(dir, 'operator.yaml');
      writeFileSync(op, readFileSync(op, 'utf8').replace('replicas: 2', 'replicas: 3'));
      rmSync(path.join(dir, 'examples/kvbudget.yaml'));
      writeFileSync(path.join(dir, 'extra.yaml'), 'kind: ConfigMap\n');
      expect(staleManifests(helmPath(), dir).sort()).toEqual(['examples/kvbudget.yaml (missing)', 'extra.yaml (not generated)', 'operator.yaml (differs)']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
