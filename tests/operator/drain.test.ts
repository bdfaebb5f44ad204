// A scale-down drains first, end to end: a REAL `kvfleet worker` child process (tiny synthetic model) joins the
// fleet's ledger as pod llm-workers-real, a second (scripted) worker is busier, the fleet's pressure asks for one
// worker fewer. The operator picks the least-loaded worker (the real one), sends it a drain order on the ledger's
// events channel, waits until it reports no running work, marks its pod with pod-deletion-cost, and only then lowers
// the Fleet's replicas; the stream running on that worker completes with every token.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, inject, it } from 'vitest';
import { RedisLedger, type WorkerFields } from '../../ledger/index.ts';
import { DRAINED_COST, POD_DELETION_COST } from '../../operator/autoscaler.ts';
import { generationClient } from '../../proto/index.ts';
import { writeSynthModel } from '../../worker/model/synth.ts';
import { freePort } from '../harness/ports.ts';
import { spawnKvfleet, type KvfleetProcess } from '../harness/proc.ts';
import { eventually } from '../kube/client.ts';
import type { JsonObject } from '../kube/patch.ts';
import { fleet, fleetTarget, readyWorkerPod, startCluster, testOperator, type Cluster } from './helpers.ts';

const redisUrl = inject('redisUrl');
const TOKENS = 4000;
let c: Cluster;
let dir: string;
let worker: KvfleetProcess | undefined;
let ledger: RedisLedger | undefined;
const stops: (() => Promise<void>)[] = [];

beforeAll(async () => {
  c = await startCluster();
  dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-op-drain-'));
  writeSynthModel({ out: dir, preset: 'tiny', seed: 7 });
});
afterAll(async () => {
  for (const s of stops.reverse()) await s();
  await worker?.stop(2000);
  await ledger?.close();
  await c?.server.stop();
  rmSync(dir, { recursive: true, force: true });
});

it('drains the least-loaded worker (a real worker process) before lowering replicas; its running stream completes', async () => {
  const ns = await c.namespace();
  await c.custom.createNamespacedCustomObject({ ...fleetTarget(ns), body: fleet(ns, 'llm', {
    redis: { url: redisUrl }, workers: { replicas: 2 },
    autoscaling: { enabled: true, minReplicas: 1, maxReplicas: 4, targetKVPressure: 0.7, scaleUpStabilizationSeconds: 0,
      scaleDownStabilizationSeconds: 0, drainTimeoutSeconds: 120 },
  }) });
  readyWorkerPod(c.server, ns, 'llm', 'llm-workers-real');
  readyWorkerPod(c.server, ns, 'llm', 'llm-workers-busy');

  // the real worker
  const port = await freePort();
  worker = spawnKvfleet(['worker', '--model', dir, '--port', String(port), '--metrics-port', '0', '--log-level', 'info', '--redis', redisUrl,
    '--fleet', `${ns}/llm`, '--num-pages', '2048', '--heartbeat-ms', '100'], { env: { POD_NAME: 'llm-workers-real', POD_IP: '127.0.0.1' } });
  await worker.waitFor(/worker llm-workers-real listening/, 30_000);
  // the busier one: 5 running streams, 10% of its pages committed
  ledger = await RedisLedger.connect({ redis: redisUrl, namespace: ns, fleet: 'llm' });
  const busy: WorkerFields = { addr: '127.0.0.1:1', total_pages: 100, free_pages: 90, page_size: 16, num_layers: 2, num_kv_heads: 2,
    running: 5, waiting: 0, draining: false };
  const beat = setInterval(() => { void ledger!.heartbeat('llm-workers-busy', busy).catch(() => undefined); }, 200);
  stops.push(async () => clearInterval(beat));
  await ledger.heartbeat('llm-workers-busy', busy);

  // a long stream on the real worker, running before the operator looks
  const gen = generationClient(`127.0.0.1:${port}`);
  stops.push(async () => gen.close());
  const tokens: number[] = [];
  let replicasAtLastToken: unknown;
  let firstToken!: () => void;
  const gotFirst = new Promise<void>((r) => { firstToken = r; });
  const call = gen.Generate({ text: 'drain me gently', sampling: { max_new_tokens: TOKENS, temperature: 0, ignore_eos: true } });
  const done = new Promise<{ error?: grpc.ServiceError; finish?: string; endedAt: number }>((resolve) => {
    let finish: string | undefined;
    call.on('data', (m: { token_ids?: number[]; finish_reason?: string }) => {
      tokens.push(...(m.token_ids ?? []));
      if (tokens.length > 0) firstToken();
      if (m.finish_reason) {
        finish = m.finish_reason;
        // what the Fleet asks for at the moment the last token leaves the worker (the API server is in this process)
        replicasAtLastToken = (c.server.object('kvfleet.io', 'fleets', ns, 'llm')!.spec as { workers: { replicas: number } }).workers.replicas;
      }
    });
    call.on('error', (e: grpc.ServiceError) => resolve({ error: e, finish, endedAt: Date.now() }));
    call.on('end', () => resolve({ finish, endedAt: Date.now() }));
  });
  await gotFirst;

  const op = testOperator(c.kc, { namespace: ns });
  stops.push(() => op.stop());
  await op.start();
  await eventually(() => c.server.object('apps', 'deployments', ns, 'llm-workers') !== undefined, 'the worker Deployment');
  // both workers serve: the Deployment reports 2 ready, and the fleet's pressure asks for 1
  c.server.setDeploymentStatus(ns, 'llm-workers');

  await worker.waitFor(/drain order from the events channel/, 10_000);
  const drainSeenWithTokens = tokens.length;
  expect(drainSeenWithTokens).toBeLessThan(TOKENS); // the drain order came while the stream was running
  // while the stream runs, nothing is lowered
  expect((c.server.object('kvfleet.io', 'fleets', ns, 'llm')!.spec as { workers: { replicas: number } }).workers.replicas).toBe(2);

  const r = await done;
  expect(r.error).toBeUndefined();
  expect(r.finish).toBe('LENGTH');
  expect(tokens).toHaveLength(TOKENS);
  expect(replicasAtLastToken).toBe(2);

  // then: the drained pod is the one marked for removal, and the count goes down, to the Fleet and its Deployment
  await eventually(() => (c.server.object('kvfleet.io', 'fleets', ns, 'llm')!.spec as { workers: { replicas: number } }).workers.replicas === 1,
    'the Fleet scaled to 1', 15_000);
  const ann = (name: string) => ((c.server.object('', 'pods', ns, name)!.metadata as JsonObject).annotations as Record<string, string> | undefined) ?? {};
  expect(ann('llm-workers-real')[POD_DELETION_COST]).toBe(DRAINED_COST);
  expect(ann('llm-workers-busy')[POD_DELETION_COST]).toBeUndefined();
  await eventually(() => (c.server.object('apps', 'deployments', ns, 'llm-workers')!.spec as { replicas: number }).replicas === 1,
    'the worker Deployment at 1 replica', 10_000);
  // the drained worker is still up, reporting draining and idle, until its pod is removed (SIGTERM)
  const w = (await ledger.snapshot()).workers.find((x) => x.worker_id === 'llm-workers-real');
  expect(w).toMatchObject({ draining: true, running: 0, waiting: 0 });
  expect(await worker.stop(10_000)).toBe(0);
}, 120_000);
