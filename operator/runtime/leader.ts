// Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it:
// - a candidate takes the Lease when it is free (no holder) or when its record has not changed for
//   leaseDurationSeconds as observed on this candidate's own clock (never comparing clocks across machines);
// - the leader renews every renewMs (about a third of the lease duration); every write carries the
//   resourceVersion it read, so of two candidates racing only one succeeds and the other gets 409 Conflict;
// - a leader whose renewal is refused (409: someone else wrote the Lease) or has not succeeded for renewDeadlineMs
//   (less than the lease duration) stops leading at once, before any other candidate may take over. The deadline is
//   a local timer, not a check after a failed call: a call that hangs (a black-holed connection) cannot keep a
//   leader leading, and every Lease call is abandoned after its own time limit so the loop goes on;
// - release() (SIGTERM) stops leading and writes the Lease free, so a standby takes over without waiting.
// onStart runs when leadership is gained; onStop when it is lost or released, and is awaited before the Lease
// is released, so the controllers of two replicas never run at the same time.
import type { CoordinationV1Api, V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { errorText, httpCode, isNotFound } from './kube.ts';

export interface LeaderElectorOptions {
  api: Pick<CoordinationV1Api, 'readNamespacedLease' | 'createNamespacedLease' | 'replaceNamespacedLease'>;
  namespace: string;
  name: string;
  identity: string;
  /** default 15 s */
  leaseDurationMs?: number;
  /** default leaseDuration / 3 */
  renewMs?: number;
  /** default leaseDuration × 2/3 */
  renewDeadlineMs?: number;
  /** how often a standby looks at the Lease (default renewMs) */
  retryMs?: number;
  onStart: () => void | Promise<void>;
  onStop: () => void | Promise<void>;
  log: Logger;
  now?: () => number;
}

export class LeaderElector {
  private readonly o: Required<Omit<LeaderElectorOptions, 'now'>> & { now: () => number };
  private leading = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private lastRenewMs = 0;
  /** the Lease record as last read, and when (local clock) it last changed */
  private observed: { key: string; atMs: number } | undefined;
  private loop: Promise<void> = Promise.resolve();
  /** fires renewDeadlineMs after the last successful renewal (or the gain) while leading */
  private deadline: NodeJS.Timeout | undefined;
  private transition: Promise<void> = Promise.resolve();

  constructor(opts: LeaderElectorOptions) {
    const duration = opts.leaseDurationMs ?? 15_000;
    const renew = opts.renewMs ?? Math.max(100, Math.floor(duration / 3));
    this.o = { ...opts, leaseDurationMs: duration, renewMs: renew, renewDeadlineMs: opts.renewDeadlineMs ?? Math.floor(duration * 2 / 3),
      retryMs: opts.retryMs ?? renew, now: opts.now ?? Date.now };
  }

  get isLeader(): boolean { return this.leading; }

  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => { this.loop = this.tick(); }, ms);
  }

  /** `p`, or a rejection once `ms` have passed (the call itself is abandoned, its late answer ignored) */
  private bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    let t: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what}: no answer within ${Math.round(ms)} ms`)), Math.max(1, ms));
    });
    return Promise.race([p, timeout]).finally(() => clearTimeout(t));
  }

  /** time left for a Lease call: a leader's calls must end before its renew deadline; a standby's within a renewal period */
  private callBudgetMs(): number {
    return this.leading ? this.lastRenewMs + this.o.renewDeadlineMs - this.o.now() : this.o.renewDeadlineMs;
  }

  private armDeadline(): void {
    clearTimeout(this.deadline);
    this.deadline = setTimeout(() => {
      if (this.leading && this.o.now() - this.lastRenewMs >= this.o.renewDeadlineMs) {
        void this.lose('renew deadline passed').catch((err: unknown) => this.o.log.error({ err: errorText(err) }, 'leader election: onStop failed'));
      }
    }, this.o.renewDeadlineMs);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    try {
      if (this.leading) await this.renew(); else await this.tryAcquire();
    } catch (err) {
      this.o.log.warn({ err: errorText(err) }, 'leader election: Lease call failed');
      if (this.leading && this.o.now() - this.lastRenewMs > this.o.renewDeadlineMs) await this.lose('renew deadline passed');
    }
    this.schedule(this.leading ? this.o.renewMs : this.o.retryMs);
  }

  private spec(prev: V1Lease['spec'] | undefined, acquiring: boolean): NonNullable<V1Lease['spec']> {
    const now = new Date(this.o.now());
    return {
      holderIdentity: this.o.identity,
      leaseDurationSeconds: Math.max(1, Math.ceil(this.o.leaseDurationMs / 1000)),
      acquireTime: acquiring ? now : prev?.acquireTime ?? now,
      renewTime: now,
      leaseTransitions: (prev?.leaseTransitions ?? 0) + (acquiring && prev?.holderIdentity !== this.o.identity ? 1 : 0),
    };
  }

  private async tryAcquire(): Promise<void> {
    const { api, namespace, name } = this.o;
    let lease: V1Lease;
    try {
      lease = await this.bounded(api.readNamespacedLease({ name, namespace }), this.callBudgetMs(), 'read Lease');
    } catch (err) {
      if (!isNotFound(err)) throw err;
      try {
        await this.bounded(api.createNamespacedLease({ namespace, body: { metadata: { name, namespace }, spec: this.spec(undefined, true) } }),
          this.callBudgetMs(), 'create Lease');
      } catch (e) {
        if (httpCode(e) === 409) return; // another candidate created it first
        throw e;
      }
      await this.gain();
      return;
    }
    const s = lease.spec ?? {};
    const key = `${s.holderIdentity ?? ''}|${String(s.renewTime ?? '')}|${lease.metadata?.resourceVersion ?? ''}`;
    const now = this.o.now();
    if (this.observed?.key !== key) this.observed = { key, atMs: now };
    const held = s.holderIdentity !== undefined && s.holderIdentity !== '' && s.holderIdentity !== this.o.identity;
    const durationMs = (s.leaseDurationSeconds ?? Math.ceil(this.o.leaseDurationMs / 1000)) * 1000;
    if (held && now - this.observed.atMs < durationMs) return; // the holder is alive as far as we can see
    try {
      await this.bounded(api.replaceNamespacedLease({ name, namespace, body: { ...lease, spec: this.spec(s, true) } }), this.callBudgetMs(), 'take Lease');
    } catch (err) {
      if (httpCode(err) === 409) return; // someone else wrote it since we read it
      throw err;
    }
    await this.gain();
  }

  private async renew(): Promise<void> {
    const { api, namespace, name } = this.o;
    const lease = await this.bounded(api.readNamespacedLease({ name, namespace }), this.callBudgetMs(), 'read Lease');
    if (!this.leading) return;   // the deadline passed while the read was in flight
    if (lease.spec?.holderIdentity !== this.o.identity) { await this.lose(`the Lease is held by ${lease.spec?.holderIdentity || 'nobody'}`); return; }
    try {
      await this.bounded(api.replaceNamespacedLease({ name, namespace, body: { ...lease, spec: this.spec(lease.spec, false) } }),
        this.callBudgetMs(), 'renew Lease');
      if (!this.leading) return;
      this.lastRenewMs = this.o.now();
      this.armDeadline();
    } catch (err) {
      if (httpCode(err) === 409) { await this.lose('renewal refused (409 Conflict)'); return; }
      throw err;
    }
  }

  private async gain(): Promise<void> {
    this.leading = true;
    this.lastRenewMs = this.o.now();
    this.armDeadline();
    this.o.log.info({ lease: `${this.o.namespace}/${this.o.name}`, identity: this.o.identity }, 'leader election: leading');
    this.transition = this.transition.then(() => this.o.onStart());
    await this.transition;
  }

  private async lose(why: string): Promise<void> {
    if (!this.leading) return;
    this.leading = false;
    clearTimeout(this.deadline);
    this.o.log.warn({ why }, 'leader election: leadership lost; controllers stop');
    this.transition = this.transition.then(() => this.o.onStop());
    await this.transition;
  }

  /** Stops campaigning; when leading, stops the controllers (onStop, awaited) and then frees the Lease. */
  async release(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.loop;
    clearTimeout(this.deadline);
    if (!this.leading) return;
    this.leading = false;
    this.transition = this.transition.then(() => this.o.onStop());
    await this.transition;
    const { api, namespace, name } = this.o;
    try {
      const lease = await this.bounded(api.readNamespacedLease({ name, namespace }), this.o.renewDeadlineMs, 'read Lease');
      if (lease.spec?.holderIdentity !== this.o.identity) return;
      await this.bounded(api.replaceNamespacedLease({ name, namespace, body: { ...lease, spec: { ...lease.spec, holderIdentity: '',
        leaseDurationSeconds: 1, renewTime: new Date(this.o.now()) } } }), this.o.renewDeadlineMs, 'release Lease');
      this.o.log.info('leader election: Lease released');
    } catch (err) {
      this.o.log.warn({ err: errorText(err) }, 'leader election: could not release the Lease; it expires on its own');
    }
  }
}
