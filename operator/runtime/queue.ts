// A work queue of object keys (namespace/name), as controller-runtime's: a key waiting in the queue is held once
// however often it is added; a key is handled by one worker at a time (added again while in flight, it runs once
// more after the current run); failures come back after a per-key exponential delay, reset by success.

export interface WorkQueueOptions {
  /** first retry delay after a failure (default 100 ms); doubles per consecutive failure of the key */
  minRetryMs?: number;
  /** the longest retry delay (default 60 s) */
  maxRetryMs?: number;
}

export type Handler = (key: string) => Promise<void>;

export class WorkQueue {
  private readonly minRetryMs: number;
  private readonly maxRetryMs: number;
  /** keys waiting, in order; `queued` mirrors it for de-duplication */
  private readonly order: string[] = [];
  private readonly queued = new Set<string>();
  /** keys being handled now; a key added meanwhile goes to `dirty` and is queued when its run ends */
  private readonly active = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, { timer: NodeJS.Timeout; due: number }>();
  private readonly waiters: (() => void)[] = [];
  private closed = false;

  constructor(opts: WorkQueueOptions = {}) {
    this.minRetryMs = opts.minRetryMs ?? 100;
    this.maxRetryMs = opts.maxRetryMs ?? 60_000;
  }

  /** Keys waiting to run (not counting those in flight or delayed). */
  get length(): number { return this.order.length; }

  add(key: string): void {
    if (this.closed) return;
    if (this.active.has(key)) { this.dirty.add(key); return; }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.order.push(key);
    this.waiters.shift()?.();
  }

  /** Adds the key after `ms`; an earlier pending delay for the key wins (it runs no later than asked). */
  addAfter(key: string, ms: number): void {
    if (this.closed) return;
    if (ms <= 0) { this.add(key); return; }
    const due = Date.now() + ms;
    const pending = this.timers.get(key);
    if (pending && pending.due <= due) return;
    if (pending) clearTimeout(pending.timer);
    const timer = setTimeout(() => { this.timers.delete(key); this.add(key); }, ms);
    timer.unref();
    this.timers.set(key, { timer, due });
  }

  /** Adds the key after its backoff delay, which doubles with each consecutive failure. */
  addRateLimited(key: string): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const delay = Math.min(this.maxRetryMs, this.minRetryMs * 2 ** Math.min(n, 30));
    this.addAfter(key, delay);
    return delay;
  }

  /** Forgets the key's failures (after a success). */
  forget(key: string): void { this.failures.delete(key); }

  private async next(): Promise<string | undefined> {
    while (!this.closed && this.order.length === 0) await new Promise<void>((r) => this.waiters.push(r));
    if (this.closed) return undefined;
    const key = this.order.shift()!;
    this.queued.delete(key);
    this.active.add(key);
    return key;
  }

  private done(key: string): void {
    this.active.delete(key);
    if (this.dirty.delete(key)) this.add(key);
  }

  /**
   * Runs `handler` on `concurrency` workers until shutdown(). The handler must not throw for expected failures;
   * a throw is requeued with backoff and reported to `onError`.
   */
  run(handler: Handler, concurrency: number, onError: (key: string, err: unknown) => void): Promise<void> {
    const worker = async (): Promise<void> => {
      for (;;) {
        const key = await this.next();
        if (key === undefined) return;
        try {
          await handler(key);
          this.forget(key);
        } catch (err) {
          onError(key, err);
          if (!this.closed) this.addRateLimited(key);
        } finally {
          this.done(key);
        }
      }
    };
    return Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker)).then(() => undefined);
  }

  /** Stops handing out keys; runs in flight finish (await run()'s promise for them). Pending delays are dropped. */
  shutdown(): void {
    this.closed = true;
    for (const t of this.timers.values()) clearTimeout(t.timer);
    this.timers.clear();
    for (const w of this.waiters.splice(0)) w();
  }
}
