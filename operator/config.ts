// Operator options in stages (STYLE.md 9): raw values from the command line → one zod parse at start → a typed,
// defaulted OperatorConfig. Nothing below this file reads argv.
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export class OperatorConfigError extends Error {
  constructor(message: string) { super(message); this.name = 'OperatorConfigError'; }
}

const port = (flag: string) => z.coerce.number({ error: `${flag} must be a port number` }).int(`${flag} must be an integer`)
  .min(0, `${flag} must be 0..65535`).max(65535, `${flag} must be 0..65535`);

const Schema = z.object({
  kubeconfig: z.string().min(1, '--kubeconfig must not be empty').optional(),
  namespace: z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, '--namespace must be a Kubernetes namespace name').optional(),
  metricsPort: port('--metrics-port').default(9402),
  healthPort: port('--health-port').optional(),
  bindAddress: z.string().min(1).default('0.0.0.0'),
  leaderElect: z.boolean().default(false),
  logLevel: z.enum(LOG_LEVELS, { error: `--log-level must be one of ${LOG_LEVELS.join(', ')}` }).default('info'),
  concurrency: z.coerce.number().int().min(1, '--concurrency must be >= 1').max(64, '--concurrency must be <= 64').default(2),
  resyncSeconds: z.coerce.number().int().min(0, '--resync-seconds must be >= 0').default(300),
  /** hostPath:// model sources must lie under one of these directories (comma-separated); absent: any */
  allowedHostPaths: z.string().optional().transform((v, ctx) => {
    if (v === undefined || v.trim() === '') return undefined;
    const dirs = v.split(',').map((d) => d.trim().replace(/\/+$/, '') || '/');
    for (const d of dirs) {
      if (!d.startsWith('/') || d.split('/').includes('..')) {
        ctx.addIssue({ code: 'custom', message: `--allowed-host-paths: '${d}' is not an absolute directory without '..'` });
      }
    }
    return dirs;
  }),
});

/** Where the client configuration comes from (client-node's order, minus its silent http://localhost:8080 fallback):
 *  --kubeconfig, else $KUBECONFIG (one file or a merged list), else ~/.kube/config, else the pod's service account. */
export type KubeSource = { kind: 'file'; path: string } | { kind: 'env' } | { kind: 'in-cluster' };

/** The options after parsing: every default filled. metricsPort 0 turns /metrics off; health (/healthz,
 *  /readyz) is served on healthPort when given, else beside /metrics. */
export type OperatorConfig = z.output<typeof Schema> & {
  kube: KubeSource;
  /** image of workers and routers of Fleets that name none: $KVFLEET_IMAGE (the chart sets the operator's own) */
  image?: string;
  /** image of managed Redis instances: $KVFLEET_REDIS_IMAGE */
  redisImage?: string;
  /** leader election: the Lease's name and namespace ($KVFLEET_LEASE_NAME, $POD_NAMESPACE) and this replica's
   *  identity ($POD_NAME, else the host name and pid) */
  lease: { name: string; namespace: string; identity: string };
};
export type OperatorConfigInput = z.input<typeof Schema>;

export function parseOperatorConfig(raw: OperatorConfigInput, env: NodeJS.ProcessEnv = process.env): OperatorConfig {
  const r = Schema.safeParse(raw);
  if (!r.success) throw new OperatorConfigError(r.error.issues.map((i) => i.message).join('; '));
  const nonEmpty = (v: string | undefined) => (v !== undefined && v !== '' ? v : undefined);
  return {
    ...r.data, kube: kubeSource(r.data.kubeconfig, env), image: nonEmpty(env.KVFLEET_IMAGE), redisImage: nonEmpty(env.KVFLEET_REDIS_IMAGE),
    lease: { name: nonEmpty(env.KVFLEET_LEASE_NAME) ?? 'kvfleet-operator', namespace: nonEmpty(env.POD_NAMESPACE) ?? r.data.namespace ?? 'default',
      identity: nonEmpty(env.POD_NAME) ?? `${os.hostname()}-${process.pid}` },
  };
}

function kubeSource(flag: string | undefined, env: NodeJS.ProcessEnv): KubeSource {
  if (flag !== undefined) {
    if (!existsSync(flag)) throw new OperatorConfigError(`--kubeconfig ${flag}: no such file`);
    return { kind: 'file', path: flag };
  }
  if (env.KUBECONFIG) return { kind: 'env' };
  const home = env.HOME ?? env.USERPROFILE;
  const file = home ? path.join(home, '.kube', 'config') : undefined;
  if (file !== undefined && existsSync(file)) return { kind: 'file', path: file };
  if (env.KUBERNETES_SERVICE_HOST) return { kind: 'in-cluster' };
  throw new OperatorConfigError('no Kubernetes cluster configured: pass --kubeconfig PATH, set KUBECONFIG, '
    + 'create ~/.kube/config, or run in a pod with a service account');
}
