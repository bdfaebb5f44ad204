// Routers in front of real workers (child processes, tiny model), real redis-server, real gRPC.
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { pino } from 'pino';
import { RedisLedger, type LedgerSnapshot } from '../../ledger/index.ts';
import { generationClient, workerClient, type GenerationClient } from '../../proto/index.ts';
import { parseRouterConfig } from '../../router/config.ts';
import { Router } from '../../router/router.ts';
import { spawnKvfleet, type KvfleetProcess } from '../harness/proc.ts';
import { capacity, generate, greedy, tinyModel } from '../worker/helpers.ts';

interface ChildWorker { id: string; proc: KvfleetProcess; addr: string }

let seq = 0;
function fleetName(): string { return `rt-${process.pid}/f${++seq}`; }

async function startWorker(model: string, redis: string, fleet: string, id: string, numPages: number,
  extra: string[] = []): Promise<ChildWorker> {
  const proc = spawnKvfleet(['worker', '--model', model, '--port', '0', '--num-pages', String(numPages), '--redis', redis,
    '--fleet', fleet, '--worker-id', id, '--metrics-port', '0', '--log-level', 'warn', ...extra]);
  const m = await proc.waitFor(/listening on (\S+)/);
  return { id, proc, addr: m[1] };
}

async function ledgerFor(redis: string, fleet: string): Promise<RedisLedger> {
  const [namespace, name] = fleet.split('/');
  return RedisLedger.connect({ redis, namespace, fleet: name });
}

async function waitWorkers(l: RedisLedger, n: number): Promise<LedgerSnapshot> {
  for (let i = 0; i < 200; i++) {
    const s = await l.snapshot();
    if (s.workers.filter((w) => !w.draining).length >= n) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`fewer than ${n} workers registered`);
}

/** Samples the ledger until stop(): every worker's reservations must fit its uncommitted pages. */
function watchOverReservation(l: RedisLedger) {
  let stop = false, samples = 0, worst = -Infinity;
  const done = (async () => {
    while (!stop) {
      const s = await l.snapshot();
      for (const w of s.workers) worst = Math.max(worst, w.reserved_pages - w.free_pages);
      samples++;
      await new Promise((r) => setTimeout(r, 15));
    }
  })();
  return { async stop() { stop = true; await done; return { samples, worst }; } };
}

describe('router over a fleet', () => {
  const redis = () => inject('redisUrl');
  let model: ReturnType<typeof tinyModel>;
  beforeAll(() => { model = tinyModel(); });
  afterAll(() => model.cleanup());

  it('two workers with different KV memory both serve, the larger more; reserved never exceeds free', async () => {
    const fleet = fleetName();
    const ledger = await ledgerFor(redis(), fleet);
    const big = await startWorker(model.dir, redis(), fleet, 'big', 1000);
    const small = await startWorker(model.dir, redis(), fleet, 'small', 500);
    await waitWorkers(ledger, 2);
    const router = await Router.start(parseRouterConfig({ port: 0, redis: redis(), fleet, metricsPort: 0, maxQueueMs: 20_000 }),
      pino({ level: 'silent' }));
    const c = generationClient(`127.0.0.1:${router.port}`);
    const watch = watchOverReservation(ledger);
    try {
      const results = await Promise.all(Array.from({ length: 64 }, (_, i) =>
        generate(c, { token_ids: { ids: Array.from({ length: 40 + (i % 7) }, (_, j) => 3 + ((i + j) % 200)) },
          sampling: greedy(24), budget: { spec: { method: 'FULL' } } })));
      const by = new Map<string, number>();
      for (const r of results) {
        expect(r.error).toBeUndefined();
        expect(r.last?.finish_reason).toBe('LENGTH');
        const w = r.last!.worker_id!;
        by.set(w, (by.get(w) ?? 0) + 1);
      }
      expect(by.get('big') ?? 0).toBeGreaterThan(0);
      expect(by.get('small') ?? 0).toBeGreaterThan(0);
      expect(by.get('big')!).toBeGreaterThan(by.get('small')!);
    } finally {
      const w = await watch.stop();
      expect(w.samples).toBeGreaterThan(5);
      expect(w.worst).toBeLessThanOrEqual(0);
      c.close();
      await router.close();
      await Promise.all([big.proc.stop(), small.proc.stop()]);
      await ledger.close();
    }
  });

  it('three router processes, 200 concurrent requests: all complete, no over-reservation', async () => {
    const fleet = fleetName();
    const ledger = await ledgerFor(redis(), fleet);
    const workers = [await startWorker(model.dir, redis(), fleet, 'a', 1200), await startWorker(model.dir, redis(), fleet, 'b', 1200)];
    await waitWorkers(ledger, 2);
    const routers = await Promise.all([0, 1, 2].map(async () => {
      const p = spawnKvfleet(['router', '--port', '0', '--redis', redis(), '--fleet', fleet, '--metrics-port', '0',
        '--max-queue-ms', '30000']);
      const m = await p.waitFor(/listening on (\S+)/);
      return { p, c: generationClient(m[1]) };
    }));
    const watch = watchOverReservation(ledger);
    try {
      const results = await Promise.all(Array.from({ length: 200 }, (_, i) =>
        generate(routers[i % 3].c, { token_ids: { ids: [5 + (i % 50), 9, 11, 13] }, sampling: greedy(8) })));
      const failed = results.filter((r) => r.error);
      expect(failed.map((r) => r.error?.details)).toEqual([]);
      expect(results.every((r) => r.tokens.length === 8)).toBe(true);
    } finally {
      const w = await watch.stop();
      expect(w.worst).toBeLessThanOrEqual(0);
      for (const r of routers) { r.c.close(); await r.p.stop(); }
      await Promise.all(workers.map((w) => w.proc.stop()));
      await ledger.close();
    }
  });

  it('a client cancelling mid-stream frees the worker pages within one heartbeat; a draining worker gets no new work', async () => {
    const fleet = fleetName();
    const ledger = await ledgerFor(redis(), fleet);
    const a = await startWorker(model.dir, redis(), fleet, 'a', 2000);
    const b = await startWorker(model.dir, redis(), fleet, 'b', 2000);
    await waitWorkers(ledger, 2);
    const router = await Router.start(parseRouterConfig({ port: 0, redis: redis(), fleet, metricsPort: 0 }), pino({ level: 'silent' }));
    const c = generationClient(`127.0.0.1:${router.port}`);
    const wa = workerClient(a.addr), wb = workerClient(b.addr);
    try {
      const r = await generate(c, { token_ids: { ids: [4, 5, 6, 7] }, sampling: greedy(3000) }, { cancelAfterTokens: 5 });
      expect(r.tokens.length).toBeGreaterThanOrEqual(5);
      await new Promise((res) => setTimeout(res, 700));  // one heartbeat (500 ms) and change
      const s = await ledger.snapshot();
      for (const w of s.workers) expect(w.free_pages).toBe(w.total_pages);
      for (const wc of [wa, wb]) {
        const cap = await capacity(wc);
        expect(Number(cap.free_pages)).toBe(Number(cap.total_pages));
      }
      // drain a: its running stream finishes, new requests all go to b
      const running = generate(c, { token_ids: { ids: [4, 5, 6, 8] }, sampling: greedy(200) });
      await new Promise((res) => setTimeout(res, 50));
      await new Promise<void>((res, rej) => wa.Drain({}, (e) => (e ? rej(e) : res())));
      await new Promise((res) => setTimeout(res, 700));
      const more = await Promise.all(Array.from({ length: 12 }, (_, i) => generate(c, { token_ids: { ids: [20 + i, 3] }, sampling: greedy(4) })));
      expect(more.every((m) => !m.error && m.last?.worker_id === 'b')).toBe(true);
      const first = await running;
      expect(first.error).toBeUndefined();
      expect(first.tokens.length).toBe(200);
    } finally {
      c.close(); wa.close(); wb.close();
      await router.close();
      await Promise.all([a.proc.stop(), b.proc.stop()]);
      await ledger.close();
    }
  });
});

describe('migration (Router II)', () => {
  const redis = () => inject('redisUrl');
  let model: ReturnType<typeof tinyModel>;
  beforeAll(() => { model = tinyModel(); });
  afterAll(() => model.cleanup());

  for (const method of ['FULL', 'ADA_SNAPKV'] as const) {
    for (const temperature of [0, 0.8]) {
      it(`kill -9 of the serving worker mid-stream: identical tokens (${method}, temperature ${temperature})`, async () => {
        const fleet = fleetName();
        const ledger = await ledgerFor(redis(), fleet);
        const ws = [await startWorker(model.dir, redis(), fleet, 'w1', 3000), await startWorker(model.dir, redis(), fleet, 'w2', 3000)];
        await waitWorkers(ledger, 2);
        const router = await Router.start(parseRouterConfig({ port: 0, redis: redis(), fleet, metricsPort: 0 }), pino({ level: 'silent' }));
        const c: GenerationClient = generationClient(`127.0.0.1:${router.port}`);
        try {
          const prompt = Array.from({ length: 120 }, (_, j) => 3 + ((j * 7) % 300));
          const req = { token_ids: { ids: prompt }, sampling: { max_new_tokens: 400, temperature, seed: '987654321', ignore_eos: true },
            budget: { spec: method === 'FULL' ? { method } : { method, tokens_per_head: 48, window: 8, decode_max_tokens_per_head: 64 } } };
          const baseline = await generate(c, req);
          expect(baseline.error).toBeUndefined();
          expect(baseline.tokens.length).toBe(400);
          // the same request again; kill the worker that serves it once a few tokens have arrived
          const call = c.Generate(req);
          const got: number[] = [];
          const workersSeen = new Set<string>();
          let killed = false;
          const done = new Promise<{ err?: Error }>((resolve) => {
            call.on('data', (m) => {
              got.push(...(m.token_ids ?? []));
              workersSeen.add(m.worker_id);
              if (!killed && got.length >= 10) {
                killed = true;
                const w = ws.find((x) => x.id === m.worker_id)!;
                process.kill(w.proc.pid, 'SIGKILL');
              }
            });
            call.on('error', (err: Error) => resolve({ err }));
            call.on('end', () => resolve({}));
          });
          const r = await done;
          expect(r.err).toBeUndefined();
          expect(killed).toBe(true);
          expect(workersSeen.size).toBe(2);
          expect(got).toEqual(baseline.tokens);
        } finally {
          c.close();
          await router.close();
          await Promise.all(ws.map((w) => w.proc.stop()));
          await ledger.close();
        }
      });
    }
  }
});

describe('Redis outage (Router II)', () => {
  let model: ReturnType<typeof tinyModel>;
  beforeAll(() => { model = tinyModel(); });
  afterAll(() => model.cleanup());

  it('Redis stopped for 5 s under load: requests complete or fail retryably; routing recovers without a restart', async () => {
    const { startRedis } = await import('../harness/redis.ts');
    const grpc = await import('@grpc/grpc-js');
    let redis = await startRedis();
    const port = redis.port;
    const fleet = fleetName();
    const ws = [await startWorker(model.dir, redis.url, fleet, 'o1', 2000), await startWorker(model.dir, redis.url, fleet, 'o2', 2000)];
    const ledger = await ledgerFor(redis.url, fleet);
    await waitWorkers(ledger, 2);
    await ledger.close();
    const router = await Router.start(parseRouterConfig({ port: 0, redis: redis.url, fleet, metricsPort: 0, maxQueueMs: 1000 }),
      pino({ level: 'silent' }));
    const c = generationClient(`127.0.0.1:${router.port}`);
    const retryable = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);
    const outcomes: Array<{ ok: boolean; code?: number; detail?: string; t: number }> = [];
    let stop = false;
    const load = (async () => {
      while (!stop) {
        const t = Date.now();
        const batch = await Promise.all(Array.from({ length: 4 }, (_, i) =>
          generate(c, { token_ids: { ids: [7 + i, 8, 9] }, sampling: greedy(6) })));
        for (const r of batch) {
          outcomes.push(r.error ? { ok: false, code: r.error.code, detail: r.error.details, t } : { ok: r.tokens.length === 6, t });
        }
      }
    })();
    try {
      await new Promise((r) => setTimeout(r, 500));
      await redis.stop();
      const down = Date.now();
      await new Promise((r) => setTimeout(r, 5000));
      expect(router.isDegraded).toBe(true);
      const servedDuring = outcomes.filter((o) => o.t >= down && o.ok).length;
      redis = await startRedis({ port });
      // workers re-register on their next heartbeat; the router leaves degraded mode on its next refresh
      for (let i = 0; i < 100 && router.isDegraded; i++) await new Promise((r) => setTimeout(r, 100));
      expect(router.isDegraded).toBe(false);
      const back = await ledgerFor(redis.url, fleet);
      await waitWorkers(back, 2);  // each worker's Redis client reconnects with its own backoff
      await back.close();
      const after = Date.now();
      await new Promise((r) => setTimeout(r, 1500));
      stop = true;
      await load;
      const recovered = outcomes.filter((o) => o.t >= after);  // requests sent once the fleet is back
      expect(recovered.length).toBeGreaterThan(0);
      expect(recovered.filter((o) => !o.ok)).toEqual([]);
      expect(servedDuring).toBeGreaterThan(0);  // degraded mode kept routing from the snapshot
      for (const o of outcomes) if (!o.ok) expect(retryable.has(o.code!)).toBe(true);
    } finally {
      stop = true;
      await load;
      c.close();
      await router.close();
      await Promise.all(ws.map((w) => w.proc.stop()));
      await redis.stop();
    }
  }, 60_000);
});
