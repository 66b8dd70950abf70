/**
 * IEEE 754 binary16 (f16) and bfloat16 (bf16) conversions to and from float32, bit-exact:
 * round to nearest, ties to even; signed zeros, subnormals and infinities kept; NaN stays NaN
 * with its sign and the top bits of its payload (a payload that would vanish becomes the quiet
 * bit), so every f16 and bf16 pattern survives a round trip through f32 unchanged.
 *
 * The loops work on Uint32 views of float32 data: integer arithmetic only. They are the reference:
 * arrays of FLOAT16_WASM_MIN_LENGTH elements or more run through the SIMD WebAssembly kernels of
 * wasm/float16.wat instead (same bits, tested), and these loops serve where wasm SIMD is missing.
 */

import { bf16ToF32Wasm, f16ToF32Wasm, f32ToBf16Wasm, f32ToF16Wasm } from './wasm/float16-wasm.js';

// Shared scratch for single-value conversions.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

let f16ToF32Table: Uint32Array | undefined;

/** float32 bit pattern of every f16 pattern (256 KiB, built on first use). */
function f16Table(): Uint32Array {
  if (f16ToF32Table) return f16ToF32Table;
  const table = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) table[h] = f16BitsToF32BitsSlow(h);
  f16ToF32Table = table;
  return table;
}

function f16BitsToF32BitsSlow(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0; // Inf / NaN, payload kept
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0; // signed zero
  // Subnormal f16: normalise into an f32 normal.
  let e = 113;
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

/** f32 bit pattern -> f16 bit pattern, round to nearest even. */
export function f32BitsToF16Bits(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const abs = f & 0x7fffffff;
  if (abs >= 0x47800000) {
    // |x| >= 65536, Inf or NaN
    if (abs > 0x7f800000) {
      const payload = (abs >>> 13) & 0x3ff;
      return sign | 0x7c00 | (payload === 0 ? 0x200 : payload);
    }
    return sign | 0x7c00;
  }
  if (abs < 0x38800000) {
    // Result is subnormal or zero (|x| < 2^-14). Shift the full significand into place and
    // round to nearest even on the bits shifted out.
    if (abs < 0x33000000) return sign; // below half the smallest subnormal: rounds to zero
    const exp = abs >>> 23;
    const mant = (abs & 0x7fffff) | 0x800000;
    const shift = 126 - exp; // 14..24 for exp 102..112
    const kept = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    const rounded = rem > half || (rem === half && (kept & 1) === 1) ? kept + 1 : kept;
    return sign | rounded;
  }
  // Normal range: rebias and round on the 13 dropped bits; a carry into the exponent is right
  // (it may reach 0x7c00 = Inf, which is the correct overflow).
  const odd = (abs >>> 13) & 1;
  return sign | ((abs - 0x38000000 + 0xfff + odd) >>> 13);
}

/** f16 bit pattern -> f32 bit pattern (exact). */
export function f16BitsToF32Bits(h: number): number {
  return f16Table()[h & 0xffff];
}

/** f32 bit pattern -> bf16 bit pattern, round to nearest even. */
export function f32BitsToBf16Bits(f: number): number {
  if ((f & 0x7fffffff) > 0x7f800000) {
    const top = f >>> 16;
    return (top & 0x7f) === 0 ? top | 0x40 : top; // keep NaN a NaN
  }
  return (f + 0x7fff + ((f >>> 16) & 1)) >>> 16;
}

/** One number -> f16 bits (via float32 first, as a Float32Array store would). */
export function toF16Bits(x: number): number {
  scratchF32[0] = x;
  return f32BitsToF16Bits(scratchU32[0]);
}

/** f16 bits -> number. */
export function fromF16Bits(h: number): number {
  scratchU32[0] = f16BitsToF32Bits(h);
  return scratchF32[0];
}

export function toBf16Bits(x: number): number {
  scratchF32[0] = x;
  return f32BitsToBf16Bits(scratchU32[0]);
}

export function fromBf16Bits(h: number): number {
  scratchU32[0] = (h & 0xffff) << 16;
  return scratchF32[0];
}

function i32View(a: Float32Array): Int32Array {
  return new Int32Array(a.buffer, a.byteOffset, a.length);
}

// The array loops below read float32 bits through Int32Array views and keep every intermediate
// in int32 range, so V8 compiles them to plain 32-bit integer instructions (no float64 detours).

/** float32 array -> f16 bit patterns. `out` may be given to avoid an allocation. */
export function f32ToF16Array(
  src: Float32Array,
  out: Uint16Array = new Uint16Array(src.length),
): Uint16Array {
  if (f32ToF16Wasm(src, out)) return out;
  const bits = i32View(src);
  const n = src.length;
  let i = 0;
  // Two results per 32-bit store when both are normal f16 numbers (the common case for weights):
  // |x| in [2^-14, 2^16) <=> (abs - 0x38800000) as uint32 < 0x0f000000.
  if (out.byteOffset % 4 === 0) {
    const pairs = new Int32Array(out.buffer, out.byteOffset, n >> 1);
    for (let j = 0; j < pairs.length; j++) {
      const f = bits[2 * j];
      const g = bits[2 * j + 1];
      const a = f & 0x7fffffff;
      const b = g & 0x7fffffff;
      if ((a - 0x38800000) >>> 0 < 0x0f000000 && (b - 0x38800000) >>> 0 < 0x0f000000) {
        const lo = ((f >>> 16) & 0x8000) | ((a - 0x38000000 + 0xfff + ((a >> 13) & 1)) >> 13);
        const hi = ((g >>> 16) & 0x8000) | ((b - 0x38000000 + 0xfff + ((b >> 13) & 1)) >> 13);
        pairs[j] = lo | (hi << 16); // little-endian: element 2j in the low half
      } else {
        out[2 * j] = f32BitsToF16Bits(f >>> 0);
        out[2 * j + 1] = f32BitsToF16Bits(g >>> 0);
      }
    }
    i = pairs.length * 2;
  }
  for (; i < n; i++) out[i] = f32BitsToF16Bits(bits[i] >>> 0);
  return out;
}

/** f16 bit patterns -> float32 array. */
export function f16ToF32Array(
  src: Uint16Array,
  out: Float32Array = new Float32Array(src.length),
): Float32Array {
  if (f16ToF32Wasm(src, out)) return out;
  const bits = i32View(out);
  const n = src.length;
  for (let i = 0; i < n; i++) {
    const h = src[i];
    const exp = h & 0x7c00;
    if (exp !== 0 && exp !== 0x7c00) {
      bits[i] = ((h & 0x8000) << 16) | (((h & 0x7fff) << 13) + 0x38000000);
    } else {
      bits[i] = f16BitsToF32Bits(h); // zero, subnormal, Inf, NaN
    }
  }
  return out;
}

/** float32 array -> bf16 bit patterns. */
export function f32ToBf16Array(
  src: Float32Array,
  out: Uint16Array = new Uint16Array(src.length),
): Uint16Array {
  if (f32ToBf16Wasm(src, out)) return out;
  const bits = i32View(src);
  const n = src.length;
  let i = 0;
  // Two results per 32-bit store. No int32 overflow: the largest non-NaN pattern plus the
  // rounding carry stays within int32.
  if (out.byteOffset % 4 === 0) {
    const pairs = new Int32Array(out.buffer, out.byteOffset, n >> 1);
    for (let j = 0; j < pairs.length; j++) {
      const f = bits[2 * j];
      const g = bits[2 * j + 1];
      if ((f & 0x7fffffff) > 0x7f800000 || (g & 0x7fffffff) > 0x7f800000) {
        out[2 * j] = f32BitsToBf16Bits(f >>> 0);
        out[2 * j + 1] = f32BitsToBf16Bits(g >>> 0);
      } else {
        pairs[j] =
          ((f + 0x7fff + ((f >> 16) & 1)) >>> 16) | ((g + 0x7fff + ((g >> 16) & 1)) & 0xffff0000);
      }
    }
    i = pairs.length * 2;
  }
  for (; i < n; i++) out[i] = f32BitsToBf16Bits(bits[i] >>> 0);
  return out;
}

/** bf16 bit patterns -> float32 array (exact). */
export function bf16ToF32Array(
  src: Uint16Array,
  out: Float32Array = new Float32Array(src.length),
): Float32Array {
  if (bf16ToF32Wasm(src, out)) return out;
  const bits = i32View(out);
  const n = src.length;
  for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
  return out;
}
