// Child process that runs llama.cpp through node-llama-cpp (fetched by scripts/fetch-llama-cpp.sh into an isolated
// folder, passed as argv[2]). It reads one JSON request per line on stdin and answers one JSON line on stdout;
// llama.cpp's own logs go to stderr. Timings are taken here, around the evaluation calls only, so the pipe between
// the processes never counts.
//   {"op":"load","model":FILE,"contextSize":N,"threads":T,"batchSize":B,"flashAttention":bool}
//     -> {"ok":true,"contextSize":N','batchSize":B,"threads":T,"flashAttention":bool,"llamaCppRelease":S}
//   {"op":"run","prompt":[ids],"decode":K,"logits":bool}
//     -> {"ok":true,"prefillMs":ms,"decodeMs":[ms x K],"tokens":[K+1 greedy ids],"logits":[[V]...]?}
//   {"op":"close"} -> {"ok":true}, then exit
// Any failure answers {"ok":false,"error":MESSAGE}.
import { createInterface } from 'node:readline';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';

interface NlcSequence {
  clearHistory(): Promise<void>;
  controlledEvaluate(input: Array<number | [number, { generateNext: Record<string, unknown> }]>):
    Promise<Array<undefined | { next?: { token?: number; logits?: Map<number, number> } }>>;
}
interface NlcContext { contextSize: number; batchSize: number; getSequence(): NlcSequence; dispose(): Promise<void> }
interface NlcModel {
  createContext(o: Record<string, unknown>): Promise<NlcContext>;
  dispose(): Promise<void>;
}
interface NlcLlama { loadModel(o: Record<string, unknown>): Promise<NlcModel>; llamaCppRelease: { release: string }; dispose(): Promise<void> }

const cacheDir = process.argv[2];
if (!cacheDir) { process.stderr.write('llamacpp-child: usage: llamacpp-child.ts CACHE_DIR\n'); process.exit(2); }
const nlc = await import(pathToFileURL(path.join(cacheDir, 'node_modules/node-llama-cpp/dist/index.js')).href) as {
  getLlama(o: Record<string, unknown>): Promise<NlcLlama>;
};

let llama: NlcLlama | undefined;
let model: NlcModel | undefined;
let ctx: NlcContext | undefined;
let seq: NlcSequence | undefined;
let loaded = { model: '', threads: 0 };

async function load(req: Record<string, unknown>): Promise<Record<string, unknown>> {
  const threads = Number(req.threads);
  if (!llama || loaded.threads !== threads) {
    await llama?.dispose();
    llama = await nlc.getLlama({ gpu: false, build: 'never', maxThreads: threads, logLevel: 'warn', progressLogs: false,
      logger: (level: string, message: string) => process.stderr.write(`[llama.cpp ${level}] ${message}\n`) });
    model = undefined;
  }
  await ctx?.dispose();
  ctx = undefined;
  if (!model || loaded.model !== req.model) {
    await model?.dispose();
    model = await llama.loadModel({ modelPath: String(req.model), gpuLayers: 0 });
  }
  loaded = { model: String(req.model), threads };
  const flashAttention = req.flashAttention === true;
  ctx = await model.createContext({ contextSize: Number(req.contextSize), batchSize: Number(req.batchSize), sequences: 1,
    threads: { ideal: threads, min: threads }, flashAttention, experimentalKvCacheKeyType: 'F16', experimentalKvCacheValueType: 'F16' });
  seq = ctx.getSequence();
  return { contextSize: ctx.contextSize, batchSize: ctx.batchSize, threads, flashAttention, llamaCppRelease: llama.llamaCppRelease.release };
}

async function run(req: Record<string, unknown>): Promise<Record<string, unknown>> {
  if (!seq) throw new Error('run before load');
  const prompt = req.prompt as number[];
  const decode = Number(req.decode);
  const wantLogits = req.logits === true;
  const next = { token: true, logits: wantLogits, options: { temperature: 0 } };
  await seq.clearHistory();
  const tokens: number[] = [];
  const logits: number[][] = [];
  const take = (out: Awaited<ReturnType<NlcSequence['controlledEvaluate']>>, i: number): number => {
    const n = out[i]?.next;
    if (n?.token === undefined) throw new Error(`llama.cpp produced no token for input ${i}`);
    tokens.push(n.token);
    if (wantLogits) {
      if (!n.logits) throw new Error('llama.cpp returned no logits');
      const row = new Array<number>(n.logits.size);
      for (const [id, v] of n.logits) row[id] = v;
      logits.push(row);
    }
    return n.token;
  };
  // prefill: all prompt tokens in one call, greedy first token from the last one (as our engine's prefill step)
  const input: Array<number | [number, { generateNext: Record<string, unknown> }]> = prompt.slice(0, -1);
  input.push([prompt[prompt.length - 1], { generateNext: next }]);
  let t0 = performance.now();
  let out = await seq.controlledEvaluate(input);
  const prefillMs = performance.now() - t0;
  let tok = take(out, input.length - 1);
  const decodeMs: number[] = [];
  for (let i = 0; i < decode; i++) {
    t0 = performance.now();
    out = await seq.controlledEvaluate([[tok, { generateNext: next }]]);
    decodeMs.push(performance.now() - t0);
    tok = take(out, 0);
  }
  return { prefillMs, decodeMs, tokens, ...(wantLogits ? { logits } : {}) };
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let reply: Record<string, unknown>;
  try {
    const req = JSON.parse(line) as Record<string, unknown>;
    if (req.op === 'load') reply = { ok: true, ...(await load(req)) };
    else if (req.op === 'run') reply = { ok: true, ...(await run(req)) };
    else if (req.op === 'close') {
      await ctx?.dispose(); await model?.dispose(); await llama?.dispose();
      process.stdout.write(JSON.stringify({ ok: true }) + '\n');
      break;
    } else reply = { ok: false, error: `unknown op ${JSON.stringify(req.op)}` };
  } catch (err) {
    reply = { ok: false, error: (err as Error).stack ?? String(err) };
  }
  process.stdout.write(JSON.stringify(reply) + '\n');
}
process.exit(0);
