import { CoreError } from '../errors.js';
import { type Tensor, tensor } from '../tensor.js';
import {
  assertFiniteMatrix,
  type Matrix,
  type MatrixDType,
  matrixCopyF64,
  matrixShape,
  toMatrix,
} from './matrix.js';
import { matmulTransposeB } from './matmul.js';
import { qr } from './qr.js';
import { transpose } from './transpose.js';

/** Options of {@link svd}. */
export interface SvdOptions {
  /** Output precision of U and V^T; default f64 (the computation is always float64). */
  readonly dtype?: MatrixDType;
  /** Give up (SVD_NO_CONVERGENCE) after this many Jacobi sweeps; default 60 (10 is typical). */
  readonly maxSweeps?: number;
  /**
   * QR first, then Jacobi on the small triangular factor (default true): faster, most of all
   * when one side is much longer than the other. False runs plain one-sided Jacobi on A.
   */
  readonly precondition?: boolean;
}

/**
 * Thin singular value decomposition A = U diag(s) V^T of A [m, n], with k = min(m, n):
 * `u` [m, k] and `vt` [k, n] have orthonormal columns / rows, `s` holds the k singular values in
 * descending order (all >= 0). As with LAPACK, each pair (u_i, v_i) is unique only up to a
 * common sign (and up to rotation within repeated singular values).
 */
export interface SvdResult {
  readonly u: Matrix;
  readonly s: Float64Array;
  readonly vt: Matrix;
  /** Number of Jacobi sweeps it took (diagnostic). */
  readonly sweeps: number;
}

/**
 * Exact (to float64 rounding) SVD for small and medium matrices by one-sided Jacobi
 * (Hestenes): pairs of vectors are rotated until all are mutually orthogonal; their norms are
 * the singular values. Accurate to high relative precision, simple, and in float64 throughout.
 *
 * With k = min(m, n): the long side is first reduced by a column-pivoted Householder QR
 * (A P = Q R, on A^T when m < n), then the k rows of the k x k factor R are rotated, so a sweep
 * costs ~4 k^3 flops whatever the long side. Measured (CPU time, shared machine, Gaussian
 * input): 100 x 100 ~0.07 s, 300 x 300 ~1.5 s (11 sweeps), 1000 x 100 ~0.2 s. For large
 * matrices where only the leading part is needed, use {@link randomizedSvd}.
 *
 * A pair is rotated while |<a_i, a_j>| > len * eps * ||a_i|| ||a_j||; a sweep with no
 * rotation ends the iteration. Directions for zero singular values are completed to an
 * orthonormal set (Gram-Schmidt on unit vectors), so U and V^T are always orthonormal.
 *
 * A: [m, n], any float dtype, never modified; non-finite values are rejected.
 */
export function svd(a: Tensor, options: SvdOptions = {}): SvdResult {
  const [m, n] = matrixShape(a, 'svd');
  const values = matrixCopyF64(a, 'svd');
  assertFiniteMatrix(values, n, 'svd');
  const dtype = options.dtype ?? 'f64';
  if (m >= n) {
    const r = svdTall(values, m, n, options);
    return {
      u: toMatrix(r.u, m, n, dtype),
      s: r.s,
      vt: toMatrix(r.vt, n, n, dtype),
      sweeps: r.sweeps,
    };
  }
  // Wide: A^T = U' S V'^T, so A = V' S U'^T.
  const r = svdTall(transpose(tensor('f64', [m, n], values)).data as Float64Array, n, m, options);
  const u = transpose(tensor('f64', [m, m], r.vt)).data as Float64Array;
  const vt = transpose(tensor('f64', [n, m], r.u)).data as Float64Array;
  return { u: toMatrix(u, m, m, dtype), s: r.s, vt: toMatrix(vt, m, n, dtype), sweeps: r.sweeps };
}

interface TallSvd {
  u: Float64Array; // [m, n]
  s: Float64Array; // [n]
  vt: Float64Array; // [n, n]
  sweeps: number;
}

/**
 * SVD of a tall A [m, n] (m >= n), float64 values owned by the caller. With preconditioning,
 * A P = Q R first (column-pivoted QR) and Jacobi runs on the rows of R ([n, n]; the "R^T"
 * variant of Drmac & Veselic): shorter vectors when m > n, and fewer sweeps because pivoting
 * makes R nearly diagonal-dominant. Then R = (W^T) S X with X the normalised rows and W the
 * accumulated rotations, so U = Q W^T and V^T = X P^T.
 */
function svdTall(values: Float64Array, m: number, n: number, options: SvdOptions): TallSvd {
  const maxSweeps = options.maxSweeps ?? 60;
  if (options.precondition ?? true) {
    // A[:, p] = Q R: Q [m, n], R [n, n], pivoted so R's rows are graded by size.
    const { q, r, permutation } = qr(tensor('f64', [m, n], values), { columnPivoting: true });
    const rows = Float64Array.from(r.data);
    const { s, left, right, sweeps } = jacobiSvdOfRows(rows, n, n, maxSweeps);
    const u = matmulTransposeB(q, tensor('f64', [n, n], right), { dtype: 'f64' })
      .data as Float64Array;
    // A = Q R P^T, so V^T = left P^T: column permutation[c] of V^T is column c of left.
    const vt = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < n; c++) vt[i * n + permutation![c]] = left[i * n + c];
    }
    return { u, s, vt, sweeps };
  }
  // Plain one-sided Jacobi on the columns of A (rows of A^T): A V = U S.
  const rows = transpose(tensor('f64', [m, n], values)).data as Float64Array;
  const { s, left, right, sweeps } = jacobiSvdOfRows(rows, n, m, maxSweeps);
  const u = transpose(tensor('f64', [n, m], left)).data as Float64Array;
  return { u, s, vt: right, sweeps };
}

/**
 * Orthogonalises the k rows of `rows` [k, len] (k <= len) and returns the sorted row norms `s`,
 * the unit rows `left` [k, len] and the accumulated rotations `right` [k, k], both permuted to
 * the descending order of s: X = right^T diag(s) left, where X is the input.
 */
function jacobiSvdOfRows(
  rows: Float64Array,
  k: number,
  len: number,
  maxSweeps: number,
): { s: Float64Array; left: Float64Array; right: Float64Array; sweeps: number } {
  const rotations = new Float64Array(k * k); // row i = the combination of inputs forming row i
  for (let i = 0; i < k; i++) rotations[i * k + i] = 1;
  const sweeps = jacobiOrthogonalizeRows(rows, k, len, rotations, maxSweeps);
  const s = new Float64Array(k);
  for (let i = 0; i < k; i++) s[i] = Math.sqrt(dotRows(rows, i * len, i * len, len));
  normalizeAndComplete(rows, s, k, len);
  const order = Array.from({ length: k }, (_, i) => i).sort((x, y) => s[y] - s[x] || x - y);
  return {
    s: Float64Array.from(order, (i) => s[i]),
    left: permuteRows(rows, order, len),
    right: permuteRows(rotations, order, k),
    sweeps,
  };
}

/** The singular values of A in descending order (same algorithm as {@link svd}). */
export function singularValues(a: Tensor): Float64Array {
  return svd(a).s;
}

/**
 * Cyclic one-sided Jacobi on the rows of `rows` [k, len]; every rotation of rows (i, j) is
 * also applied to rows (i, j) of `rotations` [k, k]. Returns the number of sweeps.
 */
function jacobiOrthogonalizeRows(
  rows: Float64Array,
  k: number,
  len: number,
  rotations: Float64Array,
  maxSweeps: number,
): number {
  const tolerance = Math.max(len, 1) * Number.EPSILON;
  const squaredNorms = new Float64Array(k);
  for (let sweep = 1; sweep <= maxSweeps; sweep++) {
    // Fresh norms each sweep so the per-rotation updates cannot drift.
    for (let i = 0; i < k; i++) squaredNorms[i] = dotRows(rows, i * len, i * len, len);
    let rotated = false;
    for (let i = 0; i < k - 1; i++) {
      for (let j = i + 1; j < k; j++) {
        const alpha = squaredNorms[i];
        const beta = squaredNorms[j];
        if (alpha < TINY || beta < TINY) continue; // a (numerically) zero vector is orthogonal to all
        const gamma = dotRows(rows, i * len, j * len, len);
        if (Math.abs(gamma) <= tolerance * Math.sqrt(alpha) * Math.sqrt(beta)) continue;
        rotated = true;
        // Symmetric Schur rotation that zeroes gamma (Golub & Van Loan, Alg. 8.4.1):
        // zeta = (beta - alpha) / (2 gamma), t = sign(zeta) / (|zeta| + sqrt(1 + zeta^2)).
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const sn = c * t;
        rotateRows(rows, i * len, j * len, len, c, sn);
        rotateRows(rotations, i * k, j * k, k, c, sn);
        squaredNorms[i] = alpha - t * gamma;
        squaredNorms[j] = beta + t * gamma;
      }
    }
    if (!rotated) return sweep;
  }
  throw new CoreError(
    'SVD_NO_CONVERGENCE',
    `svd: one-sided Jacobi did not converge in ${maxSweeps} sweeps (${k} vectors of length ${len}). ` +
      'The matrix may be badly scaled; try rescaling it or raise maxSweeps.',
    { k, len, maxSweeps },
  );
}

// Squared norms below this are treated as exactly zero vectors (their direction is noise).
const TINY = 1e-300;

/** [x_i, x_j] <- [c x_i - s x_j, s x_i + c x_j] for rows starting at offsets i and j. */
function rotateRows(
  x: Float64Array,
  i: number,
  j: number,
  len: number,
  c: number,
  s: number,
): void {
  for (let p = 0; p < len; p++) {
    const xi = x[i + p];
    const xj = x[j + p];
    x[i + p] = c * xi - s * xj;
    x[j + p] = s * xi + c * xj;
  }
}

function dotRows(x: Float64Array, i: number, j: number, len: number): number {
  let sum = 0;
  for (let p = 0; p < len; p++) sum += x[i + p] * x[j + p];
  return sum;
}

/**
 * Divides each row by its norm s[i]; rows with (numerically) zero norm get s[i] = 0 and a unit
 * vector orthogonal to all other rows (Gram-Schmidt, twice, on e_0, e_1, ...).
 */
function normalizeAndComplete(rows: Float64Array, s: Float64Array, k: number, len: number): void {
  const zero: number[] = [];
  for (let i = 0; i < k; i++) {
    if (s[i] * s[i] < TINY) {
      s[i] = 0;
      zero.push(i);
      continue;
    }
    const inv = 1 / s[i];
    for (let p = 0; p < len; p++) rows[i * len + p] *= inv;
  }
  if (zero.length === 0) return;
  const accepted = Array.from({ length: k }, (_, i) => i).filter((i) => s[i] > 0);
  const v = new Float64Array(len);
  let candidate = 0;
  for (const z of zero) {
    for (; candidate < len; candidate++) {
      v.fill(0);
      v[candidate] = 1;
      for (let pass = 0; pass < 2; pass++) {
        for (const r of accepted) {
          let proj = 0;
          for (let p = 0; p < len; p++) proj += rows[r * len + p] * v[p];
          for (let p = 0; p < len; p++) v[p] -= proj * rows[r * len + p];
        }
      }
      let norm = 0;
      for (let p = 0; p < len; p++) norm += v[p] * v[p];
      norm = Math.sqrt(norm);
      if (norm > 0.5) {
        for (let p = 0; p < len; p++) rows[z * len + p] = v[p] / norm;
        accepted.push(z);
        candidate++;
        break;
      }
    }
  }
}

function permuteRows(x: Float64Array, order: readonly number[], len: number): Float64Array {
  const out = new Float64Array(order.length * len);
  for (let to = 0; to < order.length; to++) {
    out.set(x.subarray(order[to] * len, (order[to] + 1) * len), to * len);
  }
  return out;
}
