import {
  type AnyTypedArray,
  bf16ToF32Array,
  f16ToF32Array,
  f32ToBf16Array,
  f32ToF16Array,
  type FloatDType,
} from '@lora/core';

/**
 * Row access to float tensors of any storage dtype (f64, f32, f16, bf16): decode a row to
 * float64 values, and encode float64 values to the storage dtype with ONE rounding to nearest
 * even (as core's `roundF64Into`). Scratch buffers are reused,
 * so a whole tensor is processed with no allocation per row.
 */
export class FloatRows {
  private readonly f32: Float32Array;

  private readonly u32: Uint32Array;

  constructor(readonly cols: number) {
    this.f32 = new Float32Array(cols);
    this.u32 = new Uint32Array(this.f32.buffer);
  }

  /**
   * float64 -> float32 into the scratch row so that the following f32 -> f16/bf16 rounding to
   * nearest even gives the same result as ONE rounding straight from float64 (as core's
   * `roundF64Into`). Rounding twice can only go wrong when the float32 lands exactly on a
   * midpoint of the narrower format (a midpoint strictly between x and its nearest float32 would
   * itself be a closer float32); only then, or for f16 subnormals, is the float32 nudged one
   * step towards x ("round to odd"). The test is on the bits and almost never true, so the loop
   * runs at memory speed instead of paying a mispredicted branch per value.
   */
  private roundForNarrow(values: Float64Array, dtype: 'f16' | 'bf16'): void {
    const f = this.f32;
    const u = this.u32;
    const n = this.cols;
    // f16: 13 bits are dropped, a midpoint ends in 0x1000; below 2^-14 (f16 subnormals) more
    // bits are dropped, so those take the careful path too. bf16: 16 bits dropped.
    const mask = dtype === 'f16' ? 0x1fff : 0xffff;
    const mid = dtype === 'f16' ? 0x1000 : 0x8000;
    const tiny = dtype === 'f16' ? 0x38800000 : 0;
    for (let j = 0; j < n; j++) {
      const x = values[j];
      f[j] = x;
      const b = u[j];
      if ((b & mask) === mid || (b & 0x7fffffff) < tiny) {
        const r = f[j];
        if (r !== x && (b & 1) === 0 && r - r === 0)
          u[j] = Math.abs(x) > Math.abs(r) ? b + 1 : b - 1;
      }
    }
  }

  /** Row `i` of `data` (a `dtype` tensor with `cols` columns) as float64 values into `out`. */
  read(data: AnyTypedArray, dtype: FloatDType, i: number, out: Float64Array): void {
    const start = i * this.cols;
    const end = start + this.cols;
    switch (dtype) {
      case 'f64':
        out.set((data as Float64Array).subarray(start, end));
        return;
      case 'f32':
        out.set((data as Float32Array).subarray(start, end));
        return;
      case 'f16':
        f16ToF32Array((data as Uint16Array).subarray(start, end), this.f32);
        out.set(this.f32);
        return;
      case 'bf16':
        bf16ToF32Array((data as Uint16Array).subarray(start, end), this.f32);
        out.set(this.f32);
        return;
    }
  }

  /**
   * Rounds float64 `values` to `dtype` and stores them as row `i` of `data`. Returns false when
   * a stored value is NaN or infinite (also when rounding overflowed, e.g. 70000 in f16).
   */
  write(values: Float64Array, data: AnyTypedArray, dtype: FloatDType, i: number): boolean {
    const start = i * this.cols;
    const end = start + this.cols;
    switch (dtype) {
      case 'f64': {
        const row = (data as Float64Array).subarray(start, end);
        row.set(values.subarray(0, this.cols));
        return allFinite(row);
      }
      case 'f32': {
        const row = (data as Float32Array).subarray(start, end);
        row.set(values.subarray(0, this.cols));
        return allFinite(row);
      }
      case 'f16': {
        this.roundForNarrow(values, 'f16');
        const row = f32ToF16Array(this.f32, (data as Uint16Array).subarray(start, end));
        return noneWithExponent(row, 0x7c00);
      }
      case 'bf16': {
        this.roundForNarrow(values, 'bf16');
        const row = f32ToBf16Array(this.f32, (data as Uint16Array).subarray(start, end));
        return noneWithExponent(row, 0x7f80);
      }
    }
  }
}

// One add per value is cheaper than a check per value: the sum is finite when every value is
// (a sum of finite f32 values cannot overflow float64; for f64 rows an overflowing sum falls
// back to the per-value check).
function allFinite(row: Float32Array | Float64Array): boolean {
  let sum = 0;
  for (let j = 0; j < row.length; j++) sum += row[j];
  if (Number.isFinite(sum)) return true;
  for (let j = 0; j < row.length; j++) if (!Number.isFinite(row[j])) return false;
  return true;
}

/** True when no 16-bit pattern has all exponent bits set (Inf or NaN). */
function noneWithExponent(row: Uint16Array, exponentMask: number): boolean {
  for (let j = 0; j < row.length; j++) if ((row[j] & exponentMask) === exponentMask) return false;
  return true;
}

/** The integer view of a float array's bits (same length), for bit-exact comparisons. */
export function bitsView(
  data: AnyTypedArray,
  dtype: FloatDType,
): Uint16Array | Uint32Array | BigUint64Array {
  switch (dtype) {
    case 'f64':
      return new BigUint64Array(data.buffer, data.byteOffset, data.length);
    case 'f32':
      return new Uint32Array(data.buffer, data.byteOffset, data.length);
    default:
      return data as Uint16Array;
  }
}
