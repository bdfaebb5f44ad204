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

/** One stream through TextStream as the worker runs it: each token's text, where it stopped, the whole text. */
function run(ids: number[], stops: string[], prime: number[] = []) {
  const s = new TextStream(tok, stops, prime);
  const chunks: string[] = [];
  let stoppedAt = s.stoppedInPrime ? prime.length - 1 : -1;
  for (let i = prime.length; i < ids.length && stoppedAt < 0; i++) {
    const r = s.push(ids[i]);
    chunks.push(r.text);
    if (r.stopped) stoppedAt = i;
  }
  const text = chunks.join('') + s.flush();
  return { chunks, stoppedAt, text, stoppedInPrime: s.stoppedInPrime };
}

/**
 * Moves the stream after every cut k: the client holds the text of the first k messages (CONTRACTS.md, Resume: one
 * token per message), the resumed stream is primed with those k tokens; the client's whole text must be the
 * uninterrupted one, and the stream must stop at the same token.
 */
function expectResumeIdentical(ids: number[], stops: string[]): void {
  const ref = run(ids, stops);
  const end = ref.stoppedAt >= 0 ? ref.stoppedAt + 1 : ids.length;
  for (let k = 0; k <= end; k++) {
    const got = run(ids, stops, ids.slice(0, k));
    const where = `ids ${JSON.stringify(ids)} stops ${JSON.stringify(stops)} cut ${k}`;
    expect(ref.chunks.slice(0, k).join('') + got.text, where).toBe(ref.text);
    expect(got.stoppedAt, where).toBe(ref.stoppedAt);
    expect(got.stoppedInPrime === true, where).toBe(ref.stoppedAt >= 0 && k === ref.stoppedAt + 1);
  }
}

describe('TextStream resume (the text the client received at the cut)', () => {
  it('a multi-byte character split across the cut is neither lost nor sent twice', () => {
    const ids = byteIds('a€🙂b');
    // the decode of the first 2 tokens is 'a' + half of '€': the client has only 'a'
    expect(run(ids, [], ids.slice(0, 2)).text).toBe('€🙂b');
    expectResumeIdentical(ids, []);
    // '€🙂' completed before the cut but held back as the start of a stop string: the client has only 'a'
    expect(run(ids, ['€🙂x'], ids.slice(0, 8)).text).toBe('€🙂b');
    expectResumeIdentical(ids, ['€🙂x']);
  });

  it('a stop string spanning the cut still matches, and held-back text comes out once', () => {
    const ids = byteIds('xxEe,ENDyy');
    const ref = run(ids, ['END']);
    expect(ref.text).toBe('xxEe,');
    // moved after 'xxE': the client has 'xx' (the 'E' was held back); 'e,' must still arrive
    const got = run(ids, ['END'], ids.slice(0, 3));
    expect(got.text).toBe('Ee,');
    expect(got.stoppedAt).toBe(7);
    expectResumeIdentical(ids, ['END']);
    expectResumeIdentical(byteIds('ab€🙂cd'), ['€🙂c']);
    expectResumeIdentical(byteIds('ab€🙂cd'), ['🙂', 'b€']);
  });

  it('a prime that already ends in a stop string is stopped before anything is sampled', () => {
    const ids = byteIds('abENDcd');
    const s = new TextStream(tok, ['END'], ids.slice(0, 5));
    expect(s.stoppedInPrime).toBe(true);
    expect(s.push(ids[5])).toEqual({ text: '', stopped: true });
    expect(s.flush()).toBe('');
  });

  it('random token sequences and stop strings: every cut gives the uninterrupted text', () => {
    let x = 12345;  // mulberry32
    const rnd = (n: number) => {
      x = (x + 0x6d2b79f5) | 0;
      let r = Math.imul(x ^ (x >>> 15), 1 | x);
      r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
      return ((r ^ (r >>> 14)) >>> 0) % n;
    };
    for (let t = 0; t < 60; t++) {
      // byte tokens (ASCII, continuation and lead bytes: partial and invalid UTF-8) and merged BPE tokens
      const ids = Array.from({ length: 6 + rnd(14) }, () => {
        const c = rnd(4);
        return c === 0 ? 2 + 0x80 + rnd(0x80) : c === 1 ? 2 + 0x61 + rnd(4) : 2 + rnd(tok.vocabSize - 2);
      });
      // a stop string from the text itself (often matching), sometimes spanning tokens
      const parts = tok.decode(ids).split('\uFFFD').filter((p) => p.length > 0);
      const part = parts.length > 0 ? parts[rnd(parts.length)] : '';
      const stops = part.length > 0 && t % 4 !== 0 ? [part.slice(rnd(part.length)).slice(0, 1 + rnd(4))] : [];
      if (t % 3 === 0) stops.push('aab');
      expectResumeIdentical(ids, stops);
    }
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

  it('a stream moved after any token gives the client the uninterrupted text: stop spanning the cut, held bytes', async () => {
    const prompt = 'hello world, this is a test';
    const base = await generate(t.gen, { text: prompt, sampling: greedy(40) });
    // a stop string across a token boundary: the end of one chunk and the start of the next
    const i = base.chunks.findIndex((c, j) => j >= 5 && c.length >= 2 && (base.chunks[j + 1] ?? '').length >= 2);
    expect(i).toBeGreaterThan(0);
    const stop = base.chunks[i].slice(-2) + base.chunks[i + 1].slice(0, 2);
    const sampling = greedy(40, { stop: [stop] });
    const a = await generate(t.gen, { text: prompt, sampling });
    expect(a.last?.finish_reason).toBe('STOP');
    // every cut, up to the stopping token itself delivered (the first worker died before its final message)
    for (let k = 1; k <= a.tokens.length; k++) {
      const b = await generate(t.gen, { text: prompt, sampling, resume_token_ids: a.tokens.slice(0, k) });
      expect(b.error).toBeUndefined();
      expect(a.chunks.slice(0, k).join('') + b.text, `cut ${k}`).toBe(a.text);
      expect(b.tokens).toEqual(a.tokens.slice(k));
      expect(b.last?.finish_reason).toBe('STOP');
      expect(b.last?.usage).toEqual(a.last?.usage);
      expect(b.last?.kv_stats).toEqual(a.last?.kv_stats);
    }
    // sampled over a byte-level vocabulary: partial UTF-8 held back at some cuts
    const s2 = { max_new_tokens: 32, temperature: 1.5, seed: '7', ignore_eos: true };
    const c = await generate(t.gen, { text: 'utf8 resume', sampling: s2 });
    let held = 0;
    for (let k = 1; k < c.tokens.length; k++) {
      const client = c.chunks.slice(0, k).join('');
      if (client !== tok.decode(c.tokens.slice(0, k))) held++;
      const d = await generate(t.gen, { text: 'utf8 resume', sampling: s2, resume_token_ids: c.tokens.slice(0, k) });
      expect(client + d.text, `cut ${k}`).toBe(c.text);
    }
    expect(held).toBeGreaterThan(0);
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
