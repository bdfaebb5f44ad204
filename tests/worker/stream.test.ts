// What one stream carries: resume continues with exactly the remaining tokens, text chunks are UTF-8-safe and add
// up to the decode of all tokens, stop strings cut the text, the seed is reported, and a long prompt prefilled
// layer by layer across steps gives the same tokens while decodes keep flowing.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TextStream } from '../../worker/detok.ts';
import { Tokenizer } from '../../worker/tokenizer.ts';
import { generate, greedy, inProcessWorker, tinyModel, type TestWorker } from './helpers.ts';

let model: ReturnType<typeof tinyModel>;
let t: TestWorker;
let tok: Tokenizer;
beforeAll(async () => {
  model = tinyModel();
  tok = Tokenizer.load(model.dir);
  t = await inProcessWorker(model.dir, { numPages: 4096 });
});
afterAll(async () => { await t?.stop(); model?.cleanup(); });

/** Byte-level ids of the synthetic tokenizer: id 2 + byte. */
const byteIds = (s: string) => Array.from(Buffer.from(s, 'utf8'), (b) => 2 + b);

describe('TextStream', () => {
  it('never emits half a multi-byte character, and the chunks add up to the decode', () => {
    const s = new TextStream(tok, []);
    const chunks = byteIds('a€🙂b').map((id) => s.push(id).text);
    expect(chunks).toEqual(['a', '', '', '€', '', '', '', '🙂', 'b']);
    expect(s.flush()).toBe('');
  });

  it('an incomplete character at the end is flushed as U+FFFD', () => {
    const s = new TextStream(tok, []);
    const ids = [...byteIds('x'), 2 + 0xf0, 2 + 0x9f];
    const out = ids.map((id) => s.push(id).text).join('') + s.flush();
    expect(out).toBe(tok.decode(ids));
    expect(out.endsWith('\uFFFD')).toBe(true);
  });

  it('holds back a possible stop-string start, and stops with the text before the stop string', () => {
    const s = new TextStream(tok, ['END']);
    const got = byteIds('abENxEND!').map((id) => s.push(id));
    expect(got.map((g) => g.text)).toEqual(['a', 'b', '', '', 'ENx', '', '', '', '']);
    expect(got[7].stopped).toBe(true);
    expect(s.text).toBe('abENx');
    expect(s.flush()).toBe('');
  });
});

describe('Generate streams', () => {
  it('resume_token_ids = the first k tokens of a run continues with exactly the remaining tokens', async () => {
    const sampling = { max_new_tokens: 40, temperature: 0.9, seed: '424242', ignore_eos: true };
    const full = await generate(t.gen, { text: 'resume me', sampling });
    expect(full.tokens).toHaveLength(40);
    for (const k of [1, 15, 39]) {
      const rest = await generate(t.gen, { text: 'resume me', sampling, resume_token_ids: full.tokens.slice(0, k) });
      expect(rest.error).toBeUndefined();
      expect(rest.tokens).toEqual(full.tokens.slice(k));
      expect(rest.last?.usage).toEqual({ prompt_tokens: full.last!.usage!.prompt_tokens, completion_tokens: 40 });
      expect(rest.last?.kv_stats).toEqual(full.last?.kv_stats);
      expect(rest.last?.seed).toBe('424242');
    }
  });

  it('streamed text chunks concatenated equal the decode of all tokens; no chunk ends mid-character', async () => {
    // high temperature over a byte-level vocabulary: plenty of partial and invalid UTF-8 byte runs
    const runs = await Promise.all(Array.from({ length: 12 }, (_, i) =>
      generate(t.gen, { text: `utf8 ${i}`, sampling: { max_new_tokens: 48, temperature: 1.5, seed: String(i), ignore_eos: true } })));
    let held = 0;
    for (const r of runs) {
      expect(r.error).toBeUndefined();
      expect(r.text).toBe(tok.decode(r.tokens));
      const streamed = r.messages.slice(0, -1);
      for (const m of streamed) expect(m.text!.endsWith('\uFFFD')).toBe(false);
      for (const m of streamed) if (m.text === '') held++;
      for (const m of r.messages) expect(m.worker_id).toBe(t.w.workerId);
    }
    expect(held).toBeGreaterThan(0);  // some token's bytes really were held back
  });

  it('a stop string ends the stream with STOP and the text before it', async () => {
    const base = await generate(t.gen, { text: 'stop here', sampling: greedy(64) });
    // a 3-character substring that first occurs in the middle of the text
    let at = -1, stop = '';
    for (let i = 8; i + 3 < base.text.length; i++) {
      const cand = base.text.slice(i, i + 3);
      if (!cand.includes('\uFFFD') && base.text.indexOf(cand) === i) { at = i; stop = cand; break; }
    }
    expect(at).toBeGreaterThan(0);
    const r = await generate(t.gen, { text: 'stop here', sampling: greedy(64, { stop: ['never-there', stop] }) });
    expect(r.error).toBeUndefined();
    expect(r.last?.finish_reason).toBe('STOP');
    expect(r.text).toBe(base.text.slice(0, at));
    expect(r.tokens).toEqual(base.tokens.slice(0, r.tokens.length));
    expect(r.tokens.length).toBeLessThan(64);
    expect(r.last?.usage?.completion_tokens).toBe(r.tokens.length);
  });

  it('reports a server-chosen seed that reproduces the stream', async () => {
    const a = await generate(t.gen, { text: 'seedless', sampling: { max_new_tokens: 20, temperature: 1, ignore_eos: true } });
    expect(a.last?.seed).toMatch(/^\d+$/);
    expect(BigInt(a.last!.seed as string) < (1n << 64n)).toBe(true);
    for (const m of a.messages.slice(0, -1)) expect(m.seed).toBeUndefined();
    const b = await generate(t.gen, { text: 'seedless', sampling: { max_new_tokens: 20, temperature: 1, ignore_eos: true, seed: a.last!.seed } });
    expect(b.tokens).toEqual(a.tokens);
    // a request id is assigned when the client sends none, and the client's own is kept
    expect(a.requestId).toMatch(/^[0-9a-f-]{36}$/);
    const c = await generate(t.gen, { request_id: 'my-req-1', text: 'x', sampling: greedy(2) });
    expect(c.requestId).toBe('my-req-1');
    expect(b.last?.finish_reason).toBe('LENGTH');
    expect(Number(b.last?.kv_stats?.pages)).toBeGreaterThan(0);
  });

  it('a long prompt prefilled a layer per step gives the same tokens while decodes keep flowing', async () => {
    const split = await inProcessWorker(model.dir, { numPages: 4096, maxPrefillTokens: 64 });
    try {
      const long = { token_ids: { ids: Array.from({ length: 300 }, (_, i) => 2 + ((i * 7) % 250)) }, sampling: greedy(16) };
      const short = { token_ids: { ids: [0, 9, 8, 7] }, sampling: greedy(200) };
      const refLong = await generate(t.gen, long);
      const refShort = await generate(t.gen, short);
      split.w.scheduler.resetStats();
      const s = generate(split.gen, short);
      await new Promise((r) => setTimeout(r, 20));
      const [l, sh] = await Promise.all([generate(split.gen, long), s]);
      expect(l.tokens).toEqual(refLong.tokens);
      expect(sh.tokens).toEqual(refShort.tokens);
      const st = split.w.scheduler.stats();
      expect(st.splitPrefillSteps).toBeGreaterThanOrEqual(1);
      expect(st.decodesDuringSplitPrefill).toBeGreaterThanOrEqual(1);
    } finally { await split.stop(); }
  });
});
