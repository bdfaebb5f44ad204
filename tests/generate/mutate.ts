// Breaks a freshly written model directory in one specific way, for the bad-model tests. Each mutation edits the
// real Hugging Face files (config.json, the safetensors header, tokenizer.json) the way a damaged download or a
// wrong export would, and leaves everything else valid, so the error the CLI reports is about that one problem.
import { readFileSync, rmSync, truncateSync, writeFileSync, statSync } from 'node:fs';
import path from 'node:path';

interface HeaderEntry { dtype: string; shape: number[]; data_offsets: [number, number] }
type Header = Record<string, HeaderEntry | Record<string, string>>;

/** The safetensors file's 8-byte little-endian header length, JSON header, and data. */
export function readSafetensors(file: string): { header: Header; data: Buffer } {
  const buf = readFileSync(file);
  const len = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + len).toString('utf8')) as Header, data: buf.subarray(8 + len) };
}

/** Writes header + data; the header is padded with spaces to a multiple of 8 bytes, as the format allows. */
export function writeSafetensors(file: string, header: Header, data: Buffer): void {
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeFileSync(file, Buffer.concat([len, Buffer.from(json), data]));
}

function editHeader(dir: string, edit: (h: Header) => void): void {
  const file = path.join(dir, 'model.safetensors');
  const { header, data } = readSafetensors(file);
  edit(header);
  writeSafetensors(file, header, data);
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): void {
  const p = path.join(dir, 'config.json');
  const c = JSON.parse(readFileSync(p, 'utf8')) as Record<string, unknown>;
  edit(c);
  writeFileSync(p, JSON.stringify(c, null, 2));
}

function entry(h: Header, name: string): HeaderEntry {
  const e = h[name] as HeaderEntry | undefined;
  if (!e?.shape) throw new Error(`test setup: tensor ${name} is not in the header`);
  return e;
}

export const MUTATED_TENSOR = 'model.layers.1.mlp.gate_proj.weight';

/** name -> what it does to a tiny f32 model directory, and a pattern the CLI's error must match. */
export const MUTATIONS: Record<string, { apply(dir: string): void; file: string; problem: RegExp }> = {
  'missing config.json': {
    apply: (dir) => rmSync(path.join(dir, 'config.json')),
    file: 'config.json', problem: /cannot|missing|no such|not found|open/i,
  },
  'config.json is invalid JSON': {
    apply: (dir) => writeFileSync(path.join(dir, 'config.json'), '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,'),
    file: 'config.json', problem: /json|parse|unexpected|end/i,
  },
  'unsupported architecture': {
    apply: (dir) => editConfig(dir, (c) => { c.architectures = ['GPT2LMHeadModel']; c.model_type = 'gpt2'; }),
    file: 'config.json', problem: /GPT2LMHeadModel/,
  },
  // the weights hold 2 layers; a config.json that says 1 would run half the model without a word
  'config.json names fewer layers than the weights hold': {
    apply: (dir) => editConfig(dir, (c) => { c.num_hidden_layers = 1; }),
    file: 'model.safetensors', problem: /tensor 'model\.layers\.1\..*' belongs to layer 1, but config\.json .* says num_hidden_layers is 1/,
  },
  'eos_token_id outside the vocabulary': {
    apply: (dir) => editConfig(dir, (c) => { c.eos_token_id = 99999; }),
    file: 'config.json', problem: /eos_token_id.*99999 is outside the vocabulary/,
  },
  // renamed, not deleted: the data stay covered by the header, so the one problem is the missing name
  'missing tensor': {
    apply: (dir) => editHeader(dir, (h) => {
      h['model.layers.1.mlp.gate_proj.weight_renamed'] = entry(h, MUTATED_TENSOR);
      delete h[MUTATED_TENSOR];
    }),
    file: 'model.safetensors', problem: /model\.layers\.1\.mlp\.gate_proj\.weight/,
  },
  // the transposed shape has the same byte size, so only the shape is wrong
  'wrong tensor shape': {
    apply: (dir) => editHeader(dir, (h) => { const e = entry(h, MUTATED_TENSOR); e.shape = [...e.shape].reverse(); }),
    file: 'model.safetensors', problem: /gate_proj.*shape|shape.*gate_proj/i,
  },
  'truncated safetensors': {
    apply: (dir) => {
      const p = path.join(dir, 'model.safetensors');
      truncateSync(p, statSync(p).size - 1000);
    },
    file: 'model.safetensors', problem: /truncat|beyond|past|exceed|short|size|end of/i,
  },
  'header length larger than the file': {
    apply: (dir) => {
      const p = path.join(dir, 'model.safetensors');
      const buf = readFileSync(p);
      buf.writeBigUInt64LE(BigInt(buf.length) * 4n, 0);
      writeFileSync(p, buf);
    },
    file: 'model.safetensors', problem: /header/i,
  },
  // I32 has the same element size as F32, so sizes and offsets stay consistent: only the dtype is unsupported
  'unsupported dtype': {
    apply: (dir) => editHeader(dir, (h) => { entry(h, MUTATED_TENSOR).dtype = 'I32'; }),
    file: 'model.safetensors', problem: /I32/,
  },
  'tokenizer.json missing': {
    apply: (dir) => rmSync(path.join(dir, 'tokenizer.json')),
    file: 'tokenizer.json', problem: /cannot read|ENOENT/i,
  },
  'tokenizer.json is invalid JSON': {
    apply: (dir) => writeFileSync(path.join(dir, 'tokenizer.json'), '{"version": "1.0", "model": {'),
    file: 'tokenizer.json', problem: /invalid JSON/i,
  },
  'tokenizer.json is JSON but not a tokenizer': {
    apply: (dir) => writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({ version: '1.0', model: { type: 'Nonsense' } })),
    file: 'tokenizer.json', problem: /not a usable tokenizer/i,
  },
};
