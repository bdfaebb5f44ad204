// The resource types the stand-in API server serves: the built-in ones an operator touches, and the shape
// every custom resource takes from its CRD.

import type { Schema } from './schema.ts';

export interface ScaleSpec {
  specReplicasPath: string;   // e.g. ".spec.replicas"
  statusReplicasPath: string; // e.g. ".status.replicas"
  labelSelectorPath?: string; // e.g. ".status.selector" (a string field) or ".spec.selector" (a LabelSelector)
}

export interface ResourceInfo {
  group: string;             // '' for the core group
  version: string;
  kind: string;
  plural: string;
  singular: string;
  namespaced: boolean;
  shortNames?: string[];
  status: boolean;           // has a status subresource: main writes keep the old status, /status writes only status
  scale?: ScaleSpec;
  generation: boolean;       // metadata.generation tracked (bumped when anything but metadata/status changes)
  returnDeleted: boolean;    // DELETE answers with the object rather than a Status
  createOnUpdate: boolean;   // PUT of a missing object creates it
  unconditionalUpdate: boolean; // PUT without metadata.resourceVersion allowed
  fieldLabels: string[];     // field selector labels beyond metadata.name and metadata.namespace
  schema?: Schema;           // custom resources: the served version's openAPIV3Schema
  crdName?: string;          // custom resources: the CRD that defines them
}

export const ALL_VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'];

function builtin(group: string, version: string, kind: string, plural: string, namespaced: boolean,
  extra: Partial<ResourceInfo> = {}): ResourceInfo {
  return {
    group, version, kind, plural, singular: kind.toLowerCase(), namespaced, status: false, generation: false,
    returnDeleted: false, createOnUpdate: false, unconditionalUpdate: true, fieldLabels: [], ...extra,
  };
}

export const BUILTINS: ResourceInfo[] = [
  builtin('', 'v1', 'Namespace', 'namespaces', false, { shortNames: ['ns'], status: true, returnDeleted: true, fieldLabels: ['status.phase'] }),
  builtin('', 'v1', 'Pod', 'pods', true, { shortNames: ['po'], status: true, returnDeleted: true,
    fieldLabels: ['spec.nodeName', 'spec.restartPolicy', 'spec.schedulerName', 'spec.serviceAccountName', 'status.phase', 'status.podIP'] }),
  builtin('', 'v1', 'Service', 'services', true, { shortNames: ['svc'], status: true, returnDeleted: true }),
  builtin('', 'v1', 'ConfigMap', 'configmaps', true, { shortNames: ['cm'] }),
  builtin('', 'v1', 'Secret', 'secrets', true, { fieldLabels: ['type'] }),
  builtin('', 'v1', 'ServiceAccount', 'serviceaccounts', true, { shortNames: ['sa'] }),
  builtin('', 'v1', 'Event', 'events', true, { shortNames: ['ev'], createOnUpdate: true,
    fieldLabels: ['involvedObject.kind', 'involvedObject.namespace', 'involvedObject.name', 'involvedObject.uid',
      'involvedObject.apiVersion', 'involvedObject.resourceVersion', 'involvedObject.fieldPath', 'reason',
      'reportingComponent', 'source', 'type'] }),
  builtin('apps', 'v1', 'Deployment', 'deployments', true, { shortNames: ['deploy'], status: true, generation: true,
    scale: { specReplicasPath: '.spec.replicas', statusReplicasPath: '.status.replicas', labelSelectorPath: '.spec.selector' } }),
  builtin('policy', 'v1', 'PodDisruptionBudget', 'poddisruptionbudgets', true, { shortNames: ['pdb'], status: true, generation: true }),
  builtin('coordination.k8s.io', 'v1', 'Lease', 'leases', true, { createOnUpdate: true }),
  builtin('events.k8s.io', 'v1', 'Event', 'events', true, { shortNames: ['ev'], createOnUpdate: true,
    fieldLabels: ['regarding.kind', 'regarding.namespace', 'regarding.name', 'regarding.uid', 'reason', 'type', 'reportingController'] }),
  builtin('apiextensions.k8s.io', 'v1', 'CustomResourceDefinition', 'customresourcedefinitions', false,
    { shortNames: ['crd', 'crds'], status: true, generation: true, returnDeleted: true }),
  builtin('rbac.authorization.k8s.io', 'v1', 'Role', 'roles', true),
  builtin('rbac.authorization.k8s.io', 'v1', 'RoleBinding', 'rolebindings', true),
  builtin('rbac.authorization.k8s.io', 'v1', 'ClusterRole', 'clusterroles', false),
  builtin('rbac.authorization.k8s.io', 'v1', 'ClusterRoleBinding', 'clusterrolebindings', false),
];

export interface CrdVersion {
  name: string;
  served: boolean;
  storage: boolean;
  schema?: { openAPIV3Schema?: Schema };
  subresources?: { status?: object; scale?: ScaleSpec };
}

export interface CrdSpec {
  group: string;
  scope: 'Namespaced' | 'Cluster';
  names: { kind: string; plural: string; singular?: string; shortNames?: string[]; listKind?: string };
  versions: CrdVersion[];
}

/** The resource a CRD serves at one of its versions (custom resources never return a Status on delete). */
export function customResource(crdName: string, spec: CrdSpec, v: CrdVersion): ResourceInfo {
  return {
    group: spec.group, version: v.name, kind: spec.names.kind, plural: spec.names.plural,
    singular: spec.names.singular ?? spec.names.kind.toLowerCase(), namespaced: spec.scope === 'Namespaced',
    shortNames: spec.names.shortNames, status: v.subresources?.status !== undefined, scale: v.subresources?.scale,
    generation: true, returnDeleted: true, createOnUpdate: false, unconditionalUpdate: false, fieldLabels: [],
    schema: v.schema?.openAPIV3Schema, crdName,
  };
}

export const apiVersionOf = (r: { group: string; version: string }) => (r.group === '' ? r.version : `${r.group}/${r.version}`);
/** `deployments.apps`, `configmaps`: how error messages name a resource. */
export const qualified = (r: { group: string; plural: string }) => (r.group === '' ? r.plural : `${r.plural}.${r.group}`);
