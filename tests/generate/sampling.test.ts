// Sampling is counter-based, keyed by (seed, position) (ENGINE.md, "Sampling"): the same seed and input give the
// same tokens, with temperature, top-k and top-p too, solo or in a batch with other sequences, on another engine,
// and after a resume. Engine level, through worker/engine.ts, on a tiny synthetic model.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine, Finish, type EngineBudget, type EngineSampling } from '../../worker/engine.ts';
import { writeSynthModel } from '../../worker/model/synth.ts';

function prompt(n: number, seed: number, V: number): number[] {
  let x = 88172645 ^ (seed * 2654435761);
  return Array.from({ length: n }, () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return 2 + (x % (V - 2));
  });
}

interface Req { prompt: number[]; sampling: EngineSampling; budget?: EngineBudget; resume?: number[] }

/**
 * Runs requests in one batch until all finish; `joinAt[i]` is the step at which request i is added (default 0), so
 * sequences join a batch that is already decoding. Returns the tokens each produced (forced resume tokens excluded).
 */
async function run(engine: Engine, reqs: Req[], joinAt: number[] = []): Promise<number[][]> {
  const ids: (number | undefined)[] = reqs.map(() => undefined);
  const out: number[][] = reqs.map(() => []);
  const live = new Set<number>();
  for (let step = 0; ; step++) {
    reqs.forEach((r, i) => {
      if (ids[i] === undefined && (joinAt[i] ?? 0) <= step) {
        ids[i] = engine.addSequence(r.prompt, r.sampling, r.budget ?? { method: 'FULL' }, r.resume);
        live.add(i);
      }
    });
    if (live.size === 0) break;
    const res = await engine.step([...live].map((i) => ({ id: ids[i]! })));
    for (const s of res.seqs) {
      const i = ids.indexOf(s.id);
      expect(s.outOfPages).toBe(false);
      if (s.token >= 0 && !s.forced) out[i].push(s.token);
      if (s.finish !== Finish.None) { live.delete(i); engine.release(s.id); }
    }
  }
  return out;
}

const dirs: string[] = [];
let engine: Engine;
let dir: string;
let V: number;
beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-sampling-'));
  dirs.push(dir);
  writeSynthModel({ out: dir, preset: 'tiny', seed: 31, dtype: 'f16' });
  engine = await Engine.load(dir, { numPages: 2048, kvDtype: 'f16' });
  V = engine.info.vocabSize;
});
afterAll(() => {
  engine.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const HOT: EngineSampling = { temperature: 0.9, topP: 0.95, topK: 200, seed: '987654321987654321', maxNewTokens: 32, ignoreEos: true };

describe('sampling: same seed and input, same tokens', () => {
  it('temperature > 0 with top-k and top-p: the same tokens on every run and on a second engine', async () => {
    const req: Req = { prompt: prompt(40, 1, V), sampling: HOT };
    const a = (await run(engine, [req]))[0];
    const b = (await run(engine, [req]))[0];
    expect(a).toHaveLength(32);
    expect(b).toEqual(a);
    const other = await Engine.load(dir, { numPages: 512, kvDtype: 'f16' });
    try { expect((await run(other, [req]))[0]).toEqual(a); } finally { other.close(); }
    // the seed really drives the draws: another seed, other tokens (32 draws over 512 tokens)
    expect((await run(engine, [{ ...req, sampling: { ...HOT, seed: '987654321987654322' } }]))[0]).not.toEqual(a);
  });

  it('in a batch with other sequences (joining mid-stream, finishing early, compressed, greedy): the same tokens as solo', async () => {
    const reqs: Req[] = [
      { prompt: prompt(40, 1, V), sampling: HOT },
      { prompt: prompt(300, 2, V), sampling: { temperature: 1.3, seed: 5, maxNewTokens: 7, ignoreEos: true } },
      { prompt: prompt(9, 3, V), sampling: { temperature: 0, maxNewTokens: 40, ignoreEos: true } },
      { prompt: prompt(200, 4, V), sampling: { temperature: 0.7, topK: 20, seed: 6, maxNewTokens: 20, ignoreEos: true },
        budget: { method: 'ADA_PYRAMIDKV', tokensPerHead: 48, window: 16 } },
      { prompt: prompt(40, 1, V), sampling: { ...HOT, seed: 1 } },  // same prompt, another seed, alongside
    ];
    const solo: number[][] = [];
    for (const r of reqs) solo.push((await run(engine, [r]))[0]);
    const batched = await run(engine, reqs, [0, 3, 0, 5, 1]);
    for (let i = 0; i < reqs.length; i++) expect(batched[i], `request ${i}`).toEqual(solo[i]);
    expect(solo[4]).not.toEqual(solo[0]);
    expect(engine.poolStats().freePages).toBe(engine.poolStats().totalPages);
  });

  it('a seed given as a number, a bigint or a decimal string is the same seed', async () => {
    const p = prompt(20, 7, V);
    const forms: EngineSampling['seed'][] = [12345, 12345n, '12345'];
    const outs = [];
    for (const seed of forms) outs.push((await run(engine, [{ prompt: p, sampling: { ...HOT, seed, maxNewTokens: 16 } }]))[0]);
    expect(outs[1]).toEqual(outs[0]);
    expect(outs[2]).toEqual(outs[0]);
    const big = [];
    for (const seed of [2n ** 64n - 1n, '18446744073709551615']) {
      big.push((await run(engine, [{ prompt: p, sampling: { ...HOT, seed, maxNewTokens: 16 } }]))[0]);
    }
    expect(big[1]).toEqual(big[0]);
  });

  it('greedy ignores the seed', async () => {
    const p = prompt(30, 8, V);
    const g = (seed: number) => run(engine, [{ prompt: p, sampling: { temperature: 0, seed, maxNewTokens: 12, ignoreEos: true } }]);
    expect((await g(1))[0]).toEqual((await g(2))[0]);
  });

  it('draws are keyed by position: a resumed stream continues with exactly the uninterrupted tokens', async () => {
    const p = prompt(60, 9, V);
    const budget: EngineBudget = { method: 'ADA_SNAPKV', tokensPerHead: 40, window: 8 };
    const whole = (await run(engine, [{ prompt: p, sampling: HOT, budget }]))[0];
    for (const k of [1, 10, 31]) {
      const rest = (await run(engine, [{ prompt: p, sampling: HOT, budget, resume: whole.slice(0, k) }]))[0];
      expect(rest, `resumed after ${k} tokens`).toEqual(whole.slice(k));
    }
  });
});
