import { type FloatDType, isFloatDType, toFloat64Array } from '../convert.js';
import type { TypedArrayOf } from '../dtype.js';
import { CoreError } from '../errors.js';
import { type Tensor, tensor } from '../tensor.js';
import { roundF64Into } from './round-once.js';

/** One adapter's contribution to a weight: dW = scaling * B @ A. */
export interface LoraFactors {
  /** lora_A.weight: [r, in], any float dtype. */
  A: Tensor;
  /** lora_B.weight: [out, r], any float dtype. */
  B: Tensor;
  /** s in s * B @ A (see `loraScaling`); fold a combination weight in here. */
  scaling: number;
  /** The base weight is stored [in, out] (GPT-2 Conv1D): the delta is transposed to match. */
  fanInFanOut?: boolean;
}

/**
 * A delta prepared for row-by-row use: the stored-layout delta [rows, cols] equals
 * `scaling * left @ right`, with left [rows, r] and right [r, cols] in float64.
 * Not fan-in-fan-out: left = B, right = A. Fan-in-fan-out: left = A^T, right = B^T.
 */
export interface PreparedDelta {
  readonly rows: number;
  readonly cols: number;
  readonly rank: number;
  readonly scaling: number;
  readonly left: Float64Array;
  readonly right: Float64Array;
}

/** Checks shapes and converts A and B to the float64 factors of the stored-layout delta. */
export function prepareDelta(f: LoraFactors, where = 'LoRA delta'): PreparedDelta {
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
  if (!f.fanInFanOut)
    return { rows: outFeatures, cols: inFeatures, rank, scaling, left: b, right: a };
  // Stored layout [in, out]: delta^T = s * A^T @ B^T.
  const left = new Float64Array(inFeatures * rank); // A^T: [in, r]
  for (let k = 0; k < rank; k++)
    for (let i = 0; i < inFeatures; i++) left[i * rank + k] = a[k * inFeatures + i];
  const right = new Float64Array(rank * outFeatures); // B^T: [r, out]
  for (let o = 0; o < outFeatures; o++)
    for (let k = 0; k < rank; k++) right[k * outFeatures + o] = b[o * rank + k];
  return { rows: inFeatures, cols: outFeatures, rank, scaling, left, right };
}

/**
 * Row `row` of `left @ right` (WITHOUT the scaling) into `out` [cols], summed in float64, k
 * taken four at a time (one pass over `out` per four ranks: about twice as fast as one at a
 * time). Merge, unmerge and deltaWeight all use this, so they agree to the bit.
 */
export function deltaRowUnscaled(d: PreparedDelta, row: number, out: Float64Array): void {
  const { cols, rank, left, right } = d;
  const l = row * rank;
  out.fill(0);
  let k = 0;
  for (; k + 4 <= rank; k += 4) {
    const l0 = left[l + k];
    const l1 = left[l + k + 1];
    const l2 = left[l + k + 2];
    const l3 = left[l + k + 3];
    const b0 = k * cols;
    const b1 = b0 + cols;
    const b2 = b1 + cols;
    const b3 = b2 + cols;
    for (let j = 0; j < cols; j++)
      out[j] += l0 * right[b0 + j] + l1 * right[b1 + j] + (l2 * right[b2 + j] + l3 * right[b3 + j]);
  }
  for (; k < rank; k++) {
    const lk = left[l + k];
    const base = k * cols;
    for (let j = 0; j < cols; j++) out[j] += lk * right[base + j];
  }
}

export interface DeltaWeightOptions {
  /** Return the delta in the [in, out] layout of a GPT-2 Conv1D weight. */
  fanInFanOut?: boolean;
  /** dtype of the result (default f32); the float64 sum is rounded once to it. */
  dtype?: FloatDType;
}

/**
 * dW = scaling * B @ A, shape [out, in] (or [in, out] with `fanInFanOut`), accumulated in
 * float64 and rounded once to `dtype` (default f32). A: [r, in], B: [out, r], any float dtype.
 */
export function deltaWeight(
  A: Tensor,
  B: Tensor,
  scaling: number,
  options: DeltaWeightOptions = {},
): Tensor {
  const dtype = options.dtype ?? 'f32';
  const d = prepareDelta({ A, B, scaling, fanInFanOut: options.fanInFanOut });
  const out = tensor(dtype, [d.rows, d.cols]);
  const row = new Float64Array(d.cols);
  for (let p = 0; p < d.rows; p++) {
    deltaRowUnscaled(d, p, row);
    for (let j = 0; j < d.cols; j++) row[j] *= scaling;
    roundF64Into(row, dtype, out.data as TypedArrayOf[typeof dtype], p * d.cols);
  }
  return out;
}
