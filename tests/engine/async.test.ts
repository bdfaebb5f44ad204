// Engine steps run off Node's event loop (ENGINE.md, "Binding"): while long prefills compute, a setInterval timer
// keeps firing. Measured as the ticks seen and the longest gap between ticks during the steps; a step that blocked
// the loop would show one gap as long as itself.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Engine, InternalEngineError } from '../../worker/engine.ts';
import { writeSynthModel } from '../../worker/model/synth.ts';

const TICK_MS = 2;

function prompt(n: number, seed: number, V: number): number[] {
  return Array.from({ length: n }, (_, i) => 2 + ((i * 7919 + seed * 104729) % (V - 2)));
}

/** Runs fn while a timer ticks every TICK_MS; returns fn's value, its wall time, the ticks and the longest gap. */
async function withTicker<T>(fn: () => Promise<T>): Promise<{ value: T; ms: number; ticks: number; maxGapMs: number }> {
  const stamps: number[] = [];
  const t0 = performance.now();
  const timer = setInterval(() => stamps.push(performance.now()), TICK_MS);
  try {
    const value = await fn();
    const t1 = performance.now();
    const all = [t0, ...stamps, t1];
    let maxGapMs = 0;
    for (let i = 1; i < all.length; i++) maxGapMs = Math.max(maxGapMs, all[i] - all[i - 1]);
    return { value, ms: t1 - t0, ticks: stamps.length, maxGapMs };
  } finally {
    clearInterval(timer);
  }
}

let dir: string;
let engine: Engine;
let V: number;
beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-async-'));
  writeSynthModel({ out: dir, preset: 'tiny', seed: 41, dtype: 'f32' });
  engine = await Engine.load(dir, { numPages: 4096, kvDtype: 'f16' });
  V = engine.info.vocabSize;
});
afterAll(() => { engine.close(); rmSync(dir, { recursive: true, force: true }); });

const BUDGET = { method: 'ADA_SNAPKV', tokensPerHead: 64, window: 32 } as const;

describe('engine steps run off the event loop', () => {
  it('a timer keeps firing during one long prefill step (4000 tokens)', async () => {
    const id = engine.addSequence(prompt(4000, 1, V), { temperature: 0, maxNewTokens: 2, ignoreEos: true }, BUDGET);
    const r = await withTicker(() => engine.step([{ id }]));
    engine.release(id);
    console.log(`one step: ${r.ms.toFixed(0)} ms, ${r.ticks} ticks, longest gap ${r.maxGapMs.toFixed(1)} ms`);
    expect(r.value.seqs[0].prefillDone).toBe(true);
    expect(r.ms).toBeGreaterThan(100);  // long enough that blocking would show
    expect(r.maxGapMs).toBeLessThan(r.ms / 4);
    expect(r.ticks).toBeGreaterThan(r.ms / TICK_MS / 10);
  });

  it('many steps awaited concurrently, on one engine and on a second one, keep the loop free and all complete', async () => {
    const other = await Engine.load(dir, { numPages: 4096, kvDtype: 'f32' });
    try {
      const a = [0, 1, 2].map((s) => engine.addSequence(prompt(2500, 10 + s, V), { temperature: 0, maxNewTokens: 3, ignoreEos: true }, BUDGET));
      const b = [0, 1].map((s) => other.addSequence(prompt(2500, 20 + s, V), { temperature: 0, maxNewTokens: 3, ignoreEos: true }, BUDGET));
      // each engine queues its own steps (one at a time per engine); the two engines run side by side
      const r = await withTicker(() => Promise.all([
        ...a.map((id) => engine.step([{ id }])), ...b.map((id) => other.step([{ id }])),
        ...a.map((id) => engine.step([{ id }])),  // the decode step of each, queued behind its prefill
      ]));
      console.log(`7 concurrent steps: ${r.ms.toFixed(0)} ms, ${r.ticks} ticks, longest gap ${r.maxGapMs.toFixed(1)} ms`);
      expect(r.value.slice(0, 5).every((s) => s.seqs[0].prefillDone && s.seqs[0].token >= 0)).toBe(true);
      expect(r.value.slice(5).every((s) => !s.seqs[0].prefillDone && s.seqs[0].token >= 0)).toBe(true);
      expect(r.ms).toBeGreaterThan(200);
      expect(r.maxGapMs).toBeLessThan(r.ms / 4);
      expect(r.ticks).toBeGreaterThan(r.ms / TICK_MS / 10);
      for (const id of a) engine.release(id);
      for (const id of b) other.release(id);
      expect(engine.poolStats().freePages).toBe(engine.poolStats().totalPages);
    } finally {
      other.close();
    }
  });

  it('refuses to change a sequence while its step is in flight, with an error that says to await the step', async () => {
    const id = engine.addSequence(prompt(2000, 3, V), { temperature: 0, maxNewTokens: 2, ignoreEos: true }, BUDGET);
    const step = engine.step([{ id }]);
    await new Promise((r) => setTimeout(r, 5));
    expect(() => engine.release(id)).toThrow(InternalEngineError);
    expect(() => engine.seqStats(id)).toThrow(/await the step/);
    await step;
    expect(engine.seqStats(id).prefilling).toBe(false);
    engine.release(id);
  });
});
