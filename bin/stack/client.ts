// `kvfleet client generate` and the demo request of `kvfleet up`: one Generation.Generate call to a router (or a
// worker), its text streamed as it arrives. A gRPC failure becomes a ClientStatusError whose message starts with the
// status name (UNAVAILABLE, NOT_FOUND, ...), so scripts and people see what the server said.
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import {
  generationClient, type BudgetSelector, type BudgetSpec, type GenerateRequest, type GenerateResponse, type KVStats,
  type Method, type SamplingParams, type Usage,
} from '../../proto/index.ts';

/** The server answered with a non-OK status (or the call could not be made). */
export class ClientStatusError extends Error {
  readonly code: grpc.status;
  constructor(code: grpc.status, details: string) {
    super(`${grpc.status[code] ?? `status ${code}`}: ${details}`);
    this.name = 'ClientStatusError';
    this.code = code;
  }
}

/** A flag combination that cannot work; the message names the flags. */
export class ClientUsageError extends Error {
  constructor(message: string) { super(message); this.name = 'ClientUsageError'; }
}

export interface ClientGenerateFlags {
  target: string;
  /** prompt text (the router tokenizes it); or tokenIds */
  prompt?: string;
  /** prompt as token ids (for a router without a tokenizer, or exact prompts) */
  tokenIds?: number[];
  topP?: number;
  topK?: number;
  /** stop strings (repeatable) */
  stop?: string[];
  budget?: string;
  method?: Method;
  tokensPerHead?: number;
  keepRatio?: number;
  maxNewTokens?: number;
  temperature?: number;
  seed?: string;
  ignoreEos?: boolean;
  json?: boolean;
  /** file holding the bearer token (the router's --auth-token-file) */
  token?: string;
  /** dial TLS, trusting this PEM CA */
  tlsCa?: string;
  /** deadline for the whole call; 0 = none */
  timeoutMs?: number;
}

/** What one finished call returns (the --json document). */
export interface GenerateResult {
  text: string;
  token_ids: number[];
  finish_reason: string;
  usage: Usage | null;
  kv_stats: KVStats | null;
  worker_id: string;
  seed: string;
}

/** host:port, [v6]:port, or a gRPC target with a scheme (dns:, unix:, ipv4:, ipv6:). */
export function checkTarget(target: string): string {
  const t = target.trim();
  if (/^[a-z][a-z0-9+.-]*:/i.test(t) && !/^[^:/]+:\d+$/.test(t)) return t;  // dns:///x:1, unix:/path
  if (!/^(\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+):\d{1,5}$/.test(t) || Number(t.slice(t.lastIndexOf(':') + 1)) > 65535) {
    throw new ClientUsageError(`--target '${target}': expected HOST:PORT, e.g. 127.0.0.1:50051`);
  }
  return t;
}

/** The request the flags describe. --budget (a fleet budget's name) and --method (an inline spec) exclude each other. */
export function requestFromFlags(f: ClientGenerateFlags): GenerateRequest {
  if (f.prompt !== undefined && f.tokenIds !== undefined) throw new ClientUsageError('--prompt and --token-ids are alternatives: give one');
  if (f.prompt === undefined && f.tokenIds === undefined) throw new ClientUsageError('give --prompt TEXT or --token-ids IDS');
  if (f.prompt === '') throw new ClientUsageError('--prompt: is empty');
  if (f.tokenIds !== undefined && f.tokenIds.length === 0) throw new ClientUsageError('--token-ids: is empty');
  const spec = f.method !== undefined || f.tokensPerHead !== undefined || f.keepRatio !== undefined;
  if (f.budget !== undefined && spec) {
    throw new ClientUsageError('--budget names a fleet budget; --method/--tokens-per-head/--keep-ratio give one inline: use one or the other');
  }
  if (f.tokensPerHead !== undefined && f.keepRatio !== undefined) {
    throw new ClientUsageError('--tokens-per-head and --keep-ratio are alternatives: give at most one');
  }
  let budget: BudgetSelector | undefined;
  if (f.budget !== undefined) budget = { name: f.budget };
  else if (spec) {
    const method = f.method ?? 'ADA_SNAPKV';
    if (method !== 'FULL' && f.tokensPerHead === undefined && f.keepRatio === undefined) {
      throw new ClientUsageError(`--method ${method}: give --tokens-per-head B or --keep-ratio R (only FULL needs neither)`);
    }
    const s: BudgetSpec = { method };
    if (f.tokensPerHead !== undefined) s.tokens_per_head = f.tokensPerHead;
    if (f.keepRatio !== undefined) s.keep_ratio = f.keepRatio;
    budget = { spec: s };
  }
  const sampling: SamplingParams = {};
  if (f.maxNewTokens !== undefined) sampling.max_new_tokens = f.maxNewTokens;
  if (f.temperature !== undefined) sampling.temperature = f.temperature;
  if (f.seed !== undefined) sampling.seed = f.seed;
  if (f.ignoreEos) sampling.ignore_eos = true;
  if (f.topP !== undefined) sampling.top_p = f.topP;
  if (f.topK !== undefined) sampling.top_k = f.topK;
  if (f.stop !== undefined && f.stop.length > 0) sampling.stop = f.stop;
  const prompt = f.tokenIds !== undefined ? { token_ids: { ids: f.tokenIds } } : { text: f.prompt! };
  return { ...prompt, sampling, ...(budget ? { budget } : {}) };
}

export interface CallOptions {
  /** bearer token sent as `authorization: Bearer ...` */
  token?: string;
  tlsCa?: Buffer;
  timeoutMs?: number;
  /** each streamed chunk, in order */
  onChunk?(text: string, tokenIds: number[], workerId: string): void;
}

/** One streamed Generate call; resolves with the whole answer, rejects with ClientStatusError. */
export function streamGenerate(target: string, req: GenerateRequest, o: CallOptions = {}): Promise<GenerateResult> {
  const creds = o.tlsCa ? grpc.credentials.createSsl(o.tlsCa) : grpc.credentials.createInsecure();
  const client = generationClient(target, creds);
  const md = new grpc.Metadata();
  if (o.token !== undefined) md.set('authorization', `Bearer ${o.token}`);
  const opts: grpc.CallOptions = o.timeoutMs ? { deadline: Date.now() + o.timeoutMs } : {};
  const r: GenerateResult = { text: '', token_ids: [], finish_reason: '', usage: null, kv_stats: null, worker_id: '', seed: '' };
  return new Promise<GenerateResult>((resolve, reject) => {
    const call = client.Generate(req, md, opts);
    call.on('data', (m: GenerateResponse) => {
      const ids = m.token_ids ?? [];
      r.token_ids.push(...ids);
      r.text += m.text ?? '';
      if (m.worker_id) r.worker_id = m.worker_id;
      if (m.text || ids.length > 0) o.onChunk?.(m.text ?? '', ids, m.worker_id ?? '');
      if (m.finish_reason && m.finish_reason !== 'FINISH_REASON_UNSPECIFIED') {
        r.finish_reason = m.finish_reason;
        r.usage = m.usage ?? null;
        r.kv_stats = m.kv_stats ?? null;
        r.seed = String(m.seed ?? '');
      }
    });
    call.on('error', (err: grpc.ServiceError) => { client.close(); reject(new ClientStatusError(err.code, err.details || err.message)); });
    call.on('end', () => {
      client.close();
      if (r.finish_reason === '') reject(new ClientStatusError(grpc.status.UNKNOWN, 'the stream ended without a finish reason'));
      else resolve(r);
    });
  });
}

/** full / kept tokens, the cache's compression (1 = none); undefined before any token is kept. */
export function compressionRatio(kv: KVStats | null): number | undefined {
  const kept = Number(kv?.kept_tokens ?? 0), full = Number(kv?.full_tokens ?? 0);
  return kept > 0 ? full / kept : undefined;
}

/** One line about a finished call: finish reason, tokens, worker, KV kept vs full. */
export function summaryLine(r: GenerateResult): string {
  const ratio = compressionRatio(r.kv_stats);
  const kv = r.kv_stats ? `kv kept ${r.kv_stats.kept_tokens}/${r.kv_stats.full_tokens} tokens`
    + `${ratio !== undefined ? ` (${ratio.toFixed(2)}x compression)` : ''}, peak ${r.kv_stats.peak_pages ?? 0} pages` : 'no kv stats';
  return `[${r.finish_reason}: ${r.usage?.prompt_tokens ?? 0} prompt + ${r.usage?.completion_tokens ?? 0} new tokens `
    + `on ${r.worker_id || '?'}; ${kv}; seed ${r.seed}]`;
}

function readFileFlag(flag: string, file: string): Buffer {
  try { return readFileSync(file); } catch (err) {
    throw new ClientUsageError(`${flag} ${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
}

/** The command: streams text to stdout (a summary line to stderr), or prints one JSON document with --json. */
export async function runClientGenerate(f: ClientGenerateFlags): Promise<void> {
  const target = checkTarget(f.target);
  const req = requestFromFlags(f);
  const token = f.token !== undefined ? readFileFlag('--token', f.token).toString('utf8').trim() : undefined;
  if (token === '') throw new ClientUsageError(`--token ${f.token}: the file is empty`);
  const tlsCa = f.tlsCa !== undefined ? readFileFlag('--tls-ca', f.tlsCa) : undefined;
  const r = await streamGenerate(target, req, {
    token, tlsCa, timeoutMs: f.timeoutMs,
    onChunk: f.json ? undefined : (text) => { process.stdout.write(text); },
  });
  if (f.json) {
    process.stdout.write(JSON.stringify(r) + '\n');
  } else {
    process.stdout.write('\n');
    process.stderr.write(summaryLine(r) + '\n');
  }
}
