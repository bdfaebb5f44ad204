// A list+watch cache of one resource (client-node's informer) that keeps itself running. client-node relists by
// itself after a 410 Gone and rewatches after a clean end of a watch, but after any other error (connection
// refused or reset, a 5xx, an API server restart) it reports `error` and stops for good; here every such stop is
// followed by a new start after an exponential delay (min → max, reset once a start lists successfully).
import {
  KubernetesObjectApi, makeInformer, type Informer, type KubeConfig, type KubernetesObject, type ObjectCache,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { apiVersionOf, collectionPath, errorText, type ResourceRef } from './kube.ts';

export interface ResourceInformerOptions {
  /** watch one namespace; undefined watches all */
  namespace?: string;
  log: Logger;
  /** first restart delay after an error (default 200 ms) */
  minDelayMs?: number;
  /** the longest restart delay (default 30 s) */
  maxDelayMs?: number;
  /** called on every error that stopped the informer (for metrics) */
  onError?: (err: unknown) => void;
  /** list and watch only objects with these labels (e.g. the children the operator manages) */
  labelSelector?: string;
}

export type ObjectHandler<T> = (obj: T) => void;

export class ResourceInformer<T extends KubernetesObject> {
  readonly ref: ResourceRef;
  readonly namespace: string | undefined;
  private readonly informer: Informer<T> & ObjectCache<T>;
  private readonly log: Logger;
  private readonly minDelayMs: number;
  private readonly maxDelayMs: number;
  private delay: number;
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;
  private synced = false;
  /** bumped by every error: a start whose list failed must not mark the cache synced */
  private errors = 0;
  private readonly syncWaiters: (() => void)[] = [];
  private readonly onError: ((err: unknown) => void) | undefined;

  constructor(kc: KubeConfig, ref: ResourceRef, opts: ResourceInformerOptions) {
    this.ref = ref;
    this.namespace = opts.namespace;
    this.log = opts.log.child({ resource: `${ref.plural}${ref.group ? `.${ref.group}` : ''}` });
    this.minDelayMs = opts.minDelayMs ?? 200;
    this.maxDelayMs = opts.maxDelayMs ?? 30_000;
    this.delay = this.minDelayMs;
    const objects = KubernetesObjectApi.makeApiClient(kc);
    this.informer = makeInformer<T>(kc, collectionPath(ref, opts.namespace),
      () => objects.list<T>(apiVersionOf(ref), ref.kind, opts.namespace, undefined, undefined, undefined, undefined, opts.labelSelector),
      opts.labelSelector);
    this.onError = opts.onError;
    this.informer.on('error', (err: unknown) => this.restartAfter(err));
  }

  private restartAfter(err: unknown): void {
    this.errors++;
    this.onError?.(err);
    if (this.stopped) return;
    this.log.warn({ err: errorText(err), retryInMs: this.delay }, 'informer stopped; restarting');
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.begin(), this.delay);
    this.delay = Math.min(this.delay * 2, this.maxDelayMs);
  }

  on(event: 'add' | 'update' | 'delete', handler: ObjectHandler<T>): void {
    this.informer.on(event, handler);
  }

  /** True once a list has succeeded (the cache holds every object as of then, and stays current). */
  get hasSynced(): boolean { return this.synced; }

  get(name: string, namespace: string): T | undefined { return this.informer.get(name, namespace); }

  /** Cached objects of one namespace, or of all. */
  list(namespace?: string): readonly T[] { return this.informer.list(namespace); }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.begin();
  }

  private begin(): void {
    if (this.stopped) return;
    const before = this.errors;
    this.informer.start().then(() => {
      if (this.errors !== before || this.stopped) return;
      this.delay = this.minDelayMs;
      if (!this.synced) {
        this.synced = true;
        this.log.debug('informer synced');
        for (const w of this.syncWaiters.splice(0)) w();
      }
    }, (err: unknown) => {
      // client-node reports failures through 'error'; a rejection here is unexpected but handled the same way
      this.restartAfter(err);
    });
  }

  /** Resolves once the first list has succeeded. */
  waitForSync(): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise((r) => this.syncWaiters.push(r));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.informer.stop();
    for (const w of this.syncWaiters.splice(0)) w();
  }
}
