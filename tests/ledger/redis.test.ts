// The Redis ledger against the conformance suite (real redis-server), plus what only Redis has: the key schema on
// the wire, script reloading, restarts and unreachable servers.
import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { fleetKeys } from '../../ledger/keys.ts';
import * as lua from '../../ledger/lua.ts';
import { RedisLedger } from '../../ledger/redis.ts';
import { LedgerError, type LedgerEvent, type WorkerFields } from '../../ledger/types.ts';
import { freePort } from '../harness/ports.ts';
import { startRedis, type RedisServer } from '../harness/redis.ts';
import { ledgerConformance } from './conformance.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

ledgerConformance('redis', async () => {
  const url = inject('redisUrl');
  const opened: RedisLedger[] = [];
  const raw = new Redis(url);
  return {
    async open(namespace, fleet) {
      const l = await RedisLedger.connect({ redis: url, namespace, fleet });
      opened.push(l);
      return l;
    },
    advance: sleep,
    async publishRaw(namespace, fleet, message) { await raw.publish(fleetKeys(namespace, fleet).events, message); },
    async cleanup() {
      await Promise.all(opened.map((l) => l.close()));
      await raw.quit();
    },
  };
});

function fields(free: number): WorkerFields {
  return { addr: '127.0.0.1:9', total_pages: 100, free_pages: free, page_size: 16, num_layers: 2, num_kv_heads: 2,
    running: 1, waiting: 0, draining: false };
}

describe('redis ledger', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => { for (const c of cleanups.splice(0).reverse()) await c(); });

  it('writes the contract key schema under the fleet hash tag', async () => {
    const url = inject('redisUrl');
    const ns = `schema-${process.pid}-${Date.now()}`;
    const ledger = await RedisLedger.connect({ redis: url, namespace: ns, fleet: 'f1' });
    const r = new Redis(url);
    cleanups.push(async () => { await ledger.close(); await r.quit(); });
    const tag = `{${ns}/f1}`;
    await ledger.heartbeat('pod-0', fields(60));
    await ledger.pick(7, 'req-1');
    await ledger.registerRouter('router-a');
    await ledger.setBudget('default', { method: 'FULL' });
    await ledger.setDefaultBudget('default');
    expect(await r.smembers(`kvfleet:${tag}:workers`)).toEqual(['pod-0']);
    const h = await r.hgetall(`kvfleet:${tag}:worker:pod-0`);
    expect(h).toMatchObject({ addr: '127.0.0.1:9', total_pages: '100', free_pages: '60', page_size: '16', num_layers: '2',
      num_kv_heads: '2', running: '1', waiting: '0', draining: '0' });
    expect(Number(h.heartbeat_ms)).toBeGreaterThan(0);
    const pttl = await r.pttl(`kvfleet:${tag}:worker:pod-0`);
    expect(pttl).toBeGreaterThan(2000);
    expect(pttl).toBeLessThanOrEqual(3000);
    const [rid, exp] = await r.zrange(`kvfleet:${tag}:reservations:pod-0`, '0', '-1', 'WITHSCORES');
    expect(rid).toBe('req-1');
    expect(Number(exp) - Number(h.heartbeat_ms)).toBeGreaterThan(29_000);   // default 30 s
    expect(await r.hgetall(`kvfleet:${tag}:reserved:pod-0`)).toEqual({ 'req-1': '7' });
    expect(await r.zrange(`kvfleet:${tag}:routers`, '0', '-1')).toEqual(['router-a']);
    expect(JSON.parse((await r.hget(`kvfleet:${tag}:budgets`, 'default'))!)).toEqual({ method: 'FULL' });
    expect(await r.get(`kvfleet:${tag}:budget`)).toBe('default');
    expect(await r.zscore(`kvfleet:${tag}:index`, 'pod-0')).toBe('53');
    // a heartbeat measures time on the Redis clock
    const [sec] = await r.time();
    expect(Math.abs(Number(h.heartbeat_ms) - Number(sec) * 1000)).toBeLessThan(5000);
  });

  it('reloads scripts after SCRIPT FLUSH (NOSCRIPT fallback)', async () => {
    const url = inject('redisUrl');
    const ledger = await RedisLedger.connect({ redis: url, namespace: `flush-${process.pid}-${Date.now()}`, fleet: 'f' });
    const r = new Redis(url);
    cleanups.push(async () => { await ledger.close(); await r.quit(); });
    await ledger.heartbeat('w', fields(50), { ttlMs: 60_000 });
    await r.script('FLUSH');
    expect((await ledger.pick(5, 'a'))?.worker_id).toBe('w');
    expect(await ledger.release('w', 'a')).toBe(5);
  });

  it('fails with a LedgerError when Redis is unreachable', async () => {
    const port = await freePort();
    const err = await RedisLedger.connect({ redis: `redis://127.0.0.1:${port}`, namespace: 'n', fleet: 'f', connectTimeoutMs: 300 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LedgerError);
    expect((err as LedgerError).code).toBe('unavailable');
  });

  it('survives a Redis restart: reconnects, reloads scripts, resumes picks, re-subscribes', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown): void => { unhandled.push(e); };
    process.on('unhandledRejection', onUnhandled);
    let server: RedisServer = await startRedis();
    const port = server.port;
    const errors: LedgerError[] = [];
    const ledger = await RedisLedger.connect({ redis: server.url, namespace: 'restart', fleet: 'f', onError: (e) => errors.push(e) });
    const events: LedgerEvent[] = [];
    const sub = await ledger.subscribe((e) => events.push(e), (e) => errors.push(e));
    cleanups.push(async () => {
      process.off('unhandledRejection', onUnhandled);
      await sub.close(); await ledger.close(); await server.stop();
    });

    await ledger.heartbeat('w', fields(50), { ttlMs: 60_000 });
    expect((await ledger.pick(10, 'before'))?.worker_id).toBe('w');

    await server.stop();
    // while Redis is down every call fails fast with a typed, retryable error
    const down = await ledger.pick(10, 'during').catch((e: unknown) => e);
    expect(down).toBeInstanceOf(LedgerError);
    expect((down as LedgerError).code).toBe('unavailable');
    await expect(ledger.heartbeat('w', fields(50))).rejects.toBeInstanceOf(LedgerError);

    server = await startRedis({ port });
    // the new server is empty (no persistence): the worker's next heartbeat re-registers it
    const deadline = Date.now() + 10_000;
    for (;;) {
      try { await ledger.heartbeat('w', fields(50), { ttlMs: 60_000 }); break; } catch (e) {
        expect(e).toBeInstanceOf(LedgerError);
        if (Date.now() > deadline) throw e;
        await sleep(50);
      }
    }
    expect(await ledger.pick(10, 'after')).toEqual({ worker_id: 'w', addr: '127.0.0.1:9', effective_free_after: 40 });
    const r = new Redis(server.url);
    // the scripts were loaded into the new server again
    const shas = [lua.PICK, lua.HEARTBEAT, lua.RELEASE].map((t) => createHash('sha1').update(t).digest('hex'));
    expect(await r.script('EXISTS', ...shas)).toEqual([1, 1, 1]);
    await r.quit();

    // the events subscription came back too
    for (let i = 0; i < 100 && events.length === 0; i++) {
      await ledger.drain('w');
      await sleep(50);
    }
    expect(events[0]).toEqual({ type: 'drain', worker_id: 'w' });
    // connection trouble during the outage went to onError as LedgerErrors, never thrown as 'error' events
    expect(errors.every((e) => e instanceof LedgerError)).toBe(true);
    await sleep(20);
    expect(unhandled).toEqual([]);
  });
});
