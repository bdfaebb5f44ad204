// `kvfleet bench quality`: does Ada-KV's head-wise budget allocation beat uniform budgets on the `hetero` preset
// (issue 7; design/ENGINE.md, "The hetero preset needs structure" and "Theory to test against")?
//
// Per prompt: a FULL run decodes `steps` greedy tokens. Every compressed run (method x budget) gets the same prompt
// and FULL's tokens as resume tokens, which the engine replays as decode steps (teacher forcing), so each of its
// decode steps sees exactly the inputs FULL saw. Per decode step we compare with FULL:
//   attention error  sum |y - y_full| / sum |y_full| over layers, heads and steps (y: attention outputs before o_proj;
//                    the Ada-KV paper's relative L1 measure)
//   KL               KL(p_full || p_method) of the next-token distributions, mean over steps
//   agreement        fraction of steps where argmax(method logits) is FULL's token
// and after prefill: pages held against FULL's, fragmentation = pages * P / kept tokens, and the attention mass of
// FULL's last `window` prompt queries that lands on the tokens each head kept (windowMassKept: what the allocation
// optimises, ENGINE.md "Theory to test against"; scores are pooled, so Ada keeping more of it is likely, not certain).
// The preset's heads are characterised first: for each (layer, KV head), the share of the cache that holds 0.9 of
// the attention mass of the last `window` prompt queries, computed from FULL's cached K/V by a float64 recomputation
// of those rows (`probeRows`).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine, type EngineBudget } from '../worker/engine.ts';
import { heteroParameters, heteroPrompt, heteroSalience, HETERO_HEADS, HETERO_SUBSETS } from '../worker/model/hetero.ts';
import { writeSynthModel } from '../worker/model/synth.ts';
import { ropeInvFreq } from '../tests/reference/llama-f64.ts';
import { readModelTensors, type RefTensor } from '../tests/reference/safetensors-read.ts';
import type { BenchOptions } from './index.ts';
import { bootstrapInterval, verdict, type PerPrompt } from './paired.ts';
import { machineInfo, progress, target, type BenchReport, intArg as benchIntArg } from './report.ts';

// ---- the probe: float64 recomputation of the last rows from the engine's cached K/V ----

export interface ModelWeights { L: number; D: number; H: number; Hk: number; d: number; F: number; V: number; eps: number;
  invFreq: Float64Array; t: (name: string) => Float32Array }

export function loadWeights(dir: string, cfg: { num_hidden_layers: number; hidden_size: number; num_attention_heads: number;
  num_key_value_heads: number; head_dim: number; intermediate_size: number; vocab_size: number; rms_norm_eps: number;
  rope_theta: number }): ModelWeights {
  const w: Map<string, RefTensor> = readModelTensors(dir);
  return { L: cfg.num_hidden_layers, D: cfg.hidden_size, H: cfg.num_attention_heads, Hk: cfg.num_key_value_heads,
    d: cfg.head_dim, F: cfg.intermediate_size, V: cfg.vocab_size, eps: cfg.rms_norm_eps,
    invFreq: ropeInvFreq(cfg.head_dim, cfg.rope_theta),
    t: (name) => {
      const x = w.get(name);
      if (!x) throw new Error(`${dir}: missing tensor '${name}'`);
      return x.data;
    } };
}

function rmsNormInto(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const r = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * r * w[i]);
}

function matVec(W: Float32Array, rows: number, cols: number, x: Float64Array): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const o = r * cols;
    for (let c = 0; c < cols; c++) s += W[o + c] * x[c];
    y[r] = s;
  }
  return y;
}

export interface ProbeResult {
  /** [L][Hk]: mean over probed rows and the G query heads of (tokens holding 0.9 of the row's mass) / (visible tokens) */
  share90: number[][];
  /** [L][Hk]: the same count for the rows' mean attention distribution (what a window score sees) / n */
  share90Mean: number[][];
  /** [L][Hk] -> [n]: the probed rows' mean attention distribution (over rows and the G query heads) */
  meanAttn: Float64Array[][];
  /** [L]: rms of the residual stream entering each layer, mean over probed rows */
  residualRms: number[];
  /** [L][H*d]: attention outputs before o_proj of the last probed row */
  lastAttn: Float64Array[];
}

function countFor(p: ArrayLike<number>, len: number, mass: number): number {
  const s = Array.from({ length: len }, (_, j) => p[j]).sort((a, b) => b - a);
  let acc = 0, k = 0;
  let total = 0;
  for (const v of s) total += v;
  while (k < s.length && acc < mass * total) acc += s[k++];
  return k;
}

/**
 * Recomputes rows `first..tokens.length-1` of a FULL sequence whose cache holds K/V for every one of `tokens`
 * (prefill done, or decode rows already appended), reading K and V from the engine, in float64. Exact up to the
 * engine's f32 K/V: rows attend causally to the cached keys at positions <= their own.
 */
export function probeRows(engine: Engine, id: number, W: ModelWeights, tokens: number[], first: number): ProbeResult {
  const { L, D, H, Hk, d, F, eps, invFreq } = W;
  const G = H / Hk, half = d / 2, n = tokens.length, rows = n - first;
  const embed = W.t('model.embed_tokens.weight');
  let x: Float64Array[] = [];   // [rows] -> [D]
  for (let i = first; i < n; i++) x.push(Float64Array.from(embed.subarray(tokens[i] * D, (tokens[i] + 1) * D)));
  const res: ProbeResult = { share90: [], share90Mean: [], meanAttn: [], residualRms: [], lastAttn: [] };
  const scale = 1 / Math.sqrt(d);
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    res.residualRms.push(x.reduce((a, xi) => a + Math.sqrt(xi.reduce((s, v) => s + v * v, 0) / D), 0) / rows);
    const kv = Array.from({ length: Hk }, (_, g) => {
      const pos = engine.headPositions(id, l, g);
      if (pos.length !== n) throw new Error(`probe: layer ${l} head ${g} holds ${pos.length} tokens, expected ${n} (run FULL)`);
      return engine.headKv(id, l, g);   // k, v: [n, d], RoPE applied to k
    });
    const heads: Float64Array[] = [];   // [rows] -> [H*d]
    const meanP = Array.from({ length: Hk }, () => new Float64Array(n));
    const shares = new Float64Array(Hk);
    for (let r = 0; r < rows; r++) {
      const pos = first + r;
      const xn = rmsNormInto(x[r], W.t(`${p}input_layernorm.weight`), eps);
      const q = matVec(W.t(`${p}self_attn.q_proj.weight`), H * d, D, xn);
      const out = new Float64Array(H * d);
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / G);
        const qh = new Float64Array(d);
        for (let i = 0; i < half; i++) {
          const a = pos * invFreq[i], c = Math.cos(a), s = Math.sin(a);
          qh[i] = q[h * d + i] * c - q[h * d + i + half] * s;
          qh[i + half] = q[h * d + i + half] * c + q[h * d + i] * s;
        }
        const { k, v } = kv[g];
        const len = pos + 1;
        const pr = new Float64Array(len);
        let max = -Infinity;
        for (let j = 0; j < len; j++) {
          let s = 0;
          for (let t = 0; t < d; t++) s += qh[t] * k[j * d + t];
          pr[j] = s * scale;
          if (pr[j] > max) max = pr[j];
        }
        let z = 0;
        for (let j = 0; j < len; j++) { pr[j] = Math.exp(pr[j] - max); z += pr[j]; }
        for (let j = 0; j < len; j++) {
          pr[j] /= z;
          meanP[g][j] += pr[j] / (rows * G);
          for (let t = 0; t < d; t++) out[h * d + t] += pr[j] * v[j * d + t];
        }
        shares[g] += countFor(pr, len, 0.9) / len / (rows * G);
      }
      heads.push(out);
    }
    res.share90.push(Array.from(shares));
    res.share90Mean.push(meanP.map((m) => countFor(m, n, 0.9) / n));
    res.meanAttn.push(meanP);
    res.lastAttn.push(heads[rows - 1]);
    // attention block output, then the MLP, as the model computes them
    x = x.map((xi, r) => {
      const a = matVec(W.t(`${p}self_attn.o_proj.weight`), D, H * d, heads[r]);
      const y = xi.map((e, j) => e + a[j]);
      const xm = rmsNormInto(y, W.t(`${p}post_attention_layernorm.weight`), eps);
      const gt = matVec(W.t(`${p}mlp.gate_proj.weight`), F, D, xm);
      const up = matVec(W.t(`${p}mlp.up_proj.weight`), F, D, xm);
      const act = gt.map((gi, j) => (gi / (1 + Math.exp(-gi))) * up[j]);
      const m = matVec(W.t(`${p}mlp.down_proj.weight`), D, F, act);
      return y.map((e, j) => e + m[j]);
    });
  }
  return res;
}

// ---- the benchmark ----

type Method = 'SNAPKV' | 'ADA_SNAPKV' | 'PYRAMIDKV' | 'ADA_PYRAMIDKV';
const METHODS: readonly Method[] = ['SNAPKV', 'ADA_SNAPKV', 'PYRAMIDKV', 'ADA_PYRAMIDKV'];
const PAIRS: ReadonlyArray<[Method, Method]> = [['SNAPKV', 'ADA_SNAPKV'], ['PYRAMIDKV', 'ADA_PYRAMIDKV']];
const WINDOW = 32;
const ALPHA = 0.2;

const intArg = (opts: BenchOptions, name: string, def: number): number => benchIntArg('quality', opts, name, def);

function listArg(opts: BenchOptions, name: string, def: number[]): number[] {
  const v = opts.args[name];
  if (v === undefined) return def;
  const xs = String(v).split(',').map(Number);
  if (xs.length === 0 || xs.some((x) => !Number.isSafeInteger(x) || x < 1)) {
    throw new Error(`bench quality: --${name} must be a comma-separated list of positive integers, got ${String(v)}`);
  }
  return xs;
}

/** log-softmax in float64 */
function logSoftmax(z: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of z) if (v > max) max = v;
  let s = 0;
  for (const v of z) s += Math.exp(v - max);
  const lse = max + Math.log(s);
  return Float64Array.from(z, (v) => v - lse);
}

/** a / b, where 0 / 0 (both exact, e.g. a budget that holds the whole prompt) is a tie: 1 */
function ratio(a: number, b: number): number {
  return a === 0 && b === 0 ? 1 : a / b;
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const sums = (x: PerPrompt) => Object.fromEntries(Object.entries(x).map(([k, v]) => [k, sum(v)]));

function argmax(z: Float32Array): number {
  let best = 0;
  for (let i = 1; i < z.length; i++) if (z[i] > z[best]) best = i;
  return best;
}

interface Trace { tokens: number[]; logits: Float32Array[]; attn: Float32Array[]; pages: number; kept: number;
  minHead: number; maxHead: number; massKept: number[][]; headKept: number[][] }

/**
 * Prefill, then one decode step per resume token (or `steps` greedy steps without resume). Returns the logits and
 * attention outputs of the decode rows (the prefill step's logits are exact for every method and are left out).
 */
async function runOne(engine: Engine, prompt: number[], budget: EngineBudget, steps: number, resume?: number[],
    meanAttn?: Float64Array[][]): Promise<Trace> {
  const id = engine.addSequence(prompt, { temperature: 0, maxNewTokens: steps + 1, ignoreEos: true }, budget, resume);
  try {
    const tr: Trace = { tokens: [], logits: [], attn: [], pages: 0, kept: 0, minHead: 0, maxHead: 0, massKept: [], headKept: [] };
    for (let s = 0; s <= steps; s++) {
      const r = await engine.step([{ id }], s > 0, s > 0);
      const sr = r.seqs.find((x) => x.id === id);
      if (!sr) throw new Error(`bench quality: step ${s} returned no result for sequence ${id}`);
      if (sr.outOfPages) throw new Error(`bench quality: out of pages at step ${s} (${budget.method} B=${budget.tokensPerHead})`);
      if (s === 0) {
        const st = engine.seqStats(id);
        if (st.prefilling) throw new Error('bench quality: prefill did not finish in one step');
        Object.assign(tr, { pages: st.pages, kept: st.keptTokens, minHead: st.minHeadTokens, maxHead: st.maxHeadTokens });
        const { numLayers: L, numKvHeads: Hk } = engine.info;
        tr.headKept = Array.from({ length: L }, (_, l) => Array.from({ length: Hk }, (_, g) => engine.headPositions(id, l, g).length));
        // the window's attention mass on the tokens each head kept (ENGINE.md "Theory to test against")
        tr.massKept = (meanAttn ?? []).map((heads, l) => heads.map((m, g) => {
          let sum = 0;
          for (const p of engine.headPositions(id, l, g)) sum += m[p];
          return sum;
        }));
      } else {
        tr.logits.push(sr.logits!);
        tr.attn.push(sr.attn!);
      }
      tr.tokens.push(sr.token);
    }
    return tr;
  } finally {
    engine.release(id);
  }
}

interface Acc { errNum: number; errDen: number; errLayerNum: number[]; errLayerDen: number[]; massLayer: number[];
  headErrNum: number[][]; headErrDen: number[][]; headKept: number[][]; kl: number; agree: number;
  steps: number; pages: number; fullPages: number; kept: number; minHead: number; maxHead: number; runs: number }

export async function run(opts: BenchOptions): Promise<BenchReport> {
  // 16 x 64 greedy steps: the paired intervals of agreement about +-3 points, of the KL ratio about +-0.1 (8 prompts: 1.4x wider)
  const nPrompts = intArg(opts, 'prompts', 16);
  const n = intArg(opts, 'tokens', 4096);
  const steps = intArg(opts, 'steps', 64);
  const budgets = listArg(opts, 'budgets', [64, 128, 256, 512, 1024]);
  const seed = opts.args.seed === undefined ? 0 : intArg(opts, 'seed', 0);
  const threads = opts.args.threads === undefined ? 0 : intArg(opts, 'threads', 2);
  // SnapKV's score pooling kernel: the engine default (7) unless given; 1 = no pooling (a diagnostic)
  const poolKernel = opts.args['pool-kernel'] === undefined ? undefined : intArg(opts, 'pool-kernel', 7);
  const t0 = performance.now();

  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-quality-'));
  try {
    const model = writeSynthModel({ out: dir, preset: 'hetero', seed });
    const { num_hidden_layers: L, num_key_value_heads: Hk, head_dim: d, num_attention_heads: H, vocab_size: V } = model.config;
    const P = 16;
    const numPages = L * Hk * Math.ceil((n + steps + 1) / P) + 64;
    const engine = await Engine.load(dir, { numPages, pageSize: P, kvDtype: 'f32', threads });
    const W = loadWeights(dir, model.config);
    const salience = heteroSalience(seed, V);
    const total = nPrompts * (1 + METHODS.length * budgets.length);
    const tick = progress('bench quality');
    let done = 0;

    const acc = new Map<string, Acc>();
    // per prompt, for the paired intervals: error numerator/denominator, KL sum, agreeing steps, steps
    const perPrompt = new Map<string, PerPrompt>();
    const grid = (): number[][] => Array.from({ length: L }, () => Array(Hk).fill(0) as number[]);
    const key = (m: string, B: number) => `${m}/${B}`;
    const shares: ProbeResult[] = [];
    const promptInfo: unknown[] = [];
    for (let pi = 0; pi < nPrompts; pi++) {
      const prompt = heteroPrompt(n, seed * 1000 + pi + 1, V, seed);
      promptInfo.push({ seed: seed * 1000 + pi + 1, tokens: n,
        salientTokens: Object.fromEntries(HETERO_SUBSETS.map((s, si) => [s.name, prompt.filter((t) => salience[si][t] > 0).length])) });
      // FULL: greedy tokens, reference logits and attention outputs; then the head probe on its cache
      const idProbe = engine.addSequence(prompt, { temperature: 0, maxNewTokens: 1, ignoreEos: true }, { method: 'FULL' });
      await engine.step([{ id: idProbe }]);
      const probe = probeRows(engine, idProbe, W, prompt, n - WINDOW);
      shares.push(probe);
      engine.release(idProbe);
      const full = await runOne(engine, prompt, { method: 'FULL' }, steps);
      tick(++done, total);
      const resume = full.tokens.slice(0, steps);   // t0..t(steps-1); decode step s feeds t(s-1), FULL's answer is t(s)
      const fullLogp = full.logits.map(logSoftmax);
      for (const B of budgets) {
        for (const method of METHODS) {
          const tr = await runOne(engine, prompt, { method, tokensPerHead: B, window: WINDOW, floorAlpha: ALPHA, poolKernel }, steps, resume,
            probe.meanAttn);
          tick(++done, total);
          for (let s = 0; s < steps; s++) {
            if (tr.tokens[s] !== full.tokens[s]) throw new Error(`bench quality: resume token ${s} was not replayed (a bug)`);
          }
          const a = acc.get(key(method, B)) ?? { errNum: 0, errDen: 0, errLayerNum: Array(L).fill(0), errLayerDen: Array(L).fill(0),
            massLayer: Array(L).fill(0), headErrNum: grid(), headErrDen: grid(), headKept: grid(), kl: 0, agree: 0, steps: 0, pages: 0, fullPages: 0, kept: 0, minHead: Infinity, maxHead: 0, runs: 0 };
          const HD = H * d, Gd = (H / Hk) * d;
          const one = { errNum: 0, errDen: 0, kl: 0, agree: 0, steps: 0 };   // this prompt alone
          for (let s = 0; s < steps; s++) {
            const y = tr.attn[s], yf = full.attn[s];
            for (let l = 0; l < L; l++) {
              for (let i = l * HD; i < (l + 1) * HD; i++) {
                const e = Math.abs(y[i] - yf[i]), f = Math.abs(yf[i]);
                a.errLayerNum[l] += e;
                a.errLayerDen[l] += f;
                one.errNum += e;
                one.errDen += f;
                // query heads g*G..g*G+G-1 read KV head g: their outputs are that KV head's share of the error
                const g = Math.floor((i - l * HD) / Gd);
                a.headErrNum[l][g] += e;
                a.headErrDen[l][g] += f;
              }
            }
            const lp = logSoftmax(tr.logits[s]), lf = fullLogp[s];
            let kl = 0;
            for (let v = 0; v < V; v++) kl += Math.exp(lf[v]) * (lf[v] - lp[v]);
            a.kl += kl;
            one.kl += kl;
            if (argmax(tr.logits[s]) === full.tokens[s + 1]) { a.agree++; one.agree++; }
            a.steps++;
            one.steps++;
          }
          const pp = perPrompt.get(key(method, B)) ?? { errNum: [], errDen: [], kl: [], agree: [], steps: [] };
          for (const [k, v] of Object.entries(one)) pp[k].push(v);
          perPrompt.set(key(method, B), pp);
          tr.massKept.forEach((heads, l) => { a.massLayer[l] += heads.reduce((x, y) => x + y, 0) / Hk; });
          tr.headKept.forEach((heads, l) => heads.forEach((k, g) => { a.headKept[l][g] += k; }));
          a.pages += tr.pages; a.fullPages += full.pages; a.kept += tr.kept; a.runs++;
          a.minHead = Math.min(a.minHead, tr.minHead); a.maxHead = Math.max(a.maxHead, tr.maxHead);
          acc.set(key(method, B), a);
        }
      }
    }
    engine.close();

    const results: Record<string, unknown>[] = [];
    const summary = new Map<string, { err: number; kl: number; agreement: number }>();
    for (const B of budgets) {
      for (const method of METHODS) {
        const a = acc.get(key(method, B))!;
        const errNum = a.errLayerNum.reduce((x, y) => x + y, 0), errDen = a.errLayerDen.reduce((x, y) => x + y, 0);
        const row = { method, budget: B, attnRelL1: errNum / errDen, klMean: a.kl / a.steps, agreement: a.agree / a.steps,
          attnRelL1PerLayer: a.errLayerNum.map((x, l) => x / a.errLayerDen[l]),
          windowMassKept: a.massLayer.reduce((x, y) => x + y, 0) / (L * a.runs),
          windowMassKeptPerLayer: a.massLayer.map((x) => x / a.runs),
          pagesPerSeq: a.pages / a.runs, fullPagesPerSeq: a.fullPages / a.runs, pagesVsFull: a.pages / a.fullPages,
          keptTokensPerSeq: a.kept / a.runs, fragmentation: (a.pages * P) / a.kept,
          minHeadTokens: a.minHead, maxHeadTokens: a.maxHead, decodeSteps: a.steps,
          // where the budget went, per (layer, KV head): tokens kept after prefill (mean over prompts) and the
          // relative L1 error of the outputs of the query heads reading that KV head
          headKeptTokens: a.headKept.map((r) => r.map((k) => k / a.runs)),
          headAttnRelL1: a.headErrNum.map((r, l) => r.map((e, g) => e / a.headErrDen[l][g])) };
        summary.set(key(method, B), { err: row.attnRelL1, kl: row.klMean, agreement: row.agreement });
        results.push(row);
      }
    }
    const mean2 = (xs: number[][]) => xs.map((_, l) => xs[l].map(() => 0));
    const share90 = mean2(shares[0].share90), share90Mean = mean2(shares[0].share90Mean);
    const residualRms = Array(L).fill(0) as number[];
    for (const s of shares) {
      for (let l = 0; l < L; l++) {
        residualRms[l] += s.residualRms[l] / shares.length;
        for (let g = 0; g < Hk; g++) {
          share90[l][g] += s.share90[l][g] / shares.length;
          share90Mean[l][g] += s.share90Mean[l][g] / shares.length;
        }
      }
    }
    const heads = share90.flatMap((row, l) => row.map((sh, g) => ({ layer: l, kvHead: g, kind: HETERO_HEADS[l][g].kind,
      subset: HETERO_SUBSETS[HETERO_HEADS[l][g].subset].name, share90: sh, share90OfMeanWindow: share90Mean[l][g] })));
    results.unshift({ preset: 'hetero', seed, parameters: heteroParameters(), weights: { parameters: model.parameters, dtype: model.dtype },
      prompts: promptInfo, decodeSteps: steps, window: WINDOW, floorAlpha: ALPHA, poolKernel: poolKernel ?? 'engine default (7)',
      pageSize: P, kvDtype: 'f32',
      headShares: heads, residualRms,
      notes: 'windowMassKept: attention mass of the last window prompt queries (FULL) on the tokens each head kept, mean over heads', seconds: (performance.now() - t0) / 1000 });

    // Ada against its uniform twin, paired by prompt: the point estimates of the targets below with 95% bootstrap
    // intervals over prompts, the verdict of each interval, and how many prompts Ada won
    const comparisons = [];
    for (const [uni, ada] of PAIRS) {
      for (const B of budgets) {
        const u = perPrompt.get(key(uni, B))!, x = perPrompt.get(key(ada, B))!;
        const errRatio = (p: Record<string, number>, q: Record<string, number>) => ratio(p.errNum / p.errDen, q.errNum / q.errDen);
        const klRatio = (p: Record<string, number>, q: Record<string, number>) => ratio(p.kl, q.kl);
        const agreeDiff = (p: Record<string, number>, q: Record<string, number>) => p.agree / p.steps - q.agree / q.steps;
        const iv = (f: typeof errRatio) => bootstrapInterval(x, u, f, { seed: B });
        const point = (f: typeof errRatio) => f(sums(x), sums(u));
        const wins = (better: (i: number) => boolean) => x.kl.filter((_, i) => better(i)).length;
        const errIv = iv(errRatio), klIv = iv(klRatio), agIv = iv(agreeDiff);
        comparisons.push({ uniform: uni, ada, budget: B, prompts: x.kl.length,
          errRatio: { value: point(errRatio), ...errIv, verdict: verdict(errIv, 1, true),
            adaWins: wins((i) => x.errNum[i] / x.errDen[i] < u.errNum[i] / u.errDen[i]) },
          klRatio: { value: point(klRatio), ...klIv, verdict: verdict(klIv, 1, true), adaWins: wins((i) => x.kl[i] < u.kl[i]) },
          agreementDiff: { value: point(agreeDiff), ...agIv, verdict: verdict(agIv, 0, false),
            adaWins: wins((i) => x.agree[i] > u.agree[i]), uniformWins: x.kl.filter((_, i) => x.agree[i] < u.agree[i]).length },
          perPrompt: x.kl.map((_, i) => ({ errRatio: ratio(x.errNum[i] / x.errDen[i], u.errNum[i] / u.errDen[i]),
            klRatio: ratio(x.kl[i], u.kl[i]), agreementDiff: (x.agree[i] - u.agree[i]) / x.steps[i] })) });
      }
    }
    results.push({ comparisons, notes: 'Ada against uniform paired by prompt: value = the target\'s point estimate; lo/hi = 95% ' +
      'percentile bootstrap over prompts (4000 resamples); verdict = where the interval lies; adaWins = prompts Ada won' });

    const targets = [];
    for (const [uni, ada] of PAIRS) {
      for (const B of budgets) {
        const u = summary.get(key(uni, B))!, x = summary.get(key(ada, B))!;
        const a = ada.toLowerCase(), b = uni.toLowerCase();
        targets.push(target(`${a}_vs_${b}_err_ratio_B${B}`, ratio(x.err, u.err), 'ratio', '<', 1));
        targets.push(target(`${a}_vs_${b}_kl_ratio_B${B}`, ratio(x.kl, u.kl), 'ratio', '<', 1));
        // "never lower": the difference must be >= 0, i.e. > -epsilon (an exact tie passes)
        targets.push(target(`${a}_minus_${b}_agreement_B${B}`, x.agreement - u.agreement, 'fraction', '>', -1e-9));
      }
    }
    return { bench: 'quality', machine: machineInfo(), results, targets };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
