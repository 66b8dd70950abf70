import type { FloatDType } from '../convert.js';
import type { TypedArrayOf } from '../dtype.js';
import { f32BitsToBf16Bits, f32BitsToF16Bits } from '../float16.js';

/**
 * float64 -> f32 / f16 / bf16 with ONE rounding (to nearest, ties to even).
 *
 * Going f64 -> f32 -> f16 rounds twice, and can be wrong when the first rounding lands exactly
 * on an f16 midpoint. The fix: round f64 -> f32 "to odd" (inexact results get an odd last bit,
 * so they can never sit on a midpoint of a format with >= 2 fewer bits), then round that f32 to
 * f16/bf16 to nearest even. This is exact for any target with at most 22 significand bits.
 */

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** f32 bit pattern of x rounded to odd (exact values unchanged; NaN and overflow as fround). */
export function f64ToF32BitsRoundToOdd(x: number): number {
  scratchF32[0] = x;
  const r = scratchF32[0];
  const bits = scratchU32[0];
  if (r === x || !Number.isFinite(r) || (bits & 1) === 1) return bits;
  // r is the nearest f32 and even: the other f32 bracketing x is odd, one step towards x.
  return Math.abs(x) > Math.abs(r) ? bits + 1 : bits - 1;
}

/** x rounded once to the nearest f16 (ties to even), as f16 bits. */
export function f64ToF16Bits(x: number): number {
  return f32BitsToF16Bits(f64ToF32BitsRoundToOdd(x));
}

/** x rounded once to the nearest bf16 (ties to even), as bf16 bits. */
export function f64ToBf16Bits(x: number): number {
  return f32BitsToBf16Bits(f64ToF32BitsRoundToOdd(x));
}

/**
 * Writes `src` rounded once to `dtype` into `out` starting at `outOffset`. `out` is the data
 * array of a tensor of that dtype (Uint16Array bits for f16/bf16).
 */
export function roundF64Into<D extends FloatDType>(
  src: Float64Array,
  dtype: D,
  out: TypedArrayOf[D],
  outOffset = 0,
): void {
  const n = src.length;
  switch (dtype) {
    case 'f64': {
      (out as Float64Array).set(src, outOffset);
      return;
    }
    case 'f32': {
      const o = out as Float32Array;
      for (let i = 0; i < n; i++) o[outOffset + i] = src[i]; // a Float32Array store is one RNE rounding
      return;
    }
    case 'f16': {
      const o = out as Uint16Array;
      for (let i = 0; i < n; i++) o[outOffset + i] = f64ToF16Bits(src[i]);
      return;
    }
    case 'bf16': {
      const o = out as Uint16Array;
      for (let i = 0; i < n; i++) o[outOffset + i] = f64ToBf16Bits(src[i]);
      return;
    }
  }
}

/** A float64 array rounded once to a float dtype, as that dtype's data array. */
export function roundF64Array<D extends FloatDType>(src: Float64Array, dtype: D): TypedArrayOf[D] {
  const out = (
    dtype === 'f64'
      ? new Float64Array(src.length)
      : dtype === 'f32'
        ? new Float32Array(src.length)
        : new Uint16Array(src.length)
  ) as TypedArrayOf[D];
  roundF64Into(src, dtype, out);
  return out;
}
