// The chart's RBAC against call records. Until the operator's end-to-end scenario exists (issues 16-18), the record
// comes from EXPECTED_OPERATOR_CALLS below: the calls those issues describe, made over real HTTP against the in-process
// API server so that they are recorded exactly as the operator's will be. When the operator's scenario lands, replace
// it with that scenario's `server.calls()`; the assertions stay.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeApiServer, type CallRecord } from '../kube/apiserver.ts';
import { CHART, render, type K8sObject } from './helm.ts';
import { chartRbac, compareRbac } from './rbac.ts';

type Call = [method: string, path: string];
const FLEET_NS = 'ml';
const OPERATOR_NS = 'kvfleet';

/** CRUD a reconciler does on a child kind it owns (server-side apply is a PATCH). */
function owned(base: string, plural: string, name: string): Call[] {
  const coll = `${base}/namespaces/${FLEET_NS}/${plural}`;
  return [['GET', coll], ['GET', `${coll}?watch=true`], ['GET', `${coll}/${name}`], ['POST', coll], ['PUT', `${coll}/${name}`],
    ['PATCH', `${coll}/${name}`], ['DELETE', `${coll}/${name}`]];
}

const KV = '/apis/kvfleet.io/v1alpha1';
const EXPECTED_OPERATOR_CALLS: Call[] = [
  // informers over every namespace, finalizers/annotations on the objects (issues 16, 17)
  ...['fleets', 'kvbudgets'].flatMap((p): Call[] => [['GET', `${KV}/${p}`], ['GET', `${KV}/${p}?watch=true`],
    ['GET', `${KV}/namespaces/${FLEET_NS}/${p}/x`], ['PUT', `${KV}/namespaces/${FLEET_NS}/${p}/x`], ['PATCH', `${KV}/namespaces/${FLEET_NS}/${p}/x`]]),
  // status subresources (conditions, observedGeneration, kvPressure, status.fleets)
  ...['fleets', 'kvbudgets'].flatMap((p): Call[] => ['GET', 'PUT', 'PATCH'].map((m): Call => [m, `${KV}/namespaces/${FLEET_NS}/${p}/x/status`])),
  // the autoscaler writes through the scale subresource (issue 18)
  ...['GET', 'PUT', 'PATCH'].map((m): Call => [m, `${KV}/namespaces/${FLEET_NS}/fleets/x/scale`]),
  // a Fleet's children (issue 17)
  ...owned('/apis/apps/v1', 'deployments', 'x-workers'),
  ...owned('/api/v1', 'services', 'x-router'),
  ...owned('/api/v1', 'configmaps', 'x-engine'),
  ...owned('/api/v1', 'serviceaccounts', 'x'),
  ...owned('/apis/policy/v1', 'poddisruptionbudgets', 'x-workers'),
  // Redis password Secrets: read those Fleets name, create one for a managed Redis
  ['GET', '/api/v1/secrets'], ['GET', '/api/v1/secrets?watch=true'], ['GET', `/api/v1/namespaces/${FLEET_NS}/secrets/x-redis`],
  ['POST', `/api/v1/namespaces/${FLEET_NS}/secrets`],
  // worker pods: readiness, starting credit, pod-deletion-cost before a scale-down (issue 18)
  ['GET', '/api/v1/pods'], ['GET', '/api/v1/pods?watch=true'], ['GET', `/api/v1/namespaces/${FLEET_NS}/pods/x-workers-0`],
  ['PATCH', `/api/v1/namespaces/${FLEET_NS}/pods/x-workers-0`],
  // Events on Fleets and KVBudgets
  ['POST', `/api/v1/namespaces/${FLEET_NS}/events`], ['PATCH', `/api/v1/namespaces/${FLEET_NS}/events/x.1`],
  // leader election in the operator's namespace (issue 18)
  ['GET', `/apis/coordination.k8s.io/v1/namespaces/${OPERATOR_NS}/leases/kvfleet-leader`],
  ['POST', `/apis/coordination.k8s.io/v1/namespaces/${OPERATOR_NS}/leases`],
  ['PUT', `/apis/coordination.k8s.io/v1/namespaces/${OPERATOR_NS}/leases/kvfleet-leader`],
];

let server: KubeApiServer;
let objs: K8sObject[];

beforeAll(async () => {
  objs = render();
  server = await KubeApiServer.start();
  for (const [method, p] of EXPECTED_OPERATOR_CALLS) {
    const ac = new AbortController();
    const body = method === 'GET' || method === 'DELETE' ? undefined : '{}';
    const headers: Record<string, string> = { authorization: `Bearer ${server.token}`,
      'content-type': method === 'PATCH' ? 'application/merge-patch+json' : 'application/json' };
    const r = await fetch(server.url + p, { method, body, headers, signal: ac.signal });
    ac.abort(); // watches stream forever; the call is recorded once the headers come back
    void r.body?.cancel().catch(() => undefined);
  }
}, 120_000);

afterAll(async () => { await server?.stop(); });

describe('chart RBAC', () => {
  it('is rendered from files/rbac.json, the one list', () => {
    const file = JSON.parse(readFileSync(path.join(CHART, 'files/rbac.json'), 'utf8')) as Record<string, { apiGroups: string[]; resources: string[]; verbs: string[] }[]>;
    const strip = (rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[]) =>
      rules.map(({ apiGroups, resources, verbs }) => ({ apiGroups, resources, verbs }));
    const rbac = chartRbac(objs);
    expect(rbac.clusterRules).toEqual(strip(file.clusterRules));
    expect(rbac.namespaceRules).toEqual(strip(file.namespaceRules));
    expect(rbac.namespace).toBe('kvfleet');
  });

  it('grants every call of the expected operator record and nothing more', () => {
    const calls = server.calls();
    expect(calls).toHaveLength(EXPECTED_OPERATOR_CALLS.length);
    expect(compareRbac(calls, chartRbac(objs))).toEqual({ missing: [], unused: [], forbidden: [] });
  });
});

describe('compareRbac', () => {
  const call = (verb: string, group: string, resource: string, subresource = '', namespace = 'ml'): CallRecord =>
    ({ verb, group, resource, subresource, namespace, name: '', code: 200 });
  const rbac = {
    clusterRules: [{ apiGroups: ['apps'], resources: ['deployments'], verbs: ['get', 'patch'] }],
    namespaceRules: [{ apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get'] }],
    namespace: 'kvfleet',
  };

  it('reports a call no rule grants as missing', () => {
    const r = compareRbac([call('get', 'apps', 'deployments'), call('patch', 'apps', 'deployments'), call('delete', 'apps', 'deployments'),
      call('get', 'coordination.k8s.io', 'leases', '', 'kvfleet')], rbac);
    expect(r.missing).toEqual(['delete apps/deployments in ml']);
    expect(r.unused).toEqual([]);
  });

  it('reports a granted verb no call used as unused', () => {
    const r = compareRbac([call('get', 'apps', 'deployments')], rbac);
    expect(r.missing).toEqual([]);
    expect(r.unused).toEqual(['get coordination.k8s.io/leases', 'patch apps/deployments']);
  });

  it('treats a subresource as its own resource, and a Role as its namespace only', () => {
    const r = compareRbac([call('get', 'apps', 'deployments'), call('patch', 'apps', 'deployments', 'scale'),
      call('patch', 'apps', 'deployments'), call('get', 'coordination.k8s.io', 'leases', '', 'ml')], rbac);
    expect(r.missing).toEqual(['get coordination.k8s.io/leases in ml', 'patch apps/deployments/scale in ml']);
  });

  it('forbids wildcards and escalation verbs', () => {
    const r = compareRbac([], { ...rbac, clusterRules: [{ apiGroups: ['*'], resources: ['roles'], verbs: ['bind'] }] });
    expect(r.forbidden).toHaveLength(2);
  });
});
