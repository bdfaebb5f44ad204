// The router against scripted workers: plain gRPC servers that answer as a test tells them to, registered in a real
// ledger (redis-server) by heartbeats the test sends. What is checked is the router's own behaviour: which worker it
// picks after a failure, the reservation ids it uses, the codes it answers and counts.
import { afterEach, describe, expect, inject, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { RedisLedger, type WorkerFields } from '../../ledger/index.ts';
import { addGenerationService, generationClient, type GenerateRequest, type GenerateResponse } from '../../proto/index.ts';
import { parseRouterConfig } from '../../router/config.ts';
import { Router } from '../../router/router.ts';
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
async function fleetWith(workers: ScriptedWorker[], routerOpts: Record<string, unknown> = {}) {
  const redis = inject('redisUrl');
  const fleet = `test-${process.pid}/placement-${++seq}`;
  const [namespace, name] = fleet.split('/');
  const ledger = await RedisLedger.connect({ redis, namespace, fleet: name });
  cleanups.push(() => ledger.close());
  for (const w of workers) {
    cleanups.push(() => w.close());
    await ledger.heartbeat(w.id, w.fields, { ttlMs: 60_000 });
  }
  const router = await Router.start(parseRouterConfig({ port: 0, redis, fleet, metricsPort: 0, maxQueueMs: 1500, ...routerOpts }),
    pino({ level: 'silent' }));
  cleanups.push(() => router.close());
  const client = generationClient(`127.0.0.1:${router.port}`);
  cleanups.push(async () => client.close());
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
