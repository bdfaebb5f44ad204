// Router options in stages (STYLE.md 9): flags and env → one zod parse at start → a frozen config. Errors name the
// field. Nothing below reads process.env.
import { z } from 'zod';
import { PICK_POLICIES } from '../ledger/index.ts';

const FLEET = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?\/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

export const RouterConfigSchema = z.object({
  host: z.string().min(1).default('127.0.0.1'),
  port: z.coerce.number().int().min(0).max(65535),
  /** the ledger; absent only when the router is given an in-memory ledger in-process (kvfleet up without Redis) */
  redis: z.string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL').optional(),
  redisPasswordFile: z.string().min(1).optional(),
  fleet: z.string().regex(FLEET, 'must be NAMESPACE/NAME (lower-case DNS labels)'),
  policy: z.enum(PICK_POLICIES as unknown as [string, ...string[]]).default('least-prefill'),
  tokenizer: z.string().min(1).optional(),
  /** how long a request may wait for a worker with room before RESOURCE_EXHAUSTED */
  maxQueueMs: z.coerce.number().int().min(0).default(2000),
  /** workers tried for one request (failures before the first token, and migrations after it) */
  maxAttempts: z.coerce.number().int().min(1).max(16).default(4),
  /** reservation lifetime in the ledger */
  reservationTtlMs: z.coerce.number().int().min(100).default(30_000),
  /** HTTP/2 keepalive on worker channels: a ping after this long without one (grpc.keepalive_time_ms) ... */
  workerKeepaliveMs: z.coerce.number().int().min(100).default(10_000),
  /** ... and a channel whose ping is not answered within this long fails (grpc.keepalive_timeout_ms): the streams
   *  on it move to other workers (a frozen or partitioned worker) */
  workerKeepaliveTimeoutMs: z.coerce.number().int().min(100).default(5_000),
  /** a worker absent from every ledger snapshot for this long (after its own TTL took it out) has its streams
   *  cancelled and moved; the grace keeps a Redis restart (workers re-registering) from moving healthy streams */
  workerGoneMs: z.coerce.number().int().min(0).default(2_000),
  metricsPort: z.coerce.number().int().min(0).max(65535).default(9401),
  routerId: z.string().min(1).optional(),
  maxMessageBytes: z.coerce.number().int().min(1024).default(4 * 1024 * 1024),
  // clients -> router
  authTokenFile: z.string().min(1).optional(),
  tlsCert: z.string().min(1).optional(),
  tlsKey: z.string().min(1).optional(),
  tlsClientCa: z.string().min(1).optional(),
  // router -> workers
  workerTokenFile: z.string().min(1).optional(),
  workerTlsCa: z.string().min(1).optional(),
  workerTlsCert: z.string().min(1).optional(),
  workerTlsKey: z.string().min(1).optional(),
}).refine((c) => (c.tlsCert === undefined) === (c.tlsKey === undefined), { path: ['tlsCert'], message: 'give both --tls-cert and --tls-key' })
  .refine((c) => (c.workerTlsCert === undefined) === (c.workerTlsKey === undefined), { path: ['workerTlsCert'], message: 'give both --worker-tls-cert and --worker-tls-key' });
export type RouterConfig = Readonly<z.infer<typeof RouterConfigSchema>>;

export class ConfigError extends Error {
  constructor(message: string) { super(message); this.name = 'ConfigError'; }
}

/** Parses raw options (flags over env); throws ConfigError listing every bad field by its flag name. */
export function parseRouterConfig(raw: Record<string, unknown>): RouterConfig {
  const r = RouterConfigSchema.safeParse(raw);
  if (!r.success) {
    const flag = (k: PropertyKey) => `--${String(k).replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    throw new ConfigError(r.error.issues.map((i) => `${i.path.length ? flag(i.path[0]) : 'options'}: ${i.message}`).join('; '));
  }
  return Object.freeze(r.data);
}

/** Env fallbacks (KVFLEET_ROUTER_*, KVFLEET_REDIS_URL, KVFLEET_FLEET), read once at start by the CLI. */
export function routerEnv(env: NodeJS.ProcessEnv): Record<string, string | undefined> {
  return {
    host: env.KVFLEET_ROUTER_HOST, port: env.KVFLEET_ROUTER_PORT, redis: env.KVFLEET_REDIS_URL,
    redisPasswordFile: env.KVFLEET_REDIS_PASSWORD_FILE, fleet: env.KVFLEET_FLEET, policy: env.KVFLEET_ROUTER_POLICY,
    tokenizer: env.KVFLEET_TOKENIZER, maxQueueMs: env.KVFLEET_ROUTER_MAX_QUEUE_MS,
    metricsPort: env.KVFLEET_ROUTER_METRICS_PORT, routerId: env.POD_NAME,
    authTokenFile: env.KVFLEET_AUTH_TOKEN_FILE, tlsCert: env.KVFLEET_TLS_CERT, tlsKey: env.KVFLEET_TLS_KEY,
    tlsClientCa: env.KVFLEET_TLS_CLIENT_CA, workerTokenFile: env.KVFLEET_WORKER_TOKEN_FILE,
    workerTlsCa: env.KVFLEET_WORKER_TLS_CA, workerTlsCert: env.KVFLEET_WORKER_TLS_CERT, workerTlsKey: env.KVFLEET_WORKER_TLS_KEY,
  };
}
