import type { DType, TypedArrayOf } from './dtype.js';
import { CoreError } from './errors.js';
import { bf16ToF32Array, f16ToF32Array, f32ToBf16Array, f32ToF16Array } from './float16.js';
import { type Tensor, tensor } from './tensor.js';

/** Any tensor's values as float32 (integers converted, f16/bf16 decoded exactly, f64 rounded). */
export function toFloat32Array(t: Tensor): Float32Array {
  switch (t.dtype) {
    case 'f32':
      return t.data as Float32Array;
    case 'f16':
      return f16ToF32Array(t.data as Uint16Array);
    case 'bf16':
      return bf16ToF32Array(t.data as Uint16Array);
    case 'i64':
    case 'u64': {
      const src = t.data as BigInt64Array | BigUint64Array;
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = Number(src[i]);
      return out;
    }
    default:
      return Float32Array.from(t.data as ArrayLike<number>);
  }
}

/** Any float tensor's values as float64 (exact for f32/f16/bf16). */
export function toFloat64Array(t: Tensor): Float64Array {
  if (t.dtype === 'f64') return t.data as Float64Array;
  return Float64Array.from(toFloat32Array(t));
}

/** float32 values -> the data of a float dtype (rounding to nearest even where narrower). */
export function fromFloat32Array<D extends 'f32' | 'f16' | 'bf16' | 'f64'>(
  values: Float32Array,
  dtype: D,
): TypedArrayOf[D] {
  switch (dtype) {
    case 'f32':
      return values as TypedArrayOf[D];
    case 'f16':
      return f32ToF16Array(values) as TypedArrayOf[D];
    case 'bf16':
      return f32ToBf16Array(values) as TypedArrayOf[D];
    case 'f64':
      return Float64Array.from(values) as TypedArrayOf[D];
  }
  throw new CoreError('DTYPE_UNSUPPORTED', `Cannot convert to ${dtype}.`);
}

export type FloatDType = 'f64' | 'f32' | 'f16' | 'bf16';

export function isFloatDType(d: DType): d is FloatDType {
  return d === 'f64' || d === 'f32' || d === 'f16' || d === 'bf16';
}

/**
 * Converts a float tensor to another float dtype. f64 -> f16/bf16 goes through float32
 * (double rounding, as PyTorch's `.half()` on a double tensor does not; the difference can
 * only show on values exactly between two f16 numbers after the first rounding).
 */
export function castFloat<D extends FloatDType>(t: Tensor, dtype: D): Tensor<D> {
  if (!isFloatDType(t.dtype)) {
    throw new CoreError('DTYPE_UNSUPPORTED', `castFloat takes a float tensor, got ${t.dtype}.`, {
      dtype: t.dtype,
    });
  }
  if (t.dtype === dtype) return t as Tensor<D>;
  if (dtype === 'f64') return tensor(dtype, t.shape, toFloat64Array(t) as TypedArrayOf[D]);
  const f = t.dtype === 'f64' ? Float32Array.from(t.data as Float64Array) : toFloat32Array(t);
  return tensor(dtype, t.shape, fromFloat32Array(f, dtype));
}
