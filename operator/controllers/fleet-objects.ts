// The children of a Fleet, rendered from its spec (a pure function: same Fleet and options → same objects, so the
// reconciler can compare them with what is stored and write nothing when they agree).
//
// Contract with the Helm chart (charts/kvfleet README, "Contract with the operator"): worker and router pods carry
// app.kubernetes.io/name=kvfleet, app.kubernetes.io/component=worker|router, app.kubernetes.io/instance=<fleet>,
// and name their container ports `grpc` and `metrics` (the chart's NetworkPolicies select them by these).
//
// Invariants:
// - Every child has exactly one controller owner reference: the Fleet (deleting the Fleet deletes them).
// - Engine settings live once, in the `<fleet>-engine` ConfigMap, and reach workers and routers as KVFLEET_*
//   environment variables (envFrom); a hash of the ConfigMap's data and of the pod-relevant spec sits on each pod
//   template (kvfleet.io/config-hash), so any change to them rolls the pods (a ConfigMap change alone would not).
// - The worker replica count comes from spec.workers.replicas (the Fleet's scale subresource, which the autoscaler
//   or HPA/KEDA writes); nothing here invents one.
// - Quantities are written as strings: the API server stores them so, and a read-back then compares equal.
import { createHash } from 'node:crypto';
import type { Fleet } from '../api/v1alpha1.ts';
import { MANAGED_REDIS_PORT, managedRedisService } from '../ledgers.ts';

export const FIELD_MANAGER = 'kvfleet-operator';
export const APP_NAME = 'kvfleet';
export const CONFIG_HASH_ANNOTATION = 'kvfleet.io/config-hash';
export const WORKER_GRPC_PORT = 50051;
export const WORKER_METRICS_PORT = 9400;
export const ROUTER_GRPC_PORT = 50051;
export const ROUTER_METRICS_PORT = 9401;
/** Where the model directory is mounted in worker and router containers. */
export const MODEL_MOUNT = '/model';
export const REDIS_PASSWORD_DIR = '/var/run/secrets/kvfleet/redis';
export const REDIS_PASSWORD_KEY = 'password';
/** Seconds the kubelet waits after SIGTERM beyond the worker's own drain timeout, so the worker's timeout fires
 *  first and it answers unfinished streams UNAVAILABLE itself rather than being SIGKILLed mid-write. */
export const DRAIN_GRACE_MARGIN_SECONDS = 15;
/** The non-root uid of the kvfleet image (distroless nonroot). */
export const RUN_AS_USER = 65532;

export type Component = 'worker' | 'router' | 'redis';

/** A Kubernetes object as sent to server-side apply. */
export interface ChildObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; labels: Record<string, string>; annotations?: Record<string, string>;
    ownerReferences: OwnerReference[] };
  [field: string]: unknown;
}

export interface OwnerReference {
  apiVersion: string; kind: string; name: string; uid: string; controller: true; blockOwnerDeletion: true;
}

export interface RenderOptions {
  /** image of workers and routers when the Fleet names none (the operator's own, KVFLEET_IMAGE) */
  defaultImage: string;
  /** the image of a managed Redis */
  redisImage: string;
  /** directories hostPath:// model sources must lie under (the operator's --allowed-host-paths); absent: any */
  allowedHostPaths?: readonly string[];
}

/** Names of a Fleet's children. */
export function childNames(fleetName: string) {
  return {
    // not the Fleet's bare name: a Fleet called `default` would otherwise be the namespace's default ServiceAccount
    serviceAccount: `${fleetName}-kvfleet`,
    engineConfig: `${fleetName}-engine`,
    workers: `${fleetName}-workers`,
    router: `${fleetName}-router`,
    redis: managedRedisService({ metadata: { name: fleetName, namespace: '' } }),
  };
}

export function selectorLabels(fleetName: string, component: Component): Record<string, string> {
  return { 'app.kubernetes.io/name': APP_NAME, 'app.kubernetes.io/component': component, 'app.kubernetes.io/instance': fleetName };
}

function labels(fleetName: string, component: Component | 'engine' | 'identity'): Record<string, string> {
  return {
    'app.kubernetes.io/name': APP_NAME, 'app.kubernetes.io/instance': fleetName,
    ...(component === 'engine' || component === 'identity' ? {} : { 'app.kubernetes.io/component': component }),
    'app.kubernetes.io/managed-by': FIELD_MANAGER, 'app.kubernetes.io/part-of': 'kvfleet',
  };
}

/** The label selector of the worker pods, as the scale subresource reports it (keys sorted). */
export function workerSelector(fleetName: string): string {
  return Object.entries(selectorLabels(fleetName, 'worker')).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}=${v}`).join(',');
}

export function ownerReference(fleet: Fleet): OwnerReference {
  if (!fleet.metadata.uid) throw new Error(`bug: Fleet ${fleet.metadata.namespace}/${fleet.metadata.name} has no uid`);
  return { apiVersion: fleet.apiVersion, kind: fleet.kind, name: fleet.metadata.name, uid: fleet.metadata.uid, controller: true,
    blockOwnerDeletion: true };
}

function meta(fleet: Fleet, name: string, component: Component | 'engine' | 'identity') {
  return { name, namespace: fleet.metadata.namespace, labels: labels(fleet.metadata.name, component), ownerReferences: [ownerReference(fleet)] };
}

/** The model volume: pvc://CLAIM/PATH (PATH mounted as a subPath) or hostPath:///DIR; always read-only. */
export function modelVolume(source: string, allowedHostPaths?: readonly string[]): { volume: Record<string, unknown>; subPath?: string } {
  const pvc = /^pvc:\/\/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)(\/.*)?$/.exec(source);
  if (pvc) {
    const sub = (pvc[3] ?? '').replace(/^\/+|\/+$/g, '');
    return { volume: { name: 'model', persistentVolumeClaim: { claimName: pvc[1], readOnly: true } }, ...(sub ? { subPath: sub } : {}) };
  }
  const host = /^hostPath:\/\/(\/.*)$/.exec(source);
  if (host) {
    const dir = host[1].replace(/\/+$/, '') || '/';
    if (allowedHostPaths && !allowedHostPaths.some((a) => a === '/' || dir === a || dir.startsWith(`${a}/`))) {
      throw new FleetSpecError(`spec.model.source: hostPath ${dir} is outside the node directories this operator allows `
        + `(--allowed-host-paths ${allowedHostPaths.join(',')}); use one of them or a pvc:// source`);
    }
    return { volume: { name: 'model', hostPath: { path: host[1], type: 'Directory' } } };
  }
  // the CRD's pattern admits only the two forms; an object stored before that pattern existed lands here
  throw new FleetSpecError(`spec.model.source: '${source}' is neither pvc://CLAIM[/PATH] nor hostPath:///DIR`);
}

/** A Fleet spec the schema let through but that cannot be rendered. Expected; becomes a condition. */
export class FleetSpecError extends Error {
  constructor(message: string) { super(message); this.name = 'FleetSpecError'; }
}

/** Where the fleet's Redis password comes from, for pods: a Secret key, mounted as a file. */
export interface PasswordRef { secret: string; key: string }

export function passwordRef(fleet: Fleet): PasswordRef | undefined {
  const r = fleet.spec.redis;
  if (r.url === undefined) return { secret: childNames(fleet.metadata.name).redis, key: REDIS_PASSWORD_KEY };
  return r.passwordSecretRef ? { secret: r.passwordSecretRef.name, key: r.passwordSecretRef.key } : undefined;
}

/** The engine settings as the worker and router read them from the environment (worker/config.ts, router/config.ts). */
export function engineSettings(fleet: Fleet): Record<string, string> {
  const e = fleet.spec.engine;
  return {
    KVFLEET_PAGE_SIZE: String(e.pageSize),
    KVFLEET_KV_MEMORY_FRACTION: String(e.kvMemoryFraction),
    KVFLEET_MAX_RUNNING: String(e.maxRunning),
    KVFLEET_ADMISSION: e.admission,
    ...(fleet.spec.model.maxModelLen !== undefined ? { KVFLEET_MAX_MODEL_LEN: String(fleet.spec.model.maxModelLen) } : {}),
    KVFLEET_ROUTER_POLICY: fleet.spec.router.policy,
  };
}

const hash = (v: unknown): string => createHash('sha256').update(JSON.stringify(v)).digest('hex').slice(0, 16);

const restrictedPod = { runAsNonRoot: true, runAsUser: RUN_AS_USER, runAsGroup: RUN_AS_USER, fsGroup: RUN_AS_USER,
  seccompProfile: { type: 'RuntimeDefault' } };
const restrictedContainer = { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true,
  capabilities: { drop: ['ALL'] } };

const quantities = (m: Record<string, number | string> | undefined) =>
  (m === undefined ? undefined : Object.fromEntries(Object.entries(m).map(([k, v]) => [k, String(v)])));

/** The pods' imagePullSecrets (spec.imagePullSecrets), when the Fleet names any. */
function pullSecrets(fleet: Fleet): { imagePullSecrets?: { name: string }[] } {
  const s = fleet.spec.imagePullSecrets;
  return s && s.length > 0 ? { imagePullSecrets: s.map(({ name }) => ({ name })) } : {};
}

function redisArgs(fleet: Fleet, url: string): string[] {
  return ['--redis', url, '--fleet', `${fleet.metadata.namespace}/${fleet.metadata.name}`,
    ...(passwordRef(fleet) ? ['--redis-password-file', `${REDIS_PASSWORD_DIR}/${REDIS_PASSWORD_KEY}`] : [])];
}

/** Volumes and mounts every serving pod has: the model (read-only), a writable /tmp, the Redis password file. */
function podStorage(fleet: Fleet, o: RenderOptions) {
  const model = modelVolume(fleet.spec.model.source, o.allowedHostPaths);
  const pw = passwordRef(fleet);
  const volumes: Record<string, unknown>[] = [model.volume, { name: 'tmp', emptyDir: { sizeLimit: '1Gi' } }];
  const mounts: Record<string, unknown>[] = [
    { name: 'model', mountPath: MODEL_MOUNT, readOnly: true, ...(model.subPath ? { subPath: model.subPath } : {}) },
    { name: 'tmp', mountPath: '/tmp' },
  ];
  if (pw) {
    volumes.push({ name: 'redis-password', secret: { secretName: pw.secret, items: [{ key: pw.key, path: REDIS_PASSWORD_KEY }] } });
    mounts.push({ name: 'redis-password', mountPath: REDIS_PASSWORD_DIR, readOnly: true });
  }
  return { volumes, mounts };
}

const fieldEnv = (name: string, fieldPath: string) => ({ name, valueFrom: { fieldRef: { fieldPath } } });

function workerDeployment(fleet: Fleet, url: string, o: RenderOptions, configHash: string): ChildObject {
  const name = fleet.metadata.name;
  const n = childNames(name);
  const { volumes, mounts } = podStorage(fleet, o);
  const drain = fleet.spec.autoscaling.drainTimeoutSeconds;
  const w = fleet.spec.workers;
  const resources = { ...(w.resources?.limits ? { limits: quantities(w.resources.limits) } : {}),
    ...(w.resources?.requests ? { requests: quantities(w.resources.requests) } : {}) };
  return {
    apiVersion: 'apps/v1', kind: 'Deployment', metadata: meta(fleet, n.workers, 'worker'),
    spec: {
      replicas: w.replicas,
      selector: { matchLabels: selectorLabels(name, 'worker') },
      // one new worker before an old one goes: serving capacity never dips during a rollout (needs one spare GPU)
      strategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
      template: {
        metadata: { labels: { ...selectorLabels(name, 'worker'), 'app.kubernetes.io/part-of': 'kvfleet' },
          annotations: { [CONFIG_HASH_ANNOTATION]: configHash } },
        spec: {
          serviceAccountName: n.serviceAccount,
          automountServiceAccountToken: false,
          ...pullSecrets(fleet),
          // SIGTERM is the drain: the worker stops admitting, finishes running streams (bounded by
          // --drain-timeout-ms) and exits 0 (CONTRACTS.md, "Drain"); no preStop hook is needed because routers
          // pick workers through the ledger, where the worker marks itself draining at once, not through Endpoints
          terminationGracePeriodSeconds: drain + DRAIN_GRACE_MARGIN_SECONDS,
          securityContext: restrictedPod,
          ...(w.nodeSelector ? { nodeSelector: w.nodeSelector } : {}),
          ...(w.tolerations ? { tolerations: w.tolerations } : {}),
          containers: [{
            name: 'worker',
            image: w.image ?? o.defaultImage,
            args: ['worker', '--model', MODEL_MOUNT, '--host', '0.0.0.0', '--port', String(WORKER_GRPC_PORT),
              '--metrics-port', String(WORKER_METRICS_PORT), ...redisArgs(fleet, url), '--drain-timeout-ms', String(drain * 1000)],
            envFrom: [{ configMapRef: { name: n.engineConfig } }],
            env: [fieldEnv('POD_NAME', 'metadata.name'), fieldEnv('POD_IP', 'status.podIP')],
            ports: [{ name: 'grpc', containerPort: WORKER_GRPC_PORT, protocol: 'TCP' },
              { name: 'metrics', containerPort: WORKER_METRICS_PORT, protocol: 'TCP' }],
            // grpc.health.v1: SERVING once the model is loaded, NOT_SERVING while draining. No liveness probe on it:
            // a draining worker must live until its streams end.
            readinessProbe: { grpc: { port: WORKER_GRPC_PORT }, periodSeconds: 5, failureThreshold: 2 },
            startupProbe: { grpc: { port: WORKER_GRPC_PORT }, periodSeconds: 10, failureThreshold: 90 },
            resources,
            securityContext: restrictedContainer,
            volumeMounts: mounts,
          }],
          volumes,
        },
      },
    },
  };
}

function routerDeployment(fleet: Fleet, url: string, o: RenderOptions, configHash: string): ChildObject {
  const name = fleet.metadata.name;
  const n = childNames(name);
  const { volumes, mounts } = podStorage(fleet, o);
  return {
    apiVersion: 'apps/v1', kind: 'Deployment', metadata: meta(fleet, n.router, 'router'),
    spec: {
      replicas: fleet.spec.router.replicas,
      selector: { matchLabels: selectorLabels(name, 'router') },
      strategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
      template: {
        metadata: { labels: { ...selectorLabels(name, 'router'), 'app.kubernetes.io/part-of': 'kvfleet' },
          annotations: { [CONFIG_HASH_ANNOTATION]: configHash } },
        spec: {
          serviceAccountName: n.serviceAccount,
          automountServiceAccountToken: false,
          ...pullSecrets(fleet),
          securityContext: restrictedPod,
          containers: [{
            name: 'router',
            image: fleet.spec.workers.image ?? o.defaultImage,
            // the router reads tokenizer.json and tokenizer_config.json from the mounted model directory
            args: ['router', '--host', '0.0.0.0', '--port', String(ROUTER_GRPC_PORT), '--metrics-port', String(ROUTER_METRICS_PORT),
              ...redisArgs(fleet, url), '--tokenizer', MODEL_MOUNT],
            envFrom: [{ configMapRef: { name: n.engineConfig } }],
            env: [fieldEnv('POD_NAME', 'metadata.name')],
            ports: [{ name: 'grpc', containerPort: ROUTER_GRPC_PORT, protocol: 'TCP' },
              { name: 'metrics', containerPort: ROUTER_METRICS_PORT, protocol: 'TCP' }],
            readinessProbe: { grpc: { port: ROUTER_GRPC_PORT }, periodSeconds: 5, failureThreshold: 2 },
            livenessProbe: { httpGet: { path: '/healthz', port: 'metrics' }, periodSeconds: 10, failureThreshold: 6 },
            resources: { requests: { cpu: '500m', memory: '512Mi' } },
            securityContext: restrictedContainer,
            volumeMounts: mounts,
          }],
          volumes,
        },
      },
    },
  };
}

function managedRedis(fleet: Fleet, o: RenderOptions): ChildObject[] {
  const name = fleet.metadata.name;
  const n = childNames(name);
  const sel = selectorLabels(name, 'redis');
  return [{
    apiVersion: 'apps/v1', kind: 'Deployment', metadata: meta(fleet, n.redis, 'redis'),
    spec: {
      // one primary: the ledger's keys are soft state that heartbeats rebuild within a second after a restart
      replicas: 1,
      selector: { matchLabels: sel },
      strategy: { type: 'Recreate' },
      template: {
        metadata: { labels: { ...sel, 'app.kubernetes.io/part-of': 'kvfleet' } },
        spec: {
          automountServiceAccountToken: false,
          ...pullSecrets(fleet),
          securityContext: { runAsNonRoot: true, runAsUser: 999, runAsGroup: 999, fsGroup: 999, seccompProfile: { type: 'RuntimeDefault' } },
          containers: [{
            name: 'redis',
            image: o.redisImage,
            command: ['sh', '-c', `exec redis-server --port ${MANAGED_REDIS_PORT} --dir /data --save '' --appendonly no --requirepass "$REDIS_PASSWORD"`],
            env: [{ name: 'REDIS_PASSWORD', valueFrom: { secretKeyRef: { name: n.redis, key: REDIS_PASSWORD_KEY } } }],
            ports: [{ name: 'redis', containerPort: MANAGED_REDIS_PORT, protocol: 'TCP' }],
            readinessProbe: { tcpSocket: { port: MANAGED_REDIS_PORT }, periodSeconds: 5 },
            resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '1Gi' } },
            securityContext: restrictedContainer,
            volumeMounts: [{ name: 'data', mountPath: '/data' }],
          }],
          volumes: [{ name: 'data', emptyDir: {} }],
        },
      },
    },
  }, {
    apiVersion: 'v1', kind: 'Service', metadata: meta(fleet, n.redis, 'redis'),
    spec: { type: 'ClusterIP', selector: sel, ports: [{ name: 'redis', port: MANAGED_REDIS_PORT, targetPort: 'redis', protocol: 'TCP' }] },
  }];
}

/**
 * Every child the Fleet should have, in apply order (the ConfigMap and ServiceAccount before the pods that use
 * them). `url` is the fleet's Redis address (spec.redis.url, or the managed Redis Service).
 */
export function renderChildren(fleet: Fleet, url: string, o: RenderOptions): ChildObject[] {
  const name = fleet.metadata.name;
  const n = childNames(name);
  const engine = engineSettings(fleet);
  // what, besides the pod template itself, changes each kind of pod's behaviour, so that a change rolls only the
  // pods that read it: workers read the engine settings, routers only the pick policy (both read the password)
  const { KVFLEET_ROUTER_POLICY: policy, ...workerSettings } = engine;
  const password = passwordRef(fleet) ?? null;
  const workerHash = hash({ engine: workerSettings, password });
  const routerHash = hash({ policy, password });
  const out: ChildObject[] = [
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: meta(fleet, n.serviceAccount, 'identity'), automountServiceAccountToken: false },
    { apiVersion: 'v1', kind: 'ConfigMap', metadata: meta(fleet, n.engineConfig, 'engine'), data: engine },
  ];
  if (fleet.spec.redis.url === undefined) out.push(...managedRedis(fleet, o));
  out.push(
    workerDeployment(fleet, url, o, workerHash),
    { apiVersion: 'v1', kind: 'Service', metadata: meta(fleet, n.workers, 'worker'),
      spec: { clusterIP: 'None', selector: selectorLabels(name, 'worker'),
        ports: [{ name: 'grpc', port: WORKER_GRPC_PORT, targetPort: 'grpc', protocol: 'TCP' },
          { name: 'metrics', port: WORKER_METRICS_PORT, targetPort: 'metrics', protocol: 'TCP' }] } },
    { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', metadata: meta(fleet, n.workers, 'worker'),
      spec: { maxUnavailable: 1, selector: { matchLabels: selectorLabels(name, 'worker') } } },
    routerDeployment(fleet, url, o, routerHash),
    { apiVersion: 'v1', kind: 'Service', metadata: meta(fleet, n.router, 'router'),
      spec: { type: fleet.spec.router.serviceType, selector: selectorLabels(name, 'router'),
        ports: [{ name: 'grpc', port: ROUTER_GRPC_PORT, targetPort: 'grpc', protocol: 'TCP' }] } },
    { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', metadata: meta(fleet, n.router, 'router'),
      spec: { maxUnavailable: 1, selector: { matchLabels: selectorLabels(name, 'router') } } },
  );
  return out;
}

/** Children a Fleet may have had under another spec or version (a managed Redis before redis.url was set; the old ServiceAccount). */
export function optionalChildren(fleet: Fleet): { apiVersion: string; kind: string; name: string }[] {
  // the ServiceAccount a Fleet had before it was named <fleet>-kvfleet (deleted only where this Fleet controls it;
  // left, it could also hold the new name of another Fleet's ServiceAccount: Fleets `a` and `a-kvfleet`)
  const legacy = { apiVersion: 'v1', kind: 'ServiceAccount', name: fleet.metadata.name };
  if (fleet.spec.redis.url === undefined) return [legacy];
  const n = childNames(fleet.metadata.name);
  return [legacy, { apiVersion: 'apps/v1', kind: 'Deployment', name: n.redis }, { apiVersion: 'v1', kind: 'Service', name: n.redis }];
}
