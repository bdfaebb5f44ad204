// `kvfleet up` as a user runs it (a child process, real redis-server, real gRPC over loopback): it writes the
// synthetic model to the cache on first run and reuses it; the router answers streamed requests from
// `kvfleet client generate` and from a gRPC client; SIGTERM (or SIGINT) stops every child it started and exits 0.
// Without redis-server on PATH the router and workers run in the one process over the in-memory ledger.
// `kvfleet client generate` errors: an unreachable target exits 1 with UNAVAILABLE.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generationClient, type GenerateResponse } from '../../proto/index.ts';
import { countersFrom, parsePromText, plainLine, renderTable, statusDoc, wrap } from '../../bin/stack/status.ts';
import { checkTarget, requestFromFlags } from '../../bin/stack/client.ts';
import { REDIS_WATCHDOG } from '../../bin/stack/procs.ts';
import { freePort } from '../harness/ports.ts';
import { spawnKvfleet, type KvfleetProcess } from '../harness/proc.ts';
import { pidAlive } from '../harness/redis.ts';

let tmp: string;
let cache: string;
beforeAll(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'kvf-up-test-'));
  cache = path.join(tmp, 'cache');
});
afterAll(() => { rmSync(tmp, { recursive: true, force: true }); });

/** Direct children of a process, from /proc (every thread's children list), less redis-server's watchdog loop. */
function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    const s = readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim();
    if (s !== '') out.push(...s.split(/\s+/).map(Number).filter((c) => !isWatchdog(c)));
  }
  return out.sort((a, b) => a - b);
}

function isWatchdog(pid: number): boolean {
  try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(REDIS_WATCHDOG); } catch { return false; }
}

function parsePids(line: string): Record<string, number> {
  return Object.fromEntries([...line.matchAll(/(\w+)=(\d+)/g)].map((m) => [m[1], Number(m[2])]));
}

async function ready(p: KvfleetProcess): Promise<{ port: number; pids: Record<string, number> }> {
  const m = await p.waitFor(/kvfleet up: ready in [\d.]+ s: router 127\.0\.0\.1:(\d+)/, 45_000);
  const pids = await p.waitFor(/pids: ([^\n]+)/, 5000);
  return { port: Number(m[1]), pids: parsePids(pids[1]) };
}

/** One streamed call with a gRPC client: every message as it arrived. */
function grpcGenerate(port: number, maxNewTokens: number): Promise<GenerateResponse[]> {
  const c = generationClient(`127.0.0.1:${port}`);
  return new Promise((resolve, reject) => {
    const msgs: GenerateResponse[] = [];
    const call = c.Generate({ text: 'Pages per head', sampling: { max_new_tokens: maxNewTokens, temperature: 0 } },
      new grpc.Metadata(), { deadline: Date.now() + 30_000 });
    call.on('data', (m: GenerateResponse) => msgs.push(m));
    call.on('error', (e) => { c.close(); reject(e); });
    call.on('end', () => { c.close(); resolve(msgs); });
  });
}

async function clientJson(port: number, args: string[], env?: NodeJS.ProcessEnv) {
  const p = spawnKvfleet(['client', 'generate', '--target', `127.0.0.1:${port}`, '--json', ...args], { env });
  const code = await p.exited();
  expect(code, p.output()).toBe(0);
  return JSON.parse(p.output().trim().split('\n').pop()!) as {
    text: string; token_ids: number[]; finish_reason: string; usage: { prompt_tokens: number; completion_tokens: number };
    kv_stats: { kept_tokens: string; full_tokens: string }; worker_id: string; seed: string;
  };
}

describe('kvfleet up', () => {
  it('with redis-server on PATH: workers, router and Redis as children; serves streamed requests; SIGTERM stops every child', async () => {
    const up = spawnKvfleet(['up', '--preset', 'tiny', '--port', '0', '--workers', '2', '--kv-memory', '8Mi',
      '--json-status', '--log-dir', path.join(tmp, 'logs-redis')], { env: { XDG_CACHE_HOME: cache } });
    try {
      // first run: the synthetic model is written to the cache folder
      await up.waitFor(/wrote the synthetic tiny model \([^)]*\) to (\S+)/, 30_000);
      const { port, pids } = await ready(up);
      expect(readdirSync(path.join(cache, 'kvfleet/models/tiny-f32')).sort())
        .toEqual(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
      expect(pids.up).toBe(up.pid);
      expect(Object.keys(pids).sort()).toEqual(['redis', 'router', 'up', 'w0', 'w1']);
      const children = [pids.redis, pids.router, pids.w0, pids.w1].sort((a, b) => a - b);
      expect(childPids(up.pid)).toEqual(children);

      // the demo went through the router and was compressed by the `compact` budget
      // (sampled, with ignore_eos: always the 48 tokens it announces)
      await up.waitFor(/\[LENGTH: \d+ prompt \+ 48 new tokens on w[01]; kv kept \d+\/\d+ tokens \(([\d.]+)x compression\)/, 30_000);
      const ratio = Number(up.output().match(/\(([\d.]+)x compression\)/)![1]);
      expect(ratio).toBeGreaterThan(1.5);

      // the CLI client, as the printed instructions say
      const r = await clientJson(port, ['--prompt', 'The KV cache', '--max-new-tokens', '8', '--seed', '7', '--temperature', '0']);
      expect(r.finish_reason).toBe('LENGTH');
      expect(r.token_ids).toHaveLength(8);
      expect(r.usage.completion_tokens).toBe(8);
      expect(['w0', 'w1']).toContain(r.worker_id);
      expect(r.seed).toBe('7');
      expect(Number(r.kv_stats.kept_tokens)).toBeGreaterThan(0);

      // a gRPC client sees the answer streamed: one message per token, then the final one
      const msgs = await grpcGenerate(port, 6);
      expect(msgs.length).toBe(7);
      expect(msgs.slice(0, 6).every((m) => m.token_ids?.length === 1)).toBe(true);
      expect(msgs[6].finish_reason).toBe('LENGTH');
      // greedy with the same prompt gives the same tokens as the CLI's answer would for the same prompt
      const again = await clientJson(port, ['--prompt', 'Pages per head', '--max-new-tokens', '6', '--temperature', '0']);
      expect(again.token_ids).toEqual(msgs.slice(0, 6).map((m) => m.token_ids![0]));

      // a prompt given as token ids, with top-k, top-p and a stop string: the ids reach the model as they are
      const ids = await clientJson(port, ['--token-ids', '5,6,7', '--max-new-tokens', '4', '--temperature', '0.7', '--top-k', '5',
        '--top-p', '0.9', '--stop', 'never-there', '--seed', '3']);
      expect(ids.usage.prompt_tokens).toBe(3);
      expect(ids.token_ids).toHaveLength(ids.usage.completion_tokens);
      expect(ids.usage.completion_tokens).toBeLessThanOrEqual(4);

      // a budget the fleet does not allow: NOT_FOUND from the router, exit 1
      const bad = spawnKvfleet(['client', 'generate', '--target', `127.0.0.1:${port}`, '--prompt', 'x', '--budget', 'nope']);
      expect(await bad.exited()).toBe(1);
      expect(bad.output()).toMatch(/NOT_FOUND: budget 'nope'/);

      // --json-status: per-second documents with both workers' pages, pressure and the compression they measured
      const lastDoc = () => {
        const docs = up.output().split('\n').filter((l) => l.startsWith('{"time"'));
        return JSON.parse(docs[docs.length - 1]) as ReturnType<typeof statusDoc>;
      };
      const served = () => lastDoc().workers.reduce((a, w) => a + (w.requests ?? 0), 0);
      // wait for the counts, for the pages of the last request to show as free (the status lags a heartbeat) and
      // for the router's reservation to be released (it does so after the stream ends, so a document can fall between)
      const settled = () => served() >= 5
        && lastDoc().workers.every((w) => w.free_pages === w.total_pages && w.reserved_pages === 0);
      for (const t0 = Date.now(); !settled() && Date.now() - t0 < 10_000;) await new Promise((res) => setTimeout(res, 200));
      const last = lastDoc();
      expect(last.workers.map((w) => w.worker_id)).toEqual(['w0', 'w1']);
      for (const w of last.workers) {
        expect(w.total_pages).toBe(8 * 2 ** 20 / (2 * 16 * 16 * 2));  // 8 MiB of f16 pages, P = 16, d = 16
        expect(w.free_pages).toBe(w.total_pages);
        expect(w.reserved_pages).toBe(0);
        expect(w.pressure).toBe(0);
      }
      expect(served()).toBe(5);  // the demo, three CLI requests and the gRPC one (the refused one is not OK)
      expect(Math.max(...last.workers.map((w) => w.compression ?? 0))).toBeGreaterThan(1.5);

      expect(await up.stop(20_000)).toBe(0);
      for (const pid of children) expect(pidAlive(pid), `pid ${pid} still alive`).toBe(false);
      expect(up.output()).toMatch(/kvfleet up: SIGTERM: stopping/);
      expect(up.output()).toMatch(/stopped router \(pid \d+\), workers \(w0 pid \d+, w1 pid \d+\), the ledger client, redis-server/);
      expect(up.output()).not.toMatch(/something kept the process alive/);
    } finally {
      await up.stop(3000);
    }
  });

  it('without redis-server on PATH: one process over the in-memory ledger, the cached model reused; SIGINT exits 0', async () => {
    // a PATH holding only what bin/kvfleet (a sh script) needs: no redis-server anywhere on it
    const bin = path.join(tmp, 'bin');
    mkdirSync(bin, { recursive: true });
    for (const tool of ['dirname', 'readlink']) symlinkSync(path.join('/usr/bin', tool), path.join(bin, tool));
    const env = { XDG_CACHE_HOME: cache, PATH: bin };
    const up = spawnKvfleet(['up', '--preset', 'tiny', '--port', '0', '--workers', '2', '--kv-memory', '8Mi', '--no-demo',
      '--log-dir', path.join(tmp, 'logs-mem')], { env });
    try {
      const { port, pids } = await ready(up);
      expect(up.output()).toMatch(/model: the synthetic tiny model cached in \S+tiny-f32/);
      expect(up.output()).not.toMatch(/wrote the synthetic/);
      expect(up.output()).toMatch(/ledger: in memory \(redis-server is not on PATH\); the router and the 2 workers run in this process/);
      expect(pids).toEqual({ up: up.pid });
      expect(childPids(up.pid)).toEqual([]);

      // a named budget resolves through the in-memory ledger (up publishes `compact` and `full` there)
      const r = await clientJson(port, ['--prompt', 'The KV cache', '--max-new-tokens', '5', '--budget', 'full', '--temperature', '0'], env);
      expect(r.token_ids).toHaveLength(5);
      expect(r.kv_stats.kept_tokens).toBe(r.kv_stats.full_tokens);
      expect(['w0', 'w1']).toContain(r.worker_id);
      const msgs = await grpcGenerate(port, 4);
      expect(msgs.map((m) => m.token_ids?.length ?? 0)).toEqual([1, 1, 1, 1, 0]);
      // the plain status lines (stdout is a pipe) show both workers from the in-memory ledger
      await up.waitFor(/status: fleet pressure [\d.]+; w0 pages \d+\/\d+ free.*; w1 pages \d+\/\d+ free/, 15_000);
      expect(childPids(up.pid)).toEqual([]);

      up.child.kill('SIGINT');
      expect(await up.exited()).toBe(0);
      expect(up.output()).toMatch(/stopped router \(in process\), workers \(w0, w1, in process\), the in-memory ledger/);
      expect(up.output()).not.toMatch(/something kept the process alive/);
    } finally {
      await up.stop(3000);
    }
  });

  it('SIGKILL of kvfleet up: its children, redis-server included, stop by themselves', async () => {
    const up = spawnKvfleet(['up', '--preset', 'tiny', '--port', '0', '--workers', '1', '--kv-memory', '8Mi', '--no-demo',
      '--log-dir', path.join(tmp, 'logs-kill')], { env: { XDG_CACHE_HOME: cache } });
    let pids: Record<string, number> = {};
    try {
      ({ pids } = await ready(up));
      expect(Object.keys(pids).sort()).toEqual(['redis', 'router', 'up', 'w0']);
      up.child.kill('SIGKILL');
      await up.exited();
      const alive = () => ['redis', 'router', 'w0'].filter((k) => pidAlive(pids[k]));
      for (const t0 = Date.now(); alive().length > 0 && Date.now() - t0 < 15_000;) await new Promise((r) => setTimeout(r, 100));
      expect(alive()).toEqual([]);
    } finally {
      for (const k of ['redis', 'router', 'w0']) { try { if (pids[k]) process.kill(pids[k], 'SIGKILL'); } catch { /* gone */ } }
    }
  });

  it('SIGTERM in the middle of the start stops whatever was started and exits 0', async () => {
    const up = spawnKvfleet(['up', '--preset', 'tiny', '--port', '0', '--kv-memory', '8Mi', '--no-demo',
      '--log-dir', path.join(tmp, 'logs-abort')], { env: { XDG_CACHE_HOME: cache } });
    // every child ever seen, polled from /proc while it starts and stops
    const seen = new Set<number>();
    const poll = setInterval(() => { try { for (const c of childPids(up.pid)) seen.add(c); } catch { /* exited */ } }, 10);
    try {
      await up.waitFor(/model: the synthetic tiny model cached|wrote the synthetic tiny model/, 20_000);
      for (const t0 = Date.now(); seen.size < 2 && Date.now() - t0 < 10_000;) await new Promise((r) => setTimeout(r, 10));
      expect(seen.size, 'children started before the signal').toBeGreaterThanOrEqual(2);
      up.child.kill('SIGTERM');
      expect(await up.exited()).toBe(0);
      clearInterval(poll);
      // (redis-server's watchdog loop, which the poll may catch before it execs, ends within 0.5 s of redis-server)
      for (const t0 = Date.now(); [...seen].some(pidAlive) && Date.now() - t0 < 2000;) await new Promise((r) => setTimeout(r, 50));
      for (const pid of seen) expect(pidAlive(pid), `pid ${pid} still alive`).toBe(false);
      expect(up.output()).not.toMatch(/kvfleet up: ready/);
      expect(up.output()).toMatch(/kvfleet up: SIGTERM: stopping/);
      expect(up.output()).not.toMatch(/something kept the process alive/);  // no client left retrying
    } finally {
      clearInterval(poll);
      await up.stop(3000);
    }
  });

  it('refuses a router port that is taken, before starting anything', async () => {
    const net = await import('node:net');
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as { port: number }).port;
    try {
      const up = spawnKvfleet(['up', '--preset', 'tiny', '--port', String(port), '--log-dir', path.join(tmp, 'logs-port')],
        { env: { XDG_CACHE_HOME: cache } });
      expect(await up.exited()).toBe(1);
      expect(up.output()).toMatch(new RegExp(`--port ${port}: the router cannot listen on 127\\.0\\.0\\.1:${port} \\(EADDRINUSE\\)`));
    } finally {
      srv.close();
    }
  });
});

describe('kvfleet client generate', () => {
  it('exits 1 with UNAVAILABLE when nothing listens at the target', async () => {
    const port = await freePort();
    const p = spawnKvfleet(['client', 'generate', '--target', `127.0.0.1:${port}`, '--prompt', 'hello', '--timeout-ms', '10000']);
    expect(await p.exited()).toBe(1);
    expect(p.output()).toMatch(/kvfleet: UNAVAILABLE: /);
  });

  it('names the flags of a request that cannot be made', async () => {
    expect(() => checkTarget('localhost')).toThrow(/--target 'localhost': expected HOST:PORT/);
    expect(checkTarget('[::1]:50051')).toBe('[::1]:50051');
    expect(() => requestFromFlags({ target: 'h:1', prompt: 'x', budget: 'compact', method: 'SNAPKV', tokensPerHead: 64 }))
      .toThrow(/--budget names a fleet budget; --method/);
    expect(() => requestFromFlags({ target: 'h:1', prompt: 'x', method: 'SNAPKV' })).toThrow(/--tokens-per-head B or --keep-ratio R/);
    expect(requestFromFlags({ target: 'h:1', prompt: 'x', keepRatio: 0.25, maxNewTokens: 9, seed: '3' })).toEqual({
      text: 'x', sampling: { max_new_tokens: 9, seed: '3' }, budget: { spec: { method: 'ADA_SNAPKV', keep_ratio: 0.25 } },
    });
    expect(requestFromFlags({ target: 'h:1', tokenIds: [5, 6], topP: 0.5, topK: 3, stop: ['a', 'b'] })).toEqual({
      token_ids: { ids: [5, 6] }, sampling: { top_p: 0.5, top_k: 3, stop: ['a', 'b'] } });
    expect(() => requestFromFlags({ target: 'h:1', prompt: 'x', tokenIds: [5] })).toThrow(/--prompt and --token-ids are alternatives/);
    expect(() => requestFromFlags({ target: 'h:1' })).toThrow(/give --prompt TEXT or --token-ids IDS/);
    const ids = spawnKvfleet(['client', 'generate', '--target', '127.0.0.1:1', '--token-ids', '5,x']);
    expect(await ids.exited()).toBe(1);
    expect(ids.output()).toMatch(/--token-ids.*expected comma-separated token ids/);
    const p = spawnKvfleet(['client', 'generate', '--target', '127.0.0.1:1', '--prompt', 'x', '--keep-ratio', '0.5', '--tokens-per-head', '64']);
    expect(await p.exited()).toBe(1);
    expect(p.output()).toMatch(/--tokens-per-head and --keep-ratio are alternatives/);
  });
});

describe('the status table', () => {
  const snap = {
    now_ms: 0,
    workers: [
      { worker_id: 'w0', addr: '127.0.0.1:1', total_pages: 100, free_pages: 60, reserved_pages: 10, page_size: 16, num_layers: 2,
        num_kv_heads: 2, running: 1, waiting: 0, draining: false, heartbeat_ms: 0, reservations: 1, effective_free: 50 },
      { worker_id: 'w1', addr: '127.0.0.1:2', total_pages: 100, free_pages: 100, reserved_pages: 0, page_size: 16, num_layers: 2,
        num_kv_heads: 2, running: 0, waiting: 0, draining: true, heartbeat_ms: 0, reservations: 0, effective_free: 100 },
    ],
  };
  it('computes pressure per worker and compression from the workers\' counters', () => {
    const metrics = '# HELP x\nkvfleet_worker_kv_kept_tokens_total 250\nkvfleet_worker_kv_full_tokens_total 1000\n'
      + 'kvfleet_worker_generation_tokens_total 40\nkvfleet_worker_requests_total{code="OK"} 2\nbroken line\n';
    expect(parsePromText(metrics).get('kvfleet_worker_requests_total{code="OK"}')).toBe(2);
    const d = statusDoc('local/default', snap, new Map([['w0', countersFrom(metrics)]]));
    expect(d.workers[0]).toMatchObject({ pressure: 0.5, compression: 4, requests: 2, tokens: 40 });
    expect(d.workers[1]).toMatchObject({ pressure: 0, compression: null, requests: null });
    expect(d.fleet_pressure).toBe(0.5);  // the draining worker is left out
    const lines = renderTable(d, 3);
    expect(lines[0]).toMatch(/^worker\s+address\s+pages\s+free\s+reserved\s+running\s+waiting\s+pressure\s+kv compression/);
    expect(lines[1]).toMatch(/^w0\s+127\.0\.0\.1:1\s+100\s+60\s+10\s+1\s+0\s+0\.500\s+4\.00x\s+2\s+40$/);
    expect(lines[2]).toMatch(/^w1 \(draining\)/);
    expect(lines[3]).toMatch(/2 live workers \(1 missing from the ledger\), pressure 0\.500/);
    expect(plainLine(d)).toMatch(/w0 pages 60\/100 free, reserved 10, running 1, waiting 0, pressure 0\.500, compression 4\.00x/);
  });
  it('wraps streamed text to the terminal width', () => {
    expect(wrap('abcdefg\nhi', 3)).toEqual(['abc', 'def', 'g', 'hi']);
  });
});
