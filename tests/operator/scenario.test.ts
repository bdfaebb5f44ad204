// The end-to-end operator scenario (scenario.ts): it runs, and its call record holds what each part of the operator
// must have called (the chart's RBAC test then compares the whole record with files/rbac.json).
import { expect, inject, it } from 'vitest';
import { operatorScenario, SCENARIO_FLEET_NS, SCENARIO_OPERATOR_NS } from './scenario.ts';

it('the operator end to end calls what its parts need: apply, status, scale, pods, secrets, the Lease', async () => {
  const calls = await operatorScenario(inject('redisUrl'));
  const has = (verb: string, resource: string, sub = '', ns = SCENARIO_FLEET_NS) =>
    calls.some((x) => x.verb === verb && x.resource === resource && x.subresource === sub && x.namespace === ns);
  expect(has('patch', 'fleets', 'scale')).toBe(true);
  expect(has('patch', 'fleets', 'status')).toBe(true);
  expect(has('patch', 'kvbudgets', 'status')).toBe(true);
  expect(has('patch', 'deployments')).toBe(true);
  expect(has('delete', 'deployments')).toBe(true);
  expect(has('list', 'pods')).toBe(true);
  expect(has('patch', 'pods')).toBe(true);
  expect(has('create', 'secrets')).toBe(true);
  expect(has('update', 'leases', '', SCENARIO_OPERATOR_NS)).toBe(true);
  // informers watch every namespace; nothing else is listed cluster-wide
  expect(calls.filter((x) => x.verb === 'watch' && x.namespace === '').map((x) => x.resource).sort()).toEqual(expect.arrayContaining(['deployments', 'fleets', 'kvbudgets']));
  expect(calls.every((x) => x.code < 500)).toBe(true);
}, 90_000);
