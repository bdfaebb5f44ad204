// The operator's runtime: shared informers (one per watched resource), one work queue per controller fed by
// informer events, periodic resync, and an orderly stop. Controllers are added by registering a reconciler and
// the events that map onto its keys; the KVBudget controller is wired here, and so are later ones (the Fleet
// reconciler, issue 17; the autoscaler, issue 18).
//
// Leadership: informers run on every replica (warm caches); controllers run only between startControllers() and
// stopControllers(), so leader election (issue 18) wraps exactly those two calls.
import os from 'node:os';
import { CoreV1Api, CustomObjectsApi, EventsV1Api, type KubeConfig, type KubernetesObject, type V1Deployment } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { FLEET, GROUP, KVBUDGET, VERSION, type Fleet, type KVBudget } from './api/v1alpha1.ts';
import type { EngineValidate } from './budget.ts';
import { Applier } from './apply.ts';
import { Autoscaler } from './autoscaler.ts';
import { FleetReconciler } from './controllers/fleet.ts';
import { FIELD_MANAGER } from './controllers/fleet-objects.ts';
import { budgetsAffectedByFleet, KVBudgetReconciler, usesBudget } from './controllers/kvbudget.ts';
import { LedgerPool } from './ledgers.ts';
import { EventRecorder } from './runtime/events.ts';
import { ResourceInformer } from './runtime/informer.ts';
import { errorText, objectKey, type ResourceRef } from './runtime/kube.ts';
import { OperatorMetrics } from './runtime/metrics.ts';
import { WorkQueue } from './runtime/queue.ts';

export const FLEET_RESOURCE: ResourceRef = { group: GROUP, version: VERSION, kind: FLEET.kind, plural: FLEET.plural };
export const KVBUDGET_RESOURCE: ResourceRef = { group: GROUP, version: VERSION, kind: KVBUDGET.kind, plural: KVBUDGET.plural };
export const DEPLOYMENT_RESOURCE: ResourceRef = { group: 'apps', version: 'v1', kind: 'Deployment', plural: 'deployments' };
/** The label every child the operator creates carries: its informers watch only these. */
export const MANAGED_SELECTOR = `app.kubernetes.io/managed-by=${FIELD_MANAGER}`;
/** The image of a Fleet's workers and routers when neither the Fleet nor the operator's options name one. */
export const FALLBACK_IMAGE = 'ghcr.io/kvfleet/kvfleet:latest';
export const DEFAULT_REDIS_IMAGE = 'redis:7.4-alpine';
/** reportingController of the operator's Kubernetes Events */
export const EVENT_CONTROLLER = 'kvfleet.io/operator';

/** A controller's reconcile: idempotent; throws to be retried with backoff; a missing object is not an error.
 *  It may ask to run again after a delay (state outside Kubernetes, such as the ledger, changes without events). */
export interface Reconciler {
  readonly name: string;
  reconcile(key: string): Promise<void | { requeueAfterMs?: number }>;
}

export interface OperatorOptions {
  kc: KubeConfig;
  /** watch one namespace; undefined: all */
  namespace?: string;
  log: Logger;
  metrics?: OperatorMetrics;
  /** the engine's budget check (worker/compress-native.ts validateBudget) */
  validate: EngineValidate;
  /** workers per controller queue (default 2) */
  concurrency?: number;
  /** every object is reconciled again this often, whatever happened (default 5 min; 0 = never) */
  resyncMs?: number;
  /** informer restart delays after errors (defaults 200 ms → 30 s) */
  informerMinDelayMs?: number;
  informerMaxDelayMs?: number;
  /** reconcile retry delays after failures (defaults 100 ms → 60 s) */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** image of workers and routers of Fleets that name none (KVFLEET_IMAGE) */
  defaultImage?: string;
  /** image of a Fleet's managed Redis */
  redisImage?: string;
  /** hostPath:// model sources must lie under one of these directories (--allowed-host-paths); absent: any */
  allowedHostPaths?: readonly string[];
  /** how long a first connection to a fleet's Redis may take (default 5 s) */
  ledgerConnectTimeoutMs?: number;
  /** how often each Fleet's status is refreshed from its ledger (default 10 s) */
  fleetStatusIntervalMs?: number;
  /** who writes this operator's Kubernetes Events (reportingInstance; default $POD_NAME, else the host name) */
  instance?: string;
  /** the autoscaler's options (issue 18); false turns it off (then no replica count is ever written) */
  autoscaling?: { drainPollMs?: number; now?: () => number } | false;
}

interface ControllerEntry {
  reconciler: Reconciler;
  queue: WorkQueue | undefined;
  running: Promise<void> | undefined;
  resync: () => string[];
}

export class Operator {
  readonly log: Logger;
  readonly metrics: OperatorMetrics;
  readonly ledgers: LedgerPool;
  readonly budgets: ResourceInformer<KVBudget>;
  readonly fleets: ResourceInformer<Fleet>;
  /** the Deployments the operator manages (worker, router, managed Redis): their status changes reach the Fleet */
  readonly deployments: ResourceInformer<V1Deployment>;
  readonly applier: Applier;
  /** Kubernetes Events about Fleets and KVBudgets (`kubectl describe`) */
  readonly events: EventRecorder;
  private readonly opts: OperatorOptions;
  private readonly controllers = new Map<string, ControllerEntry>();
  private resyncTimer: NodeJS.Timeout | undefined;
  private autoscaler: Autoscaler | undefined;
  private informersStarted = false;

  constructor(opts: OperatorOptions) {
    this.opts = opts;
    this.log = opts.log;
    this.metrics = opts.metrics ?? new OperatorMetrics();
    this.ledgers = new LedgerPool({ log: opts.log.child({ part: 'ledgers' }), connectTimeoutMs: opts.ledgerConnectTimeoutMs });
    this.budgets = this.informer<KVBudget>(KVBUDGET_RESOURCE);
    this.fleets = this.informer<Fleet>(FLEET_RESOURCE);
    this.deployments = this.informer<V1Deployment>(DEPLOYMENT_RESOURCE, MANAGED_SELECTOR);
    this.applier = new Applier(opts.kc);
    this.events = new EventRecorder({ api: opts.kc.makeApiClient(EventsV1Api), controller: EVENT_CONTROLLER,
      instance: opts.instance ?? process.env.POD_NAME ?? os.hostname(), log: this.log.child({ part: 'events' }) });
    this.metrics.queueDepths = () => [...this.controllers].map(([name, c]) => [name, c.queue?.length ?? 0]);
    // a deleted fleet's ledger connection is closed (a recreated fleet connects again on its first reconcile)
    this.fleets.on('delete', (f) => { void this.ledgers.drop(f.metadata.namespace, f.metadata.name); });
    this.setupKVBudgetController();
    this.setupFleetController();
  }

  /** A shared informer for a resource, in the operator's namespace scope. */
  informer<T extends KubernetesObject>(ref: ResourceRef, labelSelector?: string): ResourceInformer<T> {
    return new ResourceInformer<T>(this.opts.kc, ref, {
      namespace: this.opts.namespace, labelSelector, log: this.log, minDelayMs: this.opts.informerMinDelayMs, maxDelayMs: this.opts.informerMaxDelayMs,
      onError: () => this.metrics.informerRestarts.inc({ resource: ref.plural }),
    });
  }

  private setupKVBudgetController(): void {
    const reconciler = new KVBudgetReconciler({
      custom: this.opts.kc.makeApiClient(CustomObjectsApi), core: this.opts.kc.makeApiClient(CoreV1Api),
      fleets: this.fleets, ledgers: this.ledgers, validate: this.opts.validate, events: this.events,
      log: this.log.child({ controller: 'kvbudget' }), metrics: this.metrics,
    });
    const enqueue = this.addController(reconciler, () => this.budgets.list().map(keyOf));
    const onBudget = (b: KVBudget) => enqueue(keyOf(b));
    this.budgets.on('add', onBudget);
    this.budgets.on('update', onBudget);
    this.budgets.on('delete', onBudget);
    const onFleet = (f: Fleet) => {
      for (const n of budgetsAffectedByFleet(f, this.budgets.list(f.metadata.namespace))) enqueue(objectKey(f.metadata.namespace, n));
    };
    this.fleets.on('add', onFleet);
    this.fleets.on('update', onFleet);
    this.fleets.on('delete', onFleet);
  }

  private setupFleetController(): void {
    const reconciler = new FleetReconciler({
      applier: this.applier, custom: this.opts.kc.makeApiClient(CustomObjectsApi), core: this.opts.kc.makeApiClient(CoreV1Api),
      budgets: this.budgets, ledgers: this.ledgers,
      render: { defaultImage: this.opts.defaultImage ?? FALLBACK_IMAGE, redisImage: this.opts.redisImage ?? DEFAULT_REDIS_IMAGE,
        ...(this.opts.allowedHostPaths ? { allowedHostPaths: this.opts.allowedHostPaths } : {}) },
      statusIntervalMs: this.opts.fleetStatusIntervalMs, events: this.events,
      autoscaler: this.autoscaler = this.opts.autoscaling === false ? undefined : new Autoscaler({
        custom: this.opts.kc.makeApiClient(CustomObjectsApi), core: this.opts.kc.makeApiClient(CoreV1Api), ledgers: this.ledgers,
        events: this.events, log: this.log.child({ part: 'autoscaler' }), metrics: this.metrics, ...this.opts.autoscaling }),
      log: this.log.child({ controller: 'fleet' }), metrics: this.metrics,
    });
    const enqueue = this.addController(reconciler, () => this.fleets.list().map(keyOf));
    this.enqueueFleet = enqueue;
    const onFleet = (f: Fleet) => enqueue(keyOf(f));
    this.fleets.on('add', onFleet);
    this.fleets.on('update', onFleet);
    this.fleets.on('delete', onFleet);
    // a child Deployment changed (rollout progress, readiness, an edit or deletion by hand): its Fleet again
    const onChild = (d: V1Deployment) => {
      for (const r of d.metadata?.ownerReferences ?? []) {
        if (r.controller && r.kind === FLEET.kind && r.apiVersion.startsWith(`${GROUP}/`)) enqueue(objectKey(d.metadata?.namespace ?? '', r.name));
      }
    };
    this.deployments.on('add', onChild);
    this.deployments.on('update', onChild);
    this.deployments.on('delete', onChild);
    // BudgetResolved follows the KVBudget (created, accepted, deleted)
    const onBudget = (b: KVBudget) => {
      for (const f of this.fleets.list(b.metadata.namespace)) if (usesBudget(f, b.metadata.name)) enqueue(keyOf(f));
    };
    this.budgets.on('add', onBudget);
    this.budgets.on('update', onBudget);
    this.budgets.on('delete', onBudget);
  }

  /** Queues a Fleet for the Fleet controller (dropped while controllers are stopped). */
  enqueueFleet: (key: string) => void = () => undefined;

  /**
   * Registers a controller; returns the function that queues a key for it. Keys queued while controllers are
   * stopped are dropped: startControllers() queues every object again through `resync`.
   */
  addController(reconciler: Reconciler, resync: () => string[]): (key: string) => void {
    if (this.controllers.has(reconciler.name)) throw new Error(`bug: controller ${reconciler.name} registered twice`);
    const entry: ControllerEntry = { reconciler, queue: undefined, running: undefined, resync };
    this.controllers.set(reconciler.name, entry);
    return (key) => entry.queue?.add(key);
  }

  /** Queues a key for a controller after a delay. */
  private requeue(name: string, key: string, ms: number): void {
    this.controllers.get(name)?.queue?.addAfter(key, ms);
  }

  reconciler(name: string): Reconciler {
    const e = this.controllers.get(name);
    if (!e) throw new Error(`bug: no controller ${name}`);
    return e.reconciler;
  }

  /** Starts every informer and resolves once each has listed (the caches are complete). */
  async startInformers(): Promise<void> {
    this.informersStarted = true;
    this.budgets.start();
    this.fleets.start();
    this.deployments.start();
    await Promise.all([this.budgets.waitForSync(), this.fleets.waitForSync(), this.deployments.waitForSync()]);
    this.log.info('informers synced');
  }

  get informersSynced(): boolean { return this.budgets.hasSynced && this.fleets.hasSynced && this.deployments.hasSynced; }
  get controllersRunning(): boolean { return [...this.controllers.values()].some((c) => c.queue !== undefined); }

  /** Starts the controllers' workers and queues every cached object once. Call after startInformers(). */
  startControllers(): void {
    if (!this.informersStarted) throw new Error('bug: startControllers() before startInformers()');
    const concurrency = this.opts.concurrency ?? 2;
    for (const [name, c] of this.controllers) {
      if (c.queue) continue;
      const queue = new WorkQueue({ minRetryMs: this.opts.retryMinMs, maxRetryMs: this.opts.retryMaxMs });
      c.queue = queue;
      const log = this.log.child({ controller: name });
      c.running = queue.run((key) => this.timed(c.reconciler, key), concurrency, (key, err) => {
        this.metrics.reconcileErrors.inc({ controller: name });
        log.warn({ key, err: errorText(err) }, 'reconcile failed; retrying with backoff');
      });
      for (const key of c.resync()) queue.add(key);
    }
    const resyncMs = this.opts.resyncMs ?? 300_000;
    if (resyncMs > 0 && this.resyncTimer === undefined) {
      this.resyncTimer = setInterval(() => {
        for (const c of this.controllers.values()) for (const key of c.resync()) c.queue?.add(key);
      }, resyncMs);
      this.resyncTimer.unref();
    }
    this.log.info({ controllers: [...this.controllers.keys()], concurrency }, 'controllers started');
  }

  private async timed(r: Reconciler, key: string): Promise<void> {
    const end = this.metrics.reconcileDuration.startTimer({ controller: r.name });
    try {
      const result = await r.reconcile(key);
      this.metrics.reconciles.inc({ controller: r.name, result: 'success' });
      if (result?.requeueAfterMs !== undefined) this.requeue(r.name, key, result.requeueAfterMs);
    } catch (err) {
      this.metrics.reconciles.inc({ controller: r.name, result: 'error' });
      throw err;
    } finally {
      end();
    }
  }

  /** Stops handing out work and waits for reconciles in flight to finish. */
  async stopControllers(): Promise<void> {
    clearInterval(this.resyncTimer);
    this.resyncTimer = undefined;
    const running: Promise<void>[] = [];
    for (const c of this.controllers.values()) {
      c.queue?.shutdown();
      if (c.running) running.push(c.running);
      c.queue = undefined;
      c.running = undefined;
    }
    await Promise.all(running);
    // What the autoscaler remembers (drains in flight, stabilisation windows, undrain retries) was true while this
    // replica led; another leader may have finished or replaced those drains since. Leading again, it starts from
    // the Fleets' status (status.scaleDown), which the leader of the moment keeps.
    this.autoscaler?.reset();
  }

  async start(): Promise<void> {
    await this.startInformers();
    this.startControllers();
  }

  /** Graceful stop: controllers finish their current reconcile, then informers and ledger connections close. */
  async stop(): Promise<void> {
    await this.stopControllers();
    await this.events.flush(5000);
    await Promise.all([this.budgets.stop(), this.fleets.stop(), this.deployments.stop()]);
    await this.ledgers.close();
    this.log.info('operator stopped');
  }
}

const keyOf = (o: KubernetesObject): string => objectKey(o.metadata?.namespace ?? '', o.metadata?.name ?? '');
