// Safetensors dtypes the synthetic writer produces, and conversion of float values into their on-disk bytes.
// Conversions round to nearest, ties to even:
//   F16:  straight from the float64 value (Float16Array stores with IEEE roundTiesToEven from a double).
//   BF16: float64 -> float32 (RNE) -> bfloat16 (RNE on the upper 16 bits), which is what torch produces for
//         `t.float().to(torch.bfloat16)`. The double rounding is intended: the model is defined by the file.
// All multi-byte values are little-endian (safetensors requires it); every supported Node platform is LE, checked
// once below so a big-endian host fails loudly instead of writing wrong files.

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16';
export type DtypeName = 'f32' | 'f16' | 'bf16';

export const DTYPE_NAMES: readonly DtypeName[] = ['f32', 'f16', 'bf16'];

export const DTYPES: Record<DtypeName, { st: SafetensorsDtype; torch: string; bytes: number }> = {
  f32: { st: 'F32', torch: 'float32', bytes: 4 },
  f16: { st: 'F16', torch: 'float16', bytes: 2 },
  bf16: { st: 'BF16', torch: 'bfloat16', bytes: 2 },
};

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function assertLittleEndian(): void {
  if (!LITTLE_ENDIAN) throw new Error('safetensors writer: this host is big-endian; typed-array bytes would be wrong');
}

/** float32 bit pattern -> bfloat16 bit pattern, round to nearest even; NaN stays a (quiet) NaN. */
export function f32BitsToBf16Bits(bits: number): number {
  bits >>>= 0;
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x007fffff) !== 0) return ((bits >>> 16) | 0x0040) & 0xffff;
  const lsb = (bits >>> 16) & 1;
  return ((bits + 0x7fff + lsb) >>> 16) & 0xffff;
}

/**
 * Bytes of `values` stored as `dtype`, little-endian. The returned Buffer shares memory with a fresh typed array,
 * never with `values`.
 */
export function encodeValues(values: Float64Array | Float32Array | readonly number[], dtype: DtypeName): Buffer {
  assertLittleEndian();
  const n = values.length;
  switch (dtype) {
    case 'f32': {
      const a = Float32Array.from(values);
      return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    }
    case 'f16': {
      const a = new Float16Array(n);
      for (let i = 0; i < n; i++) a[i] = values[i];
      return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    }
    case 'bf16': {
      const f = Float32Array.from(values);
      const u = new Uint32Array(f.buffer, f.byteOffset, n);
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = f32BitsToBf16Bits(u[i]);
      return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
    }
  }
}

/** Storage to fill for a tensor of `n` values in `dtype` (BF16 is filled as float32 and narrowed by `storageBytes`). */
export function allocStorage(n: number, dtype: DtypeName): Float32Array | Float16Array {
  return dtype === 'f16' ? new Float16Array(n) : new Float32Array(n);
}

/** Little-endian bytes of storage made by `allocStorage(n, dtype)`. */
export function storageBytes(a: Float32Array | Float16Array, dtype: DtypeName): Buffer {
  assertLittleEndian();
  if (dtype === 'bf16') {
    if (!(a instanceof Float32Array)) throw new Error('bf16 storage must be a Float32Array (a bug in the caller)');
    const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
    const out = new Uint16Array(a.length);
    for (let i = 0; i < a.length; i++) out[i] = f32BitsToBf16Bits(u[i]);
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}
