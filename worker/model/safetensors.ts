// Safetensors writer (https://github.com/huggingface/safetensors, format section):
//   [u64 little-endian N][N bytes of JSON header, padded with spaces so 8 + N is a multiple of 8][data]
// The header maps each tensor name to {dtype, shape, data_offsets: [begin, end]} (byte offsets into the data
// section) plus "__metadata__" (string -> string). Invariants kept here: tensors are contiguous in header order,
// with no gaps or overlaps, end - begin = prod(shape) * dtype size, row-major, little-endian.
// Tensor bytes are produced lazily, one tensor at a time, so a 200 MB model never sits in memory twice.
import { closeSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { DTYPES, type DtypeName } from './dtype.ts';

export interface TensorSpec {
  name: string;
  dtype: DtypeName;
  shape: number[];
  /** The tensor's bytes, row-major little-endian; called once, while writing. */
  bytes(): Buffer;
}

export function tensorByteSize(spec: Pick<TensorSpec, 'dtype' | 'shape'>): number {
  return spec.shape.reduce((a, b) => a * b, 1) * DTYPES[spec.dtype].bytes;
}

/** The padded header for `specs` in order, and the size of the data section that must follow it. */
export function buildHeader(specs: readonly TensorSpec[], metadata: Record<string, string> = { format: 'pt' }):
    { header: Buffer; dataBytes: number } {
  const obj: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s.name)) throw new Error(`safetensors: duplicate tensor name '${s.name}'`);
    seen.add(s.name);
    if (s.shape.some((x) => !Number.isSafeInteger(x) || x < 0)) {
      throw new Error(`safetensors: tensor '${s.name}' has an invalid shape [${s.shape.join(', ')}]`);
    }
    const size = tensorByteSize(s);
    obj[s.name] = { dtype: DTYPES[s.dtype].st, shape: s.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = JSON.stringify(obj);
  // 8-byte alignment of the data section: the u64 prefix is 8 bytes, so the header length itself is padded.
  const len = Buffer.byteLength(json, 'utf8');
  json += ' '.repeat((8 - (len % 8)) % 8);
  const body = Buffer.from(json, 'utf8');
  const header = Buffer.alloc(8 + body.length);
  header.writeBigUInt64LE(BigInt(body.length), 0);
  body.copy(header, 8);
  return { header, dataBytes: offset };
}

/**
 * Writes one safetensors file. The file appears complete or not at all: it is written to a temporary name in the
 * same directory and renamed into place. Returns the total file size in bytes.
 */
export function writeSafetensors(file: string, specs: readonly TensorSpec[],
    metadata: Record<string, string> = { format: 'pt' }): number {
  const { header, dataBytes } = buildHeader(specs, metadata);
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = openSync(tmp, 'w');
  try {
    writeAll(fd, header);
    for (const s of specs) {
      const b = s.bytes();
      const want = tensorByteSize(s);
      if (b.length !== want) {
        throw new Error(`safetensors: tensor '${s.name}' produced ${b.length} bytes, its shape needs ${want} (a bug in the generator)`);
      }
      writeAll(fd, b);
    }
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  closeSync(fd);
  renameSync(tmp, file);
  return header.length + dataBytes;
}

function writeAll(fd: number, b: Buffer): void {
  let off = 0;
  while (off < b.length) off += writeSync(fd, b, off, b.length - off);
}

/** `model-00001-of-00003.safetensors`, as transformers names shards (1-based, 5 digits). */
export function shardFileName(i: number, k: number): string {
  return `model-${String(i + 1).padStart(5, '0')}-of-${String(k).padStart(5, '0')}.safetensors`;
}

/**
 * Splits tensors, in order, into `k` non-empty shards of roughly equal byte size. Order is kept so that the
 * concatenation of the shards is the single-file layout.
 */
export function splitShards<T extends TensorSpec>(specs: readonly T[], k: number): T[][] {
  if (!Number.isInteger(k) || k < 1) throw new Error(`shards must be a positive integer, got ${k}`);
  if (k > specs.length) throw new Error(`shards (${k}) exceeds the number of tensors (${specs.length})`);
  const total = specs.reduce((a, s) => a + tensorByteSize(s), 0);
  const groups: T[][] = [[]];
  let acc = 0;
  specs.forEach((s, i) => {
    const cur = groups[groups.length - 1];
    const shardsAfter = k - groups.length;
    const tensorsLeft = specs.length - i;
    if (cur.length > 0 && shardsAfter > 0 && (acc >= (total * groups.length) / k || tensorsLeft === shardsAfter)) {
      groups.push([]);
    }
    groups[groups.length - 1].push(s);
    acc += tensorByteSize(s);
  });
  return groups;
}
