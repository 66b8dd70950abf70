import type { FloatDType } from '../convert.js';
import type { AnyTypedArray, TypedArrayOf } from '../dtype.js';
import { bf16ToF32Array, f16ToF32Array } from '../float16.js';
import { roundF64Into } from './round-once.js';

/**
 * Row access for the merge engine (internal to core): row access to float tensors of any storage dtype (f64, f32, f16, bf16): decode a row to
 * float64 values, and encode float64 values to the storage dtype with ONE rounding to nearest
 * even (core's `roundF64Into`). No allocation per row.
 */
export class FloatRows {
  constructor(readonly cols: number) {}

  /**
   * Row `i` of `data` (a `dtype` tensor with `cols` columns) as float64 values into `out`; with
   * `offset` and `n`, only columns [offset, offset + n) (into out[0..n)).
   */
  read(
    data: AnyTypedArray,
    dtype: FloatDType,
    i: number,
    out: Float64Array,
    offset = 0,
    n = this.cols,
  ): void {
    const start = i * this.cols + offset;
    const end = start + n;
    switch (dtype) {
      case 'f64':
        out.set((data as Float64Array).subarray(start, end));
        return;
      case 'f32':
        out.set((data as Float32Array).subarray(start, end));
        return;
      case 'f16': {
        const src = data as Uint16Array;
        const table = F16_VALUES();
        for (let j = 0; j < n; j++) out[j] = table[src[start + j]];
        return;
      }
      case 'bf16': {
        const src = data as Uint16Array;
        const table = BF16_VALUES();
        for (let j = 0; j < n; j++) out[j] = table[src[start + j]];
        return;
      }
    }
  }

  /**
   * `out = row i of data + add`, decoded to float64 and added in one pass (the merge's inner
   * step); `offset` / `n` select columns as in {@link read}.
   */
  readAdd(
    data: AnyTypedArray,
    dtype: FloatDType,
    i: number,
    add: Float64Array,
    out: Float64Array,
    offset = 0,
    n = this.cols,
  ): void {
    const start = i * this.cols + offset;
    switch (dtype) {
      case 'f64': {
        const src = data as Float64Array;
        for (let j = 0; j < n; j++) out[j] = src[start + j] + add[j];
        return;
      }
      case 'f32': {
        const src = data as Float32Array;
        for (let j = 0; j < n; j++) out[j] = src[start + j] + add[j];
        return;
      }
      case 'f16':
      case 'bf16': {
        const src = data as Uint16Array;
        const table = dtype === 'f16' ? F16_VALUES() : BF16_VALUES();
        for (let j = 0; j < n; j++) out[j] = table[src[start + j]] + add[j];
        return;
      }
    }
  }

  /**
   * Rounds float64 `values` to `dtype` once (core's `roundF64Into`) and stores them as row `i`
   * of `data`. Returns false when a stored value is NaN or infinite (also when rounding
   * overflowed, e.g. 70000 in f16). `offset` / `n` select columns as in {@link read}.
   */
  write(
    values: Float64Array,
    data: AnyTypedArray,
    dtype: FloatDType,
    i: number,
    offset = 0,
    n = this.cols,
  ): boolean {
    const src = n === values.length ? values : values.subarray(0, n);
    return roundF64Into(src, dtype, data as TypedArrayOf[FloatDType], i * this.cols + offset);
  }
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

let f16Values: Float32Array | undefined;
let bf16Values: Float32Array | undefined;

/** The value of every f16 bit pattern (256 KiB, built on first use with core's exact decoder). */
function F16_VALUES(): Float32Array {
  f16Values ??= f16ToF32Array(Uint16Array.from({ length: 65536 }, (_, i) => i));
  return f16Values;
}

/** The value of every bf16 bit pattern. */
function BF16_VALUES(): Float32Array {
  bf16Values ??= bf16ToF32Array(Uint16Array.from({ length: 65536 }, (_, i) => i));
  return bf16Values;
}
