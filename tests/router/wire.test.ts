// The router's own GenerateRequest encoder (router/wire.ts) against the generated one: a worker must decode exactly
// the same request from either.
import { describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { kvfleetProto, type GenerateRequest } from '../../proto/index.ts';
import { workerRequestSerializer } from '../../router/wire.ts';

const def = kvfleetProto().generationService.Generate as grpc.MethodDefinition<GenerateRequest, unknown>;
const fast = workerRequestSerializer(def.requestSerialize);
const decode = (b: Buffer) => def.requestDeserialize(b);

function lcg(seed: number) {
  let x = seed >>> 0;
  return () => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return x; };
}

describe('router request encoding', () => {
  const sampling = { max_new_tokens: 7, temperature: 0.5, top_k: 3, seed: '18446744073709551615', stop: ['\n'], ignore_eos: true };
  const budget = { spec: { method: 'ADA_SNAPKV' as const, tokens_per_head: 64, window: 8 } };
  const rnd = lcg(7);
  // every varint length: 1..5 bytes (0, 127, 128, 16383, 16384, 2^21-1, 2^21, 2^28-1, 2^28, 2^32-1)
  const edges = [0, 127, 128, 16383, 16384, 2097151, 2097152, 268435455, 268435456, 4294967295];
  const long = Array.from({ length: 2048 }, () => rnd() % 32000);
  const cases: Record<string, GenerateRequest> = {
    short: { request_id: 'r-1', token_ids: { ids: [5, 6, 7] }, sampling, budget: { spec: budget.spec }, resume_token_ids: [] },
    edges: { request_id: 'r-2', token_ids: { ids: edges }, sampling, resume_token_ids: edges },
    long: { request_id: 'r-3', token_ids: { ids: long }, sampling, budget, resume_token_ids: long.slice(0, 300) },
    'empty ids': { request_id: 'r-4', token_ids: { ids: [] } },
    'no id, no sampling': { token_ids: { ids: [1] } },
    'named budget': { request_id: 'r-5', token_ids: { ids: [9, 10] }, budget: { name: 'tight' } },
  };
  for (const [name, req] of Object.entries(cases)) {
    it(`decodes as the generated encoding does: ${name}`, () => {
      const ours = decode(fast(req));
      const theirs = decode(def.requestSerialize(req));
      expect(ours).toEqual(theirs);
      // the same fields, only in another order: the same number of bytes
      expect(fast(req).length).toBe(def.requestSerialize(req).length);
      expect(ours.prompt).toBe('token_ids');
      expect(ours.token_ids?.ids ?? []).toEqual(req.token_ids?.ids ?? []);
    });
  }

  it('passes a text prompt to the generated encoder unchanged', () => {
    const req: GenerateRequest = { request_id: 'r-6', text: 'hello there', sampling };
    expect(fast(req).equals(def.requestSerialize(req))).toBe(true);
  });
});
