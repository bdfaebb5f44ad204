// `kvfleet worker --redis --fleet` as a child process: its ledger entry carries every CONTRACTS.md field and expires
// when the process is killed with SIGKILL (no clean exit, so only the TTL removes it); Worker.Drain refuses new
// requests, lets the running one finish, shows draining in the ledger and keeps the process up; SIGTERM with a
// request running lets it finish, removes the worker from the ledger and exits 0.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { RedisLedger } from '../../ledger/index.ts';
import { generationClient, workerClient, type DrainResponse } from '../../proto/index.ts';
import { freePort } from '../harness/ports.ts';
import { pidAlive } from '../harness/redis.ts';
import { spawnKvfleet } from '../harness/proc.ts';
import { generate, greedy, tinyModel } from './helpers.ts';

let model: ReturnType<typeof tinyModel>;
let raw: Redis;
beforeAll(() => { model = tinyModel(); raw = new Redis(inject('redisUrl')); });
afterAll(() => { raw?.disconnect(); model?.cleanup(); });

const CONTRACT_FIELDS = ['addr', 'total_pages', 'free_pages', 'page_size', 'num_layers', 'num_kv_heads', 'running',
  'waiting', 'draining', 'heartbeat_ms'];

async function until(what: string, f: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await f()) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function startChild(podName: string, extra: string[] = []) {
  const fleet = `wcli/f-${randomUUID().slice(0, 8)}`;
  const [ns, name] = fleet.split('/');
  const ledger = await RedisLedger.connect({ redis: inject('redisUrl'), namespace: ns, fleet: name });
  const port = await freePort();
  const p = spawnKvfleet(['worker', '--model', model.dir, '--port', String(port), '--metrics-port', '0', '--log-level', 'warn',
    '--redis', inject('redisUrl'), '--fleet', fleet, '--num-pages', '2048', ...extra],
  { env: { POD_NAME: podName, POD_IP: '127.0.0.1' } });
  await p.waitFor(new RegExp(`worker ${podName} listening on 127\\.0\\.0\\.1:${port}`), 30_000);
  return { p, ledger, key: ledger.keys.worker(podName), addr: `127.0.0.1:${port}`, port };
}

describe('kvfleet worker in a fleet (child process)', () => {
  it('publishes every CONTRACTS.md field, and the entry expires when the worker is killed with SIGKILL', async () => {
    const c = await startChild('pod-k9');
    try {
      const h = await raw.hgetall(c.key);
      for (const f of CONTRACT_FIELDS) expect(h, `field ${f}`).toHaveProperty(f);
      expect(h).toMatchObject({ addr: c.addr, total_pages: '2048', free_pages: '2048', page_size: '16', num_layers: '2',
        num_kv_heads: '2', running: '0', waiting: '0', draining: '0' });
      expect((await c.ledger.snapshot()).workers.map((w) => w.worker_id)).toEqual(['pod-k9']);
      process.kill(c.p.pid, 'SIGKILL');
      expect(await c.p.exited()).toBe('SIGKILL');
      // no clean exit removed it: the hash lives until its 3000 ms TTL runs out, then it is gone
      expect(await raw.exists(c.key)).toBe(1);
      const ms = await until('the entry to expire', async () => (await raw.exists(c.key)) === 0, 6000);
      expect(ms).toBeLessThanOrEqual(3500);
      expect((await c.ledger.snapshot()).workers).toEqual([]);
      expect(await c.ledger.pick(1, 'after-kill')).toBeNull();
    } finally {
      await c.p.stop(1000);
      await c.ledger.close();
    }
  });

  it('Drain: new requests UNAVAILABLE, the running one finishes, draining in the ledger, the process stays up; SIGTERM exits 0', async () => {
    const c = await startChild('pod-drain');
    const gen = generationClient(c.addr);
    const wc = workerClient(c.addr);
    try {
      // a request long enough to be running when Drain arrives
      let firstToken!: () => void;
      const gotFirst = new Promise<void>((r) => { firstToken = r; });
      const running = generate(gen, { text: 'keep going', sampling: greedy(1500) });
      const poll = setInterval(() => { wc.GetCapacity({}, (e, cap) => { if (!e && cap?.running === 1) firstToken(); }); }, 10);
      await gotFirst;
      clearInterval(poll);
      const drained = await new Promise<DrainResponse>((resolve, reject) => wc.Drain({}, (e, d) => (e ? reject(e) : resolve(d!))));
      expect(drained.running).toBe(1);
      // Drain answers after the heartbeat that carries draining=1
      expect(await raw.hget(c.key, 'draining')).toBe('1');
      const refused = await generate(gen, { text: 'too late', sampling: greedy(4) });
      expect(refused.error?.code).toBe(grpc.status.UNAVAILABLE);
      const r = await running;
      expect(r.error).toBeUndefined();
      expect(r.tokens).toHaveLength(1500);
      expect(r.last?.finish_reason).toBe('LENGTH');
      // still up, still heartbeating as draining, never picked
      const hb = Number(await raw.hget(c.key, 'heartbeat_ms'));
      await until('another heartbeat', async () => Number(await raw.hget(c.key, 'heartbeat_ms')) > hb, 3000);
      expect(pidAlive(c.p.pid)).toBe(true);
      expect(c.p.child.exitCode).toBeNull();
      expect(await raw.hget(c.key, 'draining')).toBe('1');
      expect(await c.ledger.pick(1, 'to-draining')).toBeNull();
      gen.close(); wc.close();
      expect(await c.p.stop(10_000)).toBe(0);
      // a clean exit removes the worker at once
      expect(await raw.exists(c.key)).toBe(0);
    } finally {
      gen.close(); wc.close();
      await c.p.stop(1000);
      await c.ledger.close();
    }
  });

  it('SIGTERM with a request running: the request finishes, then the worker leaves the ledger and exits 0', async () => {
    const c = await startChild('pod-term', ['--drain-timeout-ms', '60000']);
    const gen = generationClient(c.addr);
    try {
      const tokens: number[] = [];
      let firstToken!: () => void;
      const gotFirst = new Promise<void>((r) => { firstToken = r; });
      const call = gen.Generate({ text: 'finish me', sampling: greedy(1500) });
      const done = new Promise<{ error?: grpc.ServiceError; finish?: string }>((resolve) => {
        let finish: string | undefined;
        call.on('data', (m: { token_ids?: number[]; finish_reason?: string }) => {
          tokens.push(...(m.token_ids ?? []));
          if (tokens.length > 0) firstToken();
          if (m.finish_reason) finish = m.finish_reason;
        });
        call.on('error', (e: grpc.ServiceError) => resolve({ error: e, finish }));
        call.on('end', () => resolve({ finish }));
      });
      await gotFirst;
      process.kill(c.p.pid, 'SIGTERM');
      await until('draining in the ledger', async () => (await raw.hget(c.key, 'draining')) === '1', 3000);
      const r = await done;
      expect(r.error).toBeUndefined();
      expect(r.finish).toBe('LENGTH');
      expect(tokens).toHaveLength(1500);
      expect(await c.p.exited()).toBe(0);
      expect(await raw.exists(c.key)).toBe(0);
      expect(c.p.output()).toMatch(/SIGTERM, draining/);
    } finally {
      gen.close();
      await c.p.stop(1000);
      await c.ledger.close();
    }
  });

  it('SIGTERM: a request still running when --drain-timeout-ms passes is answered UNAVAILABLE, and the worker exits 0', async () => {
    const c = await startChild('pod-timeout', ['--drain-timeout-ms', '300']);
    const gen = generationClient(c.addr);
    const wc = workerClient(c.addr);
    try {
      const tokens: number[] = [];
      let firstToken!: () => void;
      const gotFirst = new Promise<void>((res) => { firstToken = res; });
      const call = gen.Generate({ text: 'too long to finish', sampling: greedy(8000) });
      const running = new Promise<{ error?: grpc.ServiceError }>((resolve) => {
        call.on('data', (m: { token_ids?: number[] }) => { tokens.push(...(m.token_ids ?? [])); if (tokens.length > 0) firstToken(); });
        call.on('error', (e: grpc.ServiceError) => resolve({ error: e }));
        call.on('end', () => resolve({}));
      });
      await gotFirst;
      const t0 = Date.now();
      process.kill(c.p.pid, 'SIGTERM');
      const r = { ...(await running), tokens };
      expect(r.error?.code).toBe(grpc.status.UNAVAILABLE);
      expect(r.error?.details).toMatch(/drain timeout \(300 ms\) passed/);
      expect(r.tokens.length).toBeGreaterThan(0);
      expect(r.tokens.length).toBeLessThan(8000);
      expect(await c.p.exited()).toBe(0);
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(await raw.exists(c.key)).toBe(0);
    } finally {
      gen.close(); wc.close();
      await c.p.stop(1000);
      await c.ledger.close();
    }
  });
});
