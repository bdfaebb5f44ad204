// Worker options in stages (STYLE.md 9): raw strings from the command line and the environment → one zod parse at
// start → a typed, defaulted WorkerConfig. Nothing below this file reads process.env or argv.
//
// Every option has an environment name (the command line wins when both are set):
//   --model DIR                KVFLEET_MODEL               model directory (config.json, *.safetensors, tokenizer.json)
//   --port N                   KVFLEET_PORT                gRPC port (0 = any free port)
//   --host H                   KVFLEET_HOST                bind address, default 127.0.0.1
//   --kv-memory BYTES          KVFLEET_KV_MEMORY           page pool size in bytes (suffixes K M G Ki Mi Gi)
//   --kv-memory-fraction F     KVFLEET_KV_MEMORY_FRACTION  fraction of free memory for the pool (CPU: host free memory)
//   --num-pages N              KVFLEET_NUM_PAGES           exact page count (tests)
//   --page-size P              KVFLEET_PAGE_SIZE           tokens per page, default 16
//   --kv-dtype f16|f32         KVFLEET_KV_DTYPE            page dtype, default f16
//   --max-running N            KVFLEET_MAX_RUNNING         running sequences at most, default 256
//   --max-model-len N          KVFLEET_MAX_MODEL_LEN       prompt + max_new_tokens at most, default the model's context
//   --admission reserve|optimistic  KVFLEET_ADMISSION      default reserve (ARCHITECTURE.md, "Footprint formula")
//   --max-queue N              KVFLEET_MAX_QUEUE           waiting requests at most (RESOURCE_EXHAUSTED past it), default 1024,
//                                                          at least 1 (every request passes through the queue)
//   --max-prefill-tokens N     KVFLEET_MAX_PREFILL_TOKENS  prefill work per step, in prompt tokens × all layers, default 2048
//   --worker-id ID             KVFLEET_WORKER_ID           default POD_NAME, else host:port (CONTRACTS.md, "Worker identity")
//   --metrics-port N           KVFLEET_METRICS_PORT        Prometheus port (served from Worker II on), default 9400, 0 = off
//   --log-level L              KVFLEET_LOG_LEVEL           pino level, default info
// In a fleet (Worker II; both or neither of --redis and --fleet):
//   --redis URL                KVFLEET_REDIS_URL           the fleet's ledger (redis:// or rediss://)
//   --redis-password-file F    KVFLEET_REDIS_PASSWORD_FILE Redis password, read from a file (never from a flag)
//   --fleet NS/NAME            KVFLEET_FLEET               the fleet whose ledger keys this worker joins
//   --heartbeat-ms N           KVFLEET_HEARTBEAT_MS        ledger heartbeat period, default 500, 10 to 1000 (at most a
//                                                          third of the ledger's 3000 ms worker TTL, CONTRACTS.md)
//   --budget-refresh-ms N      KVFLEET_BUDGET_REFRESH_MS   full re-read of the fleet's budgets, default 5000 (events
//                                                          on the channel apply at once; this heals missed ones)
//   --drain-timeout-ms N       KVFLEET_DRAIN_TIMEOUT_MS    after SIGTERM, how long running work may take, default 600000
// Security (secrets come from files only, and are never logged):
//   --auth-token-file F        KVFLEET_AUTH_TOKEN_FILE     bearer token every call but grpc.health.v1.Health must carry
//   --tls-cert F / --tls-key F KVFLEET_TLS_CERT / _KEY     serve TLS (PEM certificate chain and private key)
//   --tls-client-ca F          KVFLEET_TLS_CLIENT_CA       also require client certificates signed by this CA (mTLS)
// Identity: POD_NAME (worker id) and POD_IP (the address published in the ledger) from the downward API.
// With none of --kv-memory / --kv-memory-fraction / --num-pages the pool takes a fraction of free memory:
// 0.9 of the device's memory with CUDA (Fleet's kvMemoryFraction default), 0.5 of free host memory on CPU.
import { z } from 'zod';
import { DEFAULTS } from '../ledger/types.ts';

export const ADMISSION = ['reserve', 'optimistic'] as const;
export type Admission = (typeof ADMISSION)[number];
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export class WorkerConfigError extends Error {
  constructor(message: string) { super(message); this.name = 'WorkerConfigError'; }
}

/** Option key → [command-line flag, environment variable]. */
export const OPTION_NAMES = {
  model: ['--model', 'KVFLEET_MODEL'],
  port: ['--port', 'KVFLEET_PORT'],
  host: ['--host', 'KVFLEET_HOST'],
  kvMemory: ['--kv-memory', 'KVFLEET_KV_MEMORY'],
  kvMemoryFraction: ['--kv-memory-fraction', 'KVFLEET_KV_MEMORY_FRACTION'],
  numPages: ['--num-pages', 'KVFLEET_NUM_PAGES'],
  pageSize: ['--page-size', 'KVFLEET_PAGE_SIZE'],
  kvDtype: ['--kv-dtype', 'KVFLEET_KV_DTYPE'],
  maxRunning: ['--max-running', 'KVFLEET_MAX_RUNNING'],
  maxModelLen: ['--max-model-len', 'KVFLEET_MAX_MODEL_LEN'],
  admission: ['--admission', 'KVFLEET_ADMISSION'],
  maxQueue: ['--max-queue', 'KVFLEET_MAX_QUEUE'],
  maxPrefillTokens: ['--max-prefill-tokens', 'KVFLEET_MAX_PREFILL_TOKENS'],
  workerId: ['--worker-id', 'KVFLEET_WORKER_ID'],
  metricsPort: ['--metrics-port', 'KVFLEET_METRICS_PORT'],
  logLevel: ['--log-level', 'KVFLEET_LOG_LEVEL'],
  redis: ['--redis', 'KVFLEET_REDIS_URL'],
  redisPasswordFile: ['--redis-password-file', 'KVFLEET_REDIS_PASSWORD_FILE'],
  fleet: ['--fleet', 'KVFLEET_FLEET'],
  heartbeatMs: ['--heartbeat-ms', 'KVFLEET_HEARTBEAT_MS'],
  budgetRefreshMs: ['--budget-refresh-ms', 'KVFLEET_BUDGET_REFRESH_MS'],
  drainTimeoutMs: ['--drain-timeout-ms', 'KVFLEET_DRAIN_TIMEOUT_MS'],
  stallTimeoutMs: ['--stall-timeout-ms', 'KVFLEET_STALL_TIMEOUT_MS'],
  authTokenFile: ['--auth-token-file', 'KVFLEET_AUTH_TOKEN_FILE'],
  tlsCert: ['--tls-cert', 'KVFLEET_TLS_CERT'],
  tlsKey: ['--tls-key', 'KVFLEET_TLS_KEY'],
  tlsClientCa: ['--tls-client-ca', 'KVFLEET_TLS_CLIENT_CA'],
} as const;
export type OptionKey = keyof typeof OPTION_NAMES;

const UNITS: Record<string, number> = {
  '': 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12, KI: 2 ** 10, MI: 2 ** 20, GI: 2 ** 30, TI: 2 ** 40,
};

/** "512Mi", "2G", "1048576" → bytes; anything else is a zod issue. */
const bytes = z.union([z.number(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') {
    if (Number.isSafeInteger(v) && v > 0) return v;
    ctx.addIssue({ code: 'custom', message: `must be a positive integer number of bytes, got ${v}` });
    return z.NEVER;
  }
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?$/i.exec(v.trim());
  const n = m ? Math.floor(Number(m[1]) * UNITS[(m[2] ?? '').toUpperCase()]) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) {
    ctx.addIssue({ code: 'custom', message: `must be a byte count like 1073741824, 512Mi or 2G, got '${v}'` });
    return z.NEVER;
  }
  return n;
});
const int = (min: number, max = Number.MAX_SAFE_INTEGER) => z.coerce.number().int().min(min).max(max);

/** The longest heartbeat period: a third of the ledger's worker TTL, so two heartbeats may be late or lost before a
 *  live worker's hash expires and routers stop picking it. */
export const MAX_HEARTBEAT_MS = Math.floor(DEFAULTS.workerTtlMs / 3);

export const WorkerConfigSchema = z.object({
  model: z.string().min(1, 'is required (a model directory)'),
  port: int(0, 65535),
  host: z.string().min(1).default('127.0.0.1'),
  kvMemory: bytes.optional(),
  kvMemoryFraction: z.coerce.number().gt(0).lte(1).optional(),
  numPages: int(1).optional(),
  pageSize: int(1, 4096).default(16),
  kvDtype: z.enum(['f16', 'f32']).default('f16'),
  maxRunning: int(1).default(256),
  maxModelLen: int(1).optional(),
  admission: z.enum(ADMISSION).default('reserve'),
  maxQueue: int(0).min(1, 'must be at least 1: every request waits in the queue, however briefly, before it is '
    + 'admitted, so 0 would refuse them all').default(1024),
  maxPrefillTokens: int(1).default(2048),
  workerId: z.string().min(1).optional(),
  metricsPort: int(0, 65535).default(9400),
  logLevel: z.enum(LOG_LEVELS).default('info'),
  redis: z.string().regex(/^rediss?:\/\/\S+$/, 'must be a redis:// or rediss:// URL').optional(),
  redisPasswordFile: z.string().min(1).optional(),
  // the ledger's hash tag {NS/NAME} breaks on whitespace, braces or a second slash (ledger/keys.ts)
  fleet: z.string().regex(/^[^\s{}/]+\/[^\s{}/]+$/, 'must be NAMESPACE/NAME (no whitespace, braces or other slashes)').optional(),
  heartbeatMs: int(10).max(MAX_HEARTBEAT_MS, `must be at most ${MAX_HEARTBEAT_MS} ms, a third of the ledger's worker TTL `
    + `(${DEFAULTS.workerTtlMs} ms): with a longer period the worker's ledger entry expires between heartbeats and `
    + 'routers stop sending it requests').default(500),
  budgetRefreshMs: int(100, 3_600_000).default(5000),
  drainTimeoutMs: int(0).default(600_000),
  /** a request whose client reads nothing this long while its stream buffer is full is stopped and its pages freed
   *  (ABORTED); 0: never (it holds its pages until the client reads, cancels or its deadline passes) */
  stallTimeoutMs: int(0).default(60_000),
  authTokenFile: z.string().min(1).optional(),
  tlsCert: z.string().min(1).optional(),
  tlsKey: z.string().min(1).optional(),
  tlsClientCa: z.string().min(1).optional(),
});
export type WorkerConfig = z.output<typeof WorkerConfigSchema>;
export type WorkerConfigInput = Partial<Record<OptionKey, string | number | undefined>>;

/**
 * The one parse: command-line values over environment values, then the schema. Throws WorkerConfigError whose
 * message names each bad option by flag and environment variable.
 */
export function parseWorkerConfig(cli: WorkerConfigInput, env: NodeJS.ProcessEnv = {}): WorkerConfig & Identity {
  const raw: Record<string, unknown> = {};
  for (const [key, [, envName]] of Object.entries(OPTION_NAMES)) {
    const v = cli[key as OptionKey] ?? env[envName];
    if (v !== undefined && v !== '') raw[key] = v;
  }
  const lines: string[] = [];
  // checked apart from the schema so it is reported together with every other problem
  const pool = (['kvMemory', 'kvMemoryFraction', 'numPages'] as const).filter((k) => raw[k] !== undefined);
  if (pool.length > 1) {
    lines.push(`${pool.map((k) => OPTION_NAMES[k][0]).join(', ')}: give at most one of --kv-memory, `
      + '--kv-memory-fraction, --num-pages');
  }
  const flag = (k: OptionKey) => `${OPTION_NAMES[k][0]} (${OPTION_NAMES[k][1]})`;
  if ((raw.redis === undefined) !== (raw.fleet === undefined)) {
    lines.push(`${flag(raw.redis === undefined ? 'redis' : 'fleet')}: is required with ${flag(raw.redis === undefined ? 'fleet' : 'redis')} `
      + '(a worker joins a fleet with both, or runs alone with neither)');
  }
  if (raw.redisPasswordFile !== undefined && raw.redis === undefined) lines.push(`${flag('redisPasswordFile')}: needs --redis`);
  if ((raw.tlsCert === undefined) !== (raw.tlsKey === undefined)) {
    lines.push(`${flag(raw.tlsCert === undefined ? 'tlsCert' : 'tlsKey')}: is required with ${flag(raw.tlsCert === undefined ? 'tlsKey' : 'tlsCert')}`);
  }
  if (raw.tlsClientCa !== undefined && raw.tlsCert === undefined) lines.push(`${flag('tlsClientCa')}: needs --tls-cert and --tls-key`);
  const r = WorkerConfigSchema.safeParse(raw);
  if (!r.success) {
    lines.unshift(...r.error.issues.map((i) => {
      const key = String(i.path[0] ?? '') as OptionKey;
      const names = OPTION_NAMES[key];
      const what = names ? `${names[0]} (${names[1]})` : key || 'options';
      const msg = raw[key] === undefined && i.code === 'invalid_type' ? 'is required' : i.message;
      return `${what}: ${msg}`;
    }));
  }
  if (lines.length > 0 || !r.success) throw new WorkerConfigError(`invalid worker options:\n  ${lines.join('\n  ')}`);
  const podName = env.POD_NAME !== undefined && env.POD_NAME !== '' ? env.POD_NAME : undefined;
  const podIp = env.POD_IP !== undefined && env.POD_IP !== '' ? env.POD_IP : undefined;
  return { ...r.data, podName, podIp };
}

/** Downward-API identity (CONTRACTS.md, "Worker identity"): worker_id = POD_NAME, ledger addr = POD_IP:port. */
export interface Identity { podName?: string; podIp?: string }

/** The fleet option split into the ledger's namespace and fleet name (the schema checked its shape). */
export function fleetName(cfg: WorkerConfig): { namespace: string; fleet: string } | undefined {
  if (cfg.fleet === undefined) return undefined;
  const [namespace, fleet] = cfg.fleet.split('/');
  return { namespace, fleet };
}
