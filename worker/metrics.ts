// The worker's Prometheus metrics (prom-client), on their own registry so several workers can live in one process
// (tests, benchmarks). Names routers and autoscalers already read keep vLLM's spelling (colons are valid metric
// name characters); kvfleet's own are kvfleet_worker_*. Pool and queue gauges are read from the scheduler's snapshot
// at scrape time (never from the engine during a step); counters and histograms are fed by the server and the
// scheduler's hooks.
import http from 'node:http';
import client from 'prom-client';
import type { CapacitySnapshot } from './scheduler.ts';

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export interface MetricsSource {
  /** the scheduler's snapshot, reservedPages as GetCapacity reports it */
  capacity(): CapacitySnapshot;
  draining(): boolean;
}

export class WorkerMetrics {
  readonly registry = new client.Registry();
  private keptTotal = 0;
  private fullTotal = 0;
  private readonly m;

  constructor(src: MetricsSource, labels: Record<string, string> = {}) {
    const r = [this.registry];
    this.registry.setDefaultLabels(labels);
    const totals = () => ({ kept: this.keptTotal, full: this.fullTotal });
    this.m = {
      running: new client.Gauge({ name: 'vllm:num_requests_running', help: 'requests admitted to the page pool (prefilling or decoding)', registers: r,
        collect() { this.set(src.capacity().running); } }),
      waiting: new client.Gauge({ name: 'vllm:num_requests_waiting', help: 'requests queued for pages', registers: r,
        collect() { this.set(src.capacity().waiting); } }),
      usage: new client.Gauge({ name: 'vllm:kv_cache_usage_perc', help: 'fraction of the page pool held by sequences (0..1)', registers: r,
        collect() { const c = src.capacity(); this.set(c.totalPages > 0 ? c.heldPages / c.totalPages : 0); } }),
      preemptions: new client.Counter({ name: 'vllm:num_preemptions_total', help: 'running requests preempted by recompute', registers: r }),
      pages: new client.Gauge({ name: 'kvfleet_worker_kv_pages', help: 'pages by state: total, free (uncommitted: total - held - growth committed to admitted requests, the ledger\'s free_pages), reserved, held', labelNames: ['state'], registers: r,
        collect() {
          const c = src.capacity();
          this.set({ state: 'total' }, c.totalPages);
          this.set({ state: 'free' }, c.freePages);
          this.set({ state: 'reserved' }, c.reservedPages);
          this.set({ state: 'held' }, c.heldPages);
        } }),
      pressure: new client.Gauge({ name: 'kvfleet_worker_kv_pressure', help: '(total - free + reserved) / total pages (ARCHITECTURE.md, "Capacity, pressure")', registers: r,
        collect() { const c = src.capacity(); this.set(c.totalPages > 0 ? (c.totalPages - c.freePages + c.reservedPages) / c.totalPages : 0); } }),
      draining: new client.Gauge({ name: 'kvfleet_worker_draining', help: '1 while the worker admits no new requests', registers: r,
        collect() { this.set(src.draining() ? 1 : 0); } }),
      kept: new client.Counter({ name: 'kvfleet_worker_kv_kept_tokens_total', help: 'K/V entries held at the end of finished requests, summed over layers and KV heads', registers: r }),
      full: new client.Counter({ name: 'kvfleet_worker_kv_full_tokens_total', help: 'K/V entries a full cache would have held for the same finished requests', registers: r }),
      ratio: new client.Gauge({ name: 'kvfleet_worker_kv_compression_ratio', help: 'full / kept tokens over finished requests (1 = uncompressed)', registers: r,
        collect() { const t = totals(); this.set(t.kept > 0 ? t.full / t.kept : 1); } }),
      generated: new client.Counter({ name: 'kvfleet_worker_generation_tokens_total', help: 'tokens streamed to clients (replayed resume tokens excluded)', registers: r }),
      promptTokens: new client.Counter({ name: 'kvfleet_worker_prompt_tokens_total', help: 'prompt tokens of admitted-and-finished requests', registers: r }),
      requests: new client.Counter({ name: 'kvfleet_worker_requests_total', help: 'Generate calls by final status code', labelNames: ['code'], registers: r }),
      ttft: new client.Histogram({ name: 'kvfleet_worker_time_to_first_token_seconds', help: 'from the Generate call to its first streamed token', buckets: LATENCY_BUCKETS, registers: r }),
      itl: new client.Histogram({ name: 'kvfleet_worker_inter_token_latency_seconds', help: 'between two streamed tokens of one request', buckets: LATENCY_BUCKETS, registers: r }),
      step: new client.Histogram({ name: 'kvfleet_worker_step_duration_seconds', help: 'one engine step (every running decode plus the prefill work that fits)', buckets: LATENCY_BUCKETS, registers: r }),
      stepSeqs: new client.Histogram({ name: 'kvfleet_worker_step_sequences', help: 'sequences in one engine step', buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256], registers: r }),
    };
  }

  preempted(): void { this.m.preemptions.inc(); }
  step(ms: number, sequences: number): void { this.m.step.observe(ms / 1000); this.m.stepSeqs.observe(sequences); }
  firstToken(seconds: number): void { this.m.ttft.observe(seconds); }
  interToken(seconds: number): void { this.m.itl.observe(seconds); }
  token(): void { this.m.generated.inc(); }
  request(code: string): void { this.m.requests.inc({ code }); }

  /** A request finished: its KV statistics, taken before its pages were released. */
  finished(keptTokens: number, fullTokens: number, promptTokens: number): void {
    this.keptTotal += keptTokens;
    this.fullTotal += fullTokens;
    this.m.kept.inc(keptTokens);
    this.m.full.inc(fullTokens);
    this.m.promptTokens.inc(promptTokens);
  }

  /** Serves GET /metrics (and /healthz for plain HTTP checks) on host:port; resolves with the bound port. */
  serve(host: string, port: number): Promise<{ port: number; close(): Promise<void> }> {
    const srv = http.createServer((req, res) => {
      const url = (req.url ?? '').split('?')[0];
      if (req.method === 'GET' && url === '/metrics') {
        this.registry.metrics().then((body) => {
          res.writeHead(200, { 'content-type': this.registry.contentType });
          res.end(body);
        }, (err: unknown) => { res.writeHead(500); res.end(`metrics failed: ${(err as Error).message}\n`); });
      } else if (req.method === 'GET' && url === '/healthz') {
        res.writeHead(200); res.end('ok\n');
      } else {
        res.writeHead(404); res.end();
      }
    });
    return new Promise((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(port, host, () => {
        srv.off('error', reject);
        const a = srv.address();
        resolve({
          port: typeof a === 'object' && a !== null ? a.port : port,
          close: () => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }),
        });
      });
    });
  }
}
