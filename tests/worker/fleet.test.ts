// The worker in a fleet (in-process workers, the shared real redis-server): its ledger entry and heartbeat, the
// reservation flow a router drives (pick with a request id → Generate with that request_id → the heartbeat removes
// the reservation; a queued request's reservation is kept alive), budgets from the ledger (default, named, unknown,
// deleted, invalid) applied without a restart, a drain order on the events channel, and a Redis outage.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { RedisLedger, requestFootprintPages, BUILTIN_DEFAULT_BUDGET, type WorkerSnapshot } from '../../ledger/index.ts';
import type { GenerateRequest, GenerateResponse, GenerationClient } from '../../proto/index.ts';
import { startRedis } from '../harness/redis.ts';
import { capacity, check, generate, greedy, healthClient, inProcessWorker, tinyModel, type StreamResult } from './helpers.ts';

const L = 2, Hk = 2, P = 16;  // tiny
let model: ReturnType<typeof tinyModel>;
let redisUrl: string;
let raw: Redis;
const ledgers: RedisLedger[] = [];
beforeAll(() => {
  model = tinyModel();
  redisUrl = inject('redisUrl');
  raw = new Redis(redisUrl);
});
afterAll(async () => {
  for (const l of ledgers) await l.close();
  raw?.disconnect();
  model?.cleanup();
});

async function newFleet(): Promise<{ ns: string; name: string; fleet: string; ledger: RedisLedger }> {
  const ns = 'wtest', name = `f-${randomUUID().slice(0, 8)}`;
  const ledger = await RedisLedger.connect({ redis: redisUrl, namespace: ns, fleet: name });
  ledgers.push(ledger);
  return { ns, name, fleet: `${ns}/${name}`, ledger };
}

/** Polls f until it returns a value (not undefined/false); a throw counts as "not yet" (Redis coming back). */
async function until<T>(what: string, f: () => Promise<T | undefined | false>, timeoutMs = 5000, everyMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined && v !== false) return v;
    } catch (err) { last = err; }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

async function entry(ledger: RedisLedger, id: string): Promise<WorkerSnapshot | undefined> {
  return (await ledger.snapshot()).workers.find((w) => w.worker_id === id);
}

/** A stream left running: the first token arrives, then the test decides when it ends. */
function openStream(gen: GenerationClient, req: GenerateRequest) {
  const call = gen.Generate(req);
  const r: StreamResult = { tokens: [], chunks: [], text: '', messages: [] };
  let first!: () => void;
  const firstToken = new Promise<void>((res) => { first = res; });
  call.on('data', (m: GenerateResponse) => {
    r.messages.push(m); r.tokens.push(...(m.token_ids ?? []));
    if (m.finish_reason !== undefined) r.last = m;
    if (r.tokens.length > 0) first();
  });
  const done = new Promise<StreamResult>((res) => {
    call.on('error', (e: grpc.ServiceError) => { r.error = e; first(); });
    call.on('close', () => res(r));
  });
  return { call, firstToken, done, error: () => r.error?.message };
}

/** The first error among open streams, if any (a stream that failed also resolves firstToken). */
const r0 = (...xs: Array<ReturnType<typeof openStream>>) => xs.map((x) => x.error()).find((e) => e !== undefined);

const prompt = (n: number, salt = 0) => Array.from({ length: n }, (_, i) => 2 + ((i * 37 + salt * 11) % 500));

describe('ledger heartbeat', () => {
  it('publishes every CONTRACTS.md field under POD_NAME with addr POD_IP:port; free pages match GetCapacity within one heartbeat', async () => {
    const f = await newFleet();
    const t = await inProcessWorker(model.dir, { redis: redisUrl, fleet: f.fleet, numPages: 4096 },
      { env: { POD_NAME: 'pod-hb', POD_IP: '127.0.0.1' } });
    try {
      expect(t.w.workerId).toBe('pod-hb');
      const key = f.ledger.keys.worker('pod-hb');
      const h = await until('the worker hash', async () => { const x = await raw.hgetall(key); return x.addr ? x : undefined; });
      expect(h).toMatchObject({ addr: `127.0.0.1:${t.w.port}`, total_pages: '4096', free_pages: '4096', page_size: String(P),
        num_layers: String(L), num_kv_heads: String(Hk), running: '0', waiting: '0', draining: '0', prefill_tokens: '0',
        // the routers check prompt + max_new_tokens against it before picking (the tiny model's context)
        max_model_len: String(t.w.maxModelLen) });
      expect(t.w.maxModelLen).toBeGreaterThan(0);
      expect(Number(h.heartbeat_ms)).toBeGreaterThan(0);
      expect(await raw.sismember(f.ledger.keys.workers, 'pod-hb')).toBe(1);
      const pttl = await raw.pttl(key);
      expect(pttl).toBeGreaterThan(0);
      expect(pttl).toBeLessThanOrEqual(3000);
      // the default period is 500 ms: two consecutive heartbeats are about that far apart
      const hb1 = Number(h.heartbeat_ms);
      const hb2 = await until('the next heartbeat', async () => { const v = Number(await raw.hget(key, 'heartbeat_ms')); return v > hb1 ? v : undefined; }, 3000);
      const hb3 = await until('the one after', async () => { const v = Number(await raw.hget(key, 'heartbeat_ms')); return v > hb2 ? v : undefined; }, 3000);
      expect(hb3 - hb2).toBeGreaterThanOrEqual(400);
      expect(hb3 - hb2).toBeLessThan(1500);

      // two long requests running: uncommitted pages = total − Σ footprints (reserve admission), in both views
      const fp = requestFootprintPages({ L, Hk, P }, BUILTIN_DEFAULT_BUDGET, 8, 6000);
      const s1 = openStream(t.gen, { token_ids: { ids: prompt(8, 1) }, sampling: greedy(6000) });
      const s2 = openStream(t.gen, { token_ids: { ids: prompt(8, 2) }, sampling: greedy(6000) });
      await Promise.all([s1.firstToken, s2.firstToken]);
      const cap = await capacity(t.wc);
      expect(cap.running).toBe(2);
      expect(r0(s1, s2)).toBeUndefined();
      expect(Number(cap.free_pages)).toBe(4096 - 2 * fp);
      const before = Number(await raw.hget(key, 'heartbeat_ms'));
      await until('a heartbeat after the admissions', async () => Number(await raw.hget(key, 'heartbeat_ms')) > before, 3000);
      const e = await entry(f.ledger, 'pod-hb');
      // both prompts are prefilled (their first tokens came): nothing left to prefill
      expect(e).toMatchObject({ free_pages: Number(cap.free_pages), running: 2, waiting: 0, draining: false, total_pages: 4096, prefill_tokens: 0 });
      s1.call.cancel(); s2.call.cancel();
      await Promise.all([s1.done, s2.done]);
      await until('free pages back in the ledger', async () => (await entry(f.ledger, 'pod-hb'))?.free_pages === 4096, 3000);
      expect(Number((await capacity(t.wc)).free_pages)).toBe(4096);
    } finally {
      await t.stop();
    }
    // a clean stop removes the worker from the ledger at once (no waiting for the TTL)
    expect(await raw.exists(f.ledger.keys.worker('pod-hb'))).toBe(0);
    expect(await entry(f.ledger, 'pod-hb')).toBeUndefined();
  });

  it('a reservation picked with a request id is removed by the next heartbeat once that request is admitted', async () => {
    const f = await newFleet();
    const t = await inProcessWorker(model.dir, { redis: redisUrl, fleet: f.fleet, numPages: 512, heartbeatMs: 200 });
    try {
      await until('the worker in the ledger', () => entry(f.ledger, t.w.workerId));
      const need = requestFootprintPages({ L, Hk, P }, { method: 'FULL' }, 20, 16);
      const picked = await f.ledger.pick(need, 'resv-1');
      expect(picked).toMatchObject({ worker_id: t.w.workerId, addr: `127.0.0.1:${t.w.port}`, effective_free_after: 512 - need });
      expect(await entry(f.ledger, t.w.workerId)).toMatchObject({ reservations: 1, reserved_pages: need });
      const r = await generate(t.gen, { request_id: 'resv-1', token_ids: { ids: prompt(20) }, sampling: greedy(16), budget: { spec: { method: 'FULL' } } });
      expect(r.error).toBeUndefined();
      expect(r.requestId).toBe('resv-1');
      const n0 = t.w.fleet!.delivered;
      await until('the next heartbeat', async () => t.w.fleet!.delivered > n0, 2000);
      expect(await entry(f.ledger, t.w.workerId)).toMatchObject({ reservations: 0, reserved_pages: 0, free_pages: 512 });
      // a refused request's reservation goes too (rejected)
      await f.ledger.pick(need, 'resv-bad');
      const bad = await generate(t.gen, { request_id: 'resv-bad', token_ids: { ids: [999999] }, sampling: greedy(4) });
      expect(bad.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
      const n1 = t.w.fleet!.delivered;
      await until('the next heartbeat', async () => t.w.fleet!.delivered > n1, 2000);
      expect(await entry(f.ledger, t.w.workerId)).toMatchObject({ reservations: 0, reserved_pages: 0 });
    } finally {
      await t.stop();
    }
  });

  it('keeps a queued request\'s reservation alive past its TTL, and removes it once admitted', async () => {
    const f = await newFleet();
    // room for one long request at a time: the second waits in the queue
    const fpLong = requestFootprintPages({ L, Hk, P }, BUILTIN_DEFAULT_BUDGET, 8, 6000);
    const t = await inProcessWorker(model.dir, { redis: redisUrl, fleet: f.fleet, numPages: fpLong + 10, heartbeatMs: 100 });
    try {
      await until('the worker in the ledger', () => entry(f.ledger, t.w.workerId));
      // a router reserves for 'resv-q' (with a short TTL); meanwhile a direct client takes the pool first
      const fpQ = requestFootprintPages({ L, Hk, P }, BUILTIN_DEFAULT_BUDGET, 8, 40);
      expect(fpQ).toBeGreaterThan(10);
      const picked = await f.ledger.pick(fpQ, 'resv-q', { ttlMs: 800 });
      expect(picked?.worker_id).toBe(t.w.workerId);
      const long = openStream(t.gen, { token_ids: { ids: prompt(8, 3) }, sampling: greedy(6000) });
      await long.firstToken;
      const queued = openStream(t.gen, { request_id: 'resv-q', token_ids: { ids: prompt(8, 4) }, sampling: greedy(40) });
      await until('the request queued', async () => ((await capacity(t.wc)).waiting ?? 0) === 1);
      await new Promise((r) => setTimeout(r, 1500));  // well past the 800 ms the router asked for
      expect(await raw.zscore(f.ledger.keys.reservations(t.w.workerId), 'resv-q')).not.toBeNull();
      expect(await entry(f.ledger, t.w.workerId)).toMatchObject({ reservations: 1, reserved_pages: fpQ, waiting: 1, free_pages: 10 });
      expect(Number((await capacity(t.wc)).reserved_pages)).toBe(fpQ);  // GetCapacity reports the ledger's reservations
      long.call.cancel();
      const q = await queued.done;
      expect(q.error).toBeUndefined();
      expect(q.tokens).toHaveLength(40);
      await until('the reservation removed', async () => (await entry(f.ledger, t.w.workerId))?.reservations === 0, 2000);
      await long.done;
    } finally {
      await t.stop();
    }
  });
});

describe('budgets from the ledger', () => {
  it('a new fleet default is used by the next request within 2 s; named budgets are those the fleet allows', async () => {
    const f = await newFleet();
    const t = await inProcessWorker(model.dir, { redis: redisUrl, fleet: f.fleet, budgetRefreshMs: 60_000 });
    const n = 200, m = 4;
    const ask = (budget?: GenerateRequest['budget']) =>
      generate(t.gen, { token_ids: { ids: prompt(n, 5) }, sampling: greedy(m), ...(budget ? { budget } : {}) });
    try {
      // no default in the ledger: the built-in default (1024 tokens per head) keeps a 200-token prompt whole
      const before = await ask();
      expect(before.error).toBeUndefined();
      expect(before.last?.kv_stats?.kept_tokens).toBe(before.last?.kv_stats?.full_tokens);

      await f.ledger.setBudget('tight', { method: 'ADA_SNAPKV', tokens_per_head: 40 });
      await f.ledger.setDefaultBudget('tight');
      const t0 = Date.now();
      let r: StreamResult;
      for (;;) {
        r = await ask();
        expect(r.error).toBeUndefined();
        if (r.last?.kv_stats?.kept_tokens !== r.last?.kv_stats?.full_tokens) break;
        if (Date.now() - t0 > 2000) throw new Error('the new default budget was not used within 2 s');
        await new Promise((res) => setTimeout(res, 20));
      }
      expect(Date.now() - t0).toBeLessThan(2000);
      // Ada keeps B tokens per head on average: each layer holds Hk·B prompt entries, plus the decoded positions
      const positions = n + m - 1;
      expect(Number(r.last!.kv_stats!.full_tokens)).toBe(L * Hk * positions);
      expect(Number(r.last!.kv_stats!.kept_tokens)).toBe(L * Hk * (40 + positions - n));
      // the same budget by name, and 'default' names the fleet default
      expect((await ask({ name: 'tight' })).last?.kv_stats).toEqual(r.last?.kv_stats);
      expect((await ask({ name: 'default' })).last?.kv_stats).toEqual(r.last?.kv_stats);

      // a name the fleet does not allow is NOT_FOUND
      const unknown = await ask({ name: 'long-context' });
      expect(unknown.error?.code).toBe(grpc.status.NOT_FOUND);
      expect(unknown.error?.details).toMatch(/budget.name: budget 'long-context' is not allowed in fleet wtest\/f-.*allowed: tight/);
      // allowing it makes it usable, deleting it disallows it again — without a restart
      await f.ledger.setBudget('long-context', { method: 'FULL' });
      const allowed = await until('long-context allowed', async () => { const x = await ask({ name: 'long-context' }); return x.error ? undefined : x; }, 2000);
      expect(allowed.last?.kv_stats?.kept_tokens).toBe(allowed.last?.kv_stats?.full_tokens);
      await f.ledger.deleteBudget('long-context');
      const gone = await until('long-context disallowed', async () => { const x = await ask({ name: 'long-context' }); return x.error ? x : undefined; }, 2000);
      expect(gone.error?.code).toBe(grpc.status.NOT_FOUND);
      // a stored budget that does not validate fails the requests that name it, naming budget and field
      await f.ledger.setBudget('broken', { method: 'SNAPKV', tokens_per_head: 10 });
      const broken = await until('broken budget seen', async () => { const x = await ask({ name: 'broken' }); return x.error?.code === grpc.status.NOT_FOUND ? undefined : x; }, 2000);
      expect(broken.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(broken.error?.details).toMatch(/fleet budget 'broken'.tokens_per_head: .*window \+ 1/);
      // clearing the fleet default goes back to the built-in default
      await f.ledger.setDefaultBudget(null);
      const builtin = await until('built-in default again', async () => { const x = await ask(); return x.last?.kv_stats?.kept_tokens === x.last?.kv_stats?.full_tokens ? x : undefined; }, 2000);
      expect(builtin.error).toBeUndefined();
    } finally {
      await t.stop();
    }
  });
});

describe('drain order on the events channel', () => {
  it('drains the named worker (UNAVAILABLE, NOT_SERVING, draining in the ledger) and leaves the others alone', async () => {
    const f = await newFleet();
    const a = await inProcessWorker(model.dir, { redis: redisUrl, fleet: f.fleet, workerId: 'w-a' });
    const b = await inProcessWorker(model.dir, { redis: redisUrl, fleet: f.fleet, workerId: 'w-b' });
    try {
      await until('both workers in the ledger', async () => (await f.ledger.snapshot()).workers.length === 2);
      expect(await f.ledger.drain('w-a', 'scale down')).toBeGreaterThanOrEqual(2);
      await until('w-a draining', async () => a.w.draining);
      await until('draining=1 in the ledger', async () => (await entry(f.ledger, 'w-a'))?.draining === true, 2000);
      const refused = await generate(a.gen, { text: 'late', sampling: greedy(2) });
      expect(refused.error?.code).toBe(grpc.status.UNAVAILABLE);
      expect((await capacity(a.wc)).draining).toBe(true);
      // a draining worker is never picked
      const picked = await f.ledger.pick(4, 'after-drain');
      expect(picked?.worker_id).toBe('w-b');
      expect(b.w.draining).toBe(false);
      const ok = await generate(b.gen, { text: 'fine', sampling: greedy(2) });
      expect(ok.error).toBeUndefined();
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it('an undrain order takes the drain back (admits, SERVING, back in the pick index); SIGTERM\'s drain is never taken back', async () => {
    const f = await newFleet();
    const a = await inProcessWorker(model.dir, { redis: redisUrl, fleet: f.fleet, workerId: 'w-u' });
    try {
      await until('the worker in the ledger', () => entry(f.ledger, 'w-u'));
      await f.ledger.drain('w-u', 'scale down');
      await until('draining=1 in the ledger', async () => (await entry(f.ledger, 'w-u'))?.draining === true, 2000);
      expect(await f.ledger.pick(4, 'while-drained')).toBeNull();
      // an undrain for another worker changes nothing here
      await f.ledger.undrain('w-other', 'not you');
      await new Promise((r) => setTimeout(r, 200));
      expect(a.w.draining).toBe(true);
      expect(await f.ledger.undrain('w-u', 'scale-down dropped')).toBeGreaterThanOrEqual(1);
      await until('draining=0 in the ledger', async () => (await entry(f.ledger, 'w-u'))?.draining === false, 2000);
      expect(a.w.draining).toBe(false);
      expect((await capacity(a.wc)).draining).toBe(false);
      const h = healthClient(a.addr);
      expect(await check(h)).toBe('SERVING');
      h.close();
      const ok = await generate(a.gen, { text: 'welcome back', sampling: greedy(2) });
      expect(ok.error).toBeUndefined();
      expect((await f.ledger.pick(4, 'after-undrain'))?.worker_id).toBe('w-u');
      await f.ledger.release('w-u', 'after-undrain');
      // an admin's drain (Worker.Drain) is not the operator's to take back
      await new Promise<void>((resolve, reject) => a.wc.Drain({}, (e) => (e ? reject(e) : resolve())));
      expect(a.w.draining).toBe(true);
      await f.ledger.undrain('w-u', 'not yours');
      await new Promise((r) => setTimeout(r, 300));
      expect(a.w.draining).toBe(true);
      expect(await a.w.undrain()).toBe(false);
      expect((await entry(f.ledger, 'w-u'))?.draining).toBe(true);
      // the admin takes it back (Worker.Undrain), and drains again
      const undrainRpc = () => new Promise<boolean>((resolve, reject) => a.wc.Undrain({}, (e, r) => (e ? reject(e) : resolve(r!.admitting === true))));
      expect(await undrainRpc()).toBe(true);
      expect(a.w.draining).toBe(false);
      await until('draining=0 in the ledger again', async () => (await entry(f.ledger, 'w-u'))?.draining === false, 2000);
      // a worker shutting down keeps draining whatever it is told (a long request keeps it up meanwhile)
      const busy = openStream(a.gen, { token_ids: { ids: prompt(20) }, sampling: { ...greedy(8000), ignore_eos: true } });
      await busy.firstToken;
      expect(busy.error()).toBeUndefined();
      const stopping = a.w.shutdown({ graceMs: 10_000 });
      await until('draining on shutdown', async () => a.w.draining);
      await f.ledger.undrain('w-u', 'too late');
      expect(await a.w.undrain()).toBe(false);
      expect(await undrainRpc()).toBe(false);
      expect(a.w.draining).toBe(true);
      const late = await generate(a.gen, { text: 'late', sampling: greedy(2) });
      expect(late.error?.code).toBe(grpc.status.UNAVAILABLE);
      // still streaming through all of it; cancelled here so the shutdown need not wait for 8000 tokens
      expect(busy.error()).toBeUndefined();
      busy.call.cancel();
      expect((await busy.done).error?.code).toBe(grpc.status.CANCELLED);
      await stopping;
    } finally {
      await a.stop();
    }
  });
});

describe('Redis outage', () => {
  it('the worker keeps serving while Redis is down; heartbeats and the events subscription resume when it returns', async () => {
    const redis = await startRedis();
    const ledger = await RedisLedger.connect({ redis: redis.url, namespace: 'wtest', fleet: 'outage' });
    ledgers.push(ledger);
    const t = await inProcessWorker(model.dir, { redis: redis.url, fleet: 'wtest/outage', heartbeatMs: 100, budgetRefreshMs: 60_000 });
    let r2: Awaited<ReturnType<typeof startRedis>> | undefined;
    try {
      await until('the worker in the ledger', () => entry(ledger, t.w.workerId));
      await redis.stop();
      await until('the worker notices', async () => !t.w.fleet!.connected, 3000);
      const during = await generate(t.gen, { token_ids: { ids: prompt(30) }, sampling: greedy(6) });
      expect(during.error).toBeUndefined();
      expect(during.tokens).toHaveLength(6);
      expect((await capacity(t.wc)).total_pages).toBe('4096');
      await new Promise((r) => setTimeout(r, 500));  // several failed heartbeats
      r2 = await startRedis({ port: redis.port });  // an empty Redis: the worker hash must be recreated
      await until('the worker back in the ledger', () => entry(ledger, t.w.workerId), 8000, 50);
      // the events subscription came back too: a budget change reaches the worker without the periodic read
      await until('the subscription back', async () => (await ledger.publish({ type: 'default_budget', name: null })) > 0, 8000, 100);
      await ledger.setBudget('tight', { method: 'ADA_SNAPKV', tokens_per_head: 40 });
      await ledger.setDefaultBudget('tight');
      const r = await until('the new default in use', async () => {
        const x = await generate(t.gen, { token_ids: { ids: prompt(100) }, sampling: greedy(2) });
        return x.last?.kv_stats?.kept_tokens !== x.last?.kv_stats?.full_tokens ? x : undefined;
      }, 2000);
      expect(Number(r.last!.kv_stats!.kept_tokens)).toBe(L * Hk * (40 + 1));
    } finally {
      await t.stop();
      await r2?.stop();
      await redis.stop();
    }
  });

  it('a worker started while Redis is down serves at once and joins the ledger when Redis comes up', async () => {
    const redis = await startRedis();
    const port = redis.port;
    await redis.stop();
    const t0 = Date.now();
    const t = await inProcessWorker(model.dir, { redis: `redis://127.0.0.1:${port}`, fleet: 'wtest/late', heartbeatMs: 100, budgetRefreshMs: 60_000 });
    let r2: Awaited<ReturnType<typeof startRedis>> | undefined;
    try {
      expect(Date.now() - t0).toBeLessThan(8000);  // it waited for Redis a bounded time, then started anyway
      expect(t.w.fleet!.connected).toBe(false);
      const r = await generate(t.gen, { text: 'no ledger yet', sampling: greedy(3) });
      expect(r.error).toBeUndefined();
      // a named budget cannot be resolved before the first read: retryable UNAVAILABLE, not NOT_FOUND
      const named = await generate(t.gen, { text: 'x', sampling: greedy(1), budget: { name: 'tight' } });
      expect(named.error?.code).toBe(grpc.status.UNAVAILABLE);
      r2 = await startRedis({ port });
      const ledger = await RedisLedger.connect({ redis: r2.url, namespace: 'wtest', fleet: 'late' });
      ledgers.push(ledger);
      await until('the worker in the ledger', () => entry(ledger, t.w.workerId), 8000, 50);
      await ledger.setBudget('tight', { method: 'ADA_SNAPKV', tokens_per_head: 40 });
      const ok = await until('the named budget usable', async () => {
        const x = await generate(t.gen, { token_ids: { ids: prompt(100) }, sampling: greedy(2), budget: { name: 'tight' } });
        return x.error ? undefined : x;
      }, 2000, 50);  // the events channel (subscribed once Redis answered) delivers it, not the 60 s periodic read
      expect(Number(ok.last!.kv_stats!.kept_tokens)).toBe(L * Hk * (40 + 1));
    } finally {
      await t.stop();
      await r2?.stop();
    }
  });
});
