// The ledger's one interface, implemented over Redis (redis.ts) and in memory (memory.ts) with the same semantics;
// tests/ledger/conformance.ts holds both to it.
import { z } from 'zod';
import type { BudgetSpec } from '../proto/index.ts';

/** most-free (the ledger's default when a pick names no policy; routers default to least-prefill): the largest effective free; best-fit: the smallest that fits; p2c: the larger of two random
 *  fitting workers; least-prefill (extension): of the LEAST_PREFILL_SCAN workers with the fewest prompt tokens
 *  waiting to be prefilled (the last heartbeat's `prefill_tokens` + the prompt tokens of live reservations), one
 *  that fits, the fewest tokens first, then the largest effective free; when none of them fits, most-free. */
export type PickPolicy = 'most-free' | 'best-fit' | 'p2c' | 'least-prefill';
export const PICK_POLICIES: readonly PickPolicy[] = ['most-free', 'best-fit', 'p2c', 'least-prefill'];

export const DEFAULTS = {
  /** worker hash PEXPIRE; a worker without a heartbeat for this long is stale and never picked */
  workerTtlMs: 3000,
  /** how often workers should heartbeat */
  heartbeatIntervalMs: 500,
  /** a reservation lives this long unless a heartbeat lists it as queued */
  reservationTtlMs: 30_000,
  /** a router not seen for this long no longer counts toward the degraded-mode share */
  routerTtlMs: 5000,
  policy: 'most-free' as PickPolicy,
} as const;

/** What a worker publishes each heartbeat (CONTRACTS.md worker HASH). free_pages means UNCOMMITTED pages:
 *  total − held − committed growth of admitted requests. */
export interface WorkerFields {
  addr: string;
  total_pages: number;
  free_pages: number;
  page_size: number;
  num_layers: number;
  num_kv_heads: number;
  running: number;
  waiting: number;
  draining: boolean;
  /** Extension (least-prefill): prompt tokens of admitted requests still to be prefilled (a prefill part-way through
   *  its layers counts the remaining fraction; requests preempted back into the queue count whole). Absent = 0;
   *  snapshots always carry it (0 when the worker published none). */
  prefill_tokens?: number;
  /** Extension (never-fit answers): the longest sequence this worker serves, prompt + new tokens (its
   *  --max-model-len, else the model's max_position_embeddings); a request with prompt n and max_new_tokens m where
   *  n + m exceeds it is INVALID_ARGUMENT on the worker, so a router may answer so at once. Absent or 0 = not
   *  published; snapshots always carry it (0 when the worker published none). */
  max_model_len?: number;
}

export interface HeartbeatOptions {
  /** request ids the worker admitted since the last heartbeat: their pages are now in free_pages */
  admitted?: readonly string[];
  /** request ids the worker rejected: their reservations are dropped */
  rejected?: readonly string[];
  /** request ids waiting in the worker's queue: their reservations (if still present) are refreshed */
  queued?: readonly string[];
  /** worker hash TTL (default 3000 ms) */
  ttlMs?: number;
  /** new lifetime of refreshed reservations (default 30 s) */
  reservationTtlMs?: number;
}

export interface HeartbeatResult {
  /** free_pages − Σ reserved after this heartbeat */
  effective_free: number;
  reserved_pages: number;
  /** ledger time of the heartbeat (ms) */
  now_ms: number;
}

export interface PickOptions {
  /** reservation lifetime (default 30 s) */
  ttlMs?: number;
  policy?: PickPolicy;
  /** The request's prompt tokens, kept with the reservation: prefill work the worker has been promised (what
   *  least-prefill weighs); default 0. */
  promptTokens?: number;
  /** Worker ids not to choose (those this request already failed on): the pick chooses among the other workers as
   *  if these were absent, and leaves their index entries as they were. Default none. */
  exclude?: readonly string[];
}

export interface PickResult {
  worker_id: string;
  addr: string;
  /** the worker's effective free pages after this reservation */
  effective_free_after: number;
}

export interface WorkerSnapshot extends WorkerFields {
  worker_id: string;
  heartbeat_ms: number;
  /** Σ pages of live reservations */
  reserved_pages: number;
  /** live reservations */
  reservations: number;
  /** free_pages − reserved_pages (what a router may still reserve) */
  effective_free: number;
}

export interface LedgerSnapshot {
  /** ledger time at the read (ms) */
  now_ms: number;
  /** every live worker (draining ones included, flagged), sorted by worker id */
  workers: WorkerSnapshot[];
}

// ---- events channel: typed JSON messages ----
const MethodSchema = z.enum(['METHOD_UNSPECIFIED', 'FULL', 'SNAPKV', 'PYRAMIDKV', 'ADA_SNAPKV', 'ADA_PYRAMIDKV']);
/** The JSON shape of a BudgetSpec (proto field names); unknown fields are kept (extensions). */
export const BudgetSpecSchema = z.looseObject({
  method: MethodSchema.optional(),
  tokens_per_head: z.number().int().nonnegative().optional(),
  keep_ratio: z.number().optional(),
  window: z.number().int().nonnegative().optional(),
  pool_kernel: z.number().int().nonnegative().optional(),
  floor_alpha: z.number().optional(),
  pyramid_beta: z.number().optional(),
  decode_max_tokens_per_head: z.number().int().nonnegative().optional(),
  pooling: z.enum(['POOLING_UNSPECIFIED', 'MAX', 'AVG']).optional(),
  gqa_reduce: z.enum(['GQA_REDUCE_UNSPECIFIED', 'MEAN', 'MAXIMUM']).optional(),
});

export const LedgerEventSchema = z.discriminatedUnion('type', [
  /** the operator orders a worker to drain (CONTRACTS.md, "Drain") */
  z.object({ type: z.literal('drain'), worker_id: z.string().min(1), reason: z.string().optional() }),
  /** the operator takes back a drain order it no longer needs (a scale-down dropped): the worker admits again,
   *  unless it is shutting down (SIGTERM) */
  z.object({ type: z.literal('undrain'), worker_id: z.string().min(1), reason: z.string().optional() }),
  /** a budget was created or changed (spec), or deleted (spec null) */
  z.object({ type: z.literal('budget'), name: z.string().min(1), spec: BudgetSpecSchema.nullable() }),
  /** the fleet's default budget name changed (null: none) */
  z.object({ type: z.literal('default_budget'), name: z.string().min(1).nullable() }),
]);
export type LedgerEvent =
  | { type: 'drain'; worker_id: string; reason?: string }
  | { type: 'undrain'; worker_id: string; reason?: string }
  | { type: 'budget'; name: string; spec: BudgetSpec | null }
  | { type: 'default_budget'; name: string | null };

/** A drain or undrain order for one worker, as published on the events channel. */
export function workerOrder(type: 'drain' | 'undrain', workerId: string, reason?: string): LedgerEvent {
  return reason === undefined ? { type, worker_id: workerId } : { type, worker_id: workerId, reason };
}

/** Parses one message from the events channel; a malformed one yields a LedgerError (code 'invalid_reply'). */
export function parseLedgerEvent(raw: string): LedgerEvent | LedgerError {
  let json: unknown;
  try { json = JSON.parse(raw); } catch (e) {
    return new LedgerError('invalid_reply', `events channel: message is not JSON: ${raw.slice(0, 200)}`, e);
  }
  const r = LedgerEventSchema.safeParse(json);
  if (!r.success) {
    return new LedgerError('invalid_reply', `events channel: bad event ${raw.slice(0, 200)}: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`, r.error);
  }
  return r.data as LedgerEvent;
}

export interface Subscription { close(): Promise<void> }

// ---- errors ----
/** unavailable: Redis unreachable or timed out (retryable; routers go degraded). script: Redis rejected a command
 *  or script. invalid_reply: the ledger holds or returned something malformed. closed: used after close(). */
export type LedgerErrorCode = 'unavailable' | 'script' | 'invalid_reply' | 'closed';

export class LedgerError extends Error {
  readonly code: LedgerErrorCode;
  constructor(code: LedgerErrorCode, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'LedgerError';
    this.code = code;
  }
}

/**
 * The KV-capacity ledger of one fleet. Every method is async; Redis failures reject with LedgerError. Argument
 * errors (a bad id, a negative page count) are bugs in the caller and throw TypeError/RangeError.
 */
export interface Ledger {
  readonly namespace: string;
  readonly fleet: string;

  /** Publishes a worker's state, refreshes its TTL, drops reservations of admitted/rejected requests, refreshes
   *  those of queued ones; a draining worker leaves the pick index. Atomic. */
  heartbeat(workerId: string, fields: WorkerFields, opts?: HeartbeatOptions): Promise<HeartbeatResult>;
  /** Chooses a live, non-draining worker with effective_free ≥ needPages by policy and reserves needPages on it
   *  for requestId, never one in opts.exclude; null when none fits. Atomic. Picking the same request id again on
   *  the same worker replaces its reservation. */
  pick(needPages: number, requestId: string, opts?: PickOptions): Promise<PickResult | null>;
  /** Drops a reservation; returns the pages it held, 0 if there was none (idempotent). Atomic. */
  release(workerId: string, requestId: string): Promise<number>;
  /** Removes a worker at once (graceful exit): it is never picked again until it heartbeats. Its reservations
   *  expire on their own. */
  removeWorker(workerId: string): Promise<void>;
  /** Every live worker with its fields and effective free pages (degraded mode, pressure). */
  snapshot(): Promise<LedgerSnapshot>;

  /** Records a router as alive now; returns the number of live routers (self included). */
  registerRouter(routerId: string, ttlMs?: number): Promise<number>;
  unregisterRouter(routerId: string): Promise<void>;
  /** Routers seen within ttlMs (default 5000); stale entries are removed. */
  liveRouters(ttlMs?: number): Promise<number>;

  /** Stores a budget and publishes a `budget` event. */
  setBudget(name: string, spec: BudgetSpec): Promise<void>;
  getBudget(name: string): Promise<BudgetSpec | null>;
  listBudgets(): Promise<Record<string, BudgetSpec>>;
  /** Removes a budget and publishes a `budget` event with spec null; true if it existed. */
  deleteBudget(name: string): Promise<boolean>;
  /** Sets (or clears, with null) the fleet's default budget name and publishes a `default_budget` event. */
  setDefaultBudget(name: string | null): Promise<void>;
  getDefaultBudget(): Promise<string | null>;

  /** Publishes an event on the fleet's channel; returns how many subscribers received it. */
  publish(event: LedgerEvent): Promise<number>;
  /** Publishes a drain order for a worker. */
  drain(workerId: string, reason?: string): Promise<number>;
  /** Publishes an order taking back an earlier drain order for a worker. */
  undrain(workerId: string, reason?: string): Promise<number>;
  /** Delivers every well-formed event of this fleet to onEvent; malformed messages and connection errors go to
   *  onError (never thrown). Resolves once the subscription is active. */
  subscribe(onEvent: (e: LedgerEvent) => void, onError?: (e: LedgerError) => void): Promise<Subscription>;

  /** Releases connections this ledger owns. */
  close(): Promise<void>;
}

export function checkPages(name: string, v: number, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
}

export function checkTtl(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${name} must be an integer number of ms >= 1, got ${v}`);
}

export function checkPolicy(p: string): asserts p is PickPolicy {
  if (!(PICK_POLICIES as readonly string[]).includes(p)) {
    throw new RangeError(`pick policy '${p}' is unknown; expected one of ${PICK_POLICIES.join(', ')}`);
  }
}

export function checkWorkerFields(f: WorkerFields): void {
  if (typeof f.addr !== 'string' || f.addr === '') throw new TypeError('worker field addr must be a non-empty string');
  for (const k of ['total_pages', 'free_pages', 'page_size', 'num_layers', 'num_kv_heads', 'running', 'waiting'] as const) {
    checkPages(`worker field ${k}`, f[k], 0);
  }
  if (f.prefill_tokens !== undefined) checkPages('worker field prefill_tokens', f.prefill_tokens, 0);
  if (f.max_model_len !== undefined) checkPages('worker field max_model_len', f.max_model_len, 0);
  if (typeof f.draining !== 'boolean') throw new TypeError('worker field draining must be a boolean');
}

export function checkBudgetName(name: string): void {
  if (typeof name !== 'string' || name === '') throw new TypeError('budget name must be a non-empty string');
}

/** Parses a stored BudgetSpec JSON; a malformed one is a LedgerError naming the budget and the field. */
export function parseBudget(name: string, raw: string): BudgetSpec {
  let json: unknown;
  try { json = JSON.parse(raw); } catch (e) {
    throw new LedgerError('invalid_reply', `ledger budget '${name}': stored value is not JSON`, e);
  }
  const r = BudgetSpecSchema.safeParse(json);
  if (!r.success) {
    throw new LedgerError('invalid_reply', `ledger budget '${name}': ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`, r.error);
  }
  return r.data as BudgetSpec;
}
