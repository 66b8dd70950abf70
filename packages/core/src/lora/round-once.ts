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
 * array of a tensor of that dtype (Uint16Array bits for f16/bf16). Returns false when a stored
 * value is NaN or infinite (also when rounding overflowed, e.g. 70000 in f16).
 */
export function roundF64Into<D extends FloatDType>(
  src: Float64Array,
  dtype: D,
  out: TypedArrayOf[D],
  outOffset = 0,
): boolean {
  const n = src.length;
  switch (dtype) {
    case 'f64': {
      const o = out as Float64Array;
      o.set(src, outOffset);
      return allFinite(o, outOffset, n);
    }
    case 'f32': {
      const o = out as Float32Array;
      for (let i = 0; i < n; i++) o[outOffset + i] = src[i]; // a Float32Array store is one RNE rounding
      return allFinite(o, outOffset, n);
    }
    case 'f16':
      return roundF64ToF16(src, out as Uint16Array, outOffset);
    case 'bf16':
      return roundF64ToBf16(src, out as Uint16Array, outOffset);
  }
  return true;
}

// Scratch float32 row for the loops below (grown on demand) and its bits, SIGNED so they stay
// small integers in V8 (a uint32 above 2^31 is a heap double).
let rowF32 = new Float32Array(0);
let rowBits = new Int32Array(0);
function scratchRow(n: number): void {
  if (rowF32.length < n) {
    rowF32 = new Float32Array(n);
    rowBits = new Int32Array(rowF32.buffer);
  }
}

/**
 * The array form of {@link f64ToF16Bits}, same bits, one pass: each value is stored as float32
 * first; rounding twice can only go wrong when that float32 lands exactly on an f16 midpoint (a
 * midpoint strictly between x and its nearest float32 would itself be a closer float32), so only
 * then, or for f16 subnormals, is it nudged one step towards x (round to odd). That test is on
 * the bits and almost never true, so the loop does not pay a mispredicted branch per value.
 */
function roundF64ToF16(src: Float64Array, out: Uint16Array, outOffset: number): boolean {
  const n = src.length;
  scratchRow(n);
  const f = rowF32;
  const u = rowBits;
  let finite = true;
  for (let j = 0; j < n; j++) {
    const x = src[j];
    f[j] = x;
    let b = u[j];
    if ((b & 0x1fff) === 0x1000 || (b & 0x7fffffff) < 0x38800000) {
      const r = f[j];
      if (r !== x && (b & 1) === 0 && r - r === 0) b = Math.abs(x) > Math.abs(r) ? b + 1 : b - 1;
    }
    const abs = b & 0x7fffffff;
    const h =
      abs >= 0x38800000 && abs < 0x47800000
        ? ((b >>> 16) & 0x8000) | ((abs - 0x38000000 + 0xfff + ((abs >>> 13) & 1)) >>> 13)
        : f32BitsToF16Bits(b >>> 0);
    out[outOffset + j] = h;
    if ((h & 0x7c00) === 0x7c00) finite = false;
  }
  return finite;
}

/** The array form of {@link f64ToBf16Bits} (see {@link roundF64ToF16}). */
function roundF64ToBf16(src: Float64Array, out: Uint16Array, outOffset: number): boolean {
  const n = src.length;
  scratchRow(n);
  const f = rowF32;
  const u = rowBits;
  let finite = true;
  for (let j = 0; j < n; j++) {
    const x = src[j];
    f[j] = x;
    let b = u[j];
    if ((b & 0xffff) === 0x8000) {
      const r = f[j];
      if (r !== x && r - r === 0) b = Math.abs(x) > Math.abs(r) ? b + 1 : b - 1;
    }
    const h =
      (b & 0x7fffffff) > 0x7f800000
        ? f32BitsToBf16Bits(b >>> 0)
        : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    out[outOffset + j] = h;
    if ((h & 0x7f80) === 0x7f80) finite = false;
  }
  return finite;
}

// One add per value is cheaper than a check per value: the sum is finite when every value is
// (a sum of finite f32 values cannot overflow float64; for f64 rows an overflowing sum falls
// back to the per-value check).
function allFinite(row: Float32Array | Float64Array, start: number, n: number): boolean {
  let sum = 0;
  for (let j = start; j < start + n; j++) sum += row[j];
  if (Number.isFinite(sum)) return true;
  for (let j = start; j < start + n; j++) if (!Number.isFinite(row[j])) return false;
  return true;
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
