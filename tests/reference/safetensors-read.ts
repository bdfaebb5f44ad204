// An independent safetensors reader for the float64 reference: imports nothing from csrc/ or worker/, and decodes
// F16/BF16 from their bit patterns by hand (the writer uses Float16Array), so writer and reader cannot share a bug.
// Values are returned as Float32Array: every F32, F16 and BF16 value is exactly representable in float32, so
// nothing is rounded; the reference widens them to float64 when it computes.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

export interface RefTensor {
  dtype: 'F32' | 'F16' | 'BF16';
  shape: number[];
  data: Float32Array;
}

const DTYPE_SIZE = { F32: 4, F16: 2, BF16: 2 } as const;

/** IEEE 754 binary16 bits -> number. */
export function f16BitsToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;                // zero and subnormals
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** bfloat16 bits -> number: the upper half of a float32. */
export function bf16BitsToNumber(b: number): number {
  const dv = new DataView(new ArrayBuffer(4));
  dv.setUint32(0, (b & 0xffff) << 16, true);
  return dv.getFloat32(0, true);
}

/** Reads every tensor of one .safetensors file; any malformation is an Error naming the file and the problem. */
export function readSafetensors(file: string): Map<string, RefTensor> {
  const buf = readFileSync(file);
  const fail = (msg: string): never => { throw new Error(`${file}: ${msg}`); };
  if (buf.length < 8) fail(`truncated: ${buf.length} bytes, no header length`);
  const n = Number(buf.readBigUInt64LE(0));
  if (8 + n > buf.length) fail(`header length ${n} exceeds the file (${buf.length} bytes)`);
  let header: Record<string, unknown> = {};
  try {
    header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  } catch (e) {
    fail(`header is not valid JSON (${(e as Error).message})`);
  }
  const dataStart = 8 + n;
  const out = new Map<string, RefTensor>();
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const t = raw as { dtype?: string; shape?: number[]; data_offsets?: number[] };
    if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16') fail(`tensor '${name}' has unsupported dtype ${JSON.stringify(t.dtype)}`);
    const dtype = t.dtype as RefTensor['dtype'];
    if (!Array.isArray(t.shape) || !Array.isArray(t.data_offsets) || t.data_offsets.length !== 2) fail(`tensor '${name}' lacks shape or data_offsets`);
    const count = t.shape!.reduce((a, b) => a * b, 1);
    const [begin, end] = t.data_offsets!;
    if (end - begin !== count * DTYPE_SIZE[dtype]) fail(`tensor '${name}' has ${end - begin} bytes, shape [${t.shape!.join(', ')}] ${dtype} needs ${count * DTYPE_SIZE[dtype]}`);
    if (dataStart + end > buf.length) fail(`truncated: tensor '${name}' ends at byte ${dataStart + end}, the file has ${buf.length}`);
    const data = new Float32Array(count);
    const base = dataStart + begin;
    for (let i = 0; i < count; i++) {
      if (dtype === 'F32') data[i] = buf.readFloatLE(base + 4 * i);
      else if (dtype === 'F16') data[i] = f16BitsToNumber(buf.readUInt16LE(base + 2 * i));
      else data[i] = bf16BitsToNumber(buf.readUInt16LE(base + 2 * i));
    }
    out.set(name, { dtype, shape: t.shape!, data });
  }
  return out;
}

/** All tensors of a model directory: model.safetensors, or the shards named by model.safetensors.index.json. */
export function readModelTensors(dir: string): Map<string, RefTensor> {
  const single = path.join(dir, 'model.safetensors');
  if (existsSync(single)) return readSafetensors(single);
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  if (!existsSync(indexFile)) throw new Error(`${dir}: neither model.safetensors nor model.safetensors.index.json exists`);
  const index = JSON.parse(readFileSync(indexFile, 'utf8')) as { weight_map?: Record<string, string> };
  if (!index.weight_map) throw new Error(`${indexFile}: no weight_map`);
  const out = new Map<string, RefTensor>();
  for (const file of new Set(Object.values(index.weight_map))) {
    for (const [name, t] of readSafetensors(path.join(dir, file))) {
      if (index.weight_map[name] !== file) throw new Error(`${indexFile}: tensor '${name}' is in ${file} but the weight_map says ${index.weight_map[name]}`);
      out.set(name, t);
    }
  }
  for (const name of Object.keys(index.weight_map)) {
    if (!out.has(name)) throw new Error(`${indexFile}: tensor '${name}' is not in ${index.weight_map[name]}`);
  }
  return out;
}
