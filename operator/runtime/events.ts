// Kubernetes Events about the objects the operator manages (what `kubectl describe fleet` and `kubectl get events`
// show): events.k8s.io/v1 Events, as client-go's EventRecorder writes them.
//
// - Never in a reconcile's way: record() returns at once; the write happens in the background, one at a time, and a
//   failure is logged, never thrown (an Event is a courtesy, the object's status is the record).
// - Repeats are folded: the same (object, type, reason, note) within `repeatWindowMs` (default 10 minutes) writes
//   nothing new (client-go would bump a series count; the first Event already says it).
// - eventTime is a MicroTime: RFC 3339 with exactly six fractional digits, or the API server refuses the Event
//   (client-node would write a Date with three).
// - A bounded backlog (default 100): past it the oldest pending Event is dropped, counted in the log.
import type { EventsV1Api } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { GROUP, VERSION } from '../api/v1alpha1.ts';
import { errorText } from './kube.ts';

export type EventType = 'Normal' | 'Warning';

/** The object an Event is about. */
export interface Regarding {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; uid?: string };
}

export interface EventRecorderOptions {
  api: Pick<EventsV1Api, 'createNamespacedEvent'>;
  /** reportingController, e.g. kvfleet.io/operator */
  controller: string;
  /** reportingInstance: this process (its pod name) */
  instance: string;
  log: Logger;
  repeatWindowMs?: number;
  maxBacklog?: number;
  now?: () => number;
}

const NOTE_LIMIT = 1024;

/** A MicroTime string: 2026-12-05T17:20:45.123000Z. */
export function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

export class EventRecorder {
  private readonly o: EventRecorderOptions;
  private readonly seen = new Map<string, number>();
  private readonly backlog: { key: string; write: () => Promise<void> }[] = [];
  private running: Promise<void> | undefined;
  private dropped = 0;

  constructor(opts: EventRecorderOptions) { this.o = opts; }

  private now(): number { return this.o.now?.() ?? Date.now(); }

  /**
   * Records that `action` happened to obj, with `reason` (UpperCamelCase, what kubectl shows in its Reason column) and
   * a note for people. Returns at once.
   */
  record(obj: Regarding, type: EventType, reason: string, action: string, note: string): void {
    const { name, namespace, uid } = obj.metadata;
    const now = this.now();
    const window = this.o.repeatWindowMs ?? 600_000;
    const key = `${uid ?? `${namespace}/${name}`}\u0000${type}\u0000${reason}\u0000${note}`;
    const last = this.seen.get(key);
    if (last !== undefined && now - last < window) return;
    this.seen.set(key, now);
    if (this.seen.size > 1000) for (const [k, t] of this.seen) if (now - t >= window) this.seen.delete(k);
    const body = {
      apiVersion: 'events.k8s.io/v1', kind: 'Event',
      metadata: { generateName: `${name}.`, namespace },
      eventTime: microTime(now),
      type, reason, action,
      note: Buffer.byteLength(note) > NOTE_LIMIT ? `${Buffer.from(note).subarray(0, NOTE_LIMIT - 3).toString().replace(/\uFFFD$/, '')}...` : note,
      regarding: { apiVersion: obj.apiVersion, kind: obj.kind, name, namespace, ...(uid ? { uid } : {}) },
      reportingController: this.o.controller,
      reportingInstance: this.o.instance.slice(0, 128),
    };
    if (this.backlog.length >= (this.o.maxBacklog ?? 100)) { this.seen.delete(this.backlog.shift()!.key); this.dropped++; }
    this.backlog.push({ key, write: async () => {
      try {
        // eventTime stays a string: the client's serializer passes a non-Date through as it is
        await this.o.api.createNamespacedEvent({ namespace, body: body as unknown as Parameters<EventsV1Api['createNamespacedEvent']>[0]['body'] });
      } catch (err) {
        this.seen.delete(key); // not written: the same event later is news again
        this.o.log.warn({ err: errorText(err), regarding: `${obj.kind} ${namespace}/${name}`, reason }, 'could not write a Kubernetes Event');
      }
    } });
    this.running ??= this.drain();
  }

  private async drain(): Promise<void> {
    for (let next = this.backlog.shift(); next; next = this.backlog.shift()) await next.write();
    if (this.dropped > 0) {
      this.o.log.warn({ dropped: this.dropped }, 'Kubernetes Events dropped: the backlog was full');
      this.dropped = 0;
    }
    this.running = undefined;
  }

  /** Resolves once every Event recorded so far has been written (or has failed), or after timeoutMs (a stop must
   *  not wait on an API server that does not answer). */
  async flush(timeoutMs = Infinity): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.running && Date.now() < deadline) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.running, ...(Number.isFinite(timeoutMs) ? [new Promise((r) => { timer = setTimeout(r, deadline - Date.now()); })] : [])]);
      clearTimeout(timer);
    }
  }

  /** The object reference of a kvfleet.io resource, as record() takes it. */
  static ref(kind: string, metadata: Regarding['metadata']): Regarding {
    return { apiVersion: `${GROUP}/${VERSION}`, kind, metadata };
  }
}
