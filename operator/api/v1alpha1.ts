// The kvfleet.io/v1alpha1 custom resources, Fleet and KVBudget (CONTRACTS.md, "Custom resources"). Each field is
// written once, here: the OpenAPI schema node, from which the TypeScript types are inferred and the CRD YAML in
// manifests/crds/ and charts/kvfleet/crds/ is generated (scripts/gen-crds.ts; a test fails when those are stale).
// Everything the API server can check is checked here (types, enums, ranges, CEL); the operator re-validates only
// what a schema cannot express (the engine's own rules, operator/budget.ts).
import {
  array, boolean, enumOf, integer, intOrString, map, number, object, string, type JsonSchema, type TypeOf,
} from './schema.ts';

export const GROUP = 'kvfleet.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;

export interface ResourceNames {
  readonly kind: string;
  readonly listKind: string;
  readonly plural: string;
  readonly singular: string;
  readonly shortNames: readonly string[];
}
export const FLEET: ResourceNames = { kind: 'Fleet', listKind: 'FleetList', plural: 'fleets', singular: 'fleet', shortNames: ['kvf'] };
export const KVBUDGET: ResourceNames = {
  kind: 'KVBudget', listKind: 'KVBudgetList', plural: 'kvbudgets', singular: 'kvbudget', shortNames: ['kvb'],
};

// ---- shared pieces ----------------------------------------------------------------------------------------------

const K8S_NAME = '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$';
// resource.Quantity as Kubernetes parses it (the string form; integers are accepted as they are)
const QUANTITY = '^[+-]?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$';
const BIG = Number.MAX_SAFE_INTEGER;

/** metav1.Condition. */
const condition = object({
  type: string({ minLength: 1, maxLength: 316, description: 'Condition type, e.g. Accepted.' }),
  status: enumOf(['True', 'False', 'Unknown']),
  observedGeneration: integer({ minimum: 0, maximum: BIG, description: 'metadata.generation the condition was set from.' }),
  lastTransitionTime: string({ format: 'date-time', description: 'When status last changed.' }),
  reason: string({ minLength: 1, maxLength: 1024, pattern: '^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$',
    description: 'CamelCase reason for the last transition.' }),
  message: string({ maxLength: 32768, description: 'Human-readable details.' }),
}, { required: ['type', 'status', 'lastTransitionTime', 'reason', 'message'] });

const conditions = array(condition, { 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['type'], maxItems: 16 });

export type Condition = TypeOf<typeof condition>;
export type ConditionStatus = Condition['status'];

// ---- KVBudget ---------------------------------------------------------------------------------------------------

export const BUDGET_METHODS = ['Full', 'SnapKV', 'PyramidKV', 'AdaSnapKV', 'AdaPyramidKV'] as const;
export const POOLINGS = ['Max', 'Avg'] as const;
export const GQA_REDUCES = ['Mean', 'Max'] as const;

const kvBudgetSpec = object({
  method: enumOf(BUDGET_METHODS, { description: 'Compression method. Full keeps every token (no size field needed).' }),
  tokensPerHead: integer({ minimum: 1, description: 'Tokens kept per KV head after compression (B). Exactly one of '
    + 'tokensPerHead and keepRatio unless method is Full; at least window + 1.' }),
  keepRatio: number({ minimum: 0, exclusiveMinimum: true, maximum: 1,
    description: 'Fraction of the prompt kept per KV head, in (0, 1]; B = max(window + 1, ceil(ratio * n)).' }),
  window: integer({ minimum: 1, default: 32, description: 'Observation window: the last tokens, always kept, whose '
    + 'queries score the prefix.' }),
  poolKernel: integer({ minimum: 1, default: 7, description: 'Width of the 1-D pooling over scores (odd).',
    'x-kubernetes-validations': [{ rule: 'self % 2 == 1', message: 'poolKernel must be odd' }] }),
  pooling: enumOf(POOLINGS, { default: 'Max', description: 'Score pooling.' }),
  gqaReduce: enumOf(GQA_REDUCES, { default: 'Mean', description: 'How scores of the query heads sharing a KV head combine.' }),
  floorAlpha: number({ minimum: 0, maximum: 1, default: 0.2,
    description: 'Ada-KV safeguard: each head keeps at least floorAlpha of the uniform share.' }),
  pyramidBeta: number({ minimum: 1, exclusiveMinimum: true, default: 20,
    description: 'PyramidKV: ratio of the first layer\'s budget to the last layer\'s.' }),
  decodeMaxTokensPerHead: integer({ minimum: 0, default: 0,
    description: 'Decode cap: recompress a head once it holds this many tokens (0 = no cap; else at least window + 1).' }),
}, {
  required: ['method'],
  'x-kubernetes-validations': [
    { rule: "self.method == 'Full' || !(has(self.tokensPerHead) && has(self.keepRatio))",
      message: 'set exactly one of tokensPerHead and keepRatio, not both', fieldPath: '.keepRatio' },
    { rule: "self.method == 'Full' || has(self.tokensPerHead) || has(self.keepRatio)",
      message: 'set exactly one of tokensPerHead and keepRatio (required unless method is Full)', fieldPath: '.tokensPerHead' },
    { rule: '!has(self.tokensPerHead) || self.tokensPerHead >= self.window + 1',
      message: 'tokensPerHead must be at least window + 1 (the window is always kept)', fieldPath: '.tokensPerHead' },
    { rule: 'self.decodeMaxTokensPerHead == 0 || self.decodeMaxTokensPerHead >= self.window + 1',
      message: 'decodeMaxTokensPerHead must be 0 (no cap) or at least window + 1', fieldPath: '.decodeMaxTokensPerHead' },
  ],
});

const kvBudgetStatus = object({
  observedGeneration: integer({ minimum: 0, maximum: BIG, description: 'metadata.generation last reconciled.' }),
  conditions,
  fleets: array(string(), { 'x-kubernetes-list-type': 'set', description: 'Fleets (same namespace) that use this budget.' }),
});

export type KVBudgetSpec = TypeOf<typeof kvBudgetSpec>;
export type KVBudgetStatus = TypeOf<typeof kvBudgetStatus>;
export type BudgetMethod = (typeof BUDGET_METHODS)[number];

// ---- Fleet ------------------------------------------------------------------------------------------------------

export const ADMISSIONS = ['reserve', 'optimistic'] as const;
export const PICK_POLICIES = ['most-free', 'best-fit', 'p2c', 'least-prefill'] as const;
export const SERVICE_TYPES = ['ClusterIP', 'NodePort', 'LoadBalancer'] as const;

const toleration = object({
  key: string(),
  operator: enumOf(['Exists', 'Equal']),
  value: string(),
  effect: enumOf(['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute']),
  tolerationSeconds: integer({ maximum: BIG }),
}, { 'x-kubernetes-validations': [
  // the Pod API's own rules, checked here so a bad toleration is refused on the Fleet, not later on its Deployment
  { rule: "!(has(self.operator) && self.operator == 'Exists' && has(self.value) && self.value != '')",
    message: 'value must be empty when operator is Exists', fieldPath: '.value' },
  { rule: "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
    message: 'tolerationSeconds applies only with effect NoExecute', fieldPath: '.tolerationSeconds' },
] });

const fleetSpec = object({
  model: object({
    source: string({ pattern: '^(pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?|hostPath:///.+)$', maxLength: 1024,
      description: 'Where the Hugging Face model directory lives: pvc://CLAIM/PATH or hostPath:///DIR (mounted read-only; '
        + 'the Fleet namespace\'s Pod Security level decides whether hostPath pods may run there).',
      'x-kubernetes-validations': [
        { rule: "!self.matches('^[a-zA-Z]+://[^/]*(/.*)?/[.][.](/.*)?$')", message: 'the model path must not contain a .. segment' },
        { rule: "!self.matches('^hostPath:///+$')", message: 'hostPath must name a directory, not the node\'s root' },
      ] }),
    dtype: enumOf(['bf16', 'f16', 'f32'], { description: 'Weight dtype expected on disk.' }),
    maxModelLen: integer({ minimum: 1, description: 'Prompt + new tokens at most (default: the model\'s context).' }),
  }, { required: ['source'] }),
  engine: object({
    pageSize: integer({ minimum: 1, maximum: 1024, default: 16, description: 'Tokens per KV page.' }),
    kvMemoryFraction: number({ minimum: 0, exclusiveMinimum: true, maximum: 1, default: 0.9,
      description: 'Fraction of device memory for the page pool.' }),
    maxRunning: integer({ minimum: 1, default: 256, description: 'Running sequences per worker at most.' }),
    admission: enumOf(ADMISSIONS, { default: 'reserve', description: 'reserve: admit only what fits to the end; '
      + 'optimistic: admit on the prompt, preempt by recompute.' }),
  }, { default: {} }),
  workers: object({
    replicas: integer({ minimum: 0, default: 1, description: 'Worker pods (the scale subresource; the autoscaler '
      + 'writes it when autoscaling.enabled).' }),
    image: string({ minLength: 1, description: 'Worker image (default: the operator\'s).' }),
    resources: object({
      limits: map(intOrString({ pattern: QUANTITY })),
      requests: map(intOrString({ pattern: QUANTITY })),
    }, { description: 'Container resources, e.g. limits: {nvidia.com/gpu: 1}.' }),
    nodeSelector: map(string()),
    tolerations: array(toleration),
  }, { default: {} }),
  router: object({
    replicas: integer({ minimum: 0, default: 2 }),
    serviceType: enumOf(SERVICE_TYPES, { default: 'ClusterIP' }),
    policy: enumOf(PICK_POLICIES, { default: 'least-prefill', description: 'How the ledger picks a worker (least-prefill: among the 16 workers with the least pending prefill, one that fits; most-free: the most free pages).' }),
  }, { default: {} }),
  redis: object({
    url: string({ pattern: '^rediss?://', description: 'The ledger\'s Redis, redis://HOST:PORT[/DB].' }),
    passwordSecretRef: object({
      name: string({ pattern: K8S_NAME }),
      key: string({ minLength: 1 }),
    }, { required: ['name', 'key'], description: 'A Secret key holding the Redis password.' }),
    managed: boolean({ description: 'Run a Redis for this fleet (instead of url).' }),
  }, {
    default: { managed: true },
    'x-kubernetes-validations': [
      { rule: 'has(self.url) != (has(self.managed) && self.managed)', message: 'set exactly one of url and managed: true' },
      { rule: '!has(self.passwordSecretRef) || has(self.url)', message: 'passwordSecretRef applies only with url',
        fieldPath: '.passwordSecretRef' },
    ],
  }),
  imagePullSecrets: array(object({ name: string({ pattern: K8S_NAME }) }, { required: ['name'] }), { maxItems: 16,
    description: 'Secrets (in the Fleet\'s namespace) for pulling the worker, router and managed Redis images from a private registry.' }),
  budgetRef: object({ name: string({ pattern: K8S_NAME }) }, { required: ['name'],
    description: 'The KVBudget used when a request names none (absent: the built-in default budget).' }),
  allowedBudgets: array(string({ pattern: K8S_NAME }), { 'x-kubernetes-list-type': 'set', maxItems: 64,
    description: 'KVBudget names a request may pick (budgetRef\'s is always allowed).' }),
  autoscaling: object({
    enabled: boolean({ default: false, description: 'Scale workers by KV pressure. When false the scale '
      + 'subresource belongs to HPA/KEDA and the operator never writes replicas.' }),
    minReplicas: integer({ minimum: 1, default: 1 }),
    maxReplicas: integer({ minimum: 1, default: 16 }),
    targetKVPressure: number({ minimum: 0, exclusiveMinimum: true, maximum: 1, default: 0.7 }),
    scaleUpStabilizationSeconds: integer({ minimum: 0, default: 15 }),
    scaleDownStabilizationSeconds: integer({ minimum: 0, default: 300 }),
    drainTimeoutSeconds: integer({ minimum: 0, default: 600, description: 'Longest wait for a drained worker\'s '
      + 'running work (also its terminationGracePeriodSeconds).' }),
  }, {
    default: {},
    'x-kubernetes-validations': [
      { rule: 'self.minReplicas <= self.maxReplicas', message: 'minReplicas must not exceed maxReplicas', fieldPath: '.minReplicas' },
    ],
  }),
}, { required: ['model'] });

const fleetStatus = object({
  observedGeneration: integer({ minimum: 0, maximum: BIG }),
  replicas: integer({ minimum: 0, description: 'Worker pods (the scale subresource\'s status).' }),
  readyReplicas: integer({ minimum: 0 }),
  selector: string({ description: 'Label selector of the worker pods (for HPA/KEDA).' }),
  kvPressure: number({ minimum: 0, description: 'Fleet KV pressure (ARCHITECTURE.md, "Capacity, pressure").' }),
  capacityTokens: integer({ minimum: 0, maximum: BIG, description: 'Free compressed capacity, in tokens per KV head.' }),
  budget: string({ description: 'The resolved default KVBudget.' }),
  scaleDown: object({
    fromReplicas: integer({ minimum: 0, description: 'spec.workers.replicas when the scale-down began.' }),
    targetReplicas: integer({ minimum: 0, description: 'The replica count set once the drained workers are idle.' }),
    pods: array(string(), { 'x-kubernetes-list-type': 'set', maxItems: 1024, description: 'Workers told to drain, removed first.' }),
    startedAt: string({ format: 'date-time' }),
    deadline: string({ format: 'date-time', description: 'When the count goes down even if drained workers still run work.' }),
  }, { required: ['fromReplicas', 'targetReplicas', 'pods', 'startedAt', 'deadline'],
    description: 'A scale-down in progress (the autoscaler drains workers before lowering replicas). Kept here so that an '
      + 'operator that takes over leadership finishes it instead of draining further workers.' }),
  conditions,
});

export type FleetSpec = TypeOf<typeof fleetSpec>;
export type FleetStatus = TypeOf<typeof fleetStatus>;

// ---- the objects ------------------------------------------------------------------------------------------------

export interface ObjectMeta {
  name: string;
  namespace: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
}

export interface KVBudget {
  apiVersion: typeof API_VERSION;
  kind: 'KVBudget';
  metadata: ObjectMeta;
  spec: KVBudgetSpec;
  status?: KVBudgetStatus;
}

export interface Fleet {
  apiVersion: typeof API_VERSION;
  kind: 'Fleet';
  metadata: ObjectMeta;
  spec: FleetSpec;
  status?: FleetStatus;
}

// ---- CRDs -------------------------------------------------------------------------------------------------------

interface PrinterColumn { name: string; type: 'string' | 'integer' | 'number' | 'date'; jsonPath: string; description?: string }

/** The wire form of an apiextensions.k8s.io/v1 CustomResourceDefinition (what kubectl applies). */
export interface CustomResourceDefinition {
  apiVersion: 'apiextensions.k8s.io/v1';
  kind: 'CustomResourceDefinition';
  metadata: { name: string; labels: Record<string, string> };
  spec: {
    group: string;
    scope: 'Namespaced';
    names: { kind: string; listKind: string; plural: string; singular: string; shortNames: string[]; categories: string[] };
    versions: {
      name: string;
      served: true;
      storage: true;
      schema: { openAPIV3Schema: JsonSchema };
      subresources: { status: Record<string, never>; scale?: { specReplicasPath: string; statusReplicasPath: string; labelSelectorPath: string } };
      additionalPrinterColumns: PrinterColumn[];
    }[];
  };
}

function crd(names: ResourceNames, description: string, spec: JsonSchema, status: JsonSchema, columns: PrinterColumn[],
  scale?: CustomResourceDefinition['spec']['versions'][number]['subresources']['scale'],
  rootRules?: { rule: string; message: string }[]): CustomResourceDefinition {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${names.plural}.${GROUP}`, labels: { 'app.kubernetes.io/part-of': 'kvfleet' } },
    spec: {
      group: GROUP,
      scope: 'Namespaced',
      names: { kind: names.kind, listKind: names.listKind, plural: names.plural, singular: names.singular,
        shortNames: [...names.shortNames], categories: ['kvfleet'] },
      versions: [{
        name: VERSION, served: true, storage: true,
        schema: { openAPIV3Schema: {
          type: 'object', description, required: ['spec'], ...(rootRules ? { 'x-kubernetes-validations': rootRules } : {}),
          properties: {
            apiVersion: { type: 'string' }, kind: { type: 'string' }, metadata: { type: 'object' }, spec, status,
          },
        } },
        subresources: { status: {}, ...(scale ? { scale } : {}) },
        additionalPrinterColumns: [...columns, { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' }],
      }],
    },
  };
}

export const FLEET_CRD = crd(FLEET, 'A serving fleet: workers with a paged, compressed KV cache, routers, and their KV-capacity ledger.',
  fleetSpec.schema, fleetStatus.schema, [
    { name: 'Ready', type: 'integer', jsonPath: '.status.readyReplicas', description: 'Ready worker pods' },
    { name: 'Replicas', type: 'integer', jsonPath: '.spec.workers.replicas', description: 'Desired worker pods' },
    { name: 'KVPressure', type: 'number', jsonPath: '.status.kvPressure', description: 'Fleet KV pressure' },
    { name: 'Budget', type: 'string', jsonPath: '.status.budget', description: 'Default KVBudget' },
  ], { specReplicasPath: '.spec.workers.replicas', statusReplicasPath: '.status.replicas', labelSelectorPath: '.status.selector' },
  // the name prefixes the Fleet's Services (<name>-workers, <name>-router, <name>-redis: DNS-1035 labels of at most
  // 63 characters) and is the value of its pods' instance label
  [{ rule: "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 52",
    message: 'metadata.name: a Fleet name must be a DNS-1035 label (lower case letters, digits, \'-\'; starting with a letter) '
      + 'of at most 52 characters, since it prefixes the names of its Services' }]);

export const KVBUDGET_CRD = crd(KVBUDGET, 'A KV compression budget: method and size of the compressed cache per KV head.',
  kvBudgetSpec.schema, kvBudgetStatus.schema, [
    { name: 'Method', type: 'string', jsonPath: '.spec.method' },
    { name: 'TokensPerHead', type: 'integer', jsonPath: '.spec.tokensPerHead' },
    { name: 'KeepRatio', type: 'number', jsonPath: '.spec.keepRatio' },
  ]);

export const CRDS: readonly CustomResourceDefinition[] = [FLEET_CRD, KVBUDGET_CRD];
