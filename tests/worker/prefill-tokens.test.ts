// Scheduler.capacity().prefillTokens, which the heartbeat publishes as prefill_tokens (what the ledger's least-prefill
// policy weighs): the prompt tokens admitted and not yet prefilled, a prompt split over steps counting the layers it
// has left, 0 once every prompt is prefilled. Real engine (the tiny synthetic model: L = 2), real scheduler loop; the
// reading is taken from the step hook, i.e. before each step's results are applied.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { Engine } from '../../worker/engine.ts';
import { engineBudget } from '../../worker/request.ts';
import { Scheduler, type SchedRequest, type Sink } from '../../worker/scheduler.ts';
import { BUILTIN_DEFAULT_BUDGET } from '../../ledger/footprint.ts';
import { tinyModel } from './helpers.ts';

let model: ReturnType<typeof tinyModel>;
beforeAll(() => { model = tinyModel(); });
afterAll(() => { model?.cleanup(); });

function request(id: string, n: number, maxNewTokens: number): SchedRequest {
  return {
    requestId: id, prompt: Array.from({ length: n }, (_, i) => 2 + ((i * 7) % 250)),
    sampling: { temperature: 0, maxNewTokens, seed: '1', ignoreEos: true },
    budget: engineBudget(BUILTIN_DEFAULT_BUDGET), spec: BUILTIN_DEFAULT_BUDGET, resume: [],
  };
}

function run(s: Scheduler, req: SchedRequest): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const sink: Sink = { token: () => false, finish: (_r, _st, generated) => resolve(generated), fail: reject };
    s.submit(req, sink);
  });
}

describe('prefill tokens in the capacity snapshot', () => {
  it('counts a split prompt by the layers it has left, a short one whole until its step, and 0 once prefilled', async () => {
    const engine = await Engine.load(model.dir, { numPages: 4096 });
    expect(engine.poolStats().numLayers).toBe(2);
    const perStep: number[] = [];
    // 64 prompt tokens per step through both layers: a 300-token prompt gets one layer per step
    const s: Scheduler = new Scheduler(engine, {
      admission: 'reserve', maxRunning: 8, maxQueue: 8, maxPrefillTokens: 64, logger: pino({ level: 'silent' }),
      hooks: { step: () => { perStep.push(s.capacity().prefillTokens); } },
    });
    try {
      expect(s.capacity().prefillTokens).toBe(0);
      const long = run(s, request('long', 300, 3));
      const short = run(s, request('short', 10, 3));
      expect(await long).toHaveLength(3);
      expect(await short).toHaveLength(3);
      // step 1: long's first layer (short left out: the budget is spent) — both whole: 300 + 10;
      // step 2: long's second layer, short whole — 150 + 10; step 3: short alone — 10; then decodes only
      expect(perStep.slice(0, 3)).toEqual([310, 160, 10]);
      expect(perStep.slice(3).every((x) => x === 0)).toBe(true);
      expect(perStep.length).toBeGreaterThan(3);
      expect(s.capacity().prefillTokens).toBe(0);
    } finally {
      await s.close();
    }
  });
});
