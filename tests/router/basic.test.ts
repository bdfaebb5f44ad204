// The router's own answers, before any worker is involved: configuration errors, no capacity, unknown budgets.
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { RedisLedger } from '../../ledger/index.ts';
import { generationClient, type GenerateRequest, type GenerateResponse } from '../../proto/index.ts';
import { ConfigError, parseRouterConfig } from '../../router/config.ts';
import { Router } from '../../router/router.ts';

function collect(c: ReturnType<typeof generationClient>, req: GenerateRequest) {
  return new Promise<{ msgs: GenerateResponse[]; err?: grpc.ServiceError }>((resolve) => {
    const msgs: GenerateResponse[] = [];
    const s = c.Generate(req);
    s.on('data', (m: GenerateResponse) => msgs.push(m));
    s.on('error', (err: grpc.ServiceError) => resolve({ msgs, err }));
    s.on('end', () => resolve({ msgs }));
  });
}

describe('router configuration', () => {
  it('names every bad field by its flag', () => {
    expect(() => parseRouterConfig({ port: 'x', redis: 'http://a', fleet: 'NoSlash' })).toThrow(ConfigError);
    try {
      parseRouterConfig({ port: 1, redis: 'http://a', fleet: 'ns/f', policy: 'random' });
    } catch (e) {
      expect((e as Error).message).toMatch(/--redis: must be a redis:\/\//);
      expect((e as Error).message).toMatch(/--policy/);
    }
    const ok = parseRouterConfig({ port: 0, redis: 'redis://127.0.0.1:1', fleet: 'ns/f' });
    expect(ok.policy).toBe('least-prefill');
    expect(ok.maxQueueMs).toBe(2000);
  });
});

describe('router without workers', () => {
  let router: Router;
  let ledger: RedisLedger;
  const fleet = `test-${process.pid}/router-basic`;
  beforeAll(async () => {
    const redis = inject('redisUrl');
    router = await Router.start(parseRouterConfig({ port: 0, redis, fleet, maxQueueMs: 200, metricsPort: 0 }),
      pino({ level: 'silent' }));
    const [namespace, name] = fleet.split('/');
    ledger = await RedisLedger.connect({ redis, namespace, fleet: name });
  });
  afterAll(async () => { await router.close(); await ledger.close(); });

  it('answers RESOURCE_EXHAUSTED (retryable) when no worker has room', async () => {
    const c = generationClient(`127.0.0.1:${router.port}`);
    const r = await collect(c, { token_ids: { ids: [5, 6, 7] } });
    expect(r.err?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    c.close();
  });

  it('answers NOT_FOUND for a budget name the fleet does not allow', async () => {
    await ledger.heartbeat('w-ghost', { addr: '127.0.0.1:1', total_pages: 100, free_pages: 100, page_size: 16,
      num_layers: 2, num_kv_heads: 2, running: 0, waiting: 0, draining: false });
    const c = generationClient(`127.0.0.1:${router.port}`);
    const r = await collect(c, { token_ids: { ids: [5, 6, 7] }, budget: { name: 'no-such-budget' } });
    expect(r.err?.code).toBe(grpc.status.NOT_FOUND);
    expect(r.err?.details).toMatch(/no-such-budget/);
    c.close();
  });

  it('answers INVALID_ARGUMENT for an empty prompt, a text prompt without a tokenizer, a bad inline budget', async () => {
    const c = generationClient(`127.0.0.1:${router.port}`);
    expect((await collect(c, { token_ids: { ids: [] } })).err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    const t = await collect(c, { text: 'hello' });
    expect(t.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(t.err?.details).toMatch(/tokenizer/);
    const b = await collect(c, { token_ids: { ids: [1] }, budget: { spec: { method: 'ADA_SNAPKV', keep_ratio: 2 } } });
    expect(b.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(b.err?.details).toMatch(/keep_ratio/);
    c.close();
  });
});

describe('router placement by prompt tokens', () => {
  it('least-prefill: the reservation carries the prompt tokens until the stream ends', async () => {
    const net = await import('node:net');
    const { Redis } = await import('ioredis');
    const redis = inject('redisUrl');
    const fleet = `test-${process.pid}/router-tokens`;
    const [namespace, name] = fleet.split('/');
    // a "worker" that accepts the connection and never answers: the stream stays open on it, and so does the pick
    const sockets: import('node:net').Socket[] = [];
    const hole = net.createServer((sock) => { sockets.push(sock); });
    await new Promise<void>((r) => hole.listen(0, '127.0.0.1', r));
    const port = (hole.address() as import('node:net').AddressInfo).port;
    const ledger = await RedisLedger.connect({ redis, namespace, fleet: name });
    const raw = new Redis(redis);
    const router = await Router.start(parseRouterConfig({ port: 0, redis, fleet, policy: 'least-prefill', metricsPort: 0 }),
      pino({ level: 'silent' }));
    const c = generationClient(`127.0.0.1:${router.port}`);
    try {
      expect(router.config.policy).toBe('least-prefill');
      await ledger.heartbeat('w-hole', { addr: `127.0.0.1:${port}`, total_pages: 100_000, free_pages: 100_000, page_size: 16,
        num_layers: 2, num_kv_heads: 2, running: 0, waiting: 0, draining: false }, { ttlMs: 60_000 });
      const call = c.Generate({ request_id: 'rq-tokens', token_ids: { ids: Array.from({ length: 37 }, (_, i) => 5 + i) } });
      const ended = new Promise<grpc.ServiceError>((resolve) => { call.on('error', resolve); call.on('data', () => {}); });
      const key = ledger.keys.tokens('w-hole');
      // the reservation id is the request id plus a per-attempt suffix (reservationId)
      const tokens = async () => Object.entries(await raw.hgetall(key)).filter(([rid]) => rid.startsWith('rq-tokens/')).map(([, v]) => v);
      const deadline = Date.now() + 5000;
      while ((await tokens()).length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(await tokens()).toEqual(['37']);
      expect(Number(await raw.zscore(ledger.keys.prefill, 'w-hole'))).toBe(37);
      call.cancel();
      expect((await ended).code).toBe(grpc.status.CANCELLED);
      while ((await tokens()).length > 0 && Date.now() < deadline + 5000) await new Promise((r) => setTimeout(r, 10));
      expect(await tokens()).toEqual([]);
      expect(Number(await raw.zscore(ledger.keys.prefill, 'w-hole'))).toBe(0);
    } finally {
      c.close();
      await router.close();
      await ledger.close();
      raw.disconnect();
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => hole.close(() => r()));
    }
  });
});

describe('router auth and TLS', () => {
  it('clients need the router token; the router presents its own token to workers over TLS', async () => {
    const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
    const os = await import('node:os');
    const path = await import('node:path');
    const { makeCerts } = await import('../harness/certs.ts');
    const { tinyModel, inProcessWorker } = await import('../worker/helpers.ts');
    const certs = makeCerts();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-rauth-'));
    writeFileSync(path.join(dir, 'client-token'), 'router-secret\n');
    writeFileSync(path.join(dir, 'worker-token'), 'worker-secret\n');
    const model = tinyModel();
    const redis = inject('redisUrl');
    const fleet = `test-${process.pid}/router-auth`;
    const w = await inProcessWorker(model.dir, { redis, fleet, authTokenFile: path.join(dir, 'worker-token'),
      tlsCert: certs.cert, tlsKey: certs.key, host: '127.0.0.1' }, {
      creds: grpc.credentials.createSsl(readFileSync(certs.ca)),
      clientOptions: { interceptors: [] },
    });
    const router = await Router.start(parseRouterConfig({ port: 0, redis, fleet, metricsPort: 0, maxQueueMs: 5000,
      authTokenFile: path.join(dir, 'client-token'), tlsCert: certs.cert, tlsKey: certs.key,
      workerTokenFile: path.join(dir, 'worker-token'), workerTlsCa: certs.ca }), pino({ level: 'silent' }));
    const tls = grpc.credentials.createSsl(readFileSync(certs.ca));
    const withToken = (t: string): grpc.Interceptor => (options, next) => new grpc.InterceptingCall(next(options), {
      start(md, listener, nxt) { md.set('authorization', `Bearer ${t}`); nxt(md, listener); },
    });
    try {
      const anon = generationClient(`localhost:${router.port}`, tls);
      const r0 = await collect(anon, { token_ids: { ids: [5, 6] }, sampling: { max_new_tokens: 3 } });
      expect(r0.err?.code).toBe(grpc.status.UNAUTHENTICATED);
      const wrong = generationClient(`localhost:${router.port}`, tls, { interceptors: [withToken('worker-secret')] });
      expect((await collect(wrong, { token_ids: { ids: [5, 6] } })).err?.code).toBe(grpc.status.UNAUTHENTICATED);
      const ok = generationClient(`localhost:${router.port}`, tls, { interceptors: [withToken('router-secret')] });
      const r = await collect(ok, { token_ids: { ids: [5, 6] }, sampling: { max_new_tokens: 3, temperature: 0 } });
      expect(r.err).toBeUndefined();
      expect(r.msgs.flatMap((m) => m.token_ids ?? []).length).toBe(3);
      anon.close(); wrong.close(); ok.close();
    } finally {
      await router.close();
      await w.stop();
      model.cleanup();
      rmSync(dir, { recursive: true, force: true });
      rmSync(certs.dir, { recursive: true, force: true });
    }
  });
});
