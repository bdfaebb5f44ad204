// `kvfleet up`: the local stack (a model, a ledger, workers, a router, a live table and a demo request). Options are
// declared here; bin/stack/up.ts runs them, imported lazily so `kvfleet --help` stays fast.
import { Option, type Command } from 'commander';
import type { UpFlags } from '../stack/up.ts';
import { parseBytes, parseInteger } from './generate.ts';

export function registerUp(program: Command): void {
  program.command('up')
    .description('run the whole stack on this machine: a synthetic model (written once to ~/.cache/kvfleet) unless '
      + '--model, redis-server as the ledger when it is on PATH (else one process over an in-memory ledger), K workers '
      + 'and a router; shows each worker\'s pages, pressure and KV compression live, streams a demo request, and stops '
      + 'everything on Ctrl-C')
    .option('--port <n>', 'the router\'s gRPC port on 127.0.0.1 (0 = a free one)', parseInteger(0, 65535), 50051)
    .option('--model <dir>', 'model directory (config.json, *.safetensors, tokenizer.json) instead of the synthetic one')
    .option('--workers <k>', 'number of workers', parseInteger(1, 16), 2)
    .addOption(new Option('--preset <name>', 'synthetic model size when no --model is given').choices(['small', 'tiny']).default('small'))
    .option('--kv-memory <bytes>', 'page pool per worker, e.g. 256Mi (default: 1/4 of free memory split over the '
      + 'workers, at most 1Gi each; with CUDA 0.8 of the GPU split over the workers)', parseBytes)
    .option('--no-demo', 'do not send the demo request')
    .option('--no-redis', 'use the in-memory ledger (one process) even when redis-server is on PATH')
    .option('--json-status', 'print one JSON status document per second on stdout (messages go to stderr)')
    .option('--log-dir <dir>', 'where the workers, router and redis-server write their logs (default: a new temporary folder)')
    .action(async (flags: UpFlags) => {
      const { runUp } = await import('../stack/up.ts');
      await runUp(flags);
    });
}
