import { AdapterError } from '../errors.js';

/**
 * A weight update of low rank, expressed in the layout of the STORED weight:
 *
 *   delta[i, j] = sum_k coef[i, k] * basis[k, j]      delta: [rows, cols]
 *
 * coef: [rows, rank], basis: [rank, cols], both row-major float64. A torch Linear (`[out, in]`)
 * gets coef = s·B and basis = A; a Conv1D (fan_in_fan_out, stored `[in, out]`) or an embedding
 * (`[vocab, dim]`) gets the transposed product: coef = s·A^T and basis = B^T. The scale always
 * goes into coef, so the basis holds the adapter's own values (exact in float32, which the packed
 * form uses). Several adapters
 * are one LowRankDelta whose ranks are concatenated (see {@link concatLowRank}).
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

/**
 * The low-rank form of `scale · B·A` for a weight stored `[out, in]` (transpose false) or
 * `[in, out]` (transpose true: GPT-2 Conv1D with fan_in_fan_out, or an embedding, whose delta is
 * `(B·A)^T`). A: [r, in] values, B: [out, r] values.
 */
export function lowRankFromFactors(
  A: ArrayLike<number>,
  B: ArrayLike<number>,
  r: number,
  inFeatures: number,
  outFeatures: number,
  scale: number,
  transpose: boolean,
): LowRankDelta {
  if (A.length !== r * inFeatures || B.length !== outFeatures * r) {
    throw new AdapterError(
      'LORA_FACTOR_SHAPE',
      `LoRA factors do not fit: A has ${A.length} values (expected r x in = ${r} x ${inFeatures}), B has ${B.length} (expected out x r = ${outFeatures} x ${r}).`,
    );
  }
  if (!transpose) {
    // coef = scale·B [out, r], basis = A [r, in]
    const coef = new Float64Array(outFeatures * r);
    for (let i = 0; i < coef.length; i++) coef[i] = scale * B[i];
    return { rows: outFeatures, cols: inFeatures, rank: r, coef, basis: Float64Array.from(A) };
  }
  // coef = scale·A^T [in, r], basis = B^T [r, out]
  const coef = new Float64Array(inFeatures * r);
  for (let k = 0; k < r; k++)
    for (let i = 0; i < inFeatures; i++) coef[i * r + k] = scale * A[k * inFeatures + i];
  const basis = new Float64Array(r * outFeatures);
  for (let o = 0; o < outFeatures; o++)
    for (let k = 0; k < r; k++) basis[k * outFeatures + o] = B[o * r + k];
  return { rows: inFeatures, cols: outFeatures, rank: r, coef, basis };
}

/** Several deltas of the same [rows, cols] as one of summed rank: sum_i delta_i. */
export function concatLowRank(deltas: readonly LowRankDelta[]): LowRankDelta {
  if (deltas.length === 1) return deltas[0];
  const { rows, cols } = deltas[0];
  let rank = 0;
  for (const d of deltas) {
    if (d.rows !== rows || d.cols !== cols) {
      throw new AdapterError(
        'LORA_FACTOR_SHAPE',
        `Cannot add deltas of shapes [${rows}, ${cols}] and [${d.rows}, ${d.cols}].`,
      );
    }
    rank += d.rank;
  }
  const coef = new Float64Array(rows * rank);
  const basis = new Float64Array(rank * cols);
  let k0 = 0;
  for (const d of deltas) {
    for (let i = 0; i < rows; i++) {
      for (let k = 0; k < d.rank; k++) coef[i * rank + k0 + k] = d.coef[i * d.rank + k];
    }
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
 * A LowRankDelta laid out for {@link deltaRow}: the rank padded to a multiple of `width` with
 * zeros, and the basis transposed in chunks of `width` ranks, so the values multiplied into one
 * output element are adjacent in memory.
 */
export interface PackedLowRank {
  readonly rows: number;
  readonly cols: number;
  readonly chunks: number;
  readonly width: 4 | 8 | 16;
  /** [rows, chunks * width] */
  readonly coef: Float64Array;
  /**
   * [chunks, cols, width] in float32: half the bytes streamed from cache per row (a 4096-wide
   * rank-16 basis is 256 KiB, inside L2). Exact for f32/f16/bf16 adapters; f64 adapter values
   * are rounded to float32 here (coef, which carries the scale, stays float64).
   */
  readonly basisT: Float32Array;
}

export function packLowRank(d: LowRankDelta): PackedLowRank {
  const P = ranksPerPass(d.rank);
  const chunks = Math.max(1, Math.ceil(d.rank / P));
  const width = chunks * P;
  const coef = new Float64Array(d.rows * width);
  for (let i = 0; i < d.rows; i++)
    coef.set(d.coef.subarray(i * d.rank, (i + 1) * d.rank), i * width);
  const basisT = new Float32Array(chunks * d.cols * P);
  for (let k = 0; k < d.rank; k++) {
    const q = Math.floor(k / P);
    const t = k % P;
    const src = k * d.cols;
    const dst = q * d.cols * P + t;
    for (let j = 0; j < d.cols; j++) basisT[dst + j * P] = d.basis[src + j];
  }
  return { rows: d.rows, cols: d.cols, chunks, width: P, coef, basisT };
}

/**
 * Writes row `i` of the delta into `out` (length cols): each output element is a dot product of
 * the row's coefficients with `width` adjacent basis values, so `out` is stored once per
 * `width` ranks and everything touched stays in cache. The order of operations is fixed, so a
 * row always gives the same bits (the exact unmerge relies on it). About 3x faster in V8 than
 * a rank-at-a-time axpy. With `j0` and `n`, only columns [j0, j0 + n) (into out[0..n)): the
 * merge works in column tiles so the tile's basis stays in L1/L2 across rows.
 */
export function deltaRow(p: PackedLowRank, i: number, out: Float64Array, j0 = 0, n = p.cols): void {
  if (p.width === 16) deltaRow16(p, i, out, j0, n);
  else if (p.width === 8) deltaRow8(p, i, out, j0, n);
  else deltaRow4(p, i, out, j0, n);
}

function deltaRow4(p: PackedLowRank, i: number, out: Float64Array, j0: number, n: number): void {
  const { coef, basisT } = p;
  const c = i * 4;
  const c0 = coef[c];
  const c1 = coef[c + 1];
  const c2 = coef[c + 2];
  const c3 = coef[c + 3];
  for (let j = 0, b = j0 * 4; j < n; j++, b += 4) {
    out[j] = c0 * basisT[b] + c1 * basisT[b + 1] + c2 * basisT[b + 2] + c3 * basisT[b + 3];
  }
}

function deltaRow8(p: PackedLowRank, i: number, out: Float64Array, j0: number, n: number): void {
  const { coef, basisT } = p;
  const c = i * 8;
  const c0 = coef[c];
  const c1 = coef[c + 1];
  const c2 = coef[c + 2];
  const c3 = coef[c + 3];
  const c4 = coef[c + 4];
  const c5 = coef[c + 5];
  const c6 = coef[c + 6];
  const c7 = coef[c + 7];
  for (let j = 0, b = j0 * 8; j < n; j++, b += 8) {
    out[j] =
      c0 * basisT[b] +
      c1 * basisT[b + 1] +
      c2 * basisT[b + 2] +
      c3 * basisT[b + 3] +
      c4 * basisT[b + 4] +
      c5 * basisT[b + 5] +
      c6 * basisT[b + 6] +
      c7 * basisT[b + 7];
  }
}

function deltaRow16(p: PackedLowRank, i: number, out: Float64Array, j0: number, n: number): void {
  const { cols, chunks, coef, basisT } = p;
  const P = 16;
  for (let q = 0; q < chunks; q++) {
    const c = (i * chunks + q) * P;
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
    const b0 = (q * cols + j0) * P;
    if (q === 0) {
      for (let j = 0, b = b0; j < n; j++, b += P) {
        out[j] =
          c0 * basisT[b] +
          c1 * basisT[b + 1] +
          c2 * basisT[b + 2] +
          c3 * basisT[b + 3] +
          c4 * basisT[b + 4] +
          c5 * basisT[b + 5] +
          c6 * basisT[b + 6] +
          c7 * basisT[b + 7] +
          c8 * basisT[b + 8] +
          c9 * basisT[b + 9] +
          c10 * basisT[b + 10] +
          c11 * basisT[b + 11] +
          c12 * basisT[b + 12] +
          c13 * basisT[b + 13] +
          c14 * basisT[b + 14] +
          c15 * basisT[b + 15];
      }
    } else {
      for (let j = 0, b = b0; j < n; j++, b += P) {
        out[j] +=
          c0 * basisT[b] +
          c1 * basisT[b + 1] +
          c2 * basisT[b + 2] +
          c3 * basisT[b + 3] +
          c4 * basisT[b + 4] +
          c5 * basisT[b + 5] +
          c6 * basisT[b + 6] +
          c7 * basisT[b + 7] +
          c8 * basisT[b + 8] +
          c9 * basisT[b + 9] +
          c10 * basisT[b + 10] +
          c11 * basisT[b + 11] +
          c12 * basisT[b + 12] +
          c13 * basisT[b + 13] +
          c14 * basisT[b + 14] +
          c15 * basisT[b + 15];
      }
    }
  }
}
