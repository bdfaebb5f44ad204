// `kvfleet generate`: one prompt through the engine in this process (CONTRACTS.md, "Command line"). This file only
// declares and parses the flags (each bad value is rejected by commander with the flag's name); cross-flag checks
// and the run itself live in bin/generate.ts, imported lazily so `kvfleet --help` loads no engine.
import { InvalidArgumentError, Option, type Command } from 'commander';

export const METHODS = ['FULL', 'SNAPKV', 'PYRAMIDKV', 'ADA_SNAPKV', 'ADA_PYRAMIDKV'] as const;
export type MethodName = (typeof METHODS)[number];

/** ADA_SNAPKV, AdaSnapKV, ada-snapkv, adasnapkv ... : case, '_' and '-' do not matter. */
export function parseMethod(v: string): MethodName {
  const key = v.replace(/[_-]/g, '').toUpperCase();
  const m = METHODS.find((x) => x.replace(/_/g, '') === key);
  if (!m) throw new InvalidArgumentError(`unknown method; one of ${METHODS.join(', ')} (any case, e.g. AdaSnapKV).`);
  return m;
}

export function parseInteger(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`must be an integer in [${min}, ${max === Number.MAX_SAFE_INTEGER ? 'inf' : max}].`);
    }
    return n;
  };
}

/** A finite number with lo (inclusive or not) <= x <= hi (inclusive or not). */
export function parseNumber(lo: number, loIncl: boolean, hi: number, hiIncl: boolean) {
  return (v: string): number => {
    const x = Number(v);
    const ok = v.trim() !== '' && Number.isFinite(x) && (loIncl ? x >= lo : x > lo) && (hiIncl ? x <= hi : x < hi);
    if (!ok) {
      throw new InvalidArgumentError(`must be a number in ${loIncl ? '[' : '('}${lo}, ${hi === Infinity ? 'inf' : hi}${hiIncl ? ']' : ')'}.`);
    }
    return x;
  };
}

/** A seed: a decimal integer in [0, 2^64), kept as a string so no precision is lost. */
export function parseSeed(v: string): string {
  if (!/^\d+$/.test(v) || BigInt(v) >= 1n << 64n) throw new InvalidArgumentError('must be an integer in [0, 2^64).');
  return BigInt(v).toString();
}

const UNITS: Record<string, number> = { '': 1, K: 1e3, M: 1e6, G: 1e9, KI: 2 ** 10, MI: 2 ** 20, GI: 2 ** 30 };
/** Bytes: an integer with an optional K, M, G (powers of 1000) or Ki, Mi, Gi (powers of 1024) suffix, B optional. */
export function parseBytes(v: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]i?)?b?$/i.exec(v.trim());
  const n = m ? Math.floor(Number(m[1]) * UNITS[(m[2] ?? '').toUpperCase()]) : NaN;
  if (!m || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('must be a byte count such as 268435456, 256Mi or 1G.');
  return n;
}

export interface GenerateFlags {
  model: string;
  prompt: string;
  maxNewTokens: number;
  temperature: number;
  topP?: number;
  topK?: number;
  seed?: string;
  ignoreEos?: boolean;
  stopId?: number[];
  kvDtype: 'f16' | 'f32';
  method?: MethodName;
  tokensPerHead?: number;
  keepRatio?: number;
  window?: number;
  floorAlpha?: number;
  poolKernel?: number;
  pooling?: 'max' | 'avg';
  gqaReduce?: 'mean' | 'max';
  pyramidBeta?: number;
  decodeMaxTokensPerHead?: number;
  kvMemory?: number;
  numPages?: number;
  pageSize: number;
  threads?: number;
  json?: boolean;
}

export function registerGenerate(program: Command): void {
  program.command('generate')
    .description('generate text for one prompt with the engine in this process; streams the text to stdout '
      + 'and a summary to stderr, or prints one JSON document with --json')
    .requiredOption('--model <dir>', 'model directory (config.json, *.safetensors, tokenizer.json)')
    .requiredOption('--prompt <text>', 'prompt text')
    .option('--max-new-tokens <n>', 'tokens to generate at most', parseInteger(1), 64)
    .option('--temperature <t>', 'sampling temperature; 0 = greedy', parseNumber(0, true, Infinity, false), 1)
    .option('--top-p <p>', 'nucleus sampling mass, in (0, 1] (default 1 = off)', parseNumber(0, false, 1, true))
    .option('--top-k <k>', 'sample among the k most likely tokens (default 0 = off)', parseInteger(0))
    .option('--seed <s>', 'random seed, an integer in [0, 2^64) (default: random, reported with --json)', parseSeed)
    .option('--ignore-eos', 'keep generating after the end-of-sequence token')
    .option('--stop-id <id>', 'a token id that ends generation (finish reason STOP); repeatable',
      (v: string, prev: number[] | undefined) => [...(prev ?? []), parseInteger(0, 2 ** 31 - 1)(v)])
    .addOption(new Option('--kv-dtype <dtype>', 'K/V page dtype').choices(['f16', 'f32']).default('f16'))
    .option('--method <m>', 'compression method: FULL, SNAPKV, PYRAMIDKV, ADA_SNAPKV, ADA_PYRAMIDKV, any case '
      + '(default: the built-in default budget, ADA_SNAPKV with 1024 tokens per head)', parseMethod)
    .option('--tokens-per-head <b>', 'budget B in tokens per KV head, >= window + 1 (default 1024 unless --keep-ratio)',
      parseInteger(1))
    .option('--keep-ratio <r>', 'budget as the fraction of the prompt kept, in (0, 1]', parseNumber(0, false, 1, true))
    .option('--window <w>', 'observation window (default 32)', parseInteger(1))
    .option('--floor-alpha <a>', 'Ada-KV safeguard fraction, in [0, 1] (default 0.2)', parseNumber(0, true, 1, true))
    .option('--pool-kernel <k>', 'SnapKV pooling kernel, odd (default 7)', (v: string) => {
      const k = parseInteger(1)(v);
      if (k % 2 === 0) throw new InvalidArgumentError('must be odd.');
      return k;
    })
    .addOption(new Option('--pooling <mode>', 'SnapKV pooling (default max)').choices(['max', 'avg']))
    .addOption(new Option('--gqa-reduce <mode>', 'reduction over a KV head\'s query heads (default mean)').choices(['mean', 'max']))
    .option('--pyramid-beta <b>', 'pyramid schedule ratio, > 1 (default 20)', parseNumber(1, false, Infinity, false))
    .option('--decode-max-tokens-per-head <d>', 'decode cap D, mean tokens per head (default 0 = off)', parseInteger(0))
    .option('--kv-memory <bytes>', 'KV pool size in bytes, e.g. 256Mi (default: the request\'s footprint plus a margin)',
      parseBytes)
    .option('--num-pages <n>', 'KV pool size as an exact page count (instead of --kv-memory)', parseInteger(1))
    .option('--page-size <p>', 'tokens per page', parseInteger(1, 4096), 16)
    .option('--threads <n>', 'engine threads (default: the engine\'s choice)', parseInteger(1, 1024))
    .option('--json', 'print one JSON document instead of streaming text')
    .action(async (flags: GenerateFlags) => {
      const { runGenerate } = await import('../generate.ts');
      await runGenerate(flags);
    });
}
