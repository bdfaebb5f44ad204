// `kvfleet bench router`: what the router adds to the time to first token (issue 13, "Benchmark"). A real
// redis-server, one `kvfleet worker` child process on the synthetic `tiny` model in a fleet on that Redis, and a
// `kvfleet router` child process over the same fleet (--router-mode inprocess: a Router in this process instead). Each
// round ("pair") sends one request straight to the worker, the same request through the router and the same request
// through a bare forwarding process (bench/grpc-hop-child.ts), back to back, the order rotating round by round, one
// request in flight at a time; TTFT is client-side, from the call to the first message that carries a token.
//   added latency = router TTFT − direct TTFT of the same round (p50/p99 of the paired differences, and of each side)
//   hop_added = bare-hop TTFT − direct TTFT: what one more grpc-js process on the path costs here, before any
//   routing work; router_minus_hop = router TTFT − bare-hop TTFT: the router's own work (tokenizer, ledger pick and
//   release, metrics) beyond that hop
// Prompts: ~8 and 2048 token ids (the router forwards them as they are), and text of about the same lengths (the
// router tokenizes, then forwards ids; the worker tokenizes when called directly), plus the router's tokenizer
// (worker/tokenizer.ts, the one Router loads) timed alone on the same text.
// Target: p99 added latency of token-id prompts < 1 ms (the issue's "1 ms plus tokenization": ids need none).
//
// On a shared machine the worker's own time varies by more than the router adds (a 2K prefill by milliseconds), and
// a paired difference carries that variation twice. So each call is also timed from the inside: the worker
// advertises 127.0.0.2:PORT in the ledger (POD_IP) while it listens on 127.0.0.1:PORT, and a TCP pass-through on
// 127.0.0.2:PORT reads the HTTP/2 frame headers (never the payloads) to time each stream from its request HEADERS to
// its first response DATA frame: the worker's own time. Direct calls go through the same pass-through (so its
// forwarding is on both sides of a pair, not charged to the router). Per case:
//   router_overhead  = routed TTFT − the worker's time of that call: the router plus the client→router hops
//   added_worker_corrected = router_overhead − (direct TTFT − its worker time), paired: the added latency with the
//                      worker's own variation taken out of both sides
//   router_internal  = measured inside the router: handler start → worker call issued, plus first worker message
//                      in → written to the client (text prompts: tokenization included, also reported alone as
//                      tokenize); router_pick = the ledger pick's round trip alone. A router process reports them
//                      in its /metrics histograms (kvfleet_router_overhead_seconds, kvfleet_router_pick_seconds),
//                      scraped before and after each case, quantiles interpolated within buckets; in-process, they
//                      are exact per request (Router.onTiming).
// With GC pauses (count, total, longest) of this process and the 1-minute load average at the start and end of each
// case: the machine is shared, and the tail of every figure moves with what else runs on it.
import { spawn, type ChildProcess } from 'node:child_process';
import { PerformanceObserver } from 'node:perf_hooks';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { RedisLedger } from '../ledger/redis.ts';
import { generationClient, type GenerateRequest, type GenerateResponse, type GenerationClient } from '../proto/index.ts';
import { parseRouterConfig } from '../router/config.ts';
import { Router, type RequestTiming } from '../router/router.ts';
import { writeSynthModel } from '../worker/model/synth.ts';
import { Tokenizer } from '../worker/tokenizer.ts';
import { startRedis } from '../tests/harness/redis.ts';
import type { BenchOptions } from './index.ts';
import { machineInfo, percentile, progress, target, type BenchReport, intArg as benchIntArg } from './report.ts';

const FLEET = 'bench/router';
/** the worker's advertised host, where the probe listens (any 127/8 address is loopback on Linux) */
const PROBE_HOST = '127.0.0.2';
const MODEL_SEED = 11;
const KVFLEET_TS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/kvfleet.ts');
const HOP_TS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), 'grpc-hop-child.ts');
const round = (x: number, digits = 4): number => Number(x.toFixed(digits));
/** the six orders of (direct, routed, hop) */
const ORDERS = [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1], [2, 1, 0], [1, 0, 2]];

const intArg = (opts: BenchOptions, name: string, def: number): number => benchIntArg('router', opts, name, def);

function log(opts: BenchOptions, msg: string): void { if (!opts.json) process.stderr.write(`bench router: ${msg}\n`); }

/** Prompt token ids: a fixed pseudo-random sequence over the vocabulary, no special tokens. */
function idsOf(n: number, salt: number, V: number): number[] {
  let x = (0x2545f491 ^ Math.imul(salt + 1, 0x9e3779b9)) >>> 0;
  return Array.from({ length: n }, () => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return 2 + (x % (V - 2)); });
}

const WORDS = ['router', 'worker', 'pages', 'compressed', 'capacity', 'ledger', 'fleet', 'request', 'head', 'budget',
  'prompt', 'token', 'stream', 'reserve', 'place', 'memory', 'the', 'a', 'of', 'to', 'most', 'free', 'each', 'kept'];

/** Text of at least `tokens` tokens under tok, words chosen by salt (so pairs do not repeat one string). */
function textOf(tok: Tokenizer, tokens: number, salt: number): string {
  let x = (0x9e3779b9 ^ Math.imul(salt + 7, 0x85ebca6b)) >>> 0;
  const words: string[] = [];
  // words are added in batches, then trimmed back to the first length that reaches the target
  while (tok.encode(words.join(' ')).length < tokens) {
    for (let i = 0; i < Math.max(1, Math.ceil(tokens / 8)); i++) { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; words.push(WORDS[x % WORDS.length]); }
  }
  let lo = 1, hi = words.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (tok.encode(words.slice(0, mid).join(' ')).length >= tokens) hi = mid; else lo = mid + 1;
  }
  return words.slice(0, lo).join(' ');
}

/** One Generate call: ms from the call to the first message carrying a token; the whole stream is drained. */
function ttft(gen: GenerationClient, req: GenerateRequest): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = -1;
    const call = gen.Generate(req, new grpc.Metadata(), { deadline: Date.now() + 60_000 });
    call.on('data', (m: GenerateResponse) => { if (first < 0 && (m.token_ids?.length ?? 0) > 0) first = performance.now() - t0; });
    call.on('error', (e: grpc.ServiceError) => reject(new Error(`bench router: Generate failed: ${grpc.status[e.code]}: ${e.details}`)));
    call.on('end', () => (first >= 0 ? resolve(first) : reject(new Error('bench router: a stream ended without a token'))));
  });
}

function stats(xs: number[]) {
  return { p50_ms: round(percentile(xs, 50)), p99_ms: round(percentile(xs, 99)),
    mean_ms: round(xs.reduce((a, b) => a + b, 0) / xs.length), min_ms: round(Math.min(...xs)), max_ms: round(Math.max(...xs)) };
}

interface Case { name: string; kind: 'token_ids' | 'text'; tokens: number; pairs: number; warmup: number }

/**
 * A TCP pass-through that times each HTTP/2 stream from its request HEADERS frame (client side) to its first
 * non-empty DATA frame (server side). It parses frame headers only: 9 bytes, length(24) type(8) flags(8) stream(31);
 * the client side starts with the 24-byte connection preface.
 */
async function startProbe(listenHost: string, port: number, target: { host: string; port: number }) {
  const samples: number[] = [];
  const sockets = new Set<net.Socket>();
  const frames = (skip: number, onFrame: (type: number, len: number, stream: number, t: number) => void) => {
    let buf: Buffer = Buffer.alloc(0);
    return (d: Buffer, t: number) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      if (skip > 0) { const k = Math.min(skip, buf.length); buf = buf.subarray(k); skip -= k; }
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3);
        if (buf.length < 9 + len) break;
        onFrame(buf[3], len, buf.readUInt32BE(5) & 0x7fffffff, t);
        buf = buf.subarray(9 + len);
      }
    };
  };
  const server = net.createServer((down) => {
    const up = net.connect(target.port, target.host);
    for (const s of [down, up]) { s.setNoDelay(true); sockets.add(s); s.on('error', () => {}); s.on('close', () => sockets.delete(s)); }
    down.on('close', () => up.destroy());
    up.on('close', () => down.destroy());
    const started = new Map<number, number>();
    const fromClient = frames(24, (type, _len, stream, t) => { if (type === 0x1 && !started.has(stream)) started.set(stream, t); });
    const fromServer = frames(0, (type, len, stream, t) => {
      const t0 = started.get(stream);
      if (type === 0x0 && len > 0 && t0 !== undefined && t0 >= 0) { samples.push(t - t0); started.set(stream, -1); }
    });
    down.on('data', (d: Buffer) => { const t = performance.now(); up.write(d); fromClient(d, t); });
    up.on('data', (d: Buffer) => { const t = performance.now(); down.write(d); fromServer(d, t); });
  });
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, listenHost, () => resolve()); });
  return {
    /** the worker-side time of the stream that most recently got its first DATA frame, once */
    take: (): number | undefined => samples.pop(),
    close: () => new Promise<void>((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }),
  };
}

/** Starts `kvfleet worker` in the fleet and resolves once it listens and is in the ledger: `listen` is where it
 *  serves, `advertised` (POD_IP 127.0.0.2, same port) is the address the router is given. */
async function startWorkerChild(modelDir: string, redisUrl: string, ledger: RedisLedger): Promise<{ child: ChildProcess; listen: string; port: number }> {
  const child = spawn(process.execPath, [KVFLEET_TS, 'worker', '--model', modelDir, '--port', '0', '--metrics-port', '0',
    '--log-level', 'warn', '--redis', redisUrl, '--fleet', FLEET, '--num-pages', '65536', '--heartbeat-ms', '500'],
  { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, POD_IP: PROBE_HOST, KVFLEET_PARENT_PID: String(process.pid) } });
  const m = await waitForLine(child, /listening on (\S+):(\d+)/, 'the worker',
    async (x) => (await ledger.snapshot()).workers.some((w) => w.addr === `${PROBE_HOST}:${x[2]}`));
  return { child, listen: `${m[1]}:${m[2]}`, port: Number(m[2]) };
}

/** Collects a child's output (first 64 KiB) and resolves with the first match of re in it; rejects if the child
 *  exits first or 60 s pass (then it is killed). */
async function waitForLine(child: ChildProcess, re: RegExp, what: string, ready: (m: RegExpExecArray) => Promise<boolean> = async () => true): Promise<RegExpExecArray> {
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { if (out.length < 65536) out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { if (out.length < 65536) out += d.toString(); });
  const deadline = Date.now() + 60_000;
  for (;;) {
    const m = re.exec(out);
    if (m && await ready(m)) return m;
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`bench router: ${what} exited: ${out.trim()}`);
    if (Date.now() > deadline) { child.kill('SIGKILL'); throw new Error(`bench router: ${what} was not ready in 60 s: ${out.trim()}`); }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** SIGTERM, SIGKILL after 5 s; resolves once the child has exited (at once if it already had). */
async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

/** A free loopback TCP port (bound, read, released). */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve, reject) => { srv.once('error', reject); srv.listen(0, '127.0.0.1', () => resolve()); });
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** Starts `kvfleet router` as its own process, the way it is deployed; resolves with its gRPC and /metrics ports. */
async function startRouterChild(modelDir: string, redisUrl: string): Promise<{ child: ChildProcess; port: number; metricsPort: number }> {
  const metricsPort = await freePort();
  const child = spawn(process.execPath, [KVFLEET_TS, 'router', '--host', '127.0.0.1', '--port', '0', '--metrics-port', String(metricsPort),
    '--redis', redisUrl, '--fleet', FLEET, '--tokenizer', modelDir], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KVFLEET_PARENT_PID: String(process.pid) } });
  const m = await waitForLine(child, /router \S+ listening on \S+:(\d+)/, 'the router');
  return { child, port: Number(m[1]), metricsPort };
}

/** Starts bench/grpc-hop-child.ts, a bare forwarding process in front of the worker (the floor under any router
 *  process); resolves with its port. It exits when its stdin closes. */
async function startHopChild(workerAddr: string): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [HOP_TS, workerAddr], { stdio: ['pipe', 'pipe', 'pipe'] });
  const m = await waitForLine(child, /hop listening on (\d+)/, 'the hop process');
  return { child, port: Number(m[1]) };
}

/** Cumulative bucket counts (upper bound in seconds → count), sum and count of one Prometheus histogram. */
interface Hist { le: number[]; counts: number[]; sum: number; count: number }
async function scrapeHist(metricsPort: number, name: string): Promise<Hist> {
  const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  if (!res.ok) throw new Error(`bench router: /metrics answered ${res.status}`);
  const h: Hist = { le: [], counts: [], sum: 0, count: 0 };
  for (const line of (await res.text()).split('\n')) {
    let m = new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\S+)$`).exec(line);
    if (m) { h.le.push(m[1] === '+Inf' ? Infinity : Number(m[1])); h.counts.push(Number(m[2])); continue; }
    m = new RegExp(`^${name}_(sum|count) (\\S+)$`).exec(line);
    if (m) h[m[1] as 'sum' | 'count'] = Number(m[2]);
  }
  if (h.le.length === 0) throw new Error(`bench router: the router's /metrics has no ${name}`);
  return h;
}
/** p50/p99/mean in ms of the observations between two scrapes; quantiles interpolated linearly inside a bucket (as
 *  Prometheus's histogram_quantile does), so they are as fine as the buckets. */
function histStats(a: Hist, b: Hist): { p50_ms: number; p99_ms: number; mean_ms: number; n: number; from: string } {
  const counts = b.counts.map((c, i) => c - (a.counts[i] ?? 0));
  const n = b.count - a.count;
  const q = (p: number): number => {
    const rank = p * n;
    for (let i = 0; i < counts.length; i++) {
      if (counts[i] >= rank) {
        const lo = i === 0 ? 0 : b.le[i - 1], hi = b.le[i];
        if (!Number.isFinite(hi)) return lo * 1000;
        const below = i === 0 ? 0 : counts[i - 1];
        const inBucket = counts[i] - below;
        return 1000 * (lo + (hi - lo) * (inBucket > 0 ? (rank - below) / inBucket : 1));
      }
    }
    return NaN;
  };
  return { p50_ms: round(q(0.5)), p99_ms: round(q(0.99)), mean_ms: round((1000 * (b.sum - a.sum)) / n), n, from: 'router /metrics histogram' };
}

export async function run(opts: BenchOptions): Promise<BenchReport> {
  const pairsShort = intArg(opts, 'pairs-short', 2000);
  const pairsLong = intArg(opts, 'pairs-long', 400);
  const longTokens = intArg(opts, 'long-tokens', 2048);
  const shortTokens = intArg(opts, 'short-tokens', 8);
  const tokenizeReps = intArg(opts, 'tokenize-reps', 2000);
  const cases: Case[] = [
    { name: 'short_ids', kind: 'token_ids', tokens: shortTokens, pairs: pairsShort, warmup: 200 },
    { name: 'long_ids', kind: 'token_ids', tokens: longTokens, pairs: pairsLong, warmup: 20 },
    { name: 'short_text', kind: 'text', tokens: shortTokens, pairs: pairsShort, warmup: 200 },
    { name: 'long_text', kind: 'text', tokens: longTokens, pairs: pairsLong, warmup: 20 },
  ];

  const modelDir = mkdtempSync(path.join(os.tmpdir(), 'kvf-bench-router-'));
  const server = await startRedis();
  let worker: ChildProcess | undefined;
  // process (default): `kvfleet router` as its own process, as deployed; its internal times come from its /metrics
  // histograms. inprocess: a Router in this process, timed exactly per request through Router.onTiming, but sharing
  // this process's event loop and GC with the client and the probe.
  const mode = String(opts.args['router-mode'] ?? 'process');
  if (mode !== 'process' && mode !== 'inprocess') throw new Error(`bench router: --router-mode must be process or inprocess, got ${mode}`);
  let router: Router | undefined;
  let routerChild: ChildProcess | undefined;
  let routerPort: number, routerMetricsPort = 0;
  let probe: Awaited<ReturnType<typeof startProbe>> | undefined;
  let hopChild: ChildProcess | undefined;
  const clients: GenerationClient[] = [];
  const [namespace, fleet] = FLEET.split('/');
  const ledger = await RedisLedger.connect({ redis: server.url, namespace, fleet });
  try {
    writeSynthModel({ out: modelDir, preset: 'tiny', seed: MODEL_SEED });
    const tok = Tokenizer.load(modelDir);
    const w = await startWorkerChild(modelDir, server.url, ledger);
    worker = w.child;
    probe = await startProbe(PROBE_HOST, w.port, { host: '127.0.0.1', port: w.port });
    if (mode === 'process') {
      const rc = await startRouterChild(modelDir, server.url);
      routerChild = rc.child;
      routerPort = rc.port;
      routerMetricsPort = rc.metricsPort;
    } else {
      router = await Router.start(parseRouterConfig({ port: 0, redis: server.url, fleet: FLEET, metricsPort: 0, tokenizer: modelDir }),
        pino({ level: 'silent' }));
      routerPort = router.port;
    }
    // direct calls go through the probe as the router's do (the worker's advertised address)
    const direct = generationClient(`${PROBE_HOST}:${w.port}`, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 64 << 20 });
    const routed = generationClient(`127.0.0.1:${routerPort}`, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 64 << 20 });
    // the bare hop forwards to the worker's advertised address too, through the probe
    const hc = await startHopChild(`${PROBE_HOST}:${w.port}`);
    hopChild = hc.child;
    const hop = generationClient(`127.0.0.1:${hc.port}`, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 64 << 20 });
    clients.push(direct, routed, hop);
    const V = tok.vocabSize;
    // two new tokens: the first is what is timed; the stream still ends through the normal finish path
    const sampling = { max_new_tokens: 2, temperature: 0, ignore_eos: true };
    const results: unknown[] = [{
      name: 'setup', model: 'tiny (synthetic, L=2, Hk=2)', worker: 'kvfleet worker child process, 65536 pages, reserve admission',
      router: `${mode === 'process' ? '`kvfleet router` child process' : 'in-process Router'} over the Redis ledger, policy least-prefill (the default), no budget named (fleet default resolved per request)`,
      redis: 'local redis-server', sampling, order: 'direct, routed and bare hop back to back per round, the six orders in turn',
      hop: 'bench/grpc-hop-child.ts: a grpc-js process that only forwards each call to the worker (no tokenizer, ledger or metrics): the cost of one more process on the path, which any router pays',
      probe: 'direct, routed and hop calls all pass the frame-header probe on the worker\'s advertised address',
      load_avg_1m_start: round(os.loadavg()[0], 2),
    }];
    let timing: RequestTiming | undefined;
    if (router) router.onTiming = (t) => { timing = { ...t }; };
    const gcs: number[] = [];
    const gcObserver = new PerformanceObserver((list) => { for (const e of list.getEntries()) gcs.push(e.duration); });
    gcObserver.observe({ entryTypes: ['gc'] });

    const addedP99: Record<string, number> = {}, internalP99: Record<string, number> = {};
    for (const c of cases) {
      const texts = c.kind === 'text' ? Array.from({ length: 64 }, (_, i) => textOf(tok, c.tokens, i)) : [];
      const req = (i: number): GenerateRequest => (c.kind === 'text'
        ? { prompt: 'text', text: texts[i % texts.length], sampling }
        : { prompt: 'token_ids', token_ids: { ids: idsOf(c.tokens, i, V) }, sampling });
      const dt: number[] = [], rt: number[] = [], added: number[] = [], overhead: number[] = [], corrected: number[] = [];
      const ht: number[] = [], hopAdded: number[] = [], hopCorrected: number[] = [], routerOverHop: number[] = [], routerOverHopCorrected: number[] = [];
      const internal: number[] = [], pick: number[] = [];
      /** client-side TTFT and the part of it outside the worker (TTFT − the probe's worker time) */
      const timed = async (gen: GenerationClient, r: GenerateRequest, what: string): Promise<[number, number]> => {
        probe!.take();
        const t = await ttft(gen, r);
        const inner = probe!.take();
        if (inner === undefined || inner > t) throw new Error(`bench router: the probe saw no first DATA frame within the ${what} call (${inner} ms vs ${t} ms)`);
        return [t, t - inner];
      };
      const routedOnce = async (r: GenerateRequest): Promise<[number, number]> => {
        timing = undefined;
        const out = await timed(routed, r, 'routed');
        if (!router) return out;
        const tm = timing as RequestTiming | undefined;
        if (!tm) throw new Error('bench router: the router reported no timing for a routed call');
        internal.push(tm.forwarded - tm.received + (tm.firstOut - tm.firstIn));
        pick.push(tm.placed - tm.pickStart);
        return out;
      };
      let hist0: [Hist, Hist] | undefined;
      const gc0 = gcs.length;
      const load0 = os.loadavg()[0];
      const tick = opts.json ? () => {} : progress(`bench router: ${c.name}`);
      for (let i = -c.warmup; i < c.pairs; i++) {
        const r = req(i + c.warmup);
        let d: [number, number] = [0, 0], t: [number, number] = [0, 0], h: [number, number] = [0, 0];
        const calls = [async () => { d = await timed(direct, r, 'direct'); }, async () => { t = await routedOnce(r); }, async () => { h = await timed(hop, r, 'hop'); }];
        // all six orders in turn: each side goes first against each other equally often
        for (const j of ORDERS[((i % 6) + 6) % 6]) await calls[j]();
        if (i < 0) {
          internal.pop(); pick.pop();
          if (i === -1 && !router) hist0 = [await scrapeHist(routerMetricsPort, 'kvfleet_router_overhead_seconds'), await scrapeHist(routerMetricsPort, 'kvfleet_router_pick_seconds')];
          continue;
        }
        dt.push(d[0]); rt.push(t[0]); added.push(t[0] - d[0]); overhead.push(t[1]); corrected.push(t[1] - d[1]);
        ht.push(h[0]); hopAdded.push(h[0] - d[0]); hopCorrected.push(h[1] - d[1]); routerOverHop.push(t[0] - h[0]); routerOverHopCorrected.push(t[1] - h[1]);
        if (i % 50 === 49 || i === c.pairs - 1) tick(i + 1, c.pairs);
      }
      const promptTokens = c.kind === 'text' ? Math.round(texts.reduce((a, s) => a + tok.encode(s).length, 0) / texts.length) : c.tokens;
      const caseGcs = gcs.slice(gc0);
      const entry: Record<string, unknown> = { name: c.name, prompt: c.kind, prompt_tokens: promptTokens, pairs: c.pairs,
        direct_ttft: stats(dt), router_ttft: stats(rt), added: stats(added), router_overhead: stats(overhead),
        added_worker_corrected: stats(corrected),
        hop_ttft: stats(ht), hop_added: stats(hopAdded), hop_added_worker_corrected: stats(hopCorrected),
        router_minus_hop: stats(routerOverHop), router_minus_hop_worker_corrected: stats(routerOverHopCorrected),
        ...(router ? { router_internal: stats(internal), router_pick: stats(pick) } : {
          router_internal: histStats(hist0![0], await scrapeHist(routerMetricsPort, 'kvfleet_router_overhead_seconds')),
          router_pick: histStats(hist0![1], await scrapeHist(routerMetricsPort, 'kvfleet_router_pick_seconds')) }),
        gc: { count: caseGcs.length, total_ms: round(caseGcs.reduce((a, b) => a + b, 0), 2), max_ms: round(Math.max(0, ...caseGcs), 2) },
        load_avg_1m: { start: round(load0, 2), end: round(os.loadavg()[0], 2) } };
      if (c.kind === 'text') {
        // the router's tokenizer alone on the same texts (what it adds before placing; the worker then skips it)
        for (let i = 0; i < 100; i++) tok.encode(texts[i % texts.length]);
        const tt: number[] = [];
        for (let i = 0; i < tokenizeReps; i++) {
          const s = texts[i % texts.length];
          const t0 = performance.now();
          tok.encode(s);
          tt.push(performance.now() - t0);
        }
        entry.tokenize = { reps: tokenizeReps, ...stats(tt) };
      }
      results.push(entry);
      addedP99[c.name] = percentile(added, 99);
      internalP99[c.name] = (entry.router_internal as { p99_ms: number }).p99_ms;
      log(opts, `${c.name}: direct p50 ${round(percentile(dt, 50), 3)} ms, router p50 ${round(percentile(rt, 50), 3)} ms, `
        + `added p50 ${round(percentile(added, 50), 3)} / p99 ${round(percentile(added, 99), 3)} ms, `
        + `router overhead p50 ${round(percentile(overhead, 50), 3)} / p99 ${round(percentile(overhead, 99), 3)} ms, `
        + `internal p99 ${internalP99[c.name]} ms`);
    }
    // the router's own placement time (pick + any wait for room), from its Prometheus histogram over the whole run
    if (router) {
      const pick = ((await router.registry.getSingleMetric('kvfleet_router_pick_seconds')?.get())?.values ?? []) as Array<{ value: number; metricName?: string }>;
      const pickSum = pick.find((v) => v.metricName === 'kvfleet_router_pick_seconds_sum')?.value ?? NaN;
      const pickCount = pick.find((v) => v.metricName === 'kvfleet_router_pick_seconds_count')?.value ?? NaN;
      results.push({ name: 'router_pick', picks: pickCount, mean_ms: round((1000 * pickSum) / pickCount) });
    } else {
      const h = await scrapeHist(routerMetricsPort, 'kvfleet_router_pick_seconds');
      results.push({ name: 'router_pick', picks: h.count, mean_ms: round((1000 * h.sum) / h.count) });
    }
    gcObserver.disconnect();
    (results[0] as Record<string, unknown>).load_avg_1m_end = round(os.loadavg()[0], 2);
    return {
      bench: 'router', machine: machineInfo(), results,
      // the worse of the short and 2K token-id cases: ids need no tokenization, so the allowance is the 1 ms alone.
      // The issue's target is the end-to-end paired figure; the router's internal time is reported beside it.
      targets: [target('router_added_p99_ms', round(Math.max(addedP99.short_ids, addedP99.long_ids)), 'ms', '<', 1),
        target('router_internal_p99_ms', round(Math.max(internalP99.short_ids, internalP99.long_ids)), 'ms', '<', 1)],
    };
  } finally {
    for (const c of clients) c.close();
    if (router) await router.close();
    if (routerChild) await stopChild(routerChild);
    if (hopChild) { hopChild.stdin!.end(); await stopChild(hopChild); }
    if (probe) await probe.close();
    if (worker) await stopChild(worker);
    await ledger.close();
    await server.stop();
    rmSync(modelDir, { recursive: true, force: true });
  }
}
