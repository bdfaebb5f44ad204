// `kvfleet client generate`: one request to a router (or a worker) over gRPC, streamed to stdout. Flags are parsed
// one by one here (commander names the bad flag); the call lives in bin/stack/client.ts, imported lazily.
import { InvalidArgumentError, type Command } from 'commander';
import type { ClientGenerateFlags } from '../stack/client.ts';
import { parseInteger, parseMethod, parseNumber, parseSeed } from './generate.ts';

/** --token-ids 1,2,3: non-negative integers, comma-separated */
function parseTokenIds(v: string): number[] {
  const ids = v.split(',').map((x) => x.trim()).filter((x) => x !== '');
  if (ids.length === 0 || ids.some((x) => !/^\d+$/.test(x) || Number(x) > 0xffffffff)) {
    throw new InvalidArgumentError(`expected comma-separated token ids (non-negative integers), got '${v}'`);
  }
  return ids.map(Number);
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

export function registerClient(program: Command): void {
  const client = program.command('client').description('talk to a running router or worker over gRPC');
  client.command('generate')
    .description('send one prompt (Generation.Generate) and stream the answer to stdout, a summary to stderr; '
      + '--json prints one document {text, token_ids, finish_reason, usage, kv_stats, worker_id, seed}; a gRPC '
      + 'error exits 1 with its status name')
    .requiredOption('--target <host:port>', 'the router (kvfleet up: 127.0.0.1:50051) or a worker')
    .option('--prompt <text>', 'prompt text (the router tokenizes it)')
    .option('--token-ids <ids>', 'the prompt as token ids, comma-separated (instead of --prompt; for a router without --tokenizer)',
      parseTokenIds)
    .option('--budget <name>', 'a budget the fleet allows, by name (default: the fleet\'s default budget)')
    .option('--method <m>', 'inline budget: FULL, SNAPKV, PYRAMIDKV, ADA_SNAPKV, ADA_PYRAMIDKV (any case)', parseMethod)
    .option('--tokens-per-head <b>', 'inline budget: tokens kept per KV head', parseInteger(1))
    .option('--keep-ratio <r>', 'inline budget: fraction of the prompt kept, in (0, 1]', parseNumber(0, false, 1, true))
    .option('--max-new-tokens <n>', 'tokens to generate at most (server default 256)', parseInteger(1))
    .option('--temperature <t>', 'sampling temperature; 0 = greedy (server default 1)', parseNumber(0, true, Infinity, false))
    .option('--top-p <p>', 'nucleus sampling: keep the smallest set of tokens holding this probability, in (0, 1] (server default 1)',
      parseNumber(0, false, 1, true))
    .option('--top-k <k>', 'sample among the k most likely tokens (server default 0 = off)', parseInteger(0))
    .option('--stop <text>', 'stop when this text appears (repeatable); the stop text is not returned', collect, [])
    .option('--seed <s>', 'random seed in [0, 2^64) (default: chosen by the server, reported back)', parseSeed)
    .option('--ignore-eos', 'keep generating after the end-of-sequence token')
    .option('--json', 'print one JSON document instead of streaming text')
    .option('--token <file>', 'file holding a bearer token (the router\'s --auth-token-file)')
    .option('--tls-ca <file>', 'dial TLS, trusting this PEM CA (the router\'s --tls-cert issuer)')
    .option('--timeout-ms <n>', 'deadline for the whole call (default 0 = none)', parseInteger(0))
    .action(async (flags: ClientGenerateFlags) => {
      const { runClientGenerate } = await import('../stack/client.ts');
      await runClientGenerate(flags);
    });
}
