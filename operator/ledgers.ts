// The ledgers of the fleets the operator serves: where each fleet's Redis is (Fleet.spec.redis, the password from
// a Secret), and one connected RedisLedger per fleet, reused across reconciles and replaced when the address or
// password changes.
import { createHash } from 'node:crypto';
import type { CoreV1Api } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { RedisLedger, type Ledger } from '../ledger/index.ts';
import type { Fleet } from './api/v1alpha1.ts';
import { errorText, objectKey } from './runtime/kube.ts';

/** Where a fleet's ledger lives. */
export interface FleetRedis {
  url: string;
  password?: string;
}

/** A fleet whose Redis cannot be resolved (a missing Secret or key). Expected; the reconcile retries. */
export class FleetRedisError extends Error {
  constructor(message: string) { super(message); this.name = 'FleetRedisError'; }
}

export const MANAGED_REDIS_PORT = 6379;

/** The Service of a fleet's managed Redis (`redis.managed: true`); the Fleet reconciler creates it under this name. */
export function managedRedisService(fleet: Pick<Fleet, 'metadata'>): string {
  return `${fleet.metadata.name}-redis`;
}

export function managedRedisUrl(fleet: Pick<Fleet, 'metadata'>): string {
  return `redis://${managedRedisService(fleet)}.${fleet.metadata.namespace}.svc:${MANAGED_REDIS_PORT}`;
}

/** Resolves Fleet.spec.redis: the url (password from its Secret when passwordSecretRef is set), or the managed one. */
export async function fleetRedis(fleet: Fleet, core: Pick<CoreV1Api, 'readNamespacedSecret'>): Promise<FleetRedis> {
  const r = fleet.spec.redis;
  if (r.url === undefined) return { url: managedRedisUrl(fleet) };
  const ref = r.passwordSecretRef;
  if (ref === undefined) return { url: r.url };
  const where = `Fleet ${objectKey(fleet.metadata.namespace, fleet.metadata.name)} spec.redis.passwordSecretRef`;
  let data: Record<string, string> | undefined;
  try {
    data = (await core.readNamespacedSecret({ name: ref.name, namespace: fleet.metadata.namespace })).data;
  } catch (err) {
    throw new FleetRedisError(`${where}: cannot read Secret ${ref.name}: ${errorText(err)}`);
  }
  const b64 = data?.[ref.key];
  if (b64 === undefined) throw new FleetRedisError(`${where}: Secret ${ref.name} has no key '${ref.key}'`);
  return { url: r.url, password: Buffer.from(b64, 'base64').toString('utf8') };
}

function withPassword(r: FleetRedis): string {
  if (r.password === undefined) return r.url;
  const u = new URL(r.url);
  u.password = encodeURIComponent(r.password);
  return u.toString();
}

interface Entry { identity: string; ledger: Promise<RedisLedger> }

export interface LedgerPoolOptions {
  log: Logger;
  /** how long a first connection may take (default 5 s) */
  connectTimeoutMs?: number;
  /** a command not answered within this long fails (default 2 s) */
  commandTimeoutMs?: number;
}

export class LedgerPool {
  private readonly entries = new Map<string, Entry>();
  private readonly opts: LedgerPoolOptions;

  constructor(opts: LedgerPoolOptions) { this.opts = opts; }

  /** The connected ledger of a fleet; rejects with a LedgerError when its Redis does not answer. */
  async get(namespace: string, fleet: string, redis: FleetRedis): Promise<Ledger> {
    const key = objectKey(namespace, fleet);
    // the password enters only as a hash: the identity may end up in a log line
    const identity = `${redis.url}#${createHash('sha256').update(redis.password ?? '').digest('hex').slice(0, 16)}`;
    const cur = this.entries.get(key);
    if (cur && cur.identity === identity) return cur.ledger;
    if (cur) await this.drop(namespace, fleet);
    const log = this.opts.log.child({ fleet: key });
    const ledger = RedisLedger.connect({
      redis: withPassword(redis), namespace, fleet, connectTimeoutMs: this.opts.connectTimeoutMs ?? 5000,
      commandTimeoutMs: this.opts.commandTimeoutMs ?? 2000,
      onError: (e) => log.debug({ err: e.message }, 'ledger connection error'),
    });
    const entry: Entry = { identity, ledger };
    this.entries.set(key, entry);
    // a failed connect is forgotten, so the next reconcile tries again
    ledger.catch(() => { if (this.entries.get(key) === entry) this.entries.delete(key); });
    return ledger;
  }

  /** Closes a fleet's ledger connection (the fleet is gone or its Redis moved). */
  async drop(namespace: string, fleet: string): Promise<void> {
    const key = objectKey(namespace, fleet);
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    await e.ledger.then((l) => l.close(), () => undefined);
  }

  async close(): Promise<void> {
    const all = [...this.entries.values()];
    this.entries.clear();
    await Promise.all(all.map((e) => e.ledger.then((l) => l.close(), () => undefined)));
  }
}
