// `kvfleet worker`: one pod's gRPC server over the engine. Options are declared here; worker/config.ts parses and
// validates them (with their KVFLEET_* environment twins) once, and worker/server.ts runs them.
//
// Signals: SIGTERM (or SIGINT) drains (CONTRACTS.md, "Drain"): no new requests, health NOT_SERVING, draining=1 in the
// ledger; running and queued work finishes for up to --drain-timeout-ms, then the worker leaves the ledger and the
// process exits 0. Worker.Drain or a drain order on the ledger's events channel drains without exiting.
import type { Command } from 'commander';

interface WorkerCliOptions {
  model?: string; port?: string; host?: string; kvMemory?: string; kvMemoryFraction?: string; numPages?: string;
  pageSize?: string; kvDtype?: string; maxRunning?: string; maxModelLen?: string; admission?: string;
  maxQueue?: string; maxPrefillTokens?: string; workerId?: string; metricsPort?: string; logLevel?: string;
  redis?: string; redisPasswordFile?: string; fleet?: string; heartbeatMs?: string; budgetRefreshMs?: string;
  drainTimeoutMs?: string; authTokenFile?: string; tlsCert?: string; tlsKey?: string; tlsClientCa?: string;
}

export function registerWorker(program: Command): void {
  program.command('worker')
    .description('serve kvfleet.v1.Generation and kvfleet.v1.Worker over gRPC with continuous batching; every option '
      + 'also reads KVFLEET_<NAME> from the environment (e.g. KVFLEET_NUM_PAGES; --redis: KVFLEET_REDIS_URL); '
      + 'worker id: --worker-id, POD_NAME, host:port; ledger address: POD_IP:port, else 127.0.0.1:port')
    .option('--model <dir>', 'model directory (config.json, safetensors, tokenizer.json)')
    .option('--port <n>', 'gRPC port (0 = any free port)')
    .option('--host <addr>', 'bind address (default 127.0.0.1)')
    .option('--kv-memory <bytes>', 'page pool size in bytes (suffixes K M G Ki Mi Gi)')
    .option('--kv-memory-fraction <f>', 'fraction of free memory for the page pool (CPU: free host memory)')
    .option('--num-pages <n>', 'exact page count (instead of --kv-memory)')
    .option('--page-size <n>', 'tokens per page (default 16)')
    .option('--kv-dtype <dtype>', 'f16 or f32 pages (default f16)')
    .option('--max-running <n>', 'running sequences at most (default 256)')
    .option('--max-model-len <n>', 'prompt + max_new_tokens at most (default: the model\'s context)')
    .option('--admission <mode>', 'reserve (default; never preempts) or optimistic (preempts by recompute)')
    .option('--max-queue <n>', 'waiting requests at most; RESOURCE_EXHAUSTED past it (default 1024)')
    .option('--max-prefill-tokens <n>', 'prefill work per engine step, in prompt tokens through all layers (default 2048)')
    .option('--worker-id <id>', 'worker id (default POD_NAME, else host:port)')
    .option('--metrics-port <n>', 'Prometheus /metrics port (default 9400, 0 = off)')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (default info)')
    .option('--redis <url>', 'the fleet ledger, redis:// or rediss:// (with --fleet)')
    .option('--redis-password-file <file>', 'Redis password, read from this file')
    .option('--fleet <ns/name>', 'the fleet this worker joins (with --redis)')
    .option('--heartbeat-ms <n>', 'ledger heartbeat period (default 500)')
    .option('--budget-refresh-ms <n>', 'periodic re-read of the fleet budgets (default 5000; events apply at once)')
    .option('--drain-timeout-ms <n>', 'after SIGTERM, how long running work may take before it is cancelled (default 600000)')
    .option('--stall-timeout-ms <n>', 'stop a request whose client reads nothing this long while its stream buffer is full, freeing its pages (default 60000, 0 = never)')
    .option('--auth-token-file <file>', 'require "authorization: Bearer <token>" with the token in this file (health stays open)')
    .option('--tls-cert <file>', 'serve TLS with this PEM certificate chain (with --tls-key)')
    .option('--tls-key <file>', 'PEM private key for --tls-cert')
    .option('--tls-client-ca <file>', 'also require client certificates signed by this PEM CA (mutual TLS)')
    .action(async (opts: WorkerCliOptions) => {
      const { parseWorkerConfig } = await import('../../worker/config.ts');
      const { startWorker } = await import('../../worker/server.ts');
      const cfg = parseWorkerConfig(opts, process.env);
      const w = await startWorker(cfg);
      process.stdout.write(`worker ${w.workerId} listening on ${w.address}\n`);
      await new Promise<void>((resolve) => {
        let signalled = false;
        const onSignal = (sig: NodeJS.Signals) => {
          if (signalled) return;
          signalled = true;
          process.stderr.write(`kvfleet worker: ${sig}, draining (up to ${cfg.drainTimeoutMs} ms)\n`);
          void w.shutdown({ graceMs: cfg.drainTimeoutMs }).then(resolve);
        };
        process.once('SIGTERM', onSignal);
        process.once('SIGINT', onSignal);
      });
    });
}
