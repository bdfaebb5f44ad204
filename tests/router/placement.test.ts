// The router against scripted workers: plain gRPC servers that answer as a test tells them to, registered in a real
// ledger (redis-server) by heartbeats the test sends. What is checked is the router's own behaviour: which worker it
// picks after a failure, the reservation ids it uses, the codes it answers and counts.
import { afterEach, describe, expect, inject, it } from 'vitest';
import * as net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { RedisLedger, type ResolvedBudgetSpec, type WorkerFields } from '../../ledger/index.ts';
import { addGenerationService, generationClient, type BudgetSpec, type GenerateRequest, type GenerateResponse } from '../../proto/index.ts';
import { parseRouterConfig } from '../../router/config.ts';
import { Router } from '../../router/router.ts';
import { FleetBudgets } from '../../worker/budgets.ts';
import { checkSpec, resolveSelector, type RequestError } from '../../worker/request.ts';
import { startRedis } from '../harness/redis.ts';
import { generate } from '../worker/helpers.ts';

type Call = grpc.ServerWritableStream<GenerateRequest, GenerateResponse>;

interface ScriptedWorker {
  id: string;
  addr: string;
  /** every request it was sent, in order */
  received: GenerateRequest[];
  fields: WorkerFields;
  close(): Promise<void>;
}

/** A Generation server on a free loopback port that hands every call to `serve`. */
async function scriptedWorker(id: string, freePages: number, serve: (call: Call, w: ScriptedWorker) => void,
  over: Partial<WorkerFields> = {}): Promise<ScriptedWorker> {
  const server = new grpc.Server();
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0',
    grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  const w: ScriptedWorker = {
    id, addr: `127.0.0.1:${port}`, received: [],
    fields: { addr: `127.0.0.1:${port}`, total_pages: freePages, free_pages: freePages, page_size: 16, num_layers: 2,
      num_kv_heads: 2, running: 0, waiting: 0, draining: false, ...over },
    close: () => new Promise<void>((r) => { server.forceShutdown(); r(); }),
  };
  addGenerationService(server, { Generate: (call: Call) => { w.received.push(call.request); serve(call, w); } });
  return w;
}

/** Streams `n` tokens then a LENGTH finish. */
function answer(n: number) {
  return (call: Call, w: ScriptedWorker) => {
    for (let i = 0; i < n; i++) call.write({ token_ids: [10 + i], text: 'x', worker_id: w.id });
    call.write({ token_ids: [], text: '', finish_reason: 'LENGTH', worker_id: w.id, usage: { prompt_tokens: 3, completion_tokens: n } });
    call.end();
  };
}

function refuse(code: grpc.status, details: string) {
  return (call: Call) => { call.emit('error', { code, details }); };
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => { while (cleanups.length) await cleanups.pop()!().catch(() => {}); });

let seq = 0;
async function fleetWith(workers: ScriptedWorker[], routerOpts: Record<string, unknown> = {},
  before: (ledger: RedisLedger) => Promise<void> = async () => {}) {
  const redis = inject('redisUrl');
  const fleet = `test-${process.pid}/placement-${++seq}`;
  const [namespace, name] = fleet.split('/');
  const ledger = await RedisLedger.connect({ redis, namespace, fleet: name });
  cleanups.push(() => ledger.close());
  for (const w of workers) await ledger.heartbeat(w.id, w.fields, { ttlMs: 60_000 });
  await before(ledger);
  const router = await Router.start(parseRouterConfig({ port: 0, redis, fleet, metricsPort: 0, maxQueueMs: 1500, ...routerOpts }),
    pino({ level: 'silent' }));
  cleanups.push(() => router.close());
  const client = generationClient(`127.0.0.1:${router.port}`);
  cleanups.push(async () => client.close());
  // workers go first (cleanups run last-in first-out): streams they hold open end, so the router can shut down
  for (const w of workers) cleanups.push(() => w.close());
  return { ledger, router, client };
}

describe('router placement after a worker failure', () => {
  for (const policy of ['least-prefill', 'most-free'] as const) {
    it(`${policy}: a worker that refused the request is not picked again; the next best one serves it`, async () => {
      // A has the most room (every policy's first choice) but refuses: full queue
      const a = await scriptedWorker('A-big', 4000, refuse(grpc.status.RESOURCE_EXHAUSTED, 'the queue is full'));
      const b = await scriptedWorker('B-small', 1000, answer(2));
      const { client, ledger } = await fleetWith([a, b], { policy });
      const t0 = Date.now();
      const r = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 2 } });
      expect(r.error).toBeUndefined();
      expect(r.last?.worker_id).toBe('B-small');
      expect(r.tokens).toEqual([10, 11]);
      expect(a.received).toHaveLength(1);   // tried once, never again
      expect(b.received).toHaveLength(1);
      expect(Date.now() - t0).toBeLessThan(1500);   // no wait for the queue deadline
      // both reservations were given back
      const snap = await ledger.snapshot();
      expect(snap.workers.map((w) => [w.worker_id, w.reservations])).toEqual([['A-big', 0], ['B-small', 0]]);
    });
  }
});

describe('router: a request a worker stopped on purpose', () => {
  it('ABORTED (the worker\'s stall timeout: the client read nothing) is answered as it is, not moved to another worker', async () => {
    const a = await scriptedWorker('A', 4000, refuse(grpc.status.ABORTED, 'the client read nothing for 60000 ms'));
    const b = await scriptedWorker('B', 1000, answer(2));
    const { client, ledger } = await fleetWith([a, b]);
    const r = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 2 } });
    expect(r.error?.code).toBe(grpc.status.ABORTED);
    expect(r.error?.details).toBe('the client read nothing for 60000 ms');
    expect(b.received).toHaveLength(0);
    expect((await ledger.snapshot()).workers.map((w) => w.worker_id).sort()).toEqual(['A', 'B']);   // A stays
  });
});

describe('router reservation ids', () => {
  it('two requests in flight with one client request_id hold two reservations; each is released alone', async () => {
    // a worker that holds every stream open until the test ends it
    const open: Call[] = [];
    const w = await scriptedWorker('w1', 1000, (call) => { open.push(call); });
    const { client, ledger } = await fleetWith([w]);
    // 3 prompt tokens + 1581 new, full cache: 2 layers * 2 heads * (ceil(1584 / 16) + 1) = 400 pages each
    const req = { request_id: 'conv-42', token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 1581 } };
    const first = generate(client, req);
    const second = generate(client, req);
    const deadline = Date.now() + 5000;
    while (open.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(open).toHaveLength(2);
    let snap = await ledger.snapshot();
    expect(snap.workers[0]).toMatchObject({ reservations: 2, reserved_pages: 800, effective_free: 200 });
    const ids = w.received.map((r) => r.request_id ?? '');
    // the worker is told a distinct reservation id per request, the client's id its prefix
    expect(ids[0]).toMatch(/^conv-42\//);
    expect(ids[1]).toMatch(/^conv-42\//);
    expect(ids[0]).not.toBe(ids[1]);
    // a third request of 400 pages does not fit what is left (no over-commit): it waits, then RESOURCE_EXHAUSTED
    const third = await generate(client, req);
    expect(third.error?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    // the worker names a reservation by the request_id it was sent: admitting the first drops only that one
    await ledger.heartbeat('w1', w.fields, { ttlMs: 60_000, admitted: [ids[0]], queued: [ids[1]] });
    snap = await ledger.snapshot();
    expect(snap.workers[0]).toMatchObject({ reservations: 1, reserved_pages: 400 });
    // the first request ends: the router's release leaves the second request's reservation alone
    open[0].write({ token_ids: [], finish_reason: 'LENGTH', worker_id: 'w1' });
    open[0].end();
    expect((await first).error).toBeUndefined();
    snap = await ledger.snapshot();
    expect(snap.workers[0]).toMatchObject({ reservations: 1, reserved_pages: 400 });
    open[1].write({ token_ids: [], finish_reason: 'LENGTH', worker_id: 'w1' });
    open[1].end();
    expect((await second).error).toBeUndefined();
    expect((await ledger.snapshot()).workers[0]).toMatchObject({ reservations: 0, reserved_pages: 0 });
  });
});

describe('router answers for requests no worker can ever serve', () => {
  const ids = (n: number) => Array.from({ length: n }, (_, i) => 5 + (i % 100));

  it('a footprint above every live worker\'s total pages is INVALID_ARGUMENT at once, not RESOURCE_EXHAUSTED later', async () => {
    const small = await scriptedWorker('small', 64, answer(1));
    const large = await scriptedWorker('large', 100, answer(1), { free_pages: 0 });   // larger, but full right now
    const { client } = await fleetWith([small, large], { maxQueueMs: 5000 });
    // 3 prompt tokens + 300 new, full cache: 2 * 2 * (ceil(303 / 16) + 1) = 80 pages: only 'large' could ever hold it
    // 3 + 400: 2 * 2 * (26 + 1) = 108 pages: no worker ever can
    const t0 = Date.now();
    const r = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 400 }, budget: { spec: { method: 'FULL' } } });
    expect(r.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(r.error?.details).toMatch(/can never fit.*need 108 KV pages.*largest worker .* has 100/);
    expect(Date.now() - t0).toBeLessThan(2000);
    // one that fits a worker's total (though not its free pages now) waits for room: RESOURCE_EXHAUSTED, retryable
    const q = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 300 }, budget: { spec: { method: 'FULL' } } },
      { deadlineMs: 60_000 });
    expect(q.error?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(small.received.length + large.received.length).toBe(0);
  });

  it('with max_model_len published: no room for a token, or max_new_tokens beyond the room, is INVALID_ARGUMENT at once', async () => {
    const w = await scriptedWorker('w', 150, answer(1), { max_model_len: 512 });
    const { client } = await fleetWith([w], { maxQueueMs: 5000 });
    const t0 = Date.now();
    const over = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 510 } });
    expect(over.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(over.error?.details).toBe('sampling.max_new_tokens: 510 exceeds the model\'s room: prompt 3 + max_new_tokens 510 > max_model_len 512');
    const full = await generate(client, { token_ids: { ids: ids(512) }, sampling: { max_new_tokens: 1 } });
    expect(full.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(full.error?.details).toMatch(/^token_ids.ids: the prompt has 512 tokens; max_model_len is 512/);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(w.received).toHaveLength(0);
    // no max_new_tokens: planned as the default within the room, as the worker takes it. 500 + 12 tokens need
    // 2 * 2 * (32 + 1) = 132 pages (fits 150); planned with 256 new tokens it would need 196 and never fit
    const room = await generate(client, { token_ids: { ids: ids(500) }, budget: { spec: { method: 'FULL' } } });
    expect(room.error).toBeUndefined();
    expect(w.received).toHaveLength(1);
    // exactly the room is fine (3 + 509 tokens: 132 pages)
    const exact = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 509 }, budget: { spec: { method: 'FULL' } } });
    expect(exact.error).toBeUndefined();
  });

  it('in a fleet of mixed max_model_len, a request only the larger workers can hold goes to one of them', async () => {
    // the small worker has the most room (every policy's first pick) but would refuse 3 + 300 tokens for good
    const small = await scriptedWorker('small', 4000, refuse(grpc.status.INVALID_ARGUMENT, 'sampling.max_new_tokens: exceeds the room'),
      { max_model_len: 256 });
    const large = await scriptedWorker('large', 1000, answer(2), { max_model_len: 4096 });
    const { client } = await fleetWith([small, large]);
    const r = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 300 } });
    expect(r.error).toBeUndefined();
    expect(r.last?.worker_id).toBe('large');
    expect(small.received).toHaveLength(0);
    // a short request may still go to the small one
    const short = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 2 } });
    expect(short.error?.details).toBe('sampling.max_new_tokens: exceeds the room');   // the scripted refusal: it was picked
    expect(small.received).toHaveLength(1);
  });

  it('a live worker that publishes no max_model_len leaves the judgement to the worker', async () => {
    const w = await scriptedWorker('w', 4000, refuse(grpc.status.INVALID_ARGUMENT, 'sampling.max_new_tokens: too many'));
    const { client } = await fleetWith([w]);
    const r = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 600 } });
    expect(r.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(r.error?.details).toBe('sampling.max_new_tokens: too many');
    expect(w.received).toHaveLength(1);
  });
});

describe('router budget selection agrees with the worker\'s', () => {
  // every selector a client may send, against two fleets: one whose default is 'long', and one that also stores a
  // budget named 'default' (a stored name wins over the default's alias)
  const selectors: Array<[string, GenerateRequest['budget']]> = [
    ['none', undefined], ['name default', { name: 'default' }], ['empty name', { name: '' }], ['name long', { name: 'long' }],
    ['name short', { name: 'short' }], ['unknown name', { name: 'nope' }], ['inline spec', { spec: { method: 'FULL' } }],
  ];
  const budgets: Record<string, BudgetSpec> = {
    long: { method: 'ADA_SNAPKV', tokens_per_head: 256 }, short: { method: 'SNAPKV', tokens_per_head: 64 },
  };
  // and a fleet whose default ('long') is stored but unusable (tokens_per_head below window + 1): the worker falls
  // back to the built-in default for requests that mean the default, and refuses requests that name it
  const badDefault = { ...budgets, long: { method: 'ADA_SNAPKV', tokens_per_head: 8, window: 32 } as BudgetSpec };
  for (const stored of [budgets, { ...budgets, default: { method: 'PYRAMIDKV', keep_ratio: 0.5 } as BudgetSpec }, badDefault]) {
    it(`same answer for every selector (fleet budgets: ${JSON.stringify(stored)}; default 'long')`, async () => {
      const w = await scriptedWorker('w', 100_000, answer(1));
      const { client } = await fleetWith([w], {}, async (ledger) => {
        for (const [name, spec] of Object.entries(stored)) await ledger.setBudget(name, spec);
        await ledger.setDefaultBudget('long');
      });
      // what the worker itself answers, from the same ledger content
      const fb = new FleetBudgets('f', pino({ level: 'silent' }));
      fb.replace(Object.fromEntries(Object.entries(stored).map(([k, v]) => [k, JSON.stringify(v)])), 'long');
      for (const [what, sel] of selectors) {
        let expected: { code: string; spec?: ResolvedBudgetSpec };
        try {
          expected = { code: 'OK', spec: resolveSelector(sel, fb) };
        } catch (err) {
          expected = { code: (err as RequestError).code };
        }
        const before = w.received.length;
        const r = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 1 }, budget: sel });
        const got: { code: string; spec?: ResolvedBudgetSpec } = { code: r.error ? grpc.status[r.error.code] : 'OK' };
        // the router resolves the budget and forwards it inline: what the worker then runs
        if (!r.error) got.spec = checkSpec(w.received[before].budget!.spec!);
        // the spec's float fields cross the wire as proto floats (32 bits): compare at that precision
        const f32 = (x: { code: string; spec?: ResolvedBudgetSpec }) => (x.spec ? { ...x, spec: Object.fromEntries(Object.entries(x.spec)
          .map(([k, v]) => [k, typeof v === 'number' && !Number.isInteger(v) ? Math.fround(v) : v])) } : x);
        expect(f32(got), what).toEqual(f32(expected));
      }
    });
  }
});

describe('router request metrics by final code', () => {
  /** Streams a token every 20 ms until the call is cancelled. */
  function endless(calls: Call[]) {
    return (call: Call, w: ScriptedWorker) => {
      calls.push(call);
      const t = setInterval(() => { if (!call.cancelled) call.write({ token_ids: [7], text: 'x', worker_id: w.id }); }, 20);
      call.on('cancelled', () => clearInterval(t));
    };
  }
  async function counts(router: Router): Promise<Record<string, number>> {
    const m = await router.registry.getSingleMetric('kvfleet_router_requests_total')!.get();
    return Object.fromEntries(m.values.map((v) => [String(v.labels.code), v.value]));
  }
  async function until(pred: () => Promise<boolean>, ms = 5000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!(await pred())) {
      if (Date.now() > deadline) throw new Error('condition not reached in time');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  it('a client that cancels mid-stream is counted CANCELLED; one whose deadline passes, DEADLINE_EXCEEDED', async () => {
    const calls: Call[] = [];
    const w = await scriptedWorker('w', 100_000, endless(calls));
    const { client, router, ledger } = await fleetWith([w]);
    const c = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 1000 } }, { cancelAfterTokens: 2 });
    expect(c.error?.code).toBe(grpc.status.CANCELLED);
    await until(async () => (await counts(router)).CANCELLED === 1);
    const d = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 1000 } }, { deadlineMs: 300 });
    expect(d.error?.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(d.tokens.length).toBeGreaterThan(0);
    await until(async () => (await counts(router)).DEADLINE_EXCEEDED === 1);
    expect(await counts(router)).toEqual({ CANCELLED: 1, DEADLINE_EXCEEDED: 1 });
    // both worker streams were cancelled; a deadline is no worker failure: the worker stays in the ledger, and the
    // request was not moved to another worker
    await until(async () => calls.every((x) => x.cancelled));
    expect(calls).toHaveLength(2);
    expect((await ledger.snapshot()).workers.map((x) => x.worker_id)).toEqual(['w']);
  });

  it('a deadline that passes while the request waits for room is counted DEADLINE_EXCEEDED', async () => {
    const w = await scriptedWorker('w', 100, answer(1), { free_pages: 0 });
    const { client, router } = await fleetWith([w], { maxQueueMs: 1000 });
    const d = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 4 } }, { deadlineMs: 300 });
    expect(d.error?.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    await until(async () => Object.keys(await counts(router)).length > 0, 8000);
    expect(await counts(router)).toEqual({ DEADLINE_EXCEEDED: 1 });
  });
});

describe('router: which worker failures take a worker out of the ledger', () => {
  const ids = async (ledger: RedisLedger) => (await ledger.snapshot()).workers.map((w) => w.worker_id);

  it('a reachable worker answering INTERNAL, or UNAVAILABLE for another reason than draining, stays in the ledger', async () => {
    const answers = [refuse(grpc.status.INTERNAL, 'engine error on this request'),
      refuse(grpc.status.UNAVAILABLE, "budget.name: budget 'x' cannot be resolved yet (retry)"),
      refuse(grpc.status.UNKNOWN, 'handler threw')];
    let n = 0;
    const a = await scriptedWorker('A', 4000, (call) => answers[n++](call));
    const b = await scriptedWorker('B', 1000, answer(1));
    const { client, ledger, router } = await fleetWith([a, b], { policy: 'most-free' });
    for (let i = 0; i < answers.length; i++) {
      const r = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 1 } });
      expect(r.error).toBeUndefined();
      expect(r.last?.worker_id).toBe('B');
      expect(await ids(ledger)).toEqual(['A', 'B']);   // A still picked first by the next request
    }
    expect(a.received).toHaveLength(3);
    const retries = (await router.registry.getSingleMetric('kvfleet_router_retries_total')!.get()).values[0].value;
    expect(retries).toBe(3);
  });

  it('an unreachable worker (nothing listening) leaves the ledger; the request is served elsewhere', async () => {
    const a = await scriptedWorker('A', 4000, answer(1));
    await a.close();   // its address refuses connections from now on
    const b = await scriptedWorker('B', 1000, answer(1));
    const { client, ledger } = await fleetWith([a, b], { policy: 'most-free' });
    const r = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 1 } });
    expect(r.last?.worker_id).toBe('B');
    expect(await ids(ledger)).toEqual(['B']);
  });

  it('a worker whose server goes away mid-stream leaves the ledger; the stream moves on with its tokens so far', async () => {
    const a: ScriptedWorker = await scriptedWorker('A', 4000, (call, w) => {
      call.write({ token_ids: [10], text: 'x', worker_id: w.id });
      call.write({ token_ids: [11], text: 'x', worker_id: w.id });
      setTimeout(() => { void w.close(); }, 50);
    });
    const b = await scriptedWorker('B', 1000, answer(1));
    const { client, ledger } = await fleetWith([a, b], { policy: 'most-free' });
    const r = await generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 3 } });
    expect(r.error).toBeUndefined();
    expect(r.last?.worker_id).toBe('B');
    expect(b.received[0].resume_token_ids).toEqual([10, 11]);
    expect(await ids(ledger)).toEqual(['B']);
  });
});

describe('router: a worker that stops answering mid-stream', () => {
  /** A TCP proxy in front of addr that can freeze: from then on it passes no byte either way and closes nothing,
   *  as a SIGSTOPped process or a partition looks from the router's side. */
  async function freezableProxy(addr: string) {
    const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
    const sockets: net.Socket[] = [];
    let frozen = false;
    const srv = net.createServer((down) => {
      const up = net.connect(port, host);
      sockets.push(down, up);
      down.on('data', (d) => { if (!frozen) up.write(d); });
      up.on('data', (d) => { if (!frozen) down.write(d); });
      for (const [a, b] of [[down, up], [up, down]]) { a.on('error', () => {}); a.on('close', () => b.destroy()); }
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    return {
      addr: `127.0.0.1:${(srv.address() as net.AddressInfo).port}`,
      freeze() { frozen = true; },
      async close() { for (const s of sockets) s.destroy(); await new Promise<void>((r) => srv.close(() => r())); },
    };
  }

  /** Streams token 10, 11, ... every 20 ms, until cancelled. */
  function endless(calls: Call[]) {
    return (call: Call, w: ScriptedWorker) => {
      calls.push(call);
      let i = 10;
      const t = setInterval(() => { if (!call.cancelled) call.write({ token_ids: [i++], text: 'x', worker_id: w.id }); }, 20);
      call.on('cancelled', () => clearInterval(t));
    };
  }

  it('keepalive: a frozen connection fails within keepalive time + timeout and the stream moves on', async () => {
    const calls: Call[] = [];
    const a = await scriptedWorker('A', 4000, endless(calls));
    const proxy = await freezableProxy(a.addr);
    cleanups.push(() => proxy.close());
    a.fields.addr = proxy.addr;
    const b = await scriptedWorker('B', 1000, answer(2));
    // worker gone detection by the ledger is off here (A keeps its entry): keepalive alone must notice
    const { client, ledger } = await fleetWith([a, b], { policy: 'most-free', workerKeepaliveMs: 300,
      workerKeepaliveTimeoutMs: 300, workerGoneMs: 600_000 });
    const got: number[] = [];
    let frozenAt = 0;
    const stream = client.Generate({ token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 100 } }, new grpc.Metadata(),
      { deadline: Date.now() + 20_000 });
    const done = new Promise<{ err?: grpc.ServiceError; last?: GenerateResponse }>((resolve) => {
      let last: GenerateResponse | undefined;
      stream.on('data', (m: GenerateResponse) => {
        got.push(...(m.token_ids ?? []));
        if (m.finish_reason) last = m;
        if (got.length === 3 && !frozenAt) { frozenAt = Date.now(); proxy.freeze(); }
      });
      stream.on('error', (err: grpc.ServiceError) => resolve({ err }));
      stream.on('end', () => resolve({ last }));
    });
    const r = await done;
    expect(r.err).toBeUndefined();
    expect(r.last?.worker_id).toBe('B');
    const resumed = b.received[0].resume_token_ids ?? [];
    expect(resumed.length).toBeGreaterThanOrEqual(3);
    expect(got.slice(0, resumed.length)).toEqual(resumed);   // the client saw the frozen worker's tokens once each
    expect(Date.now() - frozenAt).toBeLessThan(5000);
    expect((await ledger.snapshot()).workers.map((w) => w.worker_id)).toEqual(['B']);   // A unreachable: removed
  });

  it('a stream paused by a slow client keeps a worker that answers pings; frozen, the worker is dropped and the stream moves on', async () => {
    // A streams 10, 11, ... as fast as the stream takes them, waiting for 'drain' when its buffer is full
    const calls: Call[] = [];
    const a = await scriptedWorker('A', 4000, (call, w) => {
      calls.push(call);
      let i = 10;
      const pump = () => {
        while (!call.cancelled) if (!call.write({ token_ids: [i++], text: 'x', worker_id: w.id })) { call.once('drain', pump); return; }
      };
      pump();
    });
    const proxy = await freezableProxy(a.addr);
    cleanups.push(() => proxy.close());
    a.fields.addr = proxy.addr;
    const b = await scriptedWorker('B', 1000, answer(2));
    const { router, ledger } = await fleetWith([a, b], { policy: 'most-free', workerKeepaliveMs: 300,
      workerKeepaliveTimeoutMs: 300, workerGoneMs: 600_000 });
    const pauses = async () => (await router.registry.getSingleMetric('kvfleet_router_backpressure_pauses_total')?.get())?.values[0]?.value ?? 0;
    const slow = generationClient(`127.0.0.1:${router.port}`, grpc.credentials.createInsecure(), { 'grpc-node.flow_control_window': 4096 });
    cleanups.push(async () => slow.close());
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const stream = slow.Generate({ token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 3000 } }, new grpc.Metadata(),
      { deadline: Date.now() + 20_000 });
    const got: GenerateResponse[] = [];
    let err: grpc.ServiceError | undefined, ended = false;
    stream.on('data', (m: GenerateResponse) => { got.push(m); if (got.length === 1) stream.pause(); });
    stream.on('error', (e: grpc.ServiceError) => { err = e; });
    stream.on('end', () => { ended = true; });
    for (let i = 0; i < 100 && await pauses() === 0; i++) await sleep(20);
    expect(await pauses()).toBeGreaterThan(0);
    // paused for several keepalive periods (ping 300 ms, timeout 300 ms): pings are answered, the stream stays on A
    await sleep(1500);
    expect(calls).toHaveLength(1);
    expect(calls[0].cancelled).toBe(false);
    expect(b.received).toHaveLength(0);
    // A freezes while the stream is paused: keepalive fails its channel, the stream moves on before the client reads
    proxy.freeze();
    const frozenAt = Date.now();
    for (let i = 0; i < 200 && b.received.length === 0; i++) await sleep(20);
    expect(b.received).toHaveLength(1);
    expect(Date.now() - frozenAt).toBeLessThan(3000);
    expect((await ledger.snapshot()).workers.map((w) => w.worker_id)).toEqual(['B']);
    // what B resumes from is exactly what went to the client stream: reading again, each token arrives once
    stream.resume();
    for (let i = 0; i < 200 && !ended && !err; i++) await sleep(20);
    expect(err).toBeUndefined();
    expect(ended).toBe(true);
    const resumed = b.received[0].resume_token_ids ?? [];
    expect(resumed.length).toBeGreaterThan(0);
    const tokens = got.flatMap((m) => m.token_ids ?? []);
    expect(tokens).toEqual([...resumed, 10, 11]);
    expect(resumed).toEqual(Array.from({ length: resumed.length }, (_, i) => 10 + i));
    expect(got.at(-1)).toMatchObject({ finish_reason: 'LENGTH', worker_id: 'B' });
  });

  it('a worker that leaves the ledger has its streams cancelled and moved after workerGoneMs; a short absence does not', async () => {
    const calls: Call[] = [];
    const a = await scriptedWorker('A', 4000, endless(calls));
    const b = await scriptedWorker('B', 1000, answer(2));
    const { client, ledger } = await fleetWith([a, b], { policy: 'most-free', workerGoneMs: 1500 });
    const p = generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 1000 } }, { deadlineMs: 20_000 });
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    await sleep(300);
    expect(calls).toHaveLength(1);
    // absent for ~600 ms (as while Redis restarts and workers re-register): the stream stays on A
    await ledger.removeWorker('A');
    await sleep(600);
    await ledger.heartbeat('A', a.fields, { ttlMs: 60_000 });
    await sleep(1500);
    expect(calls[0].cancelled).toBe(false);
    expect(b.received).toHaveLength(0);
    // gone for good (its TTL ran out): within workerGoneMs + a refresh the stream moves to B
    const goneAt = Date.now();
    await ledger.removeWorker('A');
    const r = await p;
    expect(r.error).toBeUndefined();
    expect(r.last?.worker_id).toBe('B');
    expect(Date.now() - goneAt).toBeLessThan(4000);
    expect(calls[0].cancelled).toBe(true);
    expect(b.received[0].resume_token_ids?.length).toBeGreaterThan(0);
  });

  it('time the ledger is out of sight does not count as a worker\'s absence: a Redis restart moves no healthy stream', async () => {
    const own = await startRedis();
    const restarted: { server?: Awaited<ReturnType<typeof startRedis>> } = {};
    cleanups.push(async () => { await own.stop(); await restarted.server?.stop(); });
    const calls: Call[] = [];
    const a = await scriptedWorker('A', 4000, endless(calls));
    const b = await scriptedWorker('B', 1000, answer(2));
    const ledger = await RedisLedger.connect({ redis: own.url, namespace: `test-${process.pid}`, fleet: `restart-${++seq}` });
    cleanups.push(() => ledger.close());
    for (const w of [a, b]) await ledger.heartbeat(w.id, w.fields, { ttlMs: 60_000 });
    const router = await Router.start(parseRouterConfig({ port: 0, redis: own.url, fleet: `test-${process.pid}/restart-${seq}`, metricsPort: 0,
      policy: 'most-free', workerGoneMs: 1500 }), pino({ level: 'silent' }));
    cleanups.push(() => router.close());
    const client = generationClient(`127.0.0.1:${router.port}`);
    cleanups.push(async () => client.close());
    for (const w of [a, b]) cleanups.push(() => w.close());
    const p = generate(client, { token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 1000 } }, { deadlineMs: 20_000 });
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    await sleep(300);
    expect(calls).toHaveLength(1);
    // a snapshot misses A (the instant before Redis goes), then Redis is away for longer than workerGoneMs
    await ledger.removeWorker('A');
    await sleep(700);
    await own.stop();
    await sleep(2000);
    restarted.server = await startRedis({ port: own.port });
    // the router's first snapshots of the empty new Redis show no A; A re-registers with its next heartbeats
    await sleep(600);
    for (const w of [a, b]) await ledger.heartbeat(w.id, w.fields, { ttlMs: 60_000 });
    await sleep(1200);
    expect(calls[0].cancelled).toBe(false);
    expect(b.received).toHaveLength(0);
    // and A going for good is still noticed
    await ledger.removeWorker('A');
    const r = await p;
    expect(r.error).toBeUndefined();
    expect(r.last?.worker_id).toBe('B');
  });
});
