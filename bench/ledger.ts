// `kvfleet bench ledger`: pick+reserve latency and throughput of the Redis ledger against a local redis-server with
// 100 workers registered (issue 3). Targets: p99 < 1 ms, > 5000 picks/s (pipelined from one client, and from 8
// clients on separate connections). Workers keep heartbeating in the background, as in a real fleet.
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { RedisLedger } from '../ledger/redis.ts';
import { PICK_POLICIES, type PickPolicy, type PickResult, type WorkerFields } from '../ledger/types.ts';
import { startRedis } from '../tests/harness/redis.ts';
import type { BenchOptions } from './index.ts';
import { machineInfo, percentile, progress, target, type BenchReport, intArg as benchIntArg } from './report.ts';

const intArg = (opts: BenchOptions, name: string, def: number): number => benchIntArg('ledger', opts, name, def);

const NEED_PAGES = 4;
const round = (x: number, digits = 4): number => Number(x.toFixed(digits));

export async function run(opts: BenchOptions): Promise<BenchReport> {
  const workers = intArg(opts, 'workers', 100);
  const seqPicks = intArg(opts, 'picks', 5000);
  const pipelinedPicks = intArg(opts, 'pipelined-picks', 30_000);
  const inFlight = intArg(opts, 'in-flight', 128);
  const clientPicks = intArg(opts, 'client-picks', 2500);
  const clients = intArg(opts, 'clients', 8);

  const server = await startRedis();
  const open: RedisLedger[] = [];
  const connect = async (autoPipelining = false): Promise<RedisLedger> => {
    const l = await RedisLedger.connect({ redis: server.url, namespace: 'bench', fleet: 'ledger', autoPipelining });
    open.push(l);
    return l;
  };
  const timers: NodeJS.Timeout[] = [];
  try {
    const admin = await connect();
    // capacity far beyond what the run reserves, so no pick fails for want of pages
    const f = (i: number): WorkerFields => ({ addr: `10.0.${i >> 8}.${i & 255}:7000`, total_pages: 1_000_000, free_pages: 1_000_000,
      page_size: 16, num_layers: 12, num_kv_heads: 4, running: 0, waiting: 0, draining: false });
    const ids = Array.from({ length: workers }, (_, i) => `worker-${i}`);
    await Promise.all(ids.map((id, i) => admin.heartbeat(id, f(i))));
    // each worker heartbeats every 500 ms on its own phase, as independent workers do
    let heartbeats = 0;
    const heartbeater = await connect(true);
    ids.forEach((id, i) => {
      timers.push(setTimeout(() => {
        timers.push(setInterval(() => {
          heartbeater.heartbeat(id, f(i)).then(() => { heartbeats++; }, () => { /* a miss shows in the count */ });
        }, 500));
      }, Math.floor((i * 500) / ids.length)));
    });
    const started = performance.now();

    const picked: { worker_id: string; rid: string }[] = [];
    const releaseAll = async (): Promise<void> => {
      const rel = await connect(true);
      await Promise.all(picked.splice(0).map((p) => rel.release(p.worker_id, p.rid)));
    };
    const mustPick = (r: PickResult | null, rid: string): PickResult => {
      if (r === null) throw new Error(`bench ledger: pick ${rid} found no worker; capacity should never run out here`);
      return r;
    };

    // 1. sequential pick+reserve latency, each pick released (untimed) to keep capacity steady
    const results: unknown[] = [{ name: 'setup', workers, need_pages: NEED_PAGES, heartbeat_interval_ms: 500, redis: await redisVersion(server.url) }];
    const seq = await connect();
    let p99MostFree = NaN;
    for (const policy of PICK_POLICIES as readonly PickPolicy[]) {
      const n = policy === 'most-free' ? seqPicks : Math.max(1, Math.floor(seqPicks / 2));
      // warm up (JIT, connections, every worker's heartbeat timer running) for 1000 picks and at least 1 s
      const warmUntil = performance.now() + 1000;
      for (let i = 0; i < 1000 || performance.now() < warmUntil; i++) {
        const rid = `warm-${policy}-${i}`;
        const r = mustPick(await seq.pick(NEED_PAGES, rid, { policy }), rid);
        await seq.release(r.worker_id, rid);
      }
      const lat: number[] = [];
      const tick = opts.json ? () => {} : progress(`pick latency (${policy})`);
      for (let i = 0; i < n; i++) {
        const rid = `seq-${policy}-${i}`;
        const t0 = performance.now();
        const r = mustPick(await seq.pick(NEED_PAGES, rid, { policy }), rid);
        lat.push(performance.now() - t0);
        await seq.release(r.worker_id, rid);
        if (i % 500 === 499 || i === n - 1) tick(i + 1, n);
      }
      const p99 = percentile(lat, 99);
      if (policy === 'most-free') p99MostFree = p99;
      results.push({ name: 'pick_latency_sequential', policy, picks: n, p50_ms: round(percentile(lat, 50)), p99_ms: round(p99),
        mean_ms: round(lat.reduce((a, b) => a + b, 0) / n), max_ms: round(Math.max(...lat)) });
    }

    // 2. one client, many picks in flight (auto-pipelined into shared writes)
    const pipe = await connect(true);
    const stats = new Redis(server.url);
    await stats.config('RESETSTAT');
    let next = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: inFlight }, async () => {
      while (next < pipelinedPicks) {
        const rid = `pipe-${next++}`;
        const r = mustPick(await pipe.pick(NEED_PAGES, rid), rid);
        picked.push({ worker_id: r.worker_id, rid });
      }
    }));
    const pipeSeconds = (performance.now() - t0) / 1000;
    const pipelinedRate = pipelinedPicks / pipeSeconds;
    // time Redis spent inside EVALSHA during this phase (picks, plus the few background heartbeats)
    const info = await stats.info('commandstats');
    await stats.quit();
    const usecPerCall = Number(/cmdstat_evalsha:.*usec_per_call=([0-9.]+)/.exec(info)?.[1] ?? NaN);
    results.push({ name: 'picks_pipelined', clients: 1, in_flight: inFlight, picks: pipelinedPicks, seconds: round(pipeSeconds, 3),
      picks_per_s: Math.round(pipelinedRate), redis_evalsha_usec_per_call: usecPerCall });
    await releaseAll();

    // 3. several clients on separate connections, each one pick at a time
    const conns = await Promise.all(Array.from({ length: clients }, () => connect()));
    const clientLat: number[] = [];
    const t1 = performance.now();
    await Promise.all(conns.map(async (c, ci) => {
      for (let i = 0; i < clientPicks; i++) {
        const rid = `c${ci}-${i}`;
        const s = performance.now();
        const r = mustPick(await c.pick(NEED_PAGES, rid), rid);
        clientLat.push(performance.now() - s);
        picked.push({ worker_id: r.worker_id, rid });
      }
    }));
    const clientSeconds = (performance.now() - t1) / 1000;
    const clientRate = (clients * clientPicks) / clientSeconds;
    results.push({ name: 'picks_concurrent_clients', clients, picks: clients * clientPicks, seconds: round(clientSeconds, 3),
      picks_per_s: Math.round(clientRate), p50_ms: round(percentile(clientLat, 50)), p99_ms: round(percentile(clientLat, 99)) });
    await releaseAll();

    // the ledger is consistent afterwards: every reservation released, every worker back to full
    const snap = await admin.snapshot();
    const leaked = snap.workers.filter((w) => w.reserved_pages !== 0 || w.effective_free !== w.free_pages);
    if (snap.workers.length !== workers || leaked.length > 0) {
      throw new Error(`bench ledger: after the run ${snap.workers.length}/${workers} workers live, ${leaked.length} with reservations left`);
    }
    const elapsed = (performance.now() - started) / 1000;
    results.push({ name: 'background_heartbeats', heartbeats, per_s: Math.round(heartbeats / elapsed) });

    return {
      bench: 'ledger', machine: machineInfo(), results,
      targets: [
        target('pick_p99_ms', round(p99MostFree), 'ms', '<', 1),
        target('picks_per_s_pipelined', Math.round(pipelinedRate), 'picks/s', '>', 5000),
        target(`picks_per_s_${clients}_clients`, Math.round(clientRate), 'picks/s', '>', 5000),
      ],
    };
  } finally {
    for (const t of timers) clearInterval(t);
    await Promise.all(open.map((l) => l.close()));
    await server.stop();
  }
}

async function redisVersion(url: string): Promise<string> {
  const r = new Redis(url);
  try { return /redis_version:(\S+)/.exec(await r.info('server'))?.[1] ?? 'unknown'; } finally { await r.quit(); }
}
