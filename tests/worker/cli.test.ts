// `kvfleet worker` as a child process: options from flags and KVFLEET_* env, the readiness line, a real stream,
// GetCapacity, health, reflection, Drain (UNAVAILABLE + NOT_SERVING), SIGTERM → exit 0; bad options exit non-zero
// naming the option.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRequire } from 'node:module';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { generationClient, workerClient } from '../../proto/index.ts';
import { freePort } from '../harness/ports.ts';
import { spawnKvfleet } from '../harness/proc.ts';
import { capacity, check, generate, greedy, healthClient, tinyModel } from './helpers.ts';

let model: ReturnType<typeof tinyModel>;
beforeAll(() => { model = tinyModel(); });
afterAll(() => model?.cleanup());


interface ReflectionResponse { list_services_response?: { service: Array<{ name: string }> } }
type ReflectionClient = grpc.Client & {
  ServerReflectionInfo(): grpc.ClientDuplexStream<{ list_services: string }, ReflectionResponse>;
};
async function listServices(addr: string): Promise<string[]> {
  const require = createRequire(import.meta.url);
  const protoDir = path.join(path.dirname(require.resolve('@grpc/reflection')), '../proto');
  const def = protoLoader.loadSync('grpc/reflection/v1/reflection.proto', { keepCase: true, includeDirs: [protoDir] });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { grpc: { reflection: { v1: { ServerReflection: grpc.ServiceClientConstructor } } } };
  const c = new pkg.grpc.reflection.v1.ServerReflection(addr, grpc.credentials.createInsecure()) as unknown as ReflectionClient;
  const call = c.ServerReflectionInfo();
  const names = await new Promise<string[]>((resolve, reject) => {
    call.on('data', (m: ReflectionResponse) => { resolve((m.list_services_response?.service ?? []).map((s) => s.name)); call.end(); });
    call.on('error', reject);
    call.write({ list_services: '' });
  });
  c.close();
  return names;
}

describe('kvfleet worker (child process)', () => {
  it('serves, reports capacity, health and reflection, drains, and exits 0 on SIGTERM', async () => {
    const port = await freePort();
    const p = spawnKvfleet(['worker', '--model', model.dir, '--port', String(port), '--log-level', 'warn', '--metrics-port', '0'],
      { env: { KVFLEET_NUM_PAGES: '512', KVFLEET_ADMISSION: 'optimistic', POD_NAME: 'pod-7' } });
    try {
      await p.waitFor(new RegExp(`worker pod-7 listening on 127\\.0\\.0\\.1:${port}`), 30_000);
      const addr = `127.0.0.1:${port}`;
      const gen = generationClient(addr);
      const wc = workerClient(addr);
      const h = healthClient(addr);
      const r = await generate(gen, { text: 'hello from a child process', sampling: greedy(12) });
      expect(r.error).toBeUndefined();
      expect(r.tokens).toHaveLength(12);
      expect(r.last?.finish_reason).toBe('LENGTH');
      expect(new Set(r.messages.map((m) => m.worker_id))).toEqual(new Set(['pod-7']));
      const cap = await capacity(wc);
      expect(cap).toMatchObject({ worker_id: 'pod-7', total_pages: '512', free_pages: '512', reserved_pages: '0',
        page_size: 16, num_layers: 2, num_kv_heads: 2, running: 0, waiting: 0, draining: false });
      expect(await check(h, '')).toBe('SERVING');
      expect(await check(h, 'kvfleet.v1.Generation')).toBe('SERVING');
      const services = await listServices(addr);
      expect(services).toEqual(expect.arrayContaining(['kvfleet.v1.Generation', 'kvfleet.v1.Worker']));

      const drained = await new Promise<{ running?: number }>((resolve, reject) =>
        wc.Drain({}, (e, d) => (e ? reject(e) : resolve(d!))));
      expect(drained.running ?? 0).toBe(0);
      const refused = await generate(gen, { text: 'too late', sampling: greedy(4) });
      expect(refused.error?.code).toBe(grpc.status.UNAVAILABLE);
      expect(await check(h, '')).toBe('NOT_SERVING');
      expect((await capacity(wc)).draining).toBe(true);
      gen.close(); wc.close(); h.close();
      // Drain alone keeps the process up; SIGTERM ends it cleanly
      expect(p.child.exitCode).toBeNull();
      expect(await p.stop(10_000)).toBe(0);
    } finally {
      await p.stop(1000);
    }
  });

  it('bad options exit non-zero with a message naming the option (flag and env)', async () => {
    const a = spawnKvfleet(['worker', '--model', model.dir, '--port', '0', '--admission', 'sometimes']);
    expect(await a.exited()).not.toBe(0);
    expect(a.output()).toMatch(/--admission \(KVFLEET_ADMISSION\): .*reserve.*optimistic/);
    const b = spawnKvfleet(['worker', '--model', model.dir, '--port', '0'], { env: { KVFLEET_KV_DTYPE: 'f8', KVFLEET_NUM_PAGES: '-3' } });
    expect(await b.exited()).not.toBe(0);
    expect(b.output()).toMatch(/--kv-dtype \(KVFLEET_KV_DTYPE\)/);
    expect(b.output()).toMatch(/--num-pages \(KVFLEET_NUM_PAGES\)/);
    const c = spawnKvfleet(['worker', '--port', '0', '--num-pages', '64', '--kv-memory', '1Gi']);
    expect(await c.exited()).not.toBe(0);
    expect(c.output()).toMatch(/--model \(KVFLEET_MODEL\): is required/);
    expect(c.output()).toMatch(/at most one of --kv-memory, --kv-memory-fraction, --num-pages/);
  });
});
