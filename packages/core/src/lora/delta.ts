import { type FloatDType, isFloatDType, toFloat64Array } from '../convert.js';
import type { TypedArrayOf } from '../dtype.js';
import { CoreError } from '../errors.js';
import { type Tensor, tensor } from '../tensor.js';
import { roundF64Into } from './round-once.js';

/**
 * The LoRA weight delta, defined once for the whole project (PEFT's `get_delta_weight`):
 *
 *   ΔW = scaling · B @ A          A: [r, in], B: [out, r], ΔW: [out, in]
 *
 * transposed to [in, out] when the base weight is stored that way (GPT-2 Conv1D with
 * fan_in_fan_out, or an embedding). Merge, unmerge, deltaWeight, the runtime's slot stacks and
 * the merged export all build it through {@link lowRankDelta}, and every product of it goes
 * through ONE kernel ({@link deltaRow} on a {@link packLowRank} layout), so they agree to the bit.
 */

/** One adapter's contribution to a weight: ΔW = scaling · B @ A. */
export interface LoraFactors {
  /** lora_A.weight: [r, in], any float dtype. */
  A: Tensor;
  /** lora_B.weight: [out, r], any float dtype. */
  B: Tensor;
  /** s in s · B @ A (see `loraScaling`); fold a combination weight in here. */
  scaling: number;
  /**
   * The base weight is stored [in, out] (GPT-2 Conv1D with fan_in_fan_out, or an embedding
   * `[vocab, dim]`): the delta is transposed to match.
   */
  fanInFanOut?: boolean;
}

/**
 * ΔW in the layout of the STORED weight, as a product of two factors:
 *
 *   ΔW[i, j] = sum_k coef[i, k] · basis[k, j]      ΔW: [rows, cols]
 *
 * coef [rows, rank] and basis [rank, cols], row-major float64. Not transposed: coef = s·B,
 * basis = A. Transposed: coef = s·A^T, basis = B^T. The scale always goes into coef, so the
 * basis holds the adapter's own values. Several adapters on one weight are one delta of summed
 * rank ({@link concatLowRank}).
 */
export interface LowRankDelta {
  readonly rows: number;
  readonly cols: number;
  readonly rank: number;
  /** [rows, rank] */
  readonly coef: Float64Array;
  /** [rank, cols] */
  readonly basis: Float64Array;
}

/** Checks shapes, dtypes and the scaling, and returns the factors' {@link LowRankDelta}. */
export function lowRankDelta(f: LoraFactors, where = 'LoRA delta'): LowRankDelta {
  const { A, B, scaling } = f;
  for (const [name, t] of [
    ['A', A],
    ['B', B],
  ] as const) {
    if (t.shape.length !== 2) {
      throw new CoreError(
        'LORA_SHAPE_MISMATCH',
        `${where}: lora_${name} must be 2-D, got shape [${t.shape.join(', ')}].`,
        { where },
      );
    }
    if (!isFloatDType(t.dtype)) {
      throw new CoreError(
        'DTYPE_UNSUPPORTED',
        `${where}: lora_${name} must be a float tensor, got ${t.dtype}.`,
        { where },
      );
    }
  }
  const [rank, inFeatures] = A.shape;
  const [outFeatures, rankB] = B.shape;
  if (rank !== rankB) {
    throw new CoreError(
      'LORA_SHAPE_MISMATCH',
      `${where}: lora_A is [${A.shape.join(', ')}] (r = ${rank}) but lora_B is [${B.shape.join(', ')}] (r = ${rankB}). A must be [r, in] and B [out, r] with the same r.`,
      { where, rankA: rank, rankB },
    );
  }
  if (!Number.isFinite(scaling)) {
    throw new CoreError(
      'LORA_SCALING_INVALID',
      `${where}: scaling must be finite, got ${scaling}.`,
      { where },
    );
  }
  const a = toFloat64Array(A); // [r, in]
  const b = toFloat64Array(B); // [out, r]
  if (!f.fanInFanOut) {
    const coef = new Float64Array(outFeatures * rank); // s·B [out, r]
    for (let i = 0; i < coef.length; i++) coef[i] = scaling * b[i];
    return { rows: outFeatures, cols: inFeatures, rank, coef, basis: Float64Array.from(a) };
  }
  const coef = new Float64Array(inFeatures * rank); // s·A^T [in, r]
  for (let k = 0; k < rank; k++)
    for (let i = 0; i < inFeatures; i++) coef[i * rank + k] = scaling * a[k * inFeatures + i];
  const basis = new Float64Array(rank * outFeatures); // B^T [r, out]
  for (let o = 0; o < outFeatures; o++)
    for (let k = 0; k < rank; k++) basis[k * outFeatures + o] = b[o * rank + k];
  return { rows: inFeatures, cols: outFeatures, rank, coef, basis };
}

/** The rank-0 delta (no change) of a [rows, cols] weight: a dtype cast is a merge with it. */
export function zeroLowRankDelta(rows: number, cols: number): LowRankDelta {
  return { rows, cols, rank: 0, coef: new Float64Array(0), basis: new Float64Array(0) };
}

/** Several deltas of the same [rows, cols] as one of summed rank (their sum), in order. */
export function concatLowRank(deltas: readonly LowRankDelta[], where = 'LoRA delta'): LowRankDelta {
  if (deltas.length === 1) return deltas[0];
  if (deltas.length === 0)
    throw new CoreError('LORA_SHAPE_MISMATCH', `${where}: no delta to concatenate.`, { where });
  const { rows, cols } = deltas[0];
  let rank = 0;
  for (const d of deltas) {
    if (d.rows !== rows || d.cols !== cols) {
      throw new CoreError(
        'LORA_SHAPE_MISMATCH',
        `${where}: cannot add deltas of shapes [${rows}, ${cols}] and [${d.rows}, ${d.cols}].`,
        { where },
      );
    }
    rank += d.rank;
  }
  const coef = new Float64Array(rows * rank);
  const basis = new Float64Array(rank * cols);
  let k0 = 0;
  for (const d of deltas) {
    for (let i = 0; i < rows; i++)
      for (let k = 0; k < d.rank; k++) coef[i * rank + k0 + k] = d.coef[i * d.rank + k];
    basis.set(d.basis, k0 * cols);
    k0 += d.rank;
  }
  return { rows, cols, rank, coef, basis };
}

/**
 * Ranks per pass of {@link deltaRow}: 16 for rank > 8, else 8 or 4. Ranks are zero-padded to a
 * multiple of it (padding costs multiply-adds by zero, never changes a value).
 */
export function ranksPerPass(rank: number): 4 | 8 | 16 {
  return rank <= 4 ? 4 : rank <= 8 ? 8 : 16;
}

/**
 * A {@link LowRankDelta} laid out for {@link deltaRow}: the rank padded with zeros to `chunks`
 * passes of `width` ranks; per pass, the basis is [width, cols] so that a run of columns of one
 * rank is contiguous (what SIMD lanes across columns load).
 */
export interface PackedLowRank {
  readonly rows: number;
  readonly cols: number;
  readonly chunks: number;
  readonly width: 4 | 8 | 16;
  /** [rows, chunks * width], float64 (it carries the scale). */
  readonly coef: Float64Array;
  /**
   * [chunks, width, cols] in float32: half the bytes streamed from cache per row. Exact for
   * f32/f16/bf16 adapters; f64 adapter values are rounded to float32 here.
   */
  readonly basis: Float32Array;
}

export function packLowRank(d: LowRankDelta): PackedLowRank {
  const P = ranksPerPass(d.rank);
  const chunks = Math.max(1, Math.ceil(d.rank / P));
  const width = chunks * P;
  const coef = new Float64Array(d.rows * width);
  for (let i = 0; i < d.rows; i++)
    coef.set(d.coef.subarray(i * d.rank, (i + 1) * d.rank), i * width);
  const basis = new Float32Array(width * d.cols); // [chunks, P, cols] = [width, cols]
  basis.set(d.basis);
  return { rows: d.rows, cols: d.cols, chunks, width: P, coef, basis };
}

/**
 * Row `i` of ΔW into `out` (columns [j0, j0 + n) into out[0..n)). THE arithmetic of the delta,
 * fixed so that a row always gives the same bits (exact unmerge relies on it), and mirrored lane
 * for lane by the WebAssembly kernel: per pass of `width` ranks,
 *
 *   t = c0·b0 + c1·b1 + ... + c_{width-1}·b_{width-1}     (float64, left to right)
 *
 * and out = t for the first pass, out + t for the next ones.
 */
export function deltaRow(p: PackedLowRank, i: number, out: Float64Array, j0 = 0, n = p.cols): void {
  const { cols, chunks, width, coef, basis } = p;
  for (let q = 0; q < chunks; q++) {
    const c = (i * chunks + q) * width;
    const b = q * width * cols + j0;
    if (width === 4) pass4(coef, c, basis, b, cols, out, n, q > 0);
    else if (width === 8) pass8(coef, c, basis, b, cols, out, n, q > 0);
    else pass16(coef, c, basis, b, cols, out, n, q > 0);
  }
}

function pass4(
  coef: Float64Array,
  c: number,
  basis: Float32Array,
  b: number,
  cols: number,
  out: Float64Array,
  n: number,
  add: boolean,
): void {
  const c0 = coef[c];
  const c1 = coef[c + 1];
  const c2 = coef[c + 2];
  const c3 = coef[c + 3];
  const b1 = b + cols;
  const b2 = b1 + cols;
  const b3 = b2 + cols;
  for (let j = 0; j < n; j++) {
    const t = c0 * basis[b + j] + c1 * basis[b1 + j] + c2 * basis[b2 + j] + c3 * basis[b3 + j];
    out[j] = add ? out[j] + t : t;
  }
}

function pass8(
  coef: Float64Array,
  c: number,
  basis: Float32Array,
  b: number,
  cols: number,
  out: Float64Array,
  n: number,
  add: boolean,
): void {
  const c0 = coef[c];
  const c1 = coef[c + 1];
  const c2 = coef[c + 2];
  const c3 = coef[c + 3];
  const c4 = coef[c + 4];
  const c5 = coef[c + 5];
  const c6 = coef[c + 6];
  const c7 = coef[c + 7];
  const b1 = b + cols;
  const b2 = b1 + cols;
  const b3 = b2 + cols;
  const b4 = b3 + cols;
  const b5 = b4 + cols;
  const b6 = b5 + cols;
  const b7 = b6 + cols;
  for (let j = 0; j < n; j++) {
    const t =
      c0 * basis[b + j] +
      c1 * basis[b1 + j] +
      c2 * basis[b2 + j] +
      c3 * basis[b3 + j] +
      c4 * basis[b4 + j] +
      c5 * basis[b5 + j] +
      c6 * basis[b6 + j] +
      c7 * basis[b7 + j];
    out[j] = add ? out[j] + t : t;
  }
}

function pass16(
  coef: Float64Array,
  c: number,
  basis: Float32Array,
  b: number,
  cols: number,
  out: Float64Array,
  n: number,
  add: boolean,
): void {
  const c0 = coef[c];
  const c1 = coef[c + 1];
  const c2 = coef[c + 2];
  const c3 = coef[c + 3];
  const c4 = coef[c + 4];
  const c5 = coef[c + 5];
  const c6 = coef[c + 6];
  const c7 = coef[c + 7];
  const c8 = coef[c + 8];
  const c9 = coef[c + 9];
  const c10 = coef[c + 10];
  const c11 = coef[c + 11];
  const c12 = coef[c + 12];
  const c13 = coef[c + 13];
  const c14 = coef[c + 14];
  const c15 = coef[c + 15];
  const b1 = b + cols;
  const b2 = b1 + cols;
  const b3 = b2 + cols;
  const b4 = b3 + cols;
  const b5 = b4 + cols;
  const b6 = b5 + cols;
  const b7 = b6 + cols;
  const b8 = b7 + cols;
  const b9 = b8 + cols;
  const b10 = b9 + cols;
  const b11 = b10 + cols;
  const b12 = b11 + cols;
  const b13 = b12 + cols;
  const b14 = b13 + cols;
  const b15 = b14 + cols;
  for (let j = 0; j < n; j++) {
    const t =
      c0 * basis[b + j] +
      c1 * basis[b1 + j] +
      c2 * basis[b2 + j] +
      c3 * basis[b3 + j] +
      c4 * basis[b4 + j] +
      c5 * basis[b5 + j] +
      c6 * basis[b6 + j] +
      c7 * basis[b7 + j] +
      c8 * basis[b8 + j] +
      c9 * basis[b9 + j] +
      c10 * basis[b10 + j] +
      c11 * basis[b11 + j] +
      c12 * basis[b12 + j] +
      c13 * basis[b13 + j] +
      c14 * basis[b14 + j] +
      c15 * basis[b15 + j];
    out[j] = add ? out[j] + t : t;
  }
}

export interface DeltaWeightOptions {
  /** Return the delta in the [in, out] layout of a GPT-2 Conv1D weight. */
  fanInFanOut?: boolean;
  /** dtype of the result (default f32); the float64 value is rounded once to it. */
  dtype?: FloatDType;
}

/**
 * ΔW = scaling · B @ A, shape [out, in] (or [in, out] with `fanInFanOut`), computed by the
 * same kernel as merge and rounded once to `dtype` (default f32). A: [r, in], B: [out, r].
 */
export function deltaWeight(
  A: Tensor,
  B: Tensor,
  scaling: number,
  options: DeltaWeightOptions = {},
): Tensor {
  const dtype = options.dtype ?? 'f32';
  const d = packLowRank(lowRankDelta({ A, B, scaling, fanInFanOut: options.fanInFanOut }));
  const out = tensor(dtype, [d.rows, d.cols]);
  const row = new Float64Array(d.cols);
  for (let p = 0; p < d.rows; p++) {
    deltaRow(d, p, row);
    roundF64Into(row, dtype, out.data as TypedArrayOf[typeof dtype], p * d.cols);
  }
  return out;
}
