// The example KVBudget and Fleet (chart examples, manifests/examples/) against our CRDs' schemas and CEL rules, as
// an API server admits them: the generated CRD YAML (charts/kvfleet/crds/, from scripts/gen-crds.ts) is installed
// in the in-process API server, then the examples are created through it.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JsonObject } from '../kube/patch.ts';
import { KubeApiServer } from '../kube/apiserver.ts';
import { CHART, ROOT, find, parseDocs, render, type K8sObject } from './helm.ts';

const CRD_FILES = ['fleets.kvfleet.io.yaml', 'kvbudgets.kvfleet.io.yaml'].map((f) => path.join(CHART, 'crds', f));
let server: KubeApiServer;

beforeAll(async () => {
  // no vacuous pass: without the generated CRDs this suite fails here, naming the files
  const absent = CRD_FILES.filter((f) => !existsSync(f));
  if (absent.length) throw new Error(`generated CRDs missing (run scripts/gen-crds.ts): ${absent.join(', ')}`);
  server = await KubeApiServer.start();
  for (const f of CRD_FILES) server.put(YAML.parse(readFileSync(f, 'utf8')) as JsonObject);
  server.put({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'kvfleet' } });
});
afterAll(async () => { await server?.stop(); });

const admit = (o: K8sObject) => server.put(structuredClone(o) as unknown as JsonObject);

describe('examples against the CRDs', () => {
  it('the chart examples are admitted (schema and CEL rules)', () => {
    const set = render(['--set', 'examples.enabled=true']);
    for (const o of [...find(set, 'KVBudget'), ...find(set, 'Fleet')]) expect(() => admit(o), `${o.kind}/${o.metadata.name}`).not.toThrow();
  });

  it('manifests/examples are admitted', () => {
    for (const f of ['kvbudget.yaml', 'fleet.yaml']) {
      const [o] = parseDocs(readFileSync(path.join(ROOT, 'manifests/examples', f), 'utf8'));
      expect(() => admit(o), f).not.toThrow();
    }
  });

  it('the CRDs reject what values.schema.json rejects: a budget with both tokensPerHead and keepRatio', () => {
    const [b] = find(render(['--set', 'examples.enabled=true']), 'KVBudget');
    (b.spec as Record<string, unknown>).keepRatio = 0.25;
    expect(() => admit(b)).toThrow(/tokensPerHead|keepRatio/);
  });

  it('the CRDs reject an unknown router policy', () => {
    const [f] = find(render(['--set', 'examples.enabled=true']), 'Fleet');
    ((f.spec as Record<string, Record<string, unknown>>).router).policy = 'round-robin';
    expect(() => admit(f)).toThrow(/policy/);
  });
});
