/**
 * The code tables of the 4-bit and 8-bit formats, bit for bit. Index = the stored code.
 *
 * Tables are stored as float32 bit patterns so that no decimal-to-float rounding can creep in.
 */

function fromBits(bits: readonly number[]): Float32Array {
  return new Float32Array(new Uint32Array(bits).buffer);
}

/**
 * bitsandbytes NF4 (QLoRA NormalFloat4): 7 negative values, an exact zero (code 7), 8 positive
 * values. Derived from normal quantiles (see README); the table itself is normative.
 */
export const NF4_CODE: Float32Array = fromBits([
  0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
  0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
]);

/**
 * bitsandbytes FP4 (an E2M1 variant with bias 3), values `[0, 0.0625, 8, 12, 4, 6, 2, 3]/12` and the
 * same negated with bit 3 set (code 8 is -0). Computed in float32 from exact small numbers.
 */
export const FP4_CODE: Float32Array = new Float32Array(
  [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3].map((v) => v / 12),
);

/**
 * NF4 decision thresholds: the midpoints of adjacent codes rounded to float32. A normalised
 * value `x` gets code `k` = the number of thresholds `t` with `x > t` (strict: a value exactly
 * on a threshold goes to the LOWER code), as the bitsandbytes CUDA kernel does.
 */
export const NF4_THRESHOLDS: Float32Array = (() => {
  const t = new Float32Array(15);
  for (let k = 0; k < 15; k++) t[k] = Math.fround((NF4_CODE[k] + NF4_CODE[k + 1]) / 2);
  return t;
})();

/**
 * FP4 decision thresholds on |x|, the literals of the bitsandbytes kernel (five of them differ
 * from exact float32 midpoints by 1 to 14 ulp; they are normative). Magnitude level `m` = the
 * number of thresholds `t` with `|x| > t` (ties go to the smaller magnitude).
 */
export const FP4_THRESHOLDS: Float32Array = new Float32Array([
  0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333,
]);

/** FP4 code (without sign) of each magnitude level 0..7, in increasing magnitude. */
export const FP4_MAGNITUDE_CODES: Uint8Array = new Uint8Array([0, 1, 6, 7, 4, 5, 2, 3]);

/** Sign bit of an FP4 code, set only when the normalised value is `< 0` (so -0.0 gives code 0). */
export const FP4_SIGN_BIT = 0b1000;

/** NF4 code of 0.0: what padding and zeros quantize to in a non-zero block. */
export const NF4_ZERO_CODE = 7;

/**
 * The signed 8-bit dynamic map of bitsandbytes (`create_dynamic_map(signed=True)`), used for the
 * double quantization of absmax. Generated with float32 arithmetic, as torch does it:
 * for i in 0..6, `linspace(0.1, 1, 2^i + 1)` in float32, midpoints of neighbours, times
 * `+-10^(i-6)`; plus 0 and 1.0; sorted. 127 negatives (no -1.0), 0 at index 127, 1.0 at 255.
 * Recomputing in float64 gives a different table.
 */
export const DYNAMIC_MAP: Float32Array = createDynamicMap();

/** Generates the signed dynamic map in float32 arithmetic. See {@link DYNAMIC_MAP}. */
export function createDynamicMap(): Float32Array {
  const f = Math.fround;
  const values: number[] = [];
  const maxExponentBits = 7;
  for (let i = 0; i < maxExponentBits; i++) {
    const count = 2 ** i + 1;
    // torch.linspace(0.1, 1, count) in float32 on CPU: step = f32((end - start) / (count - 1));
    // the first half counts up from start, the second half down from end, each point as one
    // fused multiply-add (start + step * j rounded once). The product of a float32 and a small
    // integer is exact in float64, so one Math.fround after the add is that single rounding.
    const start = f(0.1);
    const end = 1;
    const step = f(f(end - start) / (count - 1));
    const half = Math.floor(count / 2);
    const boundaries = new Float32Array(count);
    for (let j = 0; j < count; j++) {
      boundaries[j] = j < half ? f(start + step * j) : f(end - step * (count - j - 1));
    }
    // 10^(i-6) as the float32 scalar torch multiplies by (written as a literal: `10 ** -5` is inexact in JS).
    const scale = f(Number(`1e${i - (maxExponentBits - 1)}`));
    for (let j = 0; j + 1 < count; j++) {
      const mean = f(f(boundaries[j] + boundaries[j + 1]) / 2);
      values.push(f(scale * mean), f(-scale * mean));
    }
  }
  values.push(0, 1);
  values.sort((a, b) => a - b);
  return new Float32Array(values);
}
