// KV-pressure autoscaling (issue 18; ARCHITECTURE.md, "Capacity, pressure").
//
// Decision (ScaleDecider, pure, driven by an injected clock):
//   recommendation = ceil(ready × pressure ÷ target), or the current replica count while pressure is within
//   ±tolerance of the target (no flapping on noise around it); clamped to [min, max].
//   Stabilization as HPA does it: a scale-up goes to the LOWEST recommendation of the last
//   scaleUpStabilizationSeconds (pressure must have stayed high for the whole window), a scale-down to the HIGHEST
//   of the last scaleDownStabilizationSeconds. A step up is at most 2× the current count.
//   Pods starting but not yet ready get credit: `current` is the replica count asked for (starting pods
//   included), so pressure measured over the ready workers asks for more only beyond what is already coming.
//   With no ready worker there is no pressure signal: nothing but the min/max clamp is enforced. No step down
//   while pods are starting (ready < current). A fresh decider treats the current count as its history.
//
// Execution (Autoscaler, per Fleet, one step per reconcile):
//   up   → the Fleet's scale subresource gets the new count (the reconciler applies it to the worker Deployment);
//   down → drain first: the least-loaded ready workers get a drain order on the ledger's events channel; once each
//          reports no running or waiting work (or drainTimeoutSeconds passes, or it left the ledger), their pods get
//          controller.kubernetes.io/pod-deletion-cost so the ReplicaSet removes exactly them, and only then is the
//          count lowered. A drain in progress is remembered across reconciles (requeued every drainPollMs) and
//          recorded in the Fleet's status (status.scaleDown), so that an operator taking over leadership finishes it
//          instead of choosing further workers to drain. A drain is dropped if the count changed under it (a user or
//          another controller set spec.workers.replicas): its target no longer follows from the count it lowers, and
//          its workers get undrain orders (they admit again; one shutting down on SIGTERM ignores it).
// With autoscaling.enabled false the reconciler never calls this: the scale subresource belongs to HPA/KEDA.
import type { CoreV1Api, CustomObjectsApi, V1Pod } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import client from 'prom-client';
import type { WorkerSnapshot } from '../ledger/index.ts';
import { FLEET, GROUP, VERSION, type Fleet } from './api/v1alpha1.ts';
import type { FleetAutoscaler, ScaleContext } from './controllers/fleet.ts';
import { workerSelector } from './controllers/fleet-objects.ts';
import type { LedgerPool } from './ledgers.ts';
import { isNotFound, MERGE_PATCH, objectKey } from './runtime/kube.ts';
import { EventRecorder } from './runtime/events.ts';
import type { OperatorMetrics } from './runtime/metrics.ts';

export const POD_DELETION_COST = 'controller.kubernetes.io/pod-deletion-cost';
/** The deletion cost given to drained pods: below every default (0), so they go first. */
export const DRAINED_COST = '-1000';
/** how long undrain orders of a dropped drain are sent again to workers still shown draining */
export const UNDRAIN_RETRY_MS = 60_000;

export interface ScalePolicy {
  minReplicas: number;
  maxReplicas: number;
  targetKVPressure: number;
  scaleUpStabilizationSeconds: number;
  scaleDownStabilizationSeconds: number;
}

export interface Observation {
  /** replicas asked for now (spec; starting pods included) */
  current: number;
  /** workers ready (the worker Deployment's readyReplicas) */
  ready: number;
  /** fleet pressure (queue term included); undefined when the ledger could not be read */
  pressure: number | undefined;
}

export interface Decision {
  desired: number;
  /** the unstabilized recommendation of this observation */
  recommendation: number;
  reason: string;
}

/** A recommendation is "no change" while pressure/target is within this band around 1. */
export const TOLERANCE = 0.1;

/** The scale decision of one fleet, with its recommendation history. */
export class ScaleDecider {
  private history: { at: number; rec: number }[] = [];

  decide(policy: ScalePolicy, o: Observation, nowMs: number): Decision {
    const clamp = (n: number) => Math.min(policy.maxReplicas, Math.max(policy.minReplicas, n));
    if (o.pressure === undefined || o.ready === 0) {
      // no signal: hold, but keep within bounds
      const desired = clamp(o.current);
      return { desired, recommendation: desired, reason: o.pressure === undefined ? 'ledger unavailable: holding' : 'no ready worker: holding' };
    }
    const ratio = o.pressure / policy.targetKVPressure;
    const raw = Math.abs(ratio - 1) <= TOLERANCE ? o.current : Math.ceil(o.ready * ratio);
    const rec = clamp(raw);
    const keep = Math.max(policy.scaleUpStabilizationSeconds, policy.scaleDownStabilizationSeconds) * 1000;
    // A fresh decider (operator start, new leader) has seen nothing: it counts the current count as recommended
    // just before now, so neither a step up nor a step down happens before its window (if any) has been observed.
    if (this.history.length === 0) this.history.push({ at: nowMs - 1, rec: clamp(o.current) });
    this.history = this.history.filter((h) => h.at >= nowMs - keep);
    this.history.push({ at: nowMs, rec });
    const within = (s: number) => this.history.filter((h) => h.at >= nowMs - s * 1000).map((h) => h.rec);
    const upTo = Math.min(...within(policy.scaleUpStabilizationSeconds));
    const downTo = Math.max(...within(policy.scaleDownStabilizationSeconds));
    let desired = o.current;
    let reason = `pressure ${o.pressure.toFixed(3)} vs target ${policy.targetKVPressure} over ${o.ready} ready: recommendation ${rec}`;
    if (upTo > o.current) {
      desired = Math.min(upTo, Math.max(1, 2 * o.current));
      reason += `; up to ${desired}${desired < upTo ? ' (at most 2x per step)' : ''}`;
    } else if (downTo < o.current && o.ready < o.current) {
      // pods are still starting: they were asked for on evidence; judge the fleet once they serve
      reason += `; scale-down to ${downTo} held while ${o.current - o.ready} pods are not ready`;
    } else if (downTo < o.current) {
      desired = downTo;
      reason += `; down to ${desired}`;
    } else if (rec !== o.current) {
      reason += `; held by the ${rec > o.current ? 'up' : 'down'} stabilization window`;
    }
    return { desired: clamp(desired), recommendation: rec, reason };
  }
}

/** The least-loaded workers first: least running + waiting work, then the lowest KV pressure, then by id. */
export function drainOrder(workers: readonly WorkerSnapshot[]): WorkerSnapshot[] {
  const load = (w: WorkerSnapshot) => (w.total_pages - w.free_pages + w.reserved_pages) / Math.max(1, w.total_pages);
  return [...workers].sort((a, b) => (a.running + a.waiting) - (b.running + b.waiting) || load(a) - load(b)
    || a.worker_id.localeCompare(b.worker_id));
}

interface DrainInProgress {
  /** the count when the drain began, and the count to set once the drained workers are idle */
  from: number;
  target: number;
  pods: string[];
  startedMs: number;
  deadlineMs: number;
}

export interface AutoscalerDeps {
  custom: Pick<CustomObjectsApi, 'patchNamespacedCustomObjectScale' | 'patchNamespacedCustomObjectStatus'>;
  core: Pick<CoreV1Api, 'listNamespacedPod' | 'patchNamespacedPod'>;
  ledgers: LedgerPool;
  /** Kubernetes Events on the Fleet for each step taken */
  events?: EventRecorder;
  log: Logger;
  metrics: OperatorMetrics;
  now?: () => number;
  /** how often a drain in progress is checked (default 1 s) */
  drainPollMs?: number;
}

/** The drain recorded in a Fleet's status, if any and well-formed. */
export function recordedDrain(fleet: Fleet): DrainInProgress | undefined {
  const r = fleet.status?.scaleDown;
  if (!r || !Array.isArray(r.pods)) return undefined;
  const startedMs = Date.parse(r.startedAt), deadlineMs = Date.parse(r.deadline);
  if (!Number.isFinite(startedMs) || !Number.isFinite(deadlineMs)) return undefined;
  return { from: r.fromReplicas, target: r.targetReplicas, pods: [...r.pods], startedMs, deadlineMs };
}

const isReady = (p: V1Pod) => p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;

export class Autoscaler implements FleetAutoscaler {
  private readonly d: AutoscalerDeps;
  private readonly deciders = new Map<string, ScaleDecider>();
  private readonly drains = new Map<string, DrainInProgress>();
  /** workers of dropped drains whose undrain orders are sent again while the ledger shows them draining */
  private readonly undrains = new Map<string, { pods: Set<string>; untilMs: number; why: string }>();
  private readonly desiredGauge: client.Gauge<'namespace' | 'fleet'>;
  private readonly pressureGauge: client.Gauge<'namespace' | 'fleet'>;

  constructor(deps: AutoscalerDeps) {
    this.d = deps;
    const registers = [deps.metrics.registry];
    this.desiredGauge = new client.Gauge({ name: 'kvfleet_fleet_desired_replicas', help: 'The autoscaler\'s desired worker count',
      labelNames: ['namespace', 'fleet'], registers });
    this.pressureGauge = new client.Gauge({ name: 'kvfleet_fleet_kv_pressure', help: 'Fleet KV pressure with the queue term',
      labelNames: ['namespace', 'fleet'], registers });
  }

  private now(): number { return this.d.now?.() ?? Date.now(); }

  /** Forgets every Fleet (leadership lost: the next leader's decisions, recorded in status, are the truth). */
  reset(): void {
    this.deciders.clear();
    this.drains.clear();
    this.undrains.clear();
  }

  forget(key: string): void {
    this.deciders.delete(key);
    this.drains.delete(key);
    this.undrains.delete(key);
  }

  async disabled(ctx: ScaleContext): Promise<void> {
    const { fleet } = ctx;
    const key = objectKey(fleet.metadata.namespace, fleet.metadata.name);
    const pending = this.drains.get(key) ?? recordedDrain(fleet);
    if (pending) {
      this.d.log.child({ fleet: key }).warn({ from: pending.from, to: pending.target, draining: pending.pods },
        'autoscaling turned off during a scale-down: dropping it and taking back its drain orders');
      await this.dropDrain(ctx, pending, `autoscaling turned off during the scale-down from ${pending.from} to ${pending.target}`);
      if (fleet.status?.scaleDown) await this.record(fleet, undefined);
    }
    this.forget(key);
  }

  /**
   * Gives up a scale-down: its workers get undrain orders (they admit again; the orders are sent again while the
   * ledger still shows them draining, for UNDRAIN_RETRY_MS, since pub/sub delivers only to who listens right now)
   * and lose the deletion cost a leader may already have put on their pods. Throws, leaving the drain in place for
   * the next reconcile, when the ledger cannot be reached.
   */
  private async dropDrain(ctx: ScaleContext, p: DrainInProgress, why: string): Promise<void> {
    const { fleet } = ctx;
    const key = objectKey(fleet.metadata.namespace, fleet.metadata.name);
    if (p.pods.length > 0) {
      if (ctx.redis) {
        const ledger = await this.d.ledgers.get(fleet.metadata.namespace, fleet.metadata.name, ctx.redis);
        for (const id of p.pods) await ledger.undrain(id, `${why}: dropped`);
        this.undrains.set(key, { pods: new Set(p.pods), untilMs: this.now() + UNDRAIN_RETRY_MS, why });
      }
      await this.setDeletionCost(fleet, p.pods, null);
    }
    this.event(fleet, 'Warning', 'ScaleDownDropped', 'Undrain',
      `${why}: dropped it${p.pods.length > 0 ? `; ${p.pods.join(', ')} admit requests again` : ''}`);
    this.drains.delete(key);
  }

  /** Undrain orders again to dropped-drain workers the ledger still shows draining (until UNDRAIN_RETRY_MS). */
  private async resendUndrains(ctx: ScaleContext): Promise<void> {
    const { fleet } = ctx;
    const key = objectKey(fleet.metadata.namespace, fleet.metadata.name);
    const u = this.undrains.get(key);
    if (!u) return;
    if (this.now() >= u.untilMs) { this.undrains.delete(key); return; }
    if (!ctx.ledger || !ctx.redis) return;
    const still = [...u.pods].filter((id) => ctx.ledger!.snapshot.workers.some((w) => w.worker_id === id && w.draining));
    if (still.length === 0) { this.undrains.delete(key); return; }
    const ledger = await this.d.ledgers.get(fleet.metadata.namespace, fleet.metadata.name, ctx.redis);
    for (const id of still) await ledger.undrain(id, `${u.why}: dropped`);
  }

  /** The pod-deletion-cost annotation on pods about to be removed (DRAINED_COST), or taken off again (null); a pod
   *  already gone needs neither. */
  private async setDeletionCost(fleet: Fleet, pods: readonly string[], cost: string | null): Promise<void> {
    for (const name of pods) {
      try {
        await this.d.core.patchNamespacedPod({ namespace: fleet.metadata.namespace, name,
          body: { metadata: { annotations: { [POD_DELETION_COST]: cost } } } }, MERGE_PATCH);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
  }

  async step(ctx: ScaleContext): Promise<number | undefined> {
    const { fleet } = ctx;
    const key = objectKey(fleet.metadata.namespace, fleet.metadata.name);
    const log = this.d.log.child({ fleet: key });
    const a = fleet.spec.autoscaling;
    const current = fleet.spec.workers.replicas;
    let pending = this.drains.get(key);
    const recorded = recordedDrain(fleet);
    await this.resendUndrains(ctx);
    if (!pending && recorded) {
      // begun by an earlier leader (or by this process before a restart): finish it, telling the same workers again
      pending = recorded;
      this.drains.set(key, pending);
      if (pending.from === current) {
        log.info({ from: pending.from, to: pending.target, draining: pending.pods }, 'resuming the scale-down recorded in the Fleet status');
        this.event(fleet, 'Normal', 'ScaleDownResumed', 'Drain',
          `resuming the scale-down from ${pending.from} to ${pending.target} workers recorded in status (draining ${pending.pods.join(', ') || 'no ready worker'})`);
        if (ctx.redis && pending.pods.length > 0) {
          const ledger = await this.d.ledgers.get(fleet.metadata.namespace, fleet.metadata.name, ctx.redis);
          for (const id of pending.pods) await ledger.drain(id, `scale-down from ${pending.from} to ${pending.target}`);
        }
      }
    }
    if (pending && pending.from !== current && current === pending.target) {
      // finished, all but the removal of its record: the leader that lowered the count stopped before that, or a user
      // set the count to the same target. Either way the drained pods are the ones to go: make sure they carry the
      // deletion cost (idempotent), so the ReplicaSet does not remove serving pods instead.
      await this.setDeletionCost(fleet, pending.pods, DRAINED_COST);
      this.drains.delete(key);
      pending = undefined;
    } else if (pending && pending.from !== current) {
      log.warn({ from: pending.from, to: pending.target, now: current, draining: pending.pods },
        'spec.workers.replicas changed during a scale-down: dropping it and taking back its drain orders');
      await this.dropDrain(ctx, pending, `spec.workers.replicas changed to ${current} during the scale-down from ${pending.from} to ${pending.target}`);
      pending = undefined;
    }
    if (!pending && fleet.status?.scaleDown) await this.record(fleet, undefined);
    if (pending) return this.continueDrain(ctx, pending, log);

    let decider = this.deciders.get(key);
    if (!decider) { decider = new ScaleDecider(); this.deciders.set(key, decider); }
    const ready = ctx.workers?.status?.readyReplicas ?? 0;
    const d = decider.decide(a, { current, ready, pressure: ctx.ledger?.pressure }, this.now());
    const labels = { namespace: fleet.metadata.namespace, fleet: fleet.metadata.name };
    this.desiredGauge.set(labels, d.desired);
    if (ctx.ledger) this.pressureGauge.set(labels, ctx.ledger.pressure);
    if (d.desired > current) {
      await this.setReplicas(fleet, d.desired);
      log.info({ from: current, to: d.desired, reason: d.reason }, 'scaling up');
      this.event(fleet, 'Normal', 'ScalingUp', 'Scale', `workers ${current} -> ${d.desired}: ${d.reason}`);
      return undefined;
    }
    if (d.desired < current) return this.beginDrain(ctx, d.desired, log, d.reason);
    return undefined;
  }

  private event(fleet: Fleet, type: 'Normal' | 'Warning', reason: string, action: string, note: string): void {
    this.d.events?.record(EventRecorder.ref(FLEET.kind, fleet.metadata), type, reason, action, note);
  }

  /** Writes (or, with undefined, removes) status.scaleDown through the status subresource (a merge patch: the
   *  reconciler's own status fields are left alone). */
  private async record(fleet: Fleet, p: DrainInProgress | undefined): Promise<void> {
    const scaleDown = p === undefined ? null : { fromReplicas: p.from, targetReplicas: p.target, pods: p.pods,
      startedAt: new Date(p.startedMs).toISOString(), deadline: new Date(p.deadlineMs).toISOString() };
    await this.d.custom.patchNamespacedCustomObjectStatus({ group: GROUP, version: VERSION, namespace: fleet.metadata.namespace,
      plural: FLEET.plural, name: fleet.metadata.name, body: { status: { scaleDown } } }, MERGE_PATCH);
  }

  private async setReplicas(fleet: Fleet, replicas: number): Promise<void> {
    await this.d.custom.patchNamespacedCustomObjectScale({ group: GROUP, version: VERSION, namespace: fleet.metadata.namespace,
      plural: FLEET.plural, name: fleet.metadata.name, body: { spec: { replicas } } }, MERGE_PATCH);
  }

  private async beginDrain(ctx: ScaleContext, target: number, log: Logger, reason: string): Promise<number | undefined> {
    const { fleet } = ctx;
    const ns = fleet.metadata.namespace;
    const key = objectKey(ns, fleet.metadata.name);
    const current = fleet.spec.workers.replicas;
    const pods = (await this.d.core.listNamespacedPod({ namespace: ns, labelSelector: workerSelector(fleet.metadata.name) })).items
      .filter((p) => !p.metadata?.deletionTimestamp);
    // The ReplicaSet removes pods that are not ready before ready ones whatever their deletion cost: those need no
    // drain. Only the rest of the reduction has to come from ready (serving) workers.
    const notReady = pods.filter((p) => !isReady(p)).length;
    const fromReady = Math.max(0, (current - target) - notReady);
    let chosen: string[] = [];
    if (fromReady > 0) {
      if (!ctx.ledger || !ctx.redis) { log.info('scale-down needs the ledger to drain workers; holding'); return undefined; }
      const readyPods = new Set(pods.filter(isReady).map((p) => p.metadata!.name!));
      const candidates = drainOrder(ctx.ledger.snapshot.workers.filter((w) => readyPods.has(w.worker_id) && !w.draining));
      // a ready pod missing from the ledger (no heartbeat yet) carries no work: it may go first
      const unlisted = [...readyPods].filter((p) => !ctx.ledger!.snapshot.workers.some((w) => w.worker_id === p)).sort();
      chosen = [...unlisted, ...candidates.map((w) => w.worker_id)].slice(0, fromReady);
    }
    const now = this.now();
    for (const id of chosen) this.undrains.get(key)?.pods.delete(id); // drained again: no more undrain orders
    const pending: DrainInProgress = { from: current, target, pods: chosen, startedMs: now,
      deadlineMs: now + fleet.spec.autoscaling.drainTimeoutSeconds * 1000 };
    // recorded before the drain orders go out: a leader that dies between the two leaves a record its successor
    // finishes (sending the orders again), never drained workers nobody remembers
    await this.record(fleet, pending);
    this.drains.set(key, pending);
    if (chosen.length > 0) {
      const ledger = await this.d.ledgers.get(ns, fleet.metadata.name, ctx.redis!);
      for (const id of chosen) await ledger.drain(id, `scale-down from ${current} to ${target}`);
      log.info({ from: current, to: target, draining: chosen, reason }, 'scale-down: draining workers first');
    }
    this.event(fleet, 'Normal', 'DrainingWorkers', 'Drain', `scale-down ${current} -> ${target} (${reason}): `
      + (chosen.length > 0 ? `draining ${chosen.join(', ')} first` : 'no ready worker needs a drain'));
    return this.continueDrain(ctx, pending, log);
  }

  private async continueDrain(ctx: ScaleContext, p: DrainInProgress, log: Logger): Promise<number | undefined> {
    const { fleet } = ctx;
    const key = objectKey(fleet.metadata.namespace, fleet.metadata.name);
    const busy = p.pods.filter((id) => {
      const w = ctx.ledger?.snapshot.workers.find((x) => x.worker_id === id);
      // gone from the ledger (exited) counts as idle; an unreadable ledger counts as busy until the deadline
      return ctx.ledger === undefined ? true : w !== undefined && (w.running > 0 || w.waiting > 0);
    });
    const timedOut = this.now() >= p.deadlineMs;
    if (busy.length > 0 && !timedOut) return this.d.drainPollMs ?? 1000;
    if (busy.length > 0) {
      log.warn({ busy }, 'drain timeout passed with work still running; scaling down anyway');
      this.event(fleet, 'Warning', 'DrainTimeout', 'Scale', `drainTimeoutSeconds passed with work still running on ${busy.join(', ')}; scaling down anyway`);
    }
    await this.setDeletionCost(fleet, p.pods, DRAINED_COST);
    if (fleet.spec.workers.replicas !== p.target) {
      await this.setReplicas(fleet, p.target);
      log.info({ from: fleet.spec.workers.replicas, to: p.target, drained: p.pods, drainMs: this.now() - p.startedMs }, 'scaled down');
      this.event(fleet, 'Normal', 'ScaledDown', 'Scale', `workers ${fleet.spec.workers.replicas} -> ${p.target}`
        + (p.pods.length > 0 ? ` after draining ${p.pods.join(', ')} (${((this.now() - p.startedMs) / 1000).toFixed(1)} s)` : ''));
    }
    // the record goes last: a leader that dies before this leaves it to a successor, which finds the count already
    // lowered (spec.workers.replicas != from) and only removes the record
    await this.record(fleet, undefined);
    this.drains.delete(key);
    return undefined;
  }
}
