// TextStream decodes incrementally (a few tokens of context plus the new ones) and searches stop strings only in
// new text plus (longest stop − 1) characters; its output must be exactly what decoding every id on every push
// gives (the reference below, the previous implementation), chunk by chunk, for random byte-level token streams
// with partial and invalid UTF-8, with and without stop strings, resumed or not, and for a tokenizer whose decode
// rewrites earlier text (clean_up_tokenization_spaces), which falls back to the full decode.
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TextStream } from '../../worker/detok.ts';
import { Tokenizer } from '../../worker/tokenizer.ts';
import { tinyModel } from './helpers.ts';

/** The full-decode reference: every push decodes all ids and searches all text. */
class ReferenceTextStream {
  private readonly stops: string[];
  private readonly maxStop: number;
  private readonly ids: number[] = [];
  private emitted = '';
  private stoppedAt = -1;
  private readonly primedLength: number;
  private readonly tok: Tokenizer;
  constructor(tok: Tokenizer, stops: string[], prime: number[] = []) {
    this.tok = tok;
    this.stops = stops.filter((s) => s.length > 0);
    this.maxStop = Math.max(0, ...this.stops.map((s) => s.length));
    for (const id of prime) if (this.push(id).stopped) break;
    this.primedLength = this.emitted.length;
  }
  get stopped(): boolean { return this.stoppedAt >= 0; }
  get text(): string { return this.emitted.slice(this.primedLength); }
  push(id: number): { text: string; stopped: boolean } {
    if (this.stopped) return { text: '', stopped: true };
    this.ids.push(id);
    const full = this.decode();
    if (!full.startsWith(this.emitted)) return { text: '', stopped: false };
    const stable = full.replace(/\uFFFD+$/, '');
    let cut = -1;
    for (const s of this.stops) {
      const i = stable.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      const out = cut > this.emitted.length ? stable.slice(this.emitted.length, cut) : '';
      this.emitted += out;
      this.stoppedAt = cut;
      return { text: out, stopped: true };
    }
    let hold = 0;
    for (let k = Math.min(this.maxStop - 1, stable.length - this.emitted.length); k > 0; k--) {
      const tail = stable.slice(stable.length - k);
      if (this.stops.some((s) => s.startsWith(tail))) { hold = k; break; }
    }
    const out = stable.slice(this.emitted.length, stable.length - hold);
    this.emitted += out;
    return { text: out, stopped: false };
  }
  flush(): string {
    if (this.stopped) return '';
    const full = this.decode();
    if (!full.startsWith(this.emitted)) return '';
    const out = full.slice(this.emitted.length);
    this.emitted = full;
    return out;
  }
  private decode(): string { return this.ids.length === 0 ? '' : this.tok.decode(this.ids, true, false); }
}

let model: ReturnType<typeof tinyModel>;
let tok: Tokenizer;
let cleanupDir: string;
let cleanupTok: Tokenizer;
beforeAll(() => {
  model = tinyModel();
  tok = Tokenizer.load(model.dir);
  // the same tokenizer with clean_up_tokenization_spaces on (the library's default): " ." becomes "." etc.
  cleanupDir = mkdtempSync(path.join(os.tmpdir(), 'kvf-detok-'));
  copyFileSync(path.join(model.dir, 'tokenizer.json'), path.join(cleanupDir, 'tokenizer.json'));
  const cfg = JSON.parse(readFileSync(path.join(model.dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(path.join(cleanupDir, 'tokenizer_config.json'), JSON.stringify({ ...cfg, clean_up_tokenization_spaces: true }));
  cleanupTok = Tokenizer.load(cleanupDir);
});
afterAll(() => { model?.cleanup(); if (cleanupDir) rmSync(cleanupDir, { recursive: true, force: true }); });

function prng(seed: number) {
  let x = seed;  // mulberry32
  return (n: number) => {
    x = (x + 0x6d2b79f5) | 0;
    let r = Math.imul(x ^ (x >>> 15), 1 | x);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return ((r ^ (r >>> 14)) >>> 0) % n;
  };
}

/** Random ids of the synthetic vocabulary (2 + byte for single bytes, merges above 257, specials 0 and 1). */
function randomIds(rnd: (n: number) => number, t: Tokenizer, n: number): number[] {
  const utf8 = [...Buffer.from('é€🙂 .,', 'utf8')];
  return Array.from({ length: n }, () => {
    const c = rnd(10);
    if (c < 2) return 2 + 0x80 + rnd(0x80);              // continuation / lead bytes: partial and invalid UTF-8
    if (c < 4) return 2 + utf8[rnd(utf8.length)];         // bytes of real multi-byte characters, space, punctuation
    if (c < 5) return 2 + 0x61 + rnd(3);                  // 'a'..'c': stop-string material
    if (c < 6 && rnd(4) === 0) return rnd(2);              // <s>, </s> (skipped in the decode)
    return 2 + rnd(t.vocabSize - 2);
  });
}

function randomStops(rnd: (n: number) => number, t: Tokenizer, ids: number[]): string[] {
  const stops: string[] = [];
  const text = t.decode(ids);
  for (let i = rnd(4); i > 0; i--) {
    const kind = rnd(3);
    if (kind === 0 && text.length > 2) {
      const at = rnd(text.length - 1);
      stops.push(text.slice(at, at + 1 + rnd(6)));        // from the text: it matches (at a random depth)
    } else if (kind === 1) {
      stops.push(['ab', 'abc', 'cab', 'é€', '🙂 ', ' .', 'aaaa'][rnd(7)]);
    } else {
      stops.push('never-there');
    }
  }
  return stops;
}

function compare(t: Tokenizer, ids: number[], stops: string[], prime: number[] = []): void {
  const a = new TextStream(t, stops, prime), b = new ReferenceTextStream(t, stops, prime);
  const where = `ids ${JSON.stringify(ids)} stops ${JSON.stringify(stops)} prime ${prime.length}`;
  expect(a.stoppedInPrime, where).toBe(b.stopped);
  for (let i = prime.length; i < ids.length; i++) {
    expect(a.push(ids[i]), `${where} push ${i}`).toEqual(b.push(ids[i]));
  }
  expect(a.flush(), where).toBe(b.flush());
  expect(a.text, where).toBe(b.text);
}

describe('TextStream: incremental decode = full decode', () => {
  it('random streams with partial UTF-8, specials and stop strings, chunk by chunk', () => {
    const rnd = prng(7);
    let stopped = 0;
    for (let t = 0; t < 300; t++) {
      const ids = randomIds(rnd, tok, 1 + rnd(t < 280 ? 80 : 1500));
      const stops = randomStops(rnd, tok, ids);
      compare(tok, ids, stops);
      const ref = new ReferenceTextStream(tok, stops);
      if (ids.some((id) => ref.push(id).stopped)) stopped++;
    }
    expect(stopped).toBeGreaterThan(50);  // plenty of streams really stop, at every depth
  });

  it('the work per token does not grow with the stream: each push decodes a bounded number of ids', () => {
    let decoded = 0;
    const counting = { decode: (ids: number[], skip?: boolean) => { decoded += ids.length; return tok.decode(ids, skip); } };
    const s = new TextStream(counting as unknown as Tokenizer, ['never-there']);
    let most = 0;
    for (let i = 0; i < 4000; i++) {
      const before = decoded;
      s.push(5 + ((i * 7919) % 400));  // merges and single bytes, 0x80-0xff included (partial and invalid UTF-8)
      most = Math.max(most, decoded - before);
    }
    expect(most).toBeLessThanOrEqual(16);  // the full decode took i ids at token i
  });

  it('resumed streams (a prime replayed first) match too', () => {
    const rnd = prng(11);
    for (let t = 0; t < 100; t++) {
      const ids = randomIds(rnd, tok, 2 + rnd(60));
      compare(tok, ids, randomStops(rnd, tok, ids), ids.slice(0, rnd(ids.length)));
    }
  });

  it('with clean_up_tokenization_spaces on, a stream still gives every character: it decodes without the cleanup', () => {
    const rnd = prng(13);
    // ' ', '.', 'n', "'", 't', 's': the cleanup patterns (" .", " n't", " 's" ...) across token boundaries
    const pieces = [...' .nts\''].map((c) => 2 + c.charCodeAt(0));
    let rewrites = 0;
    for (let t = 0; t < 200; t++) {
      const ids = Array.from({ length: 1 + rnd(60) }, () => (rnd(2) === 0 ? pieces[rnd(pieces.length)] : randomIds(rnd, cleanupTok, 1)[0]));
      // the cleanup would rewrite text already streamed (" ." -> "."): the stream is the decode without it, all of it
      if (cleanupTok.decode(ids) !== cleanupTok.decode(ids, true, false)) rewrites++;
      expect(cleanupTok.decode(ids, true, false)).toBe(tok.decode(ids));
      compare(cleanupTok, ids, randomStops(rnd, tok, ids));
      const a = new TextStream(cleanupTok, []);
      const chunks = ids.map((id) => a.push(id).text).join('') + a.flush();
      expect(chunks, `ids ${JSON.stringify(ids)}`).toBe(tok.decode(ids));
    }
    expect(rewrites).toBeGreaterThan(20);
  });
});
