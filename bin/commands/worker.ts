// `kvfleet worker`: one pod's gRPC server over the engine. Options are declared here; worker/config.ts parses and
// validates them (with their KVFLEET_* environment twins) once, and worker/server.ts runs them.
import type { Command } from 'commander';

interface WorkerCliOptions {
  model?: string; port?: string; host?: string; kvMemory?: string; kvMemoryFraction?: string; numPages?: string;
  pageSize?: string; kvDtype?: string; maxRunning?: string; maxModelLen?: string; admission?: string;
  maxQueue?: string; maxPrefillTokens?: string; workerId?: string; metricsPort?: string; logLevel?: string;
}

export function registerWorker(program: Command): void {
  program.command('worker')
    .description('serve kvfleet.v1.Generation and kvfleet.v1.Worker over gRPC with continuous batching; every option '
      + 'also reads KVFLEET_<NAME> from the environment (e.g. KVFLEET_NUM_PAGES); worker id: --worker-id, POD_NAME, host:port')
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
    .option('--metrics-port <n>', 'Prometheus metrics port (default 9400, 0 = off)')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (default info)')
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
          process.stderr.write(`kvfleet worker: ${sig}, draining\n`);
          void w.shutdown().then(resolve);
        };
        process.once('SIGTERM', onSignal);
        process.once('SIGINT', onSignal);
      });
    });
}
