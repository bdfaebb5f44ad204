// `kvfleet operator`: the process around the Operator — kubeconfig, logs, the metrics and health endpoints, and
// graceful shutdown on SIGTERM/SIGINT (reconciles in flight finish; informers and ledger connections close).
import { pino, type Logger } from 'pino';
import { validateBudget } from '../worker/compress-native.ts';
import type { OperatorConfig } from './config.ts';
import { Operator } from './manager.ts';
import { loadKubeConfig } from './runtime/kube.ts';
import { serveHttp, type HttpEndpoints } from './runtime/metrics.ts';

export interface RunningOperator {
  readonly operator: Operator;
  /** ports actually bound (0 when off) */
  readonly metricsPort: number;
  readonly healthPort: number;
  stop(): Promise<void>;
}

export async function startOperator(cfg: OperatorConfig, log: Logger = pino({ level: cfg.logLevel, base: { component: 'operator' } },
  pino.destination(2))): Promise<RunningOperator> {
  const kc = loadKubeConfig(cfg.kube);
  const cluster = kc.getCurrentCluster();
  log.info({ server: cluster?.server, namespace: cfg.namespace ?? '(all)' }, 'operator starting');
  if (cfg.leaderElect) {
    // Issue 18 implements election on a coordination.k8s.io Lease around startControllers()/stopControllers().
    log.warn('--leader-elect: leader election is not implemented yet; this instance reconciles unconditionally (run one replica)');
  }
  const operator = new Operator({ kc, namespace: cfg.namespace, log, validate: validateBudget, concurrency: cfg.concurrency,
    resyncMs: cfg.resyncSeconds * 1000, defaultImage: cfg.image, redisImage: cfg.redisImage });

  const endpoints: HttpEndpoints[] = [];
  const health = {
    '/healthz': (): [number, string, string] => [200, 'text/plain', 'ok\n'],
    '/readyz': (): [number, string, string] => (operator.informersSynced && operator.controllersRunning
      ? [200, 'text/plain', 'ok\n'] : [503, 'text/plain', 'not ready: informers syncing or controllers stopped\n']),
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

  await operator.startInformers();
  operator.startControllers();
  log.info('operator running');

  let stopping: Promise<void> | undefined;
  return {
    operator, metricsPort, healthPort,
    stop() {
      stopping ??= (async () => {
        await operator.stop();
        await Promise.all(endpoints.map((e) => e.close()));
      })();
      return stopping;
    },
  };
}

/** Runs until SIGTERM or SIGINT, then stops gracefully; resolves when stopped. */
export async function runOperator(cfg: OperatorConfig): Promise<void> {
  const log = pino({ level: cfg.logLevel, base: { component: 'operator' } }, pino.destination(2));
  let signalled: NodeJS.Signals | undefined;
  let wake: (() => void) | undefined;
  const onSignal = (s: NodeJS.Signals) => { signalled ??= s; wake?.(); };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    const running = await startOperator(cfg, log);
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
