// `kvfleet operator`: the process around the Operator — kubeconfig, logs, the metrics and health endpoints, and
// graceful shutdown on SIGTERM/SIGINT (reconciles in flight finish; informers and ledger connections close).
import { CoordinationV1Api } from '@kubernetes/client-node';
import { pino, type Logger } from 'pino';
import { validateBudget } from '../worker/compress-native.ts';
import type { OperatorConfig } from './config.ts';
import { Operator } from './manager.ts';
import { loadKubeConfig } from './runtime/kube.ts';
import { LeaderElector } from './runtime/leader.ts';
import { serveHttp, type HttpEndpoints } from './runtime/metrics.ts';

export interface RunningOperator {
  readonly operator: Operator;
  /** ports actually bound (0 when off) */
  readonly metricsPort: number;
  readonly healthPort: number;
  /** present with --leader-elect */
  readonly elector: LeaderElector | undefined;
  stop(): Promise<void>;
}

/** Leader election timing (client-go's defaults: 15 s lease, renew every 5 s, give up after 10 s without a renewal). */
export interface ElectionTiming { leaseDurationMs?: number; renewMs?: number; renewDeadlineMs?: number; retryMs?: number }

export async function startOperator(cfg: OperatorConfig, log: Logger = pino({ level: cfg.logLevel, base: { component: 'operator' } },
  pino.destination(2)), timing: ElectionTiming = {}, signal?: AbortSignal): Promise<RunningOperator> {
  const kc = loadKubeConfig(cfg.kube);
  const cluster = kc.getCurrentCluster();
  log.info({ server: cluster?.server, namespace: cfg.namespace ?? '(all)' }, 'operator starting');
  const operator = new Operator({ kc, namespace: cfg.namespace, log, validate: validateBudget, concurrency: cfg.concurrency, instance: cfg.lease.identity,
    resyncMs: cfg.resyncSeconds * 1000, defaultImage: cfg.image, redisImage: cfg.redisImage,
    ...(cfg.allowedHostPaths ? { allowedHostPaths: cfg.allowedHostPaths } : {}) });

  const endpoints: HttpEndpoints[] = [];
  // Readiness is "caches synced", not leadership: a standby replica must be ready, or the chart's rolling update
  // (maxSurge 1, maxUnavailable 0) would wait forever for the new pod while the old one holds the Lease. Who leads
  // is the kvfleet_operator_leader gauge.
  const health = {
    '/healthz': (): [number, string, string] => [200, 'text/plain', 'ok\n'],
    '/readyz': (): [number, string, string] => (operator.informersSynced
      ? [200, 'text/plain', 'ok\n'] : [503, 'text/plain', 'not ready: informers syncing\n']),
  };
  const metrics = {
    '/metrics': async (): Promise<[number, string, string]> => [200, operator.metrics.registry.contentType, await operator.metrics.registry.metrics()],
  };
  let metricsPort = 0;
  let healthPort = 0;
  try {
    if (cfg.metricsPort !== 0) {
      const e = await serveHttp(cfg.metricsPort, cfg.bindAddress, cfg.healthPort === undefined ? { ...metrics, ...health } : metrics);
      endpoints.push(e);
      metricsPort = e.port;
      if (cfg.healthPort === undefined) healthPort = e.port;
    }
    if (cfg.healthPort !== undefined) {
      const e = await serveHttp(cfg.healthPort, cfg.bindAddress, health);
      endpoints.push(e);
      healthPort = e.port;
    }
  } catch (err) {
    await Promise.all(endpoints.map((e) => e.close()));
    throw err;
  }
  log.info({ metricsPort, healthPort }, `operator listening (metrics port ${metricsPort}, health port ${healthPort})`);

  // the caches sync only when the API server answers: a stop asked meanwhile (SIGTERM while the API server is
  // unreachable, or the CRDs are missing) must not wait for that
  if (signal?.aborted) { await operator.stop(); await Promise.all(endpoints.map((e) => e.close())); throw new StartAborted(); }
  const aborted = new Promise<'aborted'>((resolve) => signal?.addEventListener('abort', () => resolve('aborted'), { once: true }));
  if (await Promise.race([operator.startInformers().then(() => 'synced' as const), aborted]) === 'aborted') {
    await operator.stop();
    await Promise.all(endpoints.map((e) => e.close()));
    throw new StartAborted();
  }
  let elector: LeaderElector | undefined;
  if (cfg.leaderElect) {
    operator.metrics.leader.set(0);
    elector = new LeaderElector({
      api: kc.makeApiClient(CoordinationV1Api), namespace: cfg.lease.namespace, name: cfg.lease.name, identity: cfg.lease.identity,
      ...timing, log: log.child({ part: 'leader-election' }),
      onStart: () => { operator.startControllers(); operator.metrics.leader.set(1); },
      onStop: async () => { operator.metrics.leader.set(0); await operator.stopControllers(); },
    });
    elector.start();
    log.info({ lease: `${cfg.lease.namespace}/${cfg.lease.name}`, identity: cfg.lease.identity }, 'operator running (leader election on)');
  } else {
    operator.startControllers();
    operator.metrics.leader.set(1);
    log.info('operator running');
  }

  let stopping: Promise<void> | undefined;
  return {
    operator, metricsPort, healthPort, elector,
    stop() {
      stopping ??= (async () => {
        // controllers stop (reconciles in flight finish) before the Lease is freed for a standby
        await elector?.release();
        await operator.stop();
        await Promise.all(endpoints.map((e) => e.close()));
      })();
      return stopping;
    },
  };
}

/** Runs until SIGTERM or SIGINT, then stops gracefully; resolves when stopped. */
/** startOperator was asked to stop (its AbortSignal) before the caches synced; nothing is left running. */
export class StartAborted extends Error {
  constructor() { super('operator start aborted'); this.name = 'StartAborted'; }
}

export async function runOperator(cfg: OperatorConfig): Promise<void> {
  const log = pino({ level: cfg.logLevel, base: { component: 'operator' } }, pino.destination(2));
  let signalled: NodeJS.Signals | undefined;
  let wake: (() => void) | undefined;
  const abort = new AbortController();
  const onSignal = (s: NodeJS.Signals) => { signalled ??= s; abort.abort(); wake?.(); };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    let running: RunningOperator;
    try {
      running = await startOperator(cfg, log, {}, abort.signal);
    } catch (err) {
      if (!(err instanceof StartAborted)) throw err;
      log.info({ signal: signalled }, 'stopped before the caches synced (is the API server reachable, are the CRDs installed?)');
      log.flush();
      return;
    }
    if (signalled === undefined) await new Promise<void>((r) => { wake = r; });
    log.info({ signal: signalled }, 'shutting down');
    await running.stop();
    log.info('shutdown complete');
    log.flush();
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}
