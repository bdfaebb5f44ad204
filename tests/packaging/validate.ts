// Validation of rendered objects against the Kubernetes schemas.
// - kubernetes-models (the OpenAPI schemas of Kubernetes 1.3x compiled to validators) checks types, required
//   fields and enums, but accepts unknown fields;
// - so unknownFields() walks the object along @kubernetes/client-node's model attribute maps and names every
//   field the API server would drop or reject (a misspelt `securityContex` would otherwise pass).
// - monitoring.coreos.com objects: @kubernetes-models/prometheus-operator is not installed, so their shape is
//   checked by a small zod schema of the fields the chart uses (promShapeErrors).
import * as k8s from '@kubernetes/client-node';
import { z } from 'zod';
import type { K8sObject } from './helm.ts';

interface Validatable { validate(): void }
type ModelClass = new (data: unknown) => Validatable;

/** kubernetes-models class for apiVersion/kind, e.g. apps/v1 Deployment → kubernetes-models/apps/v1/Deployment. */
async function modelClass(apiVersion: string, kind: string): Promise<ModelClass | undefined> {
  try {
    const mod = await import(/* @vite-ignore */ `kubernetes-models/${apiVersion}/${kind}`) as Record<string, ModelClass>;
    return mod[kind];
  } catch {
    return undefined;
  }
}

/** Errors of kubernetes-models validation, as 'Kind/name: message' strings; throws for kinds it has no model of. */
export async function schemaErrors(obj: K8sObject): Promise<string[]> {
  const M = await modelClass(obj.apiVersion, obj.kind);
  if (!M) throw new Error(`no kubernetes-models class for ${obj.apiVersion} ${obj.kind}`);
  try {
    new M(obj).validate();
    return [];
  } catch (err) {
    const e = err as { errors?: { instancePath: string; message: string }[]; message: string };
    return (e.errors ?? [{ instancePath: '', message: e.message }]).map((x) => `${obj.kind}/${obj.metadata.name}${x.instancePath}: ${x.message}`);
  }
}

type AttrMap = { baseName: string; type: string }[];
const models = k8s as unknown as Record<string, { getAttributeTypeMap?: () => AttrMap } | undefined>;

/** Paths of fields unknown to the Kubernetes type (client-node's V1<Kind> model), e.g. '/spec/template/spec/foo'. */
export function unknownFields(obj: K8sObject): string[] {
  const root = `V1${obj.kind}`;
  if (!models[root]?.getAttributeTypeMap) throw new Error(`no @kubernetes/client-node model ${root} for ${obj.apiVersion} ${obj.kind}`);
  const out: string[] = [];
  const walk = (value: unknown, type: string, at: string): void => {
    if (value === null || value === undefined) return;
    const arr = /^Array<(.+)>$/.exec(type);
    if (arr) {
      if (Array.isArray(value)) value.forEach((v, i) => walk(v, arr[1], `${at}/${i}`));
      return;
    }
    const attrs = models[type]?.getAttributeTypeMap?.();
    if (!attrs || typeof value !== 'object' || Array.isArray(value)) return; // leaf: string, number, map, IntOrString
    const byName = new Map(attrs.map((a) => [a.baseName, a.type]));
    for (const [key, v] of Object.entries(value)) {
      const t = byName.get(key);
      if (t === undefined) out.push(`${at}/${key}`);
      else walk(v, t, `${at}/${key}`);
    }
  };
  walk(obj, root, '');
  return out;
}

const labelSelector = z.object({
  matchLabels: z.record(z.string(), z.string()).optional(),
  matchExpressions: z.array(z.object({ key: z.string(), operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']), values: z.array(z.string()).optional() }).strict()).optional(),
}).strict();
const endpoint = z.object({ port: z.string().min(1), path: z.string().startsWith('/'), interval: z.string().regex(/^[0-9]+(ms|s|m|h)$/) }).strict();
const meta = z.object({ name: z.string().min(1), namespace: z.string().min(1), labels: z.record(z.string(), z.string()) }).strict();
const namespaceSelector = z.object({ matchNames: z.array(z.string().min(1)).min(1) }).strict();
const ServiceMonitorShape = z.object({
  apiVersion: z.literal('monitoring.coreos.com/v1'), kind: z.literal('ServiceMonitor'), metadata: meta,
  spec: z.object({ selector: labelSelector, namespaceSelector, endpoints: z.array(endpoint).min(1) }).strict(),
}).strict();
const PodMonitorShape = z.object({
  apiVersion: z.literal('monitoring.coreos.com/v1'), kind: z.literal('PodMonitor'), metadata: meta,
  spec: z.object({ selector: labelSelector, namespaceSelector, podTargetLabels: z.array(z.string()).optional(),
    podMetricsEndpoints: z.array(endpoint).min(1) }).strict(),
}).strict();

/** Shape errors of a ServiceMonitor or PodMonitor (the fields the chart renders; prometheus-operator v1). */
export function promShapeErrors(obj: K8sObject): string[] {
  const schema = obj.kind === 'ServiceMonitor' ? ServiceMonitorShape : obj.kind === 'PodMonitor' ? PodMonitorShape : undefined;
  if (!schema) throw new Error(`not a prometheus-operator kind: ${obj.kind}`);
  const r = schema.safeParse(obj);
  return r.success ? [] : r.error.issues.map((i) => `${obj.kind}/${obj.metadata.name}/${i.path.join('/')}: ${i.message}`);
}

type Json = Record<string, unknown>;

/** The pod template of a workload (or undefined for other kinds). */
export function podSpecOf(obj: K8sObject): Json | undefined {
  if (['Deployment', 'StatefulSet', 'DaemonSet', 'Job', 'ReplicaSet'].includes(obj.kind)) {
    return ((obj.spec as Json).template as Json).spec as Json;
  }
  if (obj.kind === 'Pod') return obj.spec as Json;
  return undefined;
}

/**
 * Violations of the "restricted" Pod Security Standard, plus a read-only root filesystem (the chart's own rule),
 * for one pod spec: every container and init container must satisfy them, with the pod-level settings as fallback.
 */
export function restrictedViolations(pod: Json, where: string): string[] {
  const out: string[] = [];
  const psc = (pod.securityContext ?? {}) as Json;
  const podSeccomp = (psc.seccompProfile as Json | undefined)?.type;
  for (const key of ['hostNetwork', 'hostPID', 'hostIPC']) if (pod[key] === true) out.push(`${where}: ${key} is true`);
  for (const v of (pod.volumes ?? []) as Json[]) if (v.hostPath) out.push(`${where}: volume ${String(v.name)} is a hostPath`);
  const containers = [...((pod.initContainers ?? []) as Json[]), ...((pod.containers ?? []) as Json[])];
  if (containers.length === 0) out.push(`${where}: no containers`);
  for (const c of containers) {
    const at = `${where} container ${String(c.name)}`;
    const sc = (c.securityContext ?? {}) as Json;
    if (!(sc.runAsNonRoot === true || (sc.runAsNonRoot === undefined && psc.runAsNonRoot === true))) out.push(`${at}: runAsNonRoot is not true`);
    const uid = sc.runAsUser ?? psc.runAsUser;
    if (uid === 0) out.push(`${at}: runAsUser is 0`);
    if (sc.allowPrivilegeEscalation !== false) out.push(`${at}: allowPrivilegeEscalation is not false`);
    if (sc.readOnlyRootFilesystem !== true) out.push(`${at}: readOnlyRootFilesystem is not true`);
    if (sc.privileged === true) out.push(`${at}: privileged`);
    const caps = (sc.capabilities ?? {}) as { drop?: string[]; add?: string[] };
    if (!caps.drop?.includes('ALL')) out.push(`${at}: capabilities.drop lacks ALL`);
    if ((caps.add ?? []).some((a) => a !== 'NET_BIND_SERVICE')) out.push(`${at}: adds capabilities ${String(caps.add)}`);
    const seccomp = (sc.seccompProfile as Json | undefined)?.type ?? podSeccomp;
    if (seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') out.push(`${at}: seccompProfile is ${String(seccomp)}`);
  }
  return out;
}
