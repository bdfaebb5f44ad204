// A client that goes away while its request waits for room: the router stops waiting at once, reserves nothing (also
// when room appears later) and never sends the request to the worker.
import { describe, expect, inject, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { RedisLedger } from '../../ledger/index.ts';
import { addGenerationService, generationClient } from '../../proto/index.ts';
import { parseRouterConfig } from '../../router/config.ts';
import { Router } from '../../router/router.ts';

describe('router queue wait', () => {
  it('a request cancelled while waiting for room stops waiting: nothing reserved, nothing forwarded', async () => {
    const redis = inject('redisUrl');
    const fleet = `test-${process.pid}/router-queued-cancel`;
    const [namespace, name] = fleet.split('/');
    // a worker that only counts the requests it is sent
    let forwarded = 0;
    const fake = new grpc.Server();
    addGenerationService(fake, { Generate: (call) => { forwarded++; call.end(); } });
    const port = await new Promise<number>((resolve, reject) => fake.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(),
      (err, p) => (err ? reject(err) : resolve(p))));
    const ledger = await RedisLedger.connect({ redis, namespace, fleet: name });
    const fields = { addr: `127.0.0.1:${port}`, total_pages: 100_000, free_pages: 0, page_size: 16, num_layers: 2,
      num_kv_heads: 2, running: 0, waiting: 0, draining: false };
    await ledger.heartbeat('w-full', fields, { ttlMs: 60_000 });
    const router = await Router.start(parseRouterConfig({ port: 0, redis, fleet, metricsPort: 0, maxQueueMs: 10_000 }),
      pino({ level: 'silent' }));
    const c = generationClient(`127.0.0.1:${router.port}`);
    const picks = async () => (((await router.registry.getSingleMetric('kvfleet_router_pick_seconds')?.get())?.values ?? []) as
      Array<{ value: number; metricName?: string }>).find((v) => v.metricName === 'kvfleet_router_pick_seconds_count')?.value ?? 0;
    try {
      const call = c.Generate({ request_id: 'rq-queued', token_ids: { ids: [5, 6, 7] }, sampling: { max_new_tokens: 4 } });
      const ended = new Promise<grpc.ServiceError>((resolve) => { call.on('error', resolve); call.on('data', () => {}); });
      await new Promise((r) => setTimeout(r, 300));  // waiting: no worker has room
      expect(await picks()).toBe(0);
      call.cancel();
      expect((await ended).code).toBe(grpc.status.CANCELLED);
      await ledger.heartbeat('w-full', { ...fields, free_pages: 100_000 }, { ttlMs: 60_000 });
      // room now: a router still waiting would reserve it within a poll or two (100 ms at most)
      await new Promise((r) => setTimeout(r, 600));
      expect(await picks()).toBe(0);
      const w = (await ledger.snapshot()).workers.find((x) => x.worker_id === 'w-full');
      expect(w?.reservations).toBe(0);
      expect(w?.reserved_pages).toBe(0);
      expect(forwarded).toBe(0);  // and nothing went to the worker
    } finally {
      c.close();
      await router.close();
      await ledger.close();
      await new Promise<void>((r) => fake.tryShutdown(() => r()));
    }
  });
});
