// The operator's Prometheus metrics (one registry per operator instance, so tests can run several in one process)
// and the HTTP endpoints: /metrics, /healthz (the process is alive), /readyz (caches synced; leadership is the
// kvfleet_operator_leader gauge, not readiness, so a standby replica is ready and a rolling update can proceed).
import http from 'node:http';
import client from 'prom-client';

export class OperatorMetrics {
  readonly registry = new client.Registry();
  readonly reconciles: client.Counter<'controller' | 'result'>;
  readonly reconcileErrors: client.Counter<'controller'>;
  readonly reconcileDuration: client.Histogram<'controller'>;
  readonly queueDepth: client.Gauge<'controller'>;
  readonly informerRestarts: client.Counter<'resource'>;
  readonly ledgerWrites: client.Counter<'op'>;
  /** 1 while this replica holds the leader Lease (or runs without election), else 0 */
  readonly leader: client.Gauge;
  /** what the queue-depth gauge reports when scraped: controller → keys waiting */
  queueDepths: () => Iterable<[string, number]> = () => [];

  constructor() {
    const registers = [this.registry];
    this.reconciles = new client.Counter({ name: 'kvfleet_operator_reconcile_total', help: 'Reconciles by controller and result (success|error)',
      labelNames: ['controller', 'result'], registers });
    this.reconcileErrors = new client.Counter({ name: 'kvfleet_operator_reconcile_errors_total', help: 'Reconciles that failed and were requeued',
      labelNames: ['controller'], registers });
    this.reconcileDuration = new client.Histogram({ name: 'kvfleet_operator_reconcile_duration_seconds', help: 'Time per reconcile',
      labelNames: ['controller'], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10], registers });
    const depths = () => this.queueDepths();
    this.queueDepth = new client.Gauge({ name: 'kvfleet_operator_queue_depth', help: 'Keys waiting in the work queue',
      labelNames: ['controller'], registers,
      collect() { for (const [controller, n] of depths()) this.set({ controller }, n); } });
    this.informerRestarts = new client.Counter({ name: 'kvfleet_operator_informer_restarts_total',
      help: 'Times an informer stopped on an error and was started again', labelNames: ['resource'], registers });
    this.ledgerWrites = new client.Counter({ name: 'kvfleet_operator_ledger_writes_total',
      help: 'Writes to fleet ledgers (set_budget, delete_budget, set_default_budget)', labelNames: ['op'], registers });
    this.leader = new client.Gauge({ name: 'kvfleet_operator_leader', help: '1 while this replica leads (reconciles), else 0', registers });
    client.collectDefaultMetrics({ register: this.registry, prefix: 'kvfleet_operator_' });
  }
}

export interface HttpEndpoints {
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Serves `paths` on 127.0.0.1 or all interfaces (`host`) at `port` (0: any free port). Each path maps to a handler
 * returning [status, content type, body].
 */
export async function serveHttp(port: number, host: string,
  paths: Record<string, () => Promise<[number, string, string]> | [number, string, string]>): Promise<HttpEndpoints> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const handler = req.method === 'GET' ? paths[path] : undefined;
    if (!handler) { res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n'); return; }
    Promise.resolve(handler()).then(([code, type, body]) => { res.writeHead(code, { 'content-type': type }).end(body); },
      (err: unknown) => { res.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(err)}\n`); });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => { server.off('error', reject); resolve(); });
  });
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('bug: HTTP server has no TCP address after listen');
  return {
    port: addr.port,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
