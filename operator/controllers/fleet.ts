// The Fleet reconciler: renders a Fleet into its children (operator/controllers/fleet-objects.ts) and applies them
// with server-side apply, creates the managed Redis password Secret once, reads the worker Deployment's rollout
// state and the fleet's ledger (KV pressure, free capacity), resolves the default KVBudget, and reports all of it
// in the Fleet's status through the status subresource. With autoscaling enabled it hands the fleet to the
// autoscaler (operator/autoscaler.ts), which alone writes the Fleet's scale subresource.
//
// Invariants:
// - Idempotent: every write is preceded by a read that shows it is needed (Applier.apply; the status is patched
//   only when it differs), so reconciling an unchanged world makes no write.
// - The worker replica count applied is spec.workers.replicas, as stored; this reconciler never writes it.
// - A failure to reach the fleet's ledger does not stop the children from being applied: it is reported as
//   Degraded=True (LedgerUnavailable) and the last kvPressure/capacityTokens are kept.
// - The status is refreshed every `statusIntervalMs` (the ledger changes without any Kubernetes event).
import { isDeepStrictEqual } from 'node:util';
import { randomBytes } from 'node:crypto';
import type { CoreV1Api, CustomObjectsApi, KubernetesObject, V1Deployment } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { fleetPressure, type LedgerSnapshot } from '../../ledger/index.ts';
import { findCondition, FleetConditions, KVBudgetConditions, setCondition, type ConditionInput } from '../api/conditions.ts';
import { FLEET, GROUP, VERSION, type Condition, type Fleet, type FleetStatus, type KVBudget } from '../api/v1alpha1.ts';
import { ChildConflictError, type Applier } from '../apply.ts';
import { fleetRedis, type FleetRedis, type LedgerPool } from '../ledgers.ts';
import { errorText, isNotFound, MERGE_PATCH, splitKey } from '../runtime/kube.ts';
import { EventRecorder } from '../runtime/events.ts';
import type { OperatorMetrics } from '../runtime/metrics.ts';
import {
  childNames, FleetSpecError, optionalChildren, ownerReference, REDIS_PASSWORD_KEY, renderChildren, workerSelector, type RenderOptions,
} from './fleet-objects.ts';

export const FLEET_CONTROLLER = 'fleet';

export const FleetReasons = {
  // Available
  MinimumReplicasAvailable: 'MinimumReplicasAvailable', WorkersUnavailable: 'WorkersUnavailable',
  RoutersUnavailable: 'RoutersUnavailable', ScaledToZero: 'ScaledToZero',
  // Progressing
  RolloutInProgress: 'RolloutInProgress', RolloutComplete: 'RolloutComplete',
  // Degraded
  AsExpected: 'AsExpected', LedgerUnavailable: 'LedgerUnavailable', RedisSecretMissing: 'RedisSecretMissing',
  InvalidSpec: 'InvalidSpec', ApplyFailed: 'ApplyFailed', ChildConflict: 'ChildConflict',
  // BudgetResolved
  BuiltInDefault: 'BuiltInDefault', Resolved: 'Resolved', BudgetNotFound: 'BudgetNotFound', BudgetInvalid: 'BudgetInvalid',
  BudgetPending: 'BudgetPending',
} as const;

/** What the ledger says about a fleet right now. */
export interface LedgerView {
  snapshot: LedgerSnapshot;
  /** fleet pressure, queue term included (ARCHITECTURE.md, "Capacity, pressure") */
  pressure: number;
  /** Σ over ready, non-draining workers of max(0, effective free pages) × page_size: tokens (per KV head) that can
   *  still be admitted, free pages minus live reservations */
  capacityTokens: number;
}

export function ledgerView(snapshot: LedgerSnapshot): LedgerView {
  let capacity = 0;
  for (const w of snapshot.workers) if (!w.draining) capacity += Math.max(0, w.effective_free) * w.page_size;
  return { snapshot, pressure: fleetPressure(snapshot.workers).pressure, capacityTokens: capacity };
}

/** What the reconciler hands the autoscaler each pass (issue 18). */
export interface ScaleContext {
  fleet: Fleet;
  workers: V1Deployment | undefined;
  ledger: LedgerView | undefined;
  redis: FleetRedis | undefined;
}

export interface FleetAutoscaler {
  /** Decides (and, when it is time, carries out) a scale step; returns ms until it wants to look again. */
  step(ctx: ScaleContext): Promise<number | undefined>;
  /** The fleet is gone: forget its history. */
  forget(key: string): void;
  /** The fleet is no longer autoscaled: a scale-down in progress is dropped (its workers undrained), then forgotten. */
  disabled(ctx: ScaleContext): Promise<void>;
}

export interface FleetReconcilerDeps {
  applier: Applier;
  custom: Pick<CustomObjectsApi, 'getNamespacedCustomObject' | 'patchNamespacedCustomObjectStatus'>;
  core: Pick<CoreV1Api, 'readNamespacedSecret' | 'createNamespacedSecret'>;
  budgets: { get(name: string, namespace: string): KVBudget | undefined };
  ledgers: LedgerPool;
  render: RenderOptions;
  /** how often the status is refreshed from the ledger (default 10 s) */
  statusIntervalMs?: number;
  autoscaler?: FleetAutoscaler;
  /** Kubernetes Events when Degraded or BudgetResolved turn bad (Warning) or recover (Normal) */
  events?: EventRecorder;
  log: Logger;
  metrics: OperatorMetrics;
  now?: () => Date;
}

/** The Event, if any, for a condition that changed: Warning when it turns (or stays, with a new reason or message)
 *  bad, Normal when it recovers. BudgetPending is not news: a new budget is validated within a reconcile. */
export function conditionEvent(prev: Condition | undefined, next: Condition | undefined):
  { type: 'Normal' | 'Warning'; reason: string; note: string } | undefined {
  if (!next || (prev && prev.status === next.status && prev.reason === next.reason && prev.message === next.message)) return undefined;
  const bad = (c: Condition) => (c.type === FleetConditions.Degraded ? c.status === 'True'
    : c.status === 'False' && c.reason !== FleetReasons.BudgetPending);
  if (bad(next)) return { type: 'Warning', reason: next.reason, note: next.message };
  if (prev && bad(prev)) return { type: 'Normal', reason: next.reason, note: next.message };
  return undefined;
}

const sameJson = (a: unknown, b: unknown): boolean => isDeepStrictEqual(JSON.parse(JSON.stringify(a ?? null)), JSON.parse(JSON.stringify(b ?? null)));
const round3 = (x: number) => Math.round(x * 1000) / 1000;

export class FleetReconciler {
  readonly name = FLEET_CONTROLLER;
  private readonly d: FleetReconcilerDeps;

  constructor(deps: FleetReconcilerDeps) { this.d = deps; }

  async reconcile(key: string): Promise<{ requeueAfterMs?: number }> {
    const { namespace, name } = splitKey(key);
    const log = this.d.log.child({ fleet: key });
    let fleet: Fleet;
    try {
      fleet = await this.d.custom.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: FLEET.plural, name }) as Fleet;
    } catch (err) {
      if (isNotFound(err)) { this.d.autoscaler?.forget(key); return {}; } // its children go with it (owner references)
      throw err;
    }
    if ((fleet.metadata as { deletionTimestamp?: string }).deletionTimestamp) return {};
    const gen = fleet.metadata.generation;
    const problems: ConditionInput[] = [];
    const degraded = (reason: string, message: string) => problems.push({ type: FleetConditions.Degraded, status: 'True', reason, message, observedGeneration: gen });

    // 1. where the ledger is (the managed Redis password Secret is created here, once)
    let redis: FleetRedis | undefined;
    try {
      redis = fleet.spec.redis.url === undefined ? await this.managedRedis(fleet, log) : await fleetRedis(fleet, this.d.core);
    } catch (err) {
      degraded(FleetReasons.RedisSecretMissing, errorText(err));
    }

    // 2. the children
    let workers: V1Deployment | undefined;
    let routers: V1Deployment | undefined;
    let applyError: unknown;
    try {
      const url = redis?.url ?? fleet.spec.redis.url!;
      for (const child of renderChildren(fleet, url, this.d.render)) {
        const r = await this.d.applier.apply(child);
        if (r.changed) log.info({ kind: child.kind, name: child.metadata.name }, 'child applied');
        if (child.kind === 'Deployment' && child.metadata.name === childNames(name).workers) workers = r.object as V1Deployment;
        if (child.kind === 'Deployment' && child.metadata.name === childNames(name).router) routers = r.object as V1Deployment;
      }
      for (const o of optionalChildren(fleet)) await this.removeIfOwned(fleet, o, log);
    } catch (err) {
      if (err instanceof FleetSpecError) degraded(FleetReasons.InvalidSpec, err.message);
      else if (err instanceof ChildConflictError) { applyError = err; degraded(FleetReasons.ChildConflict, err.message); }
      else { applyError = err; degraded(FleetReasons.ApplyFailed, errorText(err)); }
    }

    // 3. the ledger
    let ledger: LedgerView | undefined;
    if (redis) {
      try {
        const l = await this.d.ledgers.get(namespace, name, redis);
        ledger = ledgerView(await l.snapshot());
      } catch (err) {
        degraded(FleetReasons.LedgerUnavailable, `fleet ledger at ${redactUrl(redis.url)}: ${errorText(err)}`);
      }
    }

    // 4. scaling (issue 18): only with autoscaling enabled; otherwise the scale subresource belongs to HPA/KEDA
    let scaleAgainMs: number | undefined;
    if (this.d.autoscaler) {
      if (!fleet.spec.autoscaling.enabled) await this.d.autoscaler.disabled({ fleet, workers, ledger, redis });
      else if (applyError === undefined) scaleAgainMs = await this.d.autoscaler.step({ fleet, workers, ledger, redis });
      else this.d.autoscaler.forget(key);
    }

    // 5. the status
    await this.writeStatus(fleet, workers, routers, ledger, problems, log);
    if (applyError !== undefined) throw applyError;
    const interval = this.d.statusIntervalMs ?? 10_000;
    return { requeueAfterMs: scaleAgainMs !== undefined ? Math.min(scaleAgainMs, interval) : interval };
  }

  /** The managed Redis: its Service address and the password from the `<fleet>-redis` Secret, created (random,
   *  owned by the Fleet) when missing and never rewritten, so a running Redis and its clients keep agreeing. */
  private async managedRedis(fleet: Fleet, log: Logger): Promise<FleetRedis> {
    const { namespace } = fleet.metadata;
    const secretName = childNames(fleet.metadata.name).redis;
    let data: Record<string, string> | undefined;
    try {
      data = (await this.d.core.readNamespacedSecret({ name: secretName, namespace })).data;
    } catch (err) {
      if (!isNotFound(err)) throw err;
      const password = randomBytes(24).toString('base64url');
      const created = await this.d.core.createNamespacedSecret({ namespace, body: {
        metadata: { name: secretName, namespace, labels: { 'app.kubernetes.io/name': 'kvfleet', 'app.kubernetes.io/instance': fleet.metadata.name,
          'app.kubernetes.io/component': 'redis', 'app.kubernetes.io/managed-by': 'kvfleet-operator' },
        ownerReferences: [ownerReference(fleet)] },
        type: 'Opaque', stringData: { [REDIS_PASSWORD_KEY]: password } } });
      log.info({ secret: secretName }, 'managed Redis password Secret created');
      data = created.data ?? { [REDIS_PASSWORD_KEY]: Buffer.from(password).toString('base64') };
    }
    const b64 = data?.[REDIS_PASSWORD_KEY];
    if (b64 === undefined) throw new Error(`Secret ${secretName} (the managed Redis password) has no key '${REDIS_PASSWORD_KEY}'`);
    // fleetRedis names the Service; the password comes from the Secret above
    const { url } = await fleetRedis(fleet, this.d.core);
    return { url, password: Buffer.from(b64, 'base64').toString('utf8') };
  }

  private async removeIfOwned(fleet: Fleet, o: { apiVersion: string; kind: string; name: string }, log: Logger): Promise<void> {
    const live: KubernetesObject | undefined = await this.d.applier.read(o.apiVersion, o.kind, fleet.metadata.namespace, o.name);
    if (!live?.metadata?.ownerReferences?.some((r) => r.uid === fleet.metadata.uid && r.controller)) return;
    await this.d.applier.delete(o.apiVersion, o.kind, fleet.metadata.namespace, o.name);
    log.info({ kind: o.kind, name: o.name }, 'child no longer wanted; deleted');
  }

  private budgetCondition(fleet: Fleet): { cond: ConditionInput; budget?: string } {
    const gen = fleet.metadata.generation;
    const ref = fleet.spec.budgetRef?.name;
    const c = (status: 'True' | 'False', reason: string, message: string): ConditionInput =>
      ({ type: FleetConditions.BudgetResolved, status, reason, message, observedGeneration: gen });
    if (ref === undefined) {
      return { cond: c('True', FleetReasons.BuiltInDefault, 'no budgetRef: requests that name no budget get the built-in default (ADA_SNAPKV, 1024 tokens per KV head)') };
    }
    const b = this.d.budgets.get(ref, fleet.metadata.namespace);
    if (!b) return { cond: c('False', FleetReasons.BudgetNotFound, `spec.budgetRef: KVBudget ${ref} not found in namespace ${fleet.metadata.namespace}`) };
    const accepted = findCondition(b.status?.conditions, KVBudgetConditions.Accepted);
    if (accepted?.status === 'False') {
      return { cond: c('False', FleetReasons.BudgetInvalid, `spec.budgetRef: KVBudget ${ref} is not accepted: ${accepted.message}`) };
    }
    if (accepted?.status !== 'True' || accepted.observedGeneration !== b.metadata.generation) {
      return { cond: c('False', FleetReasons.BudgetPending, `spec.budgetRef: KVBudget ${ref} has not been validated yet`) };
    }
    return { cond: c('True', FleetReasons.Resolved, `default budget: KVBudget ${ref} (${accepted.message})`), budget: ref };
  }

  private async writeStatus(fleet: Fleet, workers: V1Deployment | undefined, routers: V1Deployment | undefined,
    ledger: LedgerView | undefined, problems: ConditionInput[], log: Logger): Promise<void> {
    const now = this.d.now?.() ?? new Date();
    const gen = fleet.metadata.generation;
    const prev = fleet.status;
    const ws = workers?.status;
    const want = fleet.spec.workers.replicas;
    const ready = ws?.readyReplicas ?? 0;
    const routersReady = routers?.status?.readyReplicas ?? 0;
    let conditions: Condition[] | undefined = prev?.conditions;
    const set = (c: ConditionInput) => { conditions = setCondition(conditions, c, now); };

    const { cond: budgetCond, budget } = this.budgetCondition(fleet);
    set(budgetCond);

    if (want === 0) set({ type: FleetConditions.Available, status: 'False', reason: FleetReasons.ScaledToZero, message: 'spec.workers.replicas is 0', observedGeneration: gen });
    else if (ready === 0) set({ type: FleetConditions.Available, status: 'False', reason: FleetReasons.WorkersUnavailable, message: `0 of ${want} workers ready`, observedGeneration: gen });
    else if (fleet.spec.router.replicas > 0 && routersReady === 0) {
      set({ type: FleetConditions.Available, status: 'False', reason: FleetReasons.RoutersUnavailable, message: `0 of ${fleet.spec.router.replicas} routers ready`, observedGeneration: gen });
    } else set({ type: FleetConditions.Available, status: 'True', reason: FleetReasons.MinimumReplicasAvailable, message: `${ready} of ${want} workers ready, ${routersReady} routers ready`, observedGeneration: gen });

    const rolledOut = (d: V1Deployment | undefined) => {
      const s = d?.status;
      const n = d?.spec?.replicas ?? 0;
      return s !== undefined && (s.observedGeneration ?? 0) >= (d?.metadata?.generation ?? 0) && (s.updatedReplicas ?? 0) >= n
        && (s.readyReplicas ?? 0) >= n && (s.replicas ?? 0) <= n;
    };
    if (rolledOut(workers) && rolledOut(routers)) {
      set({ type: FleetConditions.Progressing, status: 'False', reason: FleetReasons.RolloutComplete, message: 'workers and routers are up to date and ready', observedGeneration: gen });
    } else {
      set({ type: FleetConditions.Progressing, status: 'True', reason: FleetReasons.RolloutInProgress,
        message: `workers: ${ws?.updatedReplicas ?? 0} updated, ${ready} ready of ${want}; routers: ${routersReady} ready of ${fleet.spec.router.replicas}`, observedGeneration: gen });
    }

    set(problems[0] ?? { type: FleetConditions.Degraded, status: 'False', reason: FleetReasons.AsExpected, message: 'all children applied; ledger reachable', observedGeneration: gen });
    if (problems.length > 1) {
      set({ ...problems[0], message: problems.map((p) => `${p.reason}: ${p.message}`).join('; ') });
    }

    const status: FleetStatus = {
      ...(gen !== undefined ? { observedGeneration: gen } : {}),
      replicas: ws?.replicas ?? 0,
      readyReplicas: ready,
      selector: workerSelector(fleet.metadata.name),
      ...(ledger ? { kvPressure: round3(ledger.pressure), capacityTokens: ledger.capacityTokens }
        : { ...(prev?.kvPressure !== undefined ? { kvPressure: prev.kvPressure } : {}),
          ...(prev?.capacityTokens !== undefined ? { capacityTokens: prev.capacityTokens } : {}) }),
      ...(budget !== undefined ? { budget } : {}),
      conditions,
    };
    if (sameJson(prev, status)) return;
    // a field we stopped reporting (budget) must be removed explicitly under merge patch
    const body: Record<string, unknown> = { ...status };
    if (prev?.budget !== undefined && status.budget === undefined) body.budget = null;
    try {
      await this.d.custom.patchNamespacedCustomObjectStatus({ group: GROUP, version: VERSION, namespace: fleet.metadata.namespace,
        plural: FLEET.plural, name: fleet.metadata.name, body: { status: body } }, MERGE_PATCH);
      log.debug({ replicas: status.replicas, ready, kvPressure: status.kvPressure }, 'Fleet status updated');
      for (const type of [FleetConditions.Degraded, FleetConditions.BudgetResolved]) {
        const e = conditionEvent(findCondition(prev?.conditions, type), findCondition(conditions, type));
        if (e) this.d.events?.record(EventRecorder.ref(FLEET.kind, fleet.metadata), e.type, e.reason, 'Reconcile', e.note);
      }
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}

function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}
