import type { Tensor } from '../tensor.js';
import {
  assertFiniteMatrix,
  type Matrix,
  type MatrixDType,
  matrixCopyF64,
  matrixShape,
  toMatrix,
} from './matrix.js';

/** Options of {@link qr}. */
export interface QrOptions {
  /**
   * `'reduced'` (default, "thin"): for A [m, n] with k = min(m, n), Q is [m, k] and R is [k, n].
   * `'complete'` ("full"): Q is [m, m] and R is [m, n]. Same names as `torch.linalg.qr`.
   */
  readonly mode?: 'reduced' | 'complete';
  /**
   * Flip signs so that R's diagonal is non-negative (Q's columns flipped to match; A = QR
   * still holds). Default false: the LAPACK convention, R[j, j] = -sign(A-column head) * norm,
   * which is what `torch.linalg.qr` returns.
   */
  readonly positiveDiagonal?: boolean;
  /** Output precision of Q and R; default f64 (the computation is always float64). */
  readonly dtype?: MatrixDType;
  /**
   * Column pivoting (LAPACK `geqp3` style): at step j the remaining column of largest norm is
   * moved to position j, so |R[0, 0]| >= |R[1, 1]| >= ... and the result factors A[:, p] = Q R
   * with `permutation` p. Default false.
   */
  readonly columnPivoting?: boolean;
}

/** Result of {@link qr}: A = Q R, Q with orthonormal columns, R upper triangular. */
export interface QrResult {
  readonly q: Matrix;
  readonly r: Matrix;
  /** With `columnPivoting`: column j of Q R is column `permutation[j]` of A. */
  readonly permutation?: Uint32Array;
}

/**
 * QR decomposition by Householder reflections, in float64.
 *
 * Column j (j < min(m-1, n)) is reduced by H_j = I - tau_j v_j v_j^T with v_j[j] = 1, chosen like
 * LAPACK's `dlarfg`: beta = -sign(alpha) * ||x||, tau = (beta - alpha) / beta, and no reflection
 * (tau = 0) when the entries below the diagonal are already zero. Q is then formed by applying
 * the reflectors to the identity in reverse order. Backward stable: ||A - QR|| ~ eps ||A||.
 *
 * A: [m, n] (any float dtype; never modified).
 */
export function qr(a: Tensor, options: QrOptions = {}): QrResult {
  const [m, n] = matrixShape(a, 'qr');
  const mode = options.mode ?? 'reduced';
  const dtype = options.dtype ?? 'f64';
  const k = Math.min(m, n);
  const work = matrixCopyF64(a, 'qr'); // becomes R (upper part) and the reflectors (lower part)
  assertFiniteMatrix(work, n, 'qr');
  const tau = new Float64Array(k);
  const w = new Float64Array(n);
  const permutation = options.columnPivoting
    ? Uint32Array.from({ length: n }, (_, i) => i)
    : undefined;

  for (let j = 0; j < k; j++) {
    if (permutation) pivotLargestColumn(work, m, n, j, permutation);
    // x = work[j:, j]; alpha = x[0]
    const alpha = work[j * n + j];
    let tail = 0;
    for (let i = j + 1; i < m; i++) tail += work[i * n + j] * work[i * n + j];
    if (tail === 0) continue; // already reduced: H = I (tau = 0), R[j, j] = alpha
    const norm = Math.sqrt(alpha * alpha + tail);
    const beta = alpha >= 0 ? -norm : norm;
    tau[j] = (beta - alpha) / beta;
    const scale = 1 / (alpha - beta);
    for (let i = j + 1; i < m; i++) work[i * n + j] *= scale; // v[i] for i > j; v[j] = 1 implied
    work[j * n + j] = beta;

    // Apply H to the trailing columns: work[j:, j+1:] -= tau * v (v^T work[j:, j+1:])
    applyReflector(work, n, j, m, j + 1, n, tau[j], w);
  }

  const qCols = mode === 'complete' ? m : k;
  const rRows = mode === 'complete' ? m : k;
  // R: the upper triangle of the first rRows rows; exact zeros below the diagonal.
  const r = new Float64Array(rRows * n);
  for (let i = 0; i < Math.min(rRows, m); i++) {
    for (let j = i; j < n; j++) r[i * n + j] = work[i * n + j];
  }
  // Q = H_0 H_1 ... H_{k-1} applied to the first qCols columns of I_m.
  const q = new Float64Array(m * qCols);
  for (let i = 0; i < qCols; i++) q[i * qCols + i] = 1;
  const wq = new Float64Array(qCols);
  for (let j = k - 1; j >= 0; j--) {
    if (tau[j] === 0) continue;
    applyReflectorFromWork(q, qCols, work, n, j, m, tau[j], wq);
  }

  if (options.positiveDiagonal) {
    for (let i = 0; i < k; i++) {
      if (r[i * n + i] < 0) {
        for (let j = i; j < n; j++) r[i * n + j] = -r[i * n + j];
        for (let row = 0; row < m; row++) q[row * qCols + i] = -q[row * qCols + i];
      }
    }
  }
  const result = { q: toMatrix(q, m, qCols, dtype), r: toMatrix(r, rRows, n, dtype) };
  return permutation ? { ...result, permutation } : result;
}

/**
 * Swaps into column j the column c >= j whose remaining part work[j:, c] has the largest norm
 * (norms recomputed each step: simple, and immune to the cancellation of norm downdating).
 */
function pivotLargestColumn(
  work: Float64Array,
  m: number,
  n: number,
  j: number,
  permutation: Uint32Array,
): void {
  const norms = new Float64Array(n);
  for (let i = j; i < m; i++) {
    const row = i * n;
    for (let c = j; c < n; c++) norms[c] += work[row + c] * work[row + c];
  }
  let best = j;
  for (let c = j + 1; c < n; c++) if (norms[c] > norms[best]) best = c;
  if (best === j) return;
  for (let i = 0; i < m; i++) {
    const t = work[i * n + j];
    work[i * n + j] = work[i * n + best];
    work[i * n + best] = t;
  }
  const p = permutation[j];
  permutation[j] = permutation[best];
  permutation[best] = p;
}

/**
 * H = I - tau v v^T applied from the left to rows j..m-1, columns c0..c1-1 of `work` [., n],
 * where v is stored in column j of `work` below row j (v[j] = 1).
 */
function applyReflector(
  work: Float64Array,
  n: number,
  j: number,
  m: number,
  c0: number,
  c1: number,
  tau: number,
  w: Float64Array,
): void {
  // w = v^T work[j:, c0:c1], accumulated row by row so the inner loop is contiguous.
  for (let c = c0; c < c1; c++) w[c] = work[j * n + c];
  for (let i = j + 1; i < m; i++) {
    const vi = work[i * n + j];
    if (vi === 0) continue;
    const row = i * n;
    for (let c = c0; c < c1; c++) w[c] += vi * work[row + c];
  }
  for (let c = c0; c < c1; c++) work[j * n + c] -= tau * w[c];
  for (let i = j + 1; i < m; i++) {
    const f = tau * work[i * n + j];
    if (f === 0) continue;
    const row = i * n;
    for (let c = c0; c < c1; c++) work[row + c] -= f * w[c];
  }
}

/** Same reflector (v from column j of `work` [m, n]) applied to all columns of `q` [m, qCols]. */
function applyReflectorFromWork(
  q: Float64Array,
  qCols: number,
  work: Float64Array,
  n: number,
  j: number,
  m: number,
  tau: number,
  w: Float64Array,
): void {
  for (let c = 0; c < qCols; c++) w[c] = q[j * qCols + c];
  for (let i = j + 1; i < m; i++) {
    const vi = work[i * n + j];
    if (vi === 0) continue;
    const row = i * qCols;
    for (let c = 0; c < qCols; c++) w[c] += vi * q[row + c];
  }
  for (let c = 0; c < qCols; c++) q[j * qCols + c] -= tau * w[c];
  for (let i = j + 1; i < m; i++) {
    const f = tau * work[i * n + j];
    if (f === 0) continue;
    const row = i * qCols;
    for (let c = 0; c < qCols; c++) q[row + c] -= f * w[c];
  }
}
