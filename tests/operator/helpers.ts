// Shared pieces of the operator suites: an in-process API server with the generated CRDs installed (from the
// committed YAML, as kubectl would apply them), object builders, and an in-process Operator with short delays.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { CoreV1Api, CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { pino } from 'pino';
import YAML from 'yaml';
import { FLEET_CRD, GROUP, KVBUDGET_CRD, VERSION } from '../../operator/api/v1alpha1.ts';
import { Operator } from '../../operator/manager.ts';
import { validateBudget } from '../../worker/compress-native.ts';
import { REPO_ROOT } from '../harness/proc.ts';
import { KubeApiServer } from '../kube/apiserver.ts';
import { kubeConfigFor } from '../kube/client.ts';
import type { JsonObject } from '../kube/patch.ts';

export const silentLog = pino({ level: 'silent' });

/** Installs the CRDs from manifests/crds/ (the files users apply). */
export function installCrds(server: KubeApiServer): void {
  for (const crd of [FLEET_CRD, KVBUDGET_CRD]) {
    const file = path.join(REPO_ROOT, 'manifests/crds', `${crd.metadata.name}.yaml`);
    server.put(YAML.parse(readFileSync(file, 'utf8')) as JsonObject);
  }
}

export interface Cluster {
  server: KubeApiServer;
  kc: KubeConfig;
  core: CoreV1Api;
  custom: CustomObjectsApi;
  namespace(): Promise<string>;
}

let nsCounter = 0;

export async function startCluster(opts: { bookmarkIntervalMs?: number } = {}): Promise<Cluster> {
  const server = await KubeApiServer.start({ bookmarkIntervalMs: opts.bookmarkIntervalMs ?? 500 });
  installCrds(server);
  const kc = kubeConfigFor(server);
  const core = kc.makeApiClient(CoreV1Api);
  return {
    server, kc, core, custom: kc.makeApiClient(CustomObjectsApi),
    async namespace() {
      const name = `op${process.pid}-${++nsCounter}`;
      await core.createNamespace({ body: { metadata: { name } } });
      return name;
    },
  };
}

export const budgetTarget = (namespace: string) => ({ group: GROUP, version: VERSION, namespace, plural: 'kvbudgets' });
export const fleetTarget = (namespace: string) => ({ group: GROUP, version: VERSION, namespace, plural: 'fleets' });

export function kvBudget(namespace: string, name: string, spec: Record<string, unknown>) {
  return { apiVersion: `${GROUP}/${VERSION}`, kind: 'KVBudget', metadata: { name, namespace }, spec };
}

export function fleet(namespace: string, name: string, spec: Record<string, unknown>) {
  return { apiVersion: `${GROUP}/${VERSION}`, kind: 'Fleet', metadata: { name, namespace },
    spec: { model: { source: 'pvc://models/llama' }, ...spec } };
}

/** An Operator with short delays, as the process would build it (the engine's real budget check). */
export function testOperator(kc: KubeConfig, extra: { namespace?: string; allowedHostPaths?: string[] } = {}): Operator {
  return new Operator({
    kc, namespace: extra.namespace, log: silentLog, validate: validateBudget, resyncMs: 0,
    informerMinDelayMs: 50, informerMaxDelayMs: 400, retryMinMs: 50, retryMaxMs: 1000, fleetStatusIntervalMs: 200, ledgerConnectTimeoutMs: 1000,
    defaultImage: 'kvfleet:test', ...(extra.allowedHostPaths ? { allowedHostPaths: extra.allowedHostPaths } : {}),
  });
}

/** The events.k8s.io/v1 Events of a namespace as `kubectl describe` would list them for one object: regarding
 *  kind/name, in the order they were written; the fields people read. */
export function kubeEvents(server: KubeApiServer, namespace: string, kind?: string, name?: string) {
  return server.objects('events.k8s.io', 'events', namespace)
    .map((e) => e as unknown as { type: string; reason: string; action: string; note: string; eventTime: string; reportingController: string;
      reportingInstance: string; regarding: { kind: string; name: string; apiVersion: string; uid?: string }; metadata: { creationTimestamp: string; resourceVersion: string } })
    .filter((e) => (kind === undefined || e.regarding.kind === kind) && (name === undefined || e.regarding.name === name))
    .sort((a, b) => Number(a.metadata.resourceVersion) - Number(b.metadata.resourceVersion));
}

/** Calls that change something, as the API server recorded them. */
export const writes = (server: KubeApiServer, namespace: string) => server.calls().filter((c) => !c.implied)
  .filter((c) => c.namespace === namespace && ['create', 'update', 'patch', 'delete', 'deletecollection'].includes(c.verb));

/** A ready worker pod of fleet `fleetName`, as its Deployment would make it (the labels the operator selects by). */
export function readyWorkerPod(server: KubeApiServer, namespace: string, fleetName: string, name: string): void {
  const labels = { 'app.kubernetes.io/name': 'kvfleet', 'app.kubernetes.io/component': 'worker', 'app.kubernetes.io/instance': fleetName };
  server.put({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace, labels }, spec: { containers: [{ name: 'worker', image: 'kvfleet:test' }] } });
  server.setStatus('', 'pods', namespace, name, { phase: 'Running', podIP: '127.0.0.1', conditions: [{ type: 'Ready', status: 'True' }] });
}
