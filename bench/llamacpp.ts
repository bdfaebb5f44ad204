// llama.cpp, driven from a child process (bench/llamacpp-child.ts) through node-llama-cpp's prebuilt CPU binary,
// which scripts/fetch-llama-cpp.sh puts in an isolated cache folder (never a project dependency). A child process
// keeps llama.cpp's threads and allocations out of the process that runs our engine, so interleaved runs of the two
// do not share a heap or a thread pool.
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface, type Interface } from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const NODE_LLAMA_CPP_VERSION = '3.22.1';

/**
 * Makes sure llama.cpp is fetched (scripts/fetch-llama-cpp.sh: npm pack + npm install into .kvfleet-cache/) and
 * returns its folder; `KVFLEET_LLAMA_CPP_DIR` names an existing one instead. Throws with npm's own message when the
 * registry cannot be reached.
 */
export function ensureLlamaCpp(): string {
  const dir = process.env.KVFLEET_LLAMA_CPP_DIR;
  if (dir) return dir;
  try {
    return execFileSync('bash', [path.join(ROOT, 'scripts/fetch-llama-cpp.sh')], {
      env: { ...process.env, NODE_LLAMA_CPP_VERSION }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000,
    }).trim().split('\n').pop()!;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`could not fetch llama.cpp (node-llama-cpp ${NODE_LLAMA_CPP_VERSION}, linux-x64) with scripts/fetch-llama-cpp.sh: `
      + `${(e.stderr || e.message).trim()}`, { cause: err });
  }
}

export interface LlamaLoadOptions {
  model: string;         // .gguf file
  contextSize: number;   // tokens; llama.cpp may round it up (reported back)
  threads: number;
  batchSize?: number;    // llama.cpp's n_batch = n_ubatch; default 512 (llama.cpp's default ubatch)
  flashAttention?: boolean;
}
export interface LlamaLoaded { contextSize: number; batchSize: number; threads: number; flashAttention: boolean; llamaCppRelease: string }
export interface LlamaRun {
  prefillMs: number;     // all prompt tokens, plus greedy sampling of the first new token
  decodeMs: number[];    // one per decode token (evaluate one token + greedy sample)
  tokens: number[];      // decode + 1 greedy tokens
  logits?: number[][];   // [decode + 1][V], when asked for
}

export class LlamaCpp {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly lines: Interface;
  private readonly waiting: Array<{ resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }> = [];
  private stderrTail = '';
  private exited: Error | undefined;

  private constructor(cacheDir: string) {
    this.child = spawn(process.execPath, [path.join(ROOT, 'bench/llamacpp-child.ts'), cacheDir], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stderr.on('data', (b: Buffer) => { this.stderrTail = (this.stderrTail + b.toString()).slice(-4000); });
    this.lines = createInterface({ input: this.child.stdout });
    this.lines.on('line', (line) => {
      const w = this.waiting.shift();
      if (!w) return;
      try { w.resolve(JSON.parse(line) as Record<string, unknown>); } catch { w.reject(new Error(`llama.cpp child wrote a non-JSON line: ${line.slice(0, 200)}`)); }
    });
    this.child.on('exit', (code, signal) => {
      this.exited = new Error(`llama.cpp child exited (code ${code}, signal ${signal}); its stderr ends with:\n${this.stderrTail}`);
      for (const w of this.waiting.splice(0)) w.reject(this.exited);
    });
  }

  /** Fetches llama.cpp if needed and starts the child process. */
  static start(cacheDir = ensureLlamaCpp()): LlamaCpp { return new LlamaCpp(cacheDir); }

  private request(req: Record<string, unknown>): Promise<Record<string, unknown>> {
    if (this.exited) return Promise.reject(this.exited);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve: (r) => {
        if (r.ok === true) resolve(r);
        else reject(new Error(`llama.cpp ${String(req.op)}: ${String(r.error)}`));
      }, reject });
      this.child.stdin.write(JSON.stringify(req) + '\n');
    });
  }

  async load(o: LlamaLoadOptions): Promise<LlamaLoaded> {
    const r = await this.request({ op: 'load', batchSize: 512, flashAttention: false, ...o });
    return { contextSize: r.contextSize as number, batchSize: r.batchSize as number, threads: r.threads as number,
      flashAttention: r.flashAttention as boolean, llamaCppRelease: r.llamaCppRelease as string };
  }

  /** Clears the sequence, prefills `prompt`, then decodes `decode` greedy tokens. */
  async run(prompt: number[], decode: number, logits = false): Promise<LlamaRun> {
    const r = await this.request({ op: 'run', prompt, decode, logits });
    return { prefillMs: r.prefillMs as number, decodeMs: r.decodeMs as number[], tokens: r.tokens as number[],
      ...(logits ? { logits: r.logits as number[][] } : {}) };
  }

  async close(): Promise<void> {
    if (this.exited) return;
    const done = new Promise<void>((r) => this.child.once('exit', () => r()));
    await this.request({ op: 'close' }).catch(() => undefined);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await done;
    clearTimeout(timer);
  }
}
