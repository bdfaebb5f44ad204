import { describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { kvfleetProto, addGenerationService, addWorkerService, addHealth, addReflection, bindInsecure,
  generationClient, workerClient, type GenerateRequest, type GenerateResponse, type Capacity } from '../proto/index.ts';

type Ser<T> = { requestSerialize: (v: T) => Buffer; requestDeserialize: (b: Buffer) => T };
type SerR<T> = { responseSerialize: (v: T) => Buffer; responseDeserialize: (b: Buffer) => T };

function roundTripReq<T>(m: Ser<T>, v: T): T { return m.requestDeserialize(m.requestSerialize(v)); }
function roundTripRes<T>(m: SerR<T>, v: T): T { return m.responseDeserialize(m.responseSerialize(v)); }

describe('kvfleet.v1 messages', () => {
  const gen = kvfleetProto().generationService.Generate as unknown as Ser<GenerateRequest> & SerR<GenerateResponse>;
  const cap = kvfleetProto().workerService.GetCapacity as unknown as SerR<Capacity>;
  const drain = kvfleetProto().workerService.Drain as unknown as SerR<{ running?: number }> & Ser<object>;

  it('round-trips a GenerateRequest with every field, text prompt and inline budget', () => {
    const req: GenerateRequest = {
      request_id: 'r-1', text: 'hello',
      sampling: { max_new_tokens: 7, temperature: 0.5, top_p: 0.75, top_k: 40, seed: '18446744073709551615',
        stop: ['\n\n', 'END'], ignore_eos: true },
      budget: { spec: { method: 'ADA_PYRAMIDKV', keep_ratio: 0.25, window: 16, pool_kernel: 5, floor_alpha: 0.5,
        pyramid_beta: 10, decode_max_tokens_per_head: 512, pooling: 'AVG', gqa_reduce: 'MAXIMUM' } },
      resume_token_ids: [1, 2, 3],
    };
    const back = roundTripReq(gen, req);
    expect(back.prompt).toBe('text');
    expect(back.text).toBe('hello');
    expect(back.sampling).toMatchObject({ ...req.sampling });
    expect(back.budget?.selector).toBe('spec');
    expect(back.budget?.spec).toMatchObject(req.budget!.spec!);
    expect(back.budget?.spec?.tokens_per_head).toBeUndefined();
    expect(back.resume_token_ids).toEqual([1, 2, 3]);
  });

  it('keeps presence of proto3 optional fields set to zero, and absence of unset ones', () => {
    const back = roundTripReq(gen, { token_ids: { ids: [5, 6] }, sampling: { temperature: 0, top_k: 0 },
      budget: { spec: { method: 'FULL', tokens_per_head: 0 } } });
    expect(back.prompt).toBe('token_ids');
    expect(back.token_ids?.ids).toEqual([5, 6]);
    expect(back.sampling?.temperature).toBe(0);       // present, zero
    expect(back.sampling?.top_k).toBe(0);
    expect(back.sampling?.max_new_tokens).toBeUndefined();  // absent
    expect(back.sampling?.top_p).toBeUndefined();
    expect(back.sampling?.seed).toBeUndefined();
    expect(back.budget?.spec?.tokens_per_head).toBe(0);
    expect(back.budget?.spec?.keep_ratio).toBeUndefined();
  });

  it('round-trips a budget selected by name', () => {
    const back = roundTripReq(gen, { text: 'x', budget: { name: 'long-context' } });
    expect(back.budget?.selector).toBe('name');
    expect(back.budget?.name).toBe('long-context');
  });

  it('round-trips the last GenerateResponse with usage, kv stats and a 64-bit seed', () => {
    const res: GenerateResponse = { token_ids: [9, 10], text: 'ab', finish_reason: 'EOS',
      usage: { prompt_tokens: 12, completion_tokens: 2 },
      kv_stats: { kept_tokens: '4096', full_tokens: '8192', min_head_tokens: 3, max_head_tokens: 700, pages: 40, peak_pages: 41 },
      worker_id: 'w-0', seed: '12345678901234567890' };
    expect(roundTripRes(gen, res)).toEqual(res);
  });

  it('round-trips Capacity and DrainResponse', () => {
    const c: Capacity = { worker_id: 'w', total_pages: '1000', free_pages: '900', reserved_pages: '50', page_size: 16,
      num_layers: 2, num_kv_heads: 2, running: 3, waiting: 1, draining: true };
    expect(roundTripRes(cap, c)).toEqual(c);
    expect(roundTripRes(drain, { running: 4 })).toEqual({ running: 4 });
  });
});

describe('kvfleet.v1 services over loopback', () => {
  it('serves Generation and Worker with health and reflection', async () => {
    const server = new grpc.Server();
    addGenerationService(server, {
      Generate(call) {
        call.write({ token_ids: [1], text: 'a', worker_id: 'w' });
        call.write({ token_ids: [2], text: 'b', worker_id: 'w', finish_reason: 'LENGTH', seed: '7' });
        call.end();
      },
    });
    addWorkerService(server, {
      GetCapacity(_c, cb) { cb(null, { worker_id: 'w', total_pages: 10, free_pages: 10 }); },
      Drain(_c, cb) { cb(null, { running: 0 }); },
      Undrain(_c, cb) { cb(null, { admitting: true }); },
    });
    const health = addHealth(server, ['kvfleet.v1.Generation']);
    addReflection(server);
    const port = await bindInsecure(server);
    try {
      const gc = generationClient(`127.0.0.1:${port}`);
      const msgs: GenerateResponse[] = [];
      await new Promise<void>((resolve, reject) => {
        const s = gc.Generate({ text: 'hi' });
        s.on('data', (m: GenerateResponse) => msgs.push(m));
        s.on('end', resolve); s.on('error', reject);
      });
      expect(msgs.map((m) => m.text).join('')).toBe('ab');
      expect(msgs[1].finish_reason).toBe('LENGTH');
      expect(msgs[1].seed).toBe('7');
      const wc = workerClient(`127.0.0.1:${port}`);
      const c = await new Promise<Capacity>((resolve, reject) => wc.GetCapacity({}, (e, r) => (e ? reject(e) : resolve(r!))));
      expect(c.total_pages).toBe('10');
      health.set('NOT_SERVING');
      const { HealthClient } = await healthClient();
      const hc = new HealthClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      const st = await new Promise<{ status: string }>((resolve, reject) =>
        hc.check({ service: 'kvfleet.v1.Generation' }, (e: Error | null, r: { status: string }) => (e ? reject(e) : resolve(r))));
      expect(st.status).toBe('NOT_SERVING');
      gc.close(); wc.close(); hc.close();
    } finally {
      server.forceShutdown();
    }
  });
});

async function healthClient() {
  const { protoPath } = await import('grpc-health-check');
  const protoLoader = await import('@grpc/proto-loader');
  const def = protoLoader.loadSync(protoPath, { keepCase: true, enums: String });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } } };
  return { HealthClient: pkg.grpc.health.v1.Health as unknown as new (a: string, c: grpc.ChannelCredentials) => grpc.Client & {
    check(req: { service: string }, cb: (e: Error | null, r: { status: string }) => void): void } };
}
