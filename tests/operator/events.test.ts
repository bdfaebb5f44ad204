// The operator's Kubernetes Events (operator/runtime/events.ts) against the in-process API server, which checks
// events.k8s.io/v1 Events as the real one does (a MicroTime eventTime, required fields, regarding in the namespace).
import { EventsV1Api } from '@kubernetes/client-node';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventRecorder, microTime } from '../../operator/runtime/events.ts';
import { kubeEvents, startCluster, type Cluster } from './helpers.ts';

let c: Cluster;
beforeAll(async () => { c = await startCluster(); });
afterAll(async () => { await c?.server.stop(); });

const fleetRef = (ns: string, name = 'llm') => ({ apiVersion: 'kvfleet.io/v1alpha1', kind: 'Fleet', metadata: { name, namespace: ns, uid: `uid-${name}` } });

function recorder(now: () => number, api: Pick<EventsV1Api, 'createNamespacedEvent'> = c.kc.makeApiClient(EventsV1Api)) {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'warn' }, { write: (s: string) => { lines.push(JSON.parse(s) as Record<string, unknown>); } });
  return { rec: new EventRecorder({ api, controller: 'kvfleet.io/operator', instance: 'op-0', log, now, repeatWindowMs: 60_000 }), lines };
}

describe('EventRecorder', () => {
  it('writes MicroTime eventTimes (six fractional digits), which the API server requires', async () => {
    expect(microTime(Date.UTC(2026, 11, 5, 17, 20, 45, 123))).toBe('2026-12-05T17:20:45.123000Z');
    expect(microTime(Date.UTC(2026, 0, 1))).toBe('2026-01-01T00:00:00.000000Z');
    const ns = await c.namespace();
    // what client-node writes for a Date (three digits) is refused
    const api = c.kc.makeApiClient(EventsV1Api);
    const err = await api.createNamespacedEvent({ namespace: ns, body: { metadata: { generateName: 'x.' }, eventTime: new Date(), type: 'Normal', reason: 'R',
      action: 'A', reportingController: 'c', reportingInstance: 'i', regarding: { kind: 'Fleet', name: 'llm', namespace: ns } } }).then(() => undefined, (e: { code?: number }) => e);
    expect(err?.code).toBe(400);
    const { rec } = recorder(() => Date.UTC(2026, 11, 5, 17, 20, 45, 123));
    rec.record(fleetRef(ns), 'Normal', 'ScalingUp', 'Scale', 'workers 1 -> 2');
    await rec.flush();
    const [e] = kubeEvents(c.server, ns);
    expect(e).toMatchObject({ type: 'Normal', reason: 'ScalingUp', action: 'Scale', note: 'workers 1 -> 2', eventTime: '2026-12-05T17:20:45.123000Z',
      reportingController: 'kvfleet.io/operator', reportingInstance: 'op-0', regarding: { apiVersion: 'kvfleet.io/v1alpha1', kind: 'Fleet', name: 'llm', uid: 'uid-llm' } });
  });

  it('folds the same event within the repeat window, and writes it again after', async () => {
    const ns = await c.namespace();
    let t = 1_000_000;
    const { rec } = recorder(() => t);
    rec.record(fleetRef(ns), 'Warning', 'LedgerUnavailable', 'Reconcile', 'redis down');
    rec.record(fleetRef(ns), 'Warning', 'LedgerUnavailable', 'Reconcile', 'redis down');
    t += 30_000;
    rec.record(fleetRef(ns), 'Warning', 'LedgerUnavailable', 'Reconcile', 'redis down');
    rec.record(fleetRef(ns), 'Warning', 'LedgerUnavailable', 'Reconcile', 'redis still down: a new message');
    rec.record(fleetRef(ns, 'other'), 'Warning', 'LedgerUnavailable', 'Reconcile', 'redis down');
    t += 60_000;
    rec.record(fleetRef(ns), 'Warning', 'LedgerUnavailable', 'Reconcile', 'redis down');
    await rec.flush();
    expect(kubeEvents(c.server, ns).map((e) => `${e.regarding.name}: ${e.note}`)).toEqual([
      'llm: redis down', 'llm: redis still down: a new message', 'other: redis down', 'llm: redis down']);
  });

  it('cuts a note to the API server\'s 1 KiB limit', async () => {
    const ns = await c.namespace();
    const { rec, lines } = recorder(() => 5_000_000);
    rec.record(fleetRef(ns), 'Warning', 'InvalidSpec', 'Reconcile', 'é'.repeat(2000));
    await rec.flush();
    const [e] = kubeEvents(c.server, ns);
    expect(Buffer.byteLength(e.note)).toBeLessThanOrEqual(1024);
    expect(e.note).toMatch(/^é+\.\.\.$/);
    expect(lines).toEqual([]);
  });

  it('a failed write is logged, never thrown, and the next one is still written', async () => {
    const ns = await c.namespace();
    const real = c.kc.makeApiClient(EventsV1Api);
    let fail = true;
    const api: Pick<EventsV1Api, 'createNamespacedEvent'> = {
      createNamespacedEvent: (p) => (fail ? Promise.reject(new Error('etcd is on fire')) : real.createNamespacedEvent(p)),
    };
    const { rec, lines } = recorder(() => 7_000_000, api);
    rec.record(fleetRef(ns), 'Normal', 'ScalingUp', 'Scale', 'workers 1 -> 2');
    await rec.flush();
    expect(lines.map((l) => [l.msg, l.err, l.reason])).toEqual([['could not write a Kubernetes Event', 'etcd is on fire', 'ScalingUp']]);
    fail = false;
    rec.record(fleetRef(ns), 'Normal', 'ScaledDown', 'Scale', 'workers 2 -> 1');
    // the one that failed was not written, so it is not folded away: said again, it is written now
    rec.record(fleetRef(ns), 'Normal', 'ScalingUp', 'Scale', 'workers 1 -> 2');
    await rec.flush();
    expect(kubeEvents(c.server, ns).map((e) => e.reason)).toEqual(['ScaledDown', 'ScalingUp']);
  });
});
