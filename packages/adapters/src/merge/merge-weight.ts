import {
  DTYPES,
  type FloatDType,
  residualChecksum,
  type Tensor,
  type TypedArrayOf,
  type UnmergeResidual,
} from '@lora/core';
import { AdapterError } from '../errors.js';
import { bitsView, FloatRows } from './float-rows.js';
import { deltaRow, type LowRankDelta, packLowRank } from './low-rank-delta.js';

/** Columns per tile of the merge loop. */
const TILE = 512;

export interface MergeWeightResult {
  readonly merged: Tensor;
  /** Present when `captureResidual` was asked. */
  readonly residual?: UnmergeResidual;
  /** Index of the first row holding a NaN or infinite value, or -1. */
  readonly firstNonFiniteRow: number;
}

function checkShape(weight: Tensor, delta: LowRankDelta, what: string): void {
  const [rows, cols] = weight.shape;
  if (weight.shape.length !== 2 || rows !== delta.rows || cols !== delta.cols) {
    throw new AdapterError(
      'MERGE_SHAPE_MISMATCH',
      `${what}: the weight has shape [${weight.shape.join(', ')}] but the adapter's delta is [${delta.rows}, ${delta.cols}].`,
      { tensor: what, expected: [delta.rows, delta.cols], actual: weight.shape },
    );
  }
}

/**
 * `merged = round_out(weight + delta)`, in column tiles of each row: decode, add the rank-r
 * update (computed in float64), round once to the output dtype. Memory: the output tensor plus
 * a few rows. With `captureResidual`, also computes `round_in(merged - delta)` for each row and
 * records where it differs from the original bits, so {@link unmergeLowRankDelta} can restore
 * the original exactly. Never throws on NaN/Inf: reports `firstNonFiniteRow` so the caller can
 * abort before anything is written.
 */
export function mergeLowRankDelta(
  weight: Tensor,
  delta: LowRankDelta,
  outDtype: FloatDType,
  options: { captureResidual?: boolean; name?: string } = {},
): MergeWeightResult {
  const inDtype = weight.dtype as FloatDType;
  checkShape(weight, delta, options.name ?? 'weight');
  const { rows: nRows, cols } = delta;
  const packed = packLowRank(delta);
  const out = DTYPES[outDtype].create(nRows * cols);
  const io = new FloatRows(cols);
  const w = new Float64Array(cols);
  const d = new Float64Array(cols);
  let firstNonFiniteRow = -1;

  // Residual scratch: one row decoded back from the output, one re-encoded in the input dtype.
  const capture = options.captureResidual === true;
  const back = capture ? DTYPES[inDtype].create(cols) : undefined;
  const origBits = capture ? bitsView(weight.data, inDtype) : undefined;
  // Signed 32-bit views for comparing (a uint32 above 2^31 would be a heap double in V8).
  const origCmp = capture ? compareView(weight.data, inDtype) : undefined;
  const backCmp = back ? compareView(back, inDtype) : undefined;
  const indices: number[] = [];

  // Column tiles: the tile's packed basis (TILE x 16 float32 = 32 KiB) stays in L1/L2 while
  // every row passes over it. Per element the arithmetic is the same as row by row.
  for (let j0 = 0; j0 < cols; j0 += TILE) {
    const n = Math.min(TILE, cols - j0);
    for (let i = 0; i < nRows; i++) {
      deltaRow(packed, i, d, j0, n);
      io.readAdd(weight.data, inDtype, i, d, w, j0, n); // w = base + delta, this tile of row i
      if (!io.write(w, out, outDtype, i, j0, n) && (firstNonFiniteRow < 0 || i < firstNonFiniteRow))
        firstNonFiniteRow = i;
      if (capture) {
        // Run the unmerge exactly as it will run later (same delta), and record where it misses.
        io.read(out, outDtype, i, w, j0, n);
        for (let j = 0; j < n; j++) w[j] -= d[j];
        io.write(w, back!, inDtype, 0, 0, n);
        const base = i * cols + j0;
        for (let j = 0; j < n; j++) if (backCmp![j] !== origCmp![base + j]) indices.push(base + j);
      }
    }
  }
  const merged = { dtype: outDtype, shape: [nRows, cols], data: out } as Tensor;
  if (!capture) return { merged, firstNonFiniteRow };
  return { merged, firstNonFiniteRow, residual: takeResidual(weight, origBits!, indices) };
}

function compareView(
  data: Tensor['data'],
  dtype: FloatDType,
): Int32Array | Uint16Array | BigUint64Array {
  return dtype === 'f32'
    ? new Int32Array(data.buffer, data.byteOffset, data.length)
    : (bitsView(data, dtype) as Uint16Array | BigUint64Array);
}

function takeResidual(
  weight: Tensor,
  bits: Uint16Array | Uint32Array | BigUint64Array,
  indices: number[],
): UnmergeResidual {
  const idx = Uint32Array.from(indices).sort(); // tiles visit the tensor out of order
  const ctor = bits.constructor as new (n: number) => typeof bits;
  const picked = new ctor(idx.length);
  for (let k = 0; k < idx.length; k++) picked[k] = bits[idx[k]];
  return {
    dtype: weight.dtype as FloatDType,
    shape: [...weight.shape],
    indices: idx,
    bits: picked,
    checksum: residualChecksum(weight.data),
  };
}

/**
 * The inverse of {@link mergeLowRankDelta}: `round_in(merged - delta)` row by row, then the
 * residual's original bits are put back. Bit-exact when `delta` is the one that was merged and
 * the residual is the one recorded then.
 */
export function unmergeLowRankDelta<D extends FloatDType>(
  merged: Tensor,
  delta: LowRankDelta,
  baseDtype: D,
  residual?: UnmergeResidual,
  name = 'weight',
): Tensor<D> {
  checkShape(merged, delta, name);
  const mergedDtype = merged.dtype as FloatDType;
  const { rows: nRows, cols } = delta;
  const packed = packLowRank(delta);
  const out = DTYPES[baseDtype].create(nRows * cols) as TypedArrayOf[D];
  const io = new FloatRows(cols);
  const m = new Float64Array(cols);
  const d = new Float64Array(cols);
  for (let i = 0; i < nRows; i++) {
    io.read(merged.data, mergedDtype, i, m);
    deltaRow(packed, i, d);
    for (let j = 0; j < cols; j++) m[j] -= d[j];
    io.write(m, out, baseDtype, i);
  }
  if (residual) {
    applyResidual(out, baseDtype, residual, name);
    if (residualChecksum(out) !== residual.checksum) {
      throw new AdapterError(
        'UNMERGE_MISMATCH',
        `${name}: after unmerge the weight does not match the original (checksum differs). The merged model or the adapter is not the one that was merged; use the same adapter folders, weights and order as for the merge.`,
        { tensor: name },
      );
    }
  }
  return { dtype: baseDtype, shape: [nRows, cols], data: out };
}

/** Writes the residual's original bits back into `data`. */
export function applyResidual(
  data: Tensor['data'],
  dtype: FloatDType,
  residual: UnmergeResidual,
  name: string,
): void {
  const bits = bitsView(data, dtype);
  if (bits.constructor !== residual.bits.constructor || residual.dtype !== dtype) {
    throw new AdapterError(
      'UNMERGE_RESIDUAL_MISMATCH',
      `${name}: the residual holds ${residual.bits.constructor.name} bits but the base dtype is ${dtype}.`,
      { tensor: name },
    );
  }
  const { indices } = residual;
  for (let k = 0; k < indices.length; k++) {
    if (indices[k] >= bits.length) {
      throw new AdapterError(
        'UNMERGE_RESIDUAL_MISMATCH',
        `${name}: residual index ${indices[k]} is outside the tensor (${bits.length} elements).`,
        {
          tensor: name,
        },
      );
    }
    bits[indices[k]] = residual.bits[k];
  }
}
