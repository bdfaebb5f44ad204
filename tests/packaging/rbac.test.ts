// The chart's RBAC against the call record of the operator's end-to-end scenario (tests/operator/scenario.ts: the
// operator with --leader-elect over every namespace, reconciling KVBudgets and Fleets, a managed Redis, autoscaling up
// and down with a drain, releasing its Lease), made over real HTTP against the in-process API server.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import type { CallRecord } from '../kube/apiserver.ts';
import { operatorScenario, SCENARIO_OPERATOR_NS } from '../operator/scenario.ts';
import { CHART, render, type K8sObject } from './helm.ts';
import { chartRbac, compareRbac } from './rbac.ts';

let calls: CallRecord[];
let objs: K8sObject[];

beforeAll(async () => {
  objs = render();
  calls = await operatorScenario(inject('redisUrl'));
}, 120_000);

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

  it('grants every call of the operator\'s end-to-end record and nothing more', () => {
    expect(calls.length).toBeGreaterThan(0);
    expect(chartRbac(objs).namespace).toBe(SCENARIO_OPERATOR_NS);
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
