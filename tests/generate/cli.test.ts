// `kvfleet generate` as a user runs it: a child process on a real tiny model in Hugging Face files. Bad model
// directories and bad flags end with a clear error naming the file or flag and a non-zero exit (never a crash or a
// hang); good runs print the JSON document of CONTRACTS.md or stream the text.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnKvfleet } from '../harness/proc.ts';
import { writeSynthModel } from '../../worker/model/synth.ts';
import { MUTATIONS } from './mutate.ts';

interface Run { code: number | string; stdout: string; stderr: string }

/** Runs `kvfleet generate ARGS` to its end; a process still running after timeoutMs is killed and fails the test. */
async function generate(args: string[], timeoutMs = 30_000): Promise<Run> {
  const p = spawnKvfleet(['generate', ...args]);
  let stdout = '', stderr = '';
  p.child.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
  p.child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<'hung'>((r) => { timer = setTimeout(() => r('hung'), timeoutMs); });
  const code = await Promise.race([p.exited(), hung]);
  clearTimeout(timer);
  if (code === 'hung') {
    await p.stop(1000);
    throw new Error(`kvfleet generate ${args.join(' ')} did not exit within ${timeoutMs} ms: ${p.output()}`);
  }
  return { code, stdout, stderr };
}

interface GenJson {
  prompt_token_ids: number[]; token_ids: number[]; text: string; seed: string; finish_reason: string;
  kv: { kept_tokens: number; full_tokens: number; min_head_tokens: number; max_head_tokens: number; pages: number;
    peak_pages: number; pool_pages: number };
}

async function generateJson(args: string[]): Promise<GenJson> {
  const r = await generate([...args, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as GenJson;
}

const tmp: string[] = [];
let model: string;
const L = 2, Hk = 2;  // the tiny preset
// about 1250 tokens with the tiny byte-level BPE: more than the default budget of 1024 tokens per head
const LONG_PROMPT = Array.from({ length: 40 }, (_, i) => `line ${i}: the quick brown fox ${i * 7} jumps`).join('\n');

beforeAll(() => {
  model = mkdtempSync(path.join(os.tmpdir(), 'kvf-gen-'));
  tmp.push(model);
  writeSynthModel({ out: model, preset: 'tiny', seed: 21, dtype: 'f32' });
});
afterAll(() => { for (const d of tmp) rmSync(d, { recursive: true, force: true }); });

function noCrash(r: Run): void {
  expect(typeof r.code, `exited with a signal: ${r.stderr}`).toBe('number');
  expect(r.code).not.toBe(0);
  expect(r.stderr).toMatch(/^kvfleet: |error: /m);
  expect(r.stderr).not.toMatch(/\n\s+at |Segmentation|Aborted|core dumped|terminate called/);
}

describe('kvfleet generate: bad model directories', () => {
  for (const [name, m] of Object.entries(MUTATIONS)) {
    it(`${name}: a clear error naming ${m.file}, non-zero exit`, async () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-bad-'));
      tmp.push(dir);
      cpSync(model, dir, { recursive: true });
      m.apply(dir);
      const r = await generate(['--model', dir, '--prompt', 'hello', '--max-new-tokens', '4']);
      noCrash(r);
      expect(r.stderr).toContain(path.join(dir, m.file));
      expect(r.stderr).toMatch(m.problem);
      expect(r.stdout).toBe('');
    });
  }

  it('a model directory that does not exist', async () => {
    const dir = path.join(os.tmpdir(), 'kvf-no-such-model-dir');
    const r = await generate(['--model', dir, '--prompt', 'hello']);
    noCrash(r);
    expect(r.stderr).toContain(`--model ${dir}: no such folder`);   // not "tokenizer.json: cannot read"
  });

  it('a file given as the model directory', async () => {
    const file = path.join(os.tmpdir(), `kvf-model-file-${process.pid}.json`);
    writeFileSync(file, '{}');
    try {
      const r = await generate(['--model', file, '--prompt', 'hello']);
      noCrash(r);
      expect(r.stderr).toContain(`--model ${file}: is a file; give the model folder`);
    } finally { rmSync(file, { force: true }); }
  });
});

describe('kvfleet generate: bad flags', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['--keep-ratio above 1', ['--keep-ratio', '2'], /--keep-ratio.*\(0, 1\]/],
    ['--keep-ratio 0', ['--keep-ratio', '0'], /--keep-ratio/],
    ['--tokens-per-head below window + 1', ['--tokens-per-head', '10', '--window', '32'], /--tokens-per-head 10.*--window \+ 1 \(33\)/],
    ['--tokens-per-head below the default window + 1', ['--tokens-per-head', '32'], /--tokens-per-head 32.*--window \+ 1 \(33\)/],
    ['both --tokens-per-head and --keep-ratio', ['--tokens-per-head', '100', '--keep-ratio', '0.5'], /--tokens-per-head and --keep-ratio/],
    ['an unknown --method', ['--method', 'bogus'], /--method.*bogus.*unknown method/],
    ['an even --pool-kernel', ['--pool-kernel', '4'], /--pool-kernel.*odd/],
    ['--floor-alpha above 1', ['--floor-alpha', '1.5'], /--floor-alpha.*\[0, 1\]/],
    ['--pyramid-beta 1', ['--pyramid-beta', '1'], /--pyramid-beta/],
    ['a negative --temperature', ['--temperature', '-1'], /--temperature/],
    ['--top-p 0', ['--top-p', '0'], /--top-p/],
    ['--max-new-tokens 0', ['--max-new-tokens', '0'], /--max-new-tokens/],
    ['--max-new-tokens beyond the model context', ['--max-new-tokens', '9000'], /--max-new-tokens 9000.*context of 8192/],
    ['a --seed that is not an integer', ['--seed', '1.5'], /--seed/],
    ['a --seed of 2^64', ['--seed', '18446744073709551616'], /--seed.*2\^64/],
    ['an unknown --kv-dtype', ['--kv-dtype', 'bf16'], /--kv-dtype.*bf16/],
    ['both --kv-memory and --num-pages', ['--kv-memory', '1Mi', '--num-pages', '100'], /--kv-memory and --num-pages/],
    ['a --kv-memory that is not a size', ['--kv-memory', 'lots'], /--kv-memory/],
    ['a pool too small for the request', ['--num-pages', '2'], /too small.*--num-pages/],
    ['a --stop-id outside the vocabulary', ['--stop-id', '600'], /--stop-id 600.*vocabulary/],
  ];
  for (const [name, flags, want] of cases) {
    it(`${name}: non-zero exit naming the problem`, async () => {
      const r = await generate(['--model', model, '--prompt', 'hello there', ...flags]);
      noCrash(r);
      expect(r.stderr).toMatch(want);
    });
  }
});

describe('kvfleet generate: output', () => {
  it('--json prints the contract document; the same --seed gives the same tokens, temperature > 0', async () => {
    const args = ['--model', model, '--prompt', 'Once upon a time', '--temperature', '0.9', '--top-p', '0.95', '--top-k', '100',
      '--max-new-tokens', '24', '--ignore-eos', '--seed', '18446744073709551615'];
    const a = await generateJson(args);
    const b = await generateJson(args);
    expect(Object.keys(a)).toEqual(expect.arrayContaining(['prompt_token_ids', 'token_ids', 'text', 'seed', 'finish_reason', 'kv']));
    expect(Object.keys(a.kv)).toEqual(expect.arrayContaining(['kept_tokens', 'full_tokens', 'min_head_tokens', 'max_head_tokens',
      'pages', 'peak_pages']));
    expect(a.seed).toBe('18446744073709551615');
    expect(a.token_ids).toHaveLength(24);
    expect(a.finish_reason).toBe('LENGTH');
    expect(b.token_ids).toEqual(a.token_ids);
    expect(b.text).toBe(a.text);
    const c = await generateJson([...args.slice(0, -1), '1']);
    expect(c.token_ids).not.toEqual(a.token_ids);  // 24 draws over 512 tokens: a different seed differs
  });

  it('without --seed picks a random seed, reports it, and that seed reproduces the run', async () => {
    const args = ['--model', model, '--prompt', 'seeded', '--max-new-tokens', '16', '--ignore-eos'];
    const a = await generateJson(args);
    expect(a.seed).toMatch(/^\d+$/);
    const b = await generateJson([...args, '--seed', a.seed]);
    expect(b.token_ids).toEqual(a.token_ids);
  });

  it('streams the same text to stdout without --json, and a summary line to stderr', async () => {
    const args = ['--model', model, '--prompt', 'stream me', '--max-new-tokens', '20', '--ignore-eos', '--seed', '7'];
    const j = await generateJson(args);
    const r = await generate(args);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(j.text + '\n');
    expect(r.stderr).toMatch(/20 generated tokens, finish LENGTH, seed 7; prefill [\d.]+ tok\/s, decode [\d.]+ tok\/s; kv kept \d+\/\d+ tokens .*pages \d+ \(peak \d+\)/);
  });

  it('--method takes ADA_SNAPKV, AdaSnapKV, ada_snapkv, adasnapkv alike and compresses to L*Hk*B', async () => {
    const base = ['--model', model, '--prompt', LONG_PROMPT, '--max-new-tokens', '6', '--ignore-eos', '--seed', '3',
      '--tokens-per-head', '40', '--window', '8'];
    const runs = await Promise.all(['ADA_SNAPKV', 'AdaSnapKV', 'ada_snapkv', 'adasnapkv'].map((m) => generateJson([...base, '--method', m])));
    const n = runs[0].prompt_token_ids.length;
    expect(n).toBeGreaterThan(100);
    for (const r of runs) {
      expect(r.token_ids).toEqual(runs[0].token_ids);
      // 40 kept per head after prefill, then one appended per decode step (the last token is not cached yet)
      expect(r.kv.kept_tokens).toBe(L * Hk * (40 + 5));
      expect(r.kv.full_tokens).toBe(L * Hk * (n + 5));
      expect(r.kv.pages).toBeLessThanOrEqual(r.kv.peak_pages);
    }
    const uniform = await generateJson([...base, '--method', 'SnapKV']);
    expect(uniform.kv.min_head_tokens).toBe(45);
    expect(uniform.kv.max_head_tokens).toBe(45);
  });

  it('the default budget (no --method) is ADA_SNAPKV at 1024 tokens per head: shorter prompts stay whole', async () => {
    const args = ['--model', model, '--max-new-tokens', '3', '--ignore-eos'];
    const long = await generateJson([...args, '--prompt', LONG_PROMPT]);
    const n = long.prompt_token_ids.length;
    expect(n).toBeGreaterThan(1024);
    expect(long.kv.kept_tokens).toBe(L * Hk * (1024 + 2));
    expect(long.kv.full_tokens).toBe(L * Hk * (n + 2));
    const short = await generateJson([...args, '--prompt', LONG_PROMPT.slice(0, 1000)]);
    expect(short.prompt_token_ids.length).toBeLessThanOrEqual(1024);
    expect(short.kv.kept_tokens).toBe(short.kv.full_tokens);
    const full = await generateJson([...args, '--prompt', LONG_PROMPT, '--method', 'full']);
    expect(full.kv.kept_tokens).toBe(full.kv.full_tokens);
    expect(full.kv.min_head_tokens).toBe(n + 2);
  });

  it('--keep-ratio keeps B = min(n, max(w + 1, ceil(r n))) per head', async () => {
    const r = await generateJson(['--model', model, '--prompt', LONG_PROMPT, '--max-new-tokens', '1', '--method', 'PyramidKV',
      '--keep-ratio', '0.25', '--window', '16', '--floor-alpha', '0', '--pool-kernel', '3', '--pooling', 'avg']);
    const n = r.prompt_token_ids.length;
    const B = Math.min(n, Math.max(17, Math.ceil(0.25 * n - 1e-9)));
    expect(r.kv.kept_tokens).toBe(L * Hk * B);
    expect(r.kv.min_head_tokens).toBeLessThan(r.kv.max_head_tokens);  // the pyramid gives layers different budgets
  });

  it('--decode-max-tokens-per-head bounds the mean per-head length while decoding', async () => {
    const D = 48, Pg = 16;
    const r = await generateJson(['--model', model, '--prompt', LONG_PROMPT, '--max-new-tokens', '60', '--ignore-eos',
      '--method', 'AdaSnapKV', '--tokens-per-head', '40', '--window', '8', '--decode-max-tokens-per-head', String(D)]);
    const kv = r.kv as GenJson['kv'] & { recompressions: number };
    expect(kv.recompressions).toBeGreaterThan(0);
    expect(kv.kept_tokens / (L * Hk)).toBeLessThanOrEqual(D + Pg);
    expect(kv.full_tokens).toBe(L * Hk * (r.prompt_token_ids.length + 59));
  });

  it('--stop-id ends generation with finish reason STOP at that token', async () => {
    const args = ['--model', model, '--prompt', 'stop here', '--max-new-tokens', '12', '--temperature', '0', '--ignore-eos'];
    const free = await generateJson(args);
    const stop = free.token_ids[4];
    const at = free.token_ids.indexOf(stop);
    const r = await generateJson([...args, '--stop-id', String(stop)]);
    expect(r.finish_reason).toBe('STOP');
    expect(r.token_ids).toEqual(free.token_ids.slice(0, at + 1));
  });

  it('--num-pages and --kv-memory size the pool exactly', async () => {
    const args = ['--model', model, '--prompt', 'pool', '--max-new-tokens', '4', '--kv-dtype', 'f32'];
    expect((await generateJson([...args, '--num-pages', '37'])).kv.pool_pages).toBe(37);
    // f32 page: P * d * 2 (K and V) * 4 bytes = 16 * 16 * 2 * 4 = 2 KiB
    expect((await generateJson([...args, '--kv-memory', '100Ki'])).kv.pool_pages).toBe(50);
  });
});
