/**
 * The hot loop of NF4/FP4 quantization, written as ONE self-contained function (no imports, no
 * outer variables) so worker threads can run the very same code from its source text: parallel
 * output is then byte-identical to the single-threaded one by construction.
 *
 * bitsandbytes decides on the float32 value `f32(x * inv)`. The product of two float32 numbers is
 * exact in float64, and rounding to float32 is monotone, so each float32 threshold T has an exact
 * float64 twin T'' with `f32(y) > T  <=>  y > T''` (T'' is the midpoint between T and the next
 * float32, nudged for ties-to-even): the kernel compares the exact product `y = x * inv` with T''
 * and never rounds. The axis is cut into buckets by `t = trunc(y * 512)` (exact), the one at t = 0
 * spanning (-1/512, 1/512); each bucket holds at most one decision point, so the code of `y` is
 * `y > threshold[b] ? above[b] : below[b]`: no search, and a branch that almost never flips.
 */

/** Per-format tables for {@link quantizeBlocksKernel}. */
export interface BucketTables {
  /** Bucket index offset: index = trunc(y * 512) + BUCKET_OFFSET. */
  readonly threshold: Float64Array;
  readonly below: Uint8Array;
  readonly above: Uint8Array;
  /** Code of 0.0 in a block with a non-zero absmax (padding of odd counts). */
  readonly zeroCode: number;
  /** Codes of +Inf, -Inf and NaN: what the kernel yields in a block whose 1/absmax overflows (all zeros, or absmax < 3e-39). */
  readonly posInfCode: number;
  readonly negInfCode: number;
  readonly nanCode: number;
}

export const BUCKETS_PER_UNIT = 512;
export const BUCKET_OFFSET = 1024;
export const BUCKET_COUNT = 2049;

/**
 * Quantizes blocks `[firstBlock, endBlock)` of `values` into `packed` (full-size, ceil(n/2)) and
 * `absmax` (full-size). Returns -1, or the index of the first block holding a NaN or +-Inf (the
 * caller reports it; that block's outputs are left unwritten).
 */
export function quantizeBlocksKernel(
  values: Float32Array,
  blockSize: number,
  firstBlock: number,
  endBlock: number,
  packed: Uint8Array,
  absmax: Float32Array,
  threshold: Float64Array,
  below: Uint8Array,
  above: Uint8Array,
  zeroCode: number,
  posInfCode: number,
  negInfCode: number,
  nanCode: number,
): number {
  const n = values.length;
  const fround = Math.fround;
  for (let b = firstBlock; b < endBlock; b++) {
    const start = b * blockSize;
    const end = Math.min(start + blockSize, n);
    let m = 0;
    for (let i = start; i < end; i++) {
      const v = values[i];
      const a = Math.abs(v);
      if (!(a <= m)) {
        if (Number.isNaN(a)) return b;
        m = a;
      }
    }
    if (m === Number.POSITIVE_INFINITY) return b;
    absmax[b] = m;
    const inverse = fround(1 / m);
    let o = start >> 1;
    if (inverse === Number.POSITIVE_INFINITY) {
      // The kernel multiplies by +Inf: x > 0 -> +Inf, x < 0 -> -Inf, 0 -> NaN.
      for (let i = start; i < end; i += 2) {
        const v0 = values[i];
        const v1 = i + 1 < end ? values[i + 1] : 0;
        const c0 = v0 > 0 ? posInfCode : v0 < 0 ? negInfCode : nanCode;
        const c1 = v1 > 0 ? posInfCode : v1 < 0 ? negInfCode : nanCode;
        packed[o++] = (c0 << 4) | c1;
      }
      continue;
    }
    let i = start;
    for (; i + 1 < end; i += 2) {
      const y0 = values[i] * inverse;
      const y1 = values[i + 1] * inverse;
      const b0 = ((y0 * 512) | 0) + 1024;
      const b1 = ((y1 * 512) | 0) + 1024;
      const c0 = y0 > threshold[b0] ? above[b0] : below[b0];
      const c1 = y1 > threshold[b1] ? above[b1] : below[b1];
      packed[o++] = (c0 << 4) | c1;
    }
    if (i < end) {
      // Odd count: the last byte pairs the final value with a padding 0.0.
      const y0 = values[i] * inverse;
      const b0 = ((y0 * 512) | 0) + 1024;
      const c0 = y0 > threshold[b0] ? above[b0] : below[b0];
      packed[o] = (c0 << 4) | zeroCode;
    }
  }
  return -1;
}

/**
 * The float64 twin of a float32 decision point: for every float64 y,
 * `Math.fround(y) > t  <=>  y > float64DecisionPoint(t)`.
 */
export function float64DecisionPoint(t: number): number {
  const f = new Float32Array([t]);
  const u = new Uint32Array(f.buffer);
  const evenT = (u[0] & 1) === 0;
  // Next float32 towards +Inf (from -0 or +0 it is the smallest positive subnormal).
  if (t === 0) u[0] = 1;
  else if (t > 0) u[0]++;
  else u[0]--;
  const mid = (t + f[0]) / 2; // exact in float64
  // y == mid rounds to the even one of t and next(t): to t (not above t) when t is even.
  if (evenT && t !== 0) return mid;
  if (t === 0) return mid; // 0 is even: y == 2^-150 rounds to +0
  const d = new Float64Array([mid]);
  const b = new BigInt64Array(d.buffer);
  b[0] += mid > 0 ? -1n : 1n; // the float64 just below mid, so that y >= mid passes
  return d[0];
}

/**
 * Builds the bucket tables from the ordered float32 decision points of a format: the code goes
 * from `codes[s]` to `codes[s + 1]` when `f32(y) > points[s]`.
 */
export function buildBucketTables(
  points: readonly number[],
  codes: readonly number[],
  special: {
    zeroCode: number;
    posInfCode: number;
    negInfCode: number;
    nanCode: number;
  },
): BucketTables {
  points = points.map(float64DecisionPoint);
  const threshold = new Float64Array(BUCKET_COUNT).fill(Number.POSITIVE_INFINITY);
  const below = new Uint8Array(BUCKET_COUNT);
  const above = new Uint8Array(BUCKET_COUNT);
  for (let index = 0; index < BUCKET_COUNT; index++) {
    const t = index - BUCKET_OFFSET;
    // Values in the bucket: t > 0: [t, t+1)/512; t < 0: (t-1, t]/512; t = 0: (-1, 1)/512.
    const lo = (t > 0 ? t : t - 1) / BUCKETS_PER_UNIT;
    const hi = (t < 0 ? t : t + 1) / BUCKETS_PER_UNIT;
    const loIncluded = t > 0;
    // A point is passed by every y in the bucket, or by some, or by none.
    const passed = points.filter((p) => (loIncluded ? p < lo : p <= lo)).length;
    const inside = points.filter((p) => (loIncluded ? p >= lo : p > lo) && p < hi);
    if (inside.length > 1) throw new Error('internal: two thresholds in one bucket');
    below[index] = codes[passed];
    above[index] = codes[Math.min(passed + inside.length, codes.length - 1)];
    if (inside.length === 1) threshold[index] = inside[0];
  }
  return { threshold, below, above, ...special };
}
