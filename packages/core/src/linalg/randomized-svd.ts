import { CoreError } from '../errors.js';
import { createRng, type Rng, type Seed64 } from '../random.js';
import { type Tensor, tensor } from '../tensor.js';
import { matmul, matmulTransposeB } from './matmul.js';
import {
  assertFiniteMatrix,
  type Matrix,
  type MatrixDType,
  matrixShape,
  matrixValues,
  toMatrix,
} from './matrix.js';
import { qr } from './qr.js';
import { svd } from './svd.js';
import { transpose } from './transpose.js';

/** Options of {@link randomizedSvd}. */
export interface RandomizedSvdOptions {
  /** Target rank k: the number of singular triplets returned (1 <= k <= min(m, n)). */
  readonly rank: number;
  /** Extra random samples p beyond k (default 10; HMT recommend 5-10). */
  readonly oversampling?: number;
  /** Power (subspace) iterations q (default 2): each costs two passes over A, and sharpens a slowly decaying spectrum. */
  readonly powerIterations?: number;
  /** Seed of the Gaussian test matrix (default 0); ignored when `rng` is given. */
  readonly seed?: Seed64;
  /** A generator to draw the Gaussian test matrix from (advanced by n * (k + p) normals). */
  readonly rng?: Rng;
  /** Output precision of U and V^T; default f64. */
  readonly dtype?: MatrixDType;
}

/** Result of {@link randomizedSvd}: A ~ U diag(s) V^T with rank k. */
export interface RandomizedSvdResult {
  /** [m, k], orthonormal columns. */
  readonly u: Matrix;
  /** k singular value estimates, descending. */
  readonly s: Float64Array;
  /** [k, n], orthonormal rows. */
  readonly vt: Matrix;
  /** Number of random samples l = min(k + p, min(m, n)). */
  readonly sampleSize: number;
  /** ||A||_F. */
  readonly frobeniusNorm: number;
  /**
   * The achieved error ||A - U diag(s) V^T||_F, computed without another pass over A as
   * sqrt(||A||_F^2 - sum s_i^2) (exact in exact arithmetic because U diag(s) V^T is the
   * projection of A onto a k-dimensional subspace). The subtraction cancels: it is reliable only
   * to about sqrt(eps * sqrt(m)) ||A||_F (1e-8 to 2e-7 ||A||_F in practice); use
   * {@link lowRankResidual} (one more pass over A) for the exact value of a tiny residual.
   * Compare with the optimal tail sqrt(sum_{i>k} sigma_i^2) when the spectrum is known.
   */
  readonly frobeniusResidual: number;
}

/**
 * Truncated SVD of a large matrix by randomized range finding (Halko, Martinsson & Tropp,
 * "Finding structure with randomness", SIAM Review 2011, Algorithms 4.4 and 5.1):
 *
 * 1. Y = A Omega with Omega [n, l] Gaussian (seeded), l = k + p; Q = orth(Y) by QR.
 * 2. q power iterations, re-orthonormalising each time: Q = orth(A orth(A^T Q)).
 * 3. B = Q^T A [l, n]; exact SVD B = Ub S Vt (Jacobi); U = Q Ub[:, :k], s = S[:k], V^T = Vt[:k].
 *
 * Error (HMT Theorem 10.5 with the truncation step): in expectation, with no power iterations,
 * ||A - U S V^T||_F <= sqrt(2 + k / (p - 1)) * sqrt(sum_{i>k} sigma_i^2); each power iteration
 * drives the error towards the optimal tail sqrt(sum_{i>k} sigma_i^2) (the Eckart-Young
 * minimum). The achieved error is returned as `frobeniusResidual`; {@link spectralResidual}
 * estimates the spectral error (optimum sigma_{k+1}).
 *
 * Cost: 2q + 2 passes over A, each a product with a thin [., l] matrix (blocked float64 kernel),
 * plus one transpose of A. Measured on the shared 2-core project machine (Node 20, under load
 * from other jobs): a 4096 x 4096 float32 matrix, k = 16, p = 10, q = 2 takes 3.5 to 5.7 s of CPU
 * time (wall time 8 to 20 s while the machine was oversubscribed); `lora bench --only linalg`
 * measures it. A is never modified or copied to f64 (one transposed copy in its own dtype).
 *
 * A: [m, n], any float dtype.
 */
export function randomizedSvd(a: Tensor, options: RandomizedSvdOptions): RandomizedSvdResult {
  const [m, n] = matrixShape(a, 'randomizedSvd');
  const k = options.rank;
  const oversampling = options.oversampling ?? 10;
  const powerIterations = options.powerIterations ?? 2;
  if (!Number.isInteger(k) || k < 1 || k > Math.min(m, n)) {
    throw new CoreError(
      'SVD_RANK_INVALID',
      `randomizedSvd: rank must be an integer in [1, ${Math.min(m, n)}] for a [${m}, ${n}] matrix, got ${k}.`,
      { rank: k, shape: [m, n] },
    );
  }
  for (const [name, v] of [
    ['oversampling', oversampling],
    ['powerIterations', powerIterations],
  ] as const) {
    if (!Number.isInteger(v) || v < 0) {
      throw new CoreError(
        'SVD_OPTION_INVALID',
        `randomizedSvd: ${name} must be a non-negative integer, got ${v}.`,
        {
          [name]: v,
        },
      );
    }
  }
  const values = matrixValues(a, 'randomizedSvd');
  assertFiniteMatrix(values, n, 'randomizedSvd');
  const matrix = tensor(values instanceof Float64Array ? 'f64' : 'f32', [m, n], values) as Matrix;
  const sampleSize = Math.min(k + oversampling, Math.min(m, n));
  const rng = options.rng ?? createRng(options.seed ?? 0);

  // Omega^T: [l, n], so Y = A Omega = A @ (Omega^T)^T.
  const omegaT = tensor('f64', [sampleSize, n], rng.normalArray(sampleSize * n));
  let q = qr(matmulTransposeB(matrix, omegaT)).q; // [m, l]
  const matrixT = transpose(matrix); // [n, m], same dtype as A
  for (let it = 0; it < powerIterations; it++) {
    const z = qr(matmulTransposeB(matrixT, transpose(q))).q; // orth(A^T Q): [n, l]
    q = qr(matmulTransposeB(matrix, transpose(z))).q; // orth(A Z): [m, l]
  }
  // B = Q^T A = (A^T Q)^T: [l, n]
  const b = transpose(matmulTransposeB(matrixT, transpose(q)));
  const small = svd(b); // Ub [l, l], S [l], Vt [l, n]

  // Keep the leading k: U = Q @ Ub[:, :k].
  const ubK = new Float64Array(sampleSize * k);
  for (let i = 0; i < sampleSize; i++) {
    for (let j = 0; j < k; j++) ubK[i * k + j] = small.u.data[i * sampleSize + j];
  }
  const u = matmul(q, tensor('f64', [sampleSize, k], ubK)).data as Float64Array;
  const vt = (small.vt.data as Float64Array).slice(0, k * n);
  const s = small.s.slice(0, k);

  let normSquared = 0;
  for (let i = 0; i < values.length; i++) normSquared += values[i] * values[i];
  let captured = 0;
  for (const x of s) captured += x * x;
  const dtype = options.dtype ?? 'f64';
  return {
    u: toMatrix(u, m, k, dtype),
    s,
    vt: toMatrix(vt, k, n, dtype),
    sampleSize,
    frobeniusNorm: Math.sqrt(normSquared),
    frobeniusResidual: Math.sqrt(Math.max(0, normSquared - captured)),
  };
}

/**
 * The exact Frobenius error ||A - U diag(s) V^T||_F of a low-rank approximation, row by row
 * in float64 without forming the [m, n] product. A: [m, n], U: [m, k], s: [k], V^T: [k, n].
 */
export function lowRankResidual(a: Tensor, u: Tensor, s: ArrayLike<number>, vt: Tensor): number {
  const [m, n] = matrixShape(a, 'lowRankResidual(a)');
  const [um, k] = matrixShape(u, 'lowRankResidual(u)');
  const [vk, vn] = matrixShape(vt, 'lowRankResidual(vt)');
  if (um !== m || vn !== n || vk !== k || s.length !== k) {
    throw new CoreError(
      'SHAPE_MISMATCH',
      `lowRankResidual: A [${m}, ${n}] needs U [${m}, k], s [k], V^T [k, ${n}]; got U [${um}, ${k}], ` +
        `s [${s.length}], V^T [${vk}, ${vn}].`,
      { a: [m, n], u: [um, k], s: s.length, vt: [vk, vn] },
    );
  }
  const x = matrixValues(a, 'lowRankResidual(a)');
  const uv = matrixValues(u, 'lowRankResidual(u)');
  const vv = matrixValues(vt, 'lowRankResidual(vt)');
  const row = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) row[j] = x[i * n + j];
    for (let p = 0; p < k; p++) {
      const f = uv[i * k + p] * s[p];
      if (f === 0) continue;
      for (let j = 0; j < n; j++) row[j] -= f * vv[p * n + j];
    }
    for (let j = 0; j < n; j++) sum += row[j] * row[j];
  }
  return Math.sqrt(sum);
}

/** Options of {@link spectralResidual}. */
export interface SpectralResidualOptions {
  /** Power iterations (default 30); each is two passes over A. */
  readonly iterations?: number;
  /** Seed of the random start vector (default 0). */
  readonly seed?: Seed64;
}

/**
 * Estimates the spectral error ||A - U diag(s) V^T||_2 (the largest singular value of the
 * residual E) by power iteration on E^T E, applying E and E^T implicitly (E x = A x - U (s .* (V^T x))),
 * so nothing [m, n] is formed. The estimate is a lower bound that rises towards ||E||_2; the
 * error after t iterations shrinks like (sigma_2(E) / sigma_1(E))^(2t). The optimum for rank k
 * is sigma_{k+1}(A) (Eckart-Young).
 */
export function spectralResidual(
  a: Tensor,
  u: Tensor,
  s: ArrayLike<number>,
  vt: Tensor,
  options: SpectralResidualOptions = {},
): number {
  const [m, n] = matrixShape(a, 'spectralResidual(a)');
  const [um, k] = matrixShape(u, 'spectralResidual(u)');
  const [vk, vn] = matrixShape(vt, 'spectralResidual(vt)');
  if (um !== m || vn !== n || vk !== k || s.length !== k) {
    throw new CoreError(
      'SHAPE_MISMATCH',
      `spectralResidual: A [${m}, ${n}] needs U [${m}, k], s [k], V^T [k, ${n}]; got U [${um}, ${k}], ` +
        `s [${s.length}], V^T [${vk}, ${vn}].`,
      { a: [m, n], u: [um, k], s: s.length, vt: [vk, vn] },
    );
  }
  const x = matrixValues(a, 'spectralResidual(a)');
  const uv = matrixValues(u, 'spectralResidual(u)');
  const vv = matrixValues(vt, 'spectralResidual(vt)');
  const iterations = options.iterations ?? 30;
  let v = createRng(options.seed ?? 0).normalArray(n); // current right vector, [n]
  const y = new Float64Array(m);
  const coeff = new Float64Array(k);
  let estimate = 0;
  for (let it = 0; it < iterations; it++) {
    normalizeInPlace(v);
    // y = E v = A v - U (s .* (V^T v))
    for (let p = 0; p < k; p++) {
      let d = 0;
      for (let j = 0; j < n; j++) d += vv[p * n + j] * v[j];
      coeff[p] = s[p] * d;
    }
    for (let i = 0; i < m; i++) {
      let sum = 0;
      for (let j = 0; j < n; j++) sum += x[i * n + j] * v[j];
      for (let p = 0; p < k; p++) sum -= uv[i * k + p] * coeff[p];
      y[i] = sum;
    }
    // z = E^T y = A^T y - V (s .* (U^T y)), accumulated row by row of A.
    const z = new Float64Array(n);
    for (let i = 0; i < m; i++) {
      const yi = y[i];
      if (yi === 0) continue;
      for (let j = 0; j < n; j++) z[j] += yi * x[i * n + j];
    }
    coeff.fill(0);
    for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) coeff[p] += uv[i * k + p] * y[i];
    for (let p = 0; p < k; p++) {
      const c = s[p] * coeff[p];
      for (let j = 0; j < n; j++) z[j] -= c * vv[p * n + j];
    }
    // ||E v|| for a unit v is the current estimate of sigma_1(E).
    let yNorm = 0;
    for (let i = 0; i < m; i++) yNorm += y[i] * y[i];
    estimate = Math.sqrt(yNorm);
    v = z;
    if (estimate === 0) break;
  }
  return estimate;
}

function normalizeInPlace(v: Float64Array): void {
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += v[i] * v[i];
  const norm = Math.sqrt(sum);
  if (norm === 0) return;
  for (let i = 0; i < v.length; i++) v[i] /= norm;
}
