// The ledger's Redis key schema (CONTRACTS.md, "The KV-capacity ledger"). Every key of a fleet carries the hash tag
// `{NS/F}`, so every script touches one slot (Redis Cluster safe). The names below are a contract: routers, workers
// and the operator of other versions read the same keys.

/** Keys of one fleet. `index`, `expiring`, `routers`, `prefill` and `tokens` are ledger-private extensions (same
 *  hash tag). */
export interface FleetKeys {
  /** `kvfleet:{NS/F}:` — scripts build per-worker keys from it, so they stay in the fleet's slot. */
  readonly prefix: string;
  /** SET of worker ids. */
  readonly workers: string;
  /** HASH per worker: addr, total_pages, free_pages, page_size, num_layers, num_kv_heads, running, waiting,
   *  draining (0/1), heartbeat_ms, ttl_ms (extension: the PEXPIRE the worker asked for), prefill_tokens
   *  (extension: prompt tokens admitted and not yet prefilled), max_model_len (extension: the longest prompt + new
   *  tokens the worker serves; 0 = not published). */
  worker(id: string): string;
  /** ZSET per worker: request id → reservation expiry time (ms, Redis clock). */
  reservations(id: string): string;
  /** HASH per worker: request id → pages reserved. */
  reserved(id: string): string;
  /** HASH per worker: request id → prompt tokens of the reservation (only reservations made with some). */
  tokens(id: string): string;
  /** ZSET router id → last-seen time (ms), for the degraded-mode share. */
  readonly routers: string;
  /** HASH budget name → BudgetSpec JSON. */
  readonly budgets: string;
  /** STRING: name of the fleet's default budget. */
  readonly budget: string;
  /** pub/sub channel: drain orders, budget changes. */
  readonly events: string;
  /** ZSET worker id → effective free pages (free_pages − Σ reserved) of every live, non-draining worker; what
   *  makes a pick O(log N). Invariant: a member's score equals its worker's effective free pages, except for
   *  members whose worker has gone stale (dropped by the first pick that meets them). */
  readonly index: string;
  /** ZSET `<worker id>\n<request id>` → reservation expiry (ms): every reservation of the fleet by expiry, so a
   *  script can drop all expired ones in O(log N) each and keep `index` exact. */
  readonly expiring: string;
  /** ZSET worker id → prefill load (the worker's last published prefill_tokens + Σ tokens of its reservations) of
   *  the same workers as `index` (what least-prefill scans, lowest first). Kept exact by reservations and releases,
   *  recomputed by every heartbeat. */
  readonly prefill: string;
}

const NAME_RE = /^[^\s{}/]+$/;

/** Checks a namespace or fleet name: non-empty, no whitespace, braces or slash (they would break the hash tag). */
export function checkFleetName(field: 'namespace' | 'fleet', value: string): void {
  if (typeof value !== 'string' || !NAME_RE.test(value)) {
    throw new TypeError(`ledger ${field} '${String(value)}' is invalid: it must be non-empty and contain no whitespace, '{', '}' or '/'`);
  }
}

/** Worker ids (pod names, or host:port locally) must not contain a newline: it separates ids in `expiring`. */
export function checkWorkerId(id: string): void {
  if (typeof id !== 'string' || id === '' || id.includes('\n')) {
    throw new TypeError(`worker id ${JSON.stringify(id)} is invalid: it must be non-empty and contain no newline`);
  }
}

export function checkRequestId(id: string): void {
  if (typeof id !== 'string' || id === '') throw new TypeError('request id must be a non-empty string');
}

export function fleetTag(namespace: string, fleet: string): string {
  checkFleetName('namespace', namespace);
  checkFleetName('fleet', fleet);
  return `{${namespace}/${fleet}}`;
}

export function fleetKeys(namespace: string, fleet: string): FleetKeys {
  const prefix = `kvfleet:${fleetTag(namespace, fleet)}:`;
  return {
    prefix,
    workers: `${prefix}workers`,
    worker: (id) => `${prefix}worker:${id}`,
    reservations: (id) => `${prefix}reservations:${id}`,
    reserved: (id) => `${prefix}reserved:${id}`,
    tokens: (id) => `${prefix}tokens:${id}`,
    routers: `${prefix}routers`,
    budgets: `${prefix}budgets`,
    budget: `${prefix}budget`,
    events: `${prefix}events`,
    index: `${prefix}index`,
    expiring: `${prefix}expiring`,
    prefill: `${prefix}prefill`,
  };
}
