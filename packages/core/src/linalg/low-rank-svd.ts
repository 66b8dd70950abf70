import { CoreError } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { matmul, matmulTransposeB } from './matmul.js';
import { type MatrixDType, matrixShape, toMatrix } from './matrix.js';
import { qr } from './qr.js';
import { type SvdResult, svd } from './svd.js';
import { transpose } from './transpose.js';

/**
 * Exact thin SVD of a product of thin factors, `left @ right`, without forming the [m, n]
 * product: the shape of every LoRA delta (`B @ A`) and of a concatenation of adapters.
 *
 * left L: [m, r], right R: [r, n]. With L = Q1 R1 and R^T = Q2 R2 (Householder QR, reduced),
 * L R = Q1 (R1 R2^T) Q2^T, so the SVD of the small core C = R1 R2^T = Uc S Vc^T gives
 * U = Q1 Uc and V^T = Vc^T Q2^T. Cost O((m + n) r^2 + r^3) instead of O(m n r) for the product
 * plus an SVD of an [m, n] matrix. Returns k = min(m, n, r) triplets, singular values descending
 * (zero ones included when the product has lower rank); float64 throughout.
 */
export function lowRankProductSvd(
  left: Tensor,
  right: Tensor,
  options: { dtype?: MatrixDType } = {},
): SvdResult {
  const [m, r] = matrixShape(left, 'lowRankProductSvd(left)');
  const [rr, n] = matrixShape(right, 'lowRankProductSvd(right)');
  if (r !== rr) {
    throw new CoreError(
      'SHAPE_MISMATCH',
      `lowRankProductSvd: left is [${m}, ${r}] and right is [${rr}, ${n}]; the inner dimensions must match.`,
      { left: left.shape, right: right.shape },
    );
  }
  const dtype = options.dtype ?? 'f64';
  const first = qr(left); // Q1 [m, k1], R1 [k1, r]
  const second = qr(transpose(right)); // Q2 [n, k2], R2 [k2, r]
  const core = matmulTransposeB(first.r, second.r, { dtype: 'f64' }); // C = R1 R2^T: [k1, k2]
  const small = svd(core); // Uc [k1, kc], S [kc], Vc^T [kc, k2]
  const u = matmul(first.q, small.u, { dtype: 'f64' }); // [m, kc]
  const vt = matmulTransposeB(small.vt, second.q, { dtype: 'f64' }); // Vc^T Q2^T: [kc, n]
  const kc = small.s.length;
  return {
    u: toMatrix(u.data as Float64Array, m, kc, dtype),
    s: small.s,
    vt: toMatrix(vt.data as Float64Array, kc, n, dtype),
    sweeps: small.sweeps,
  };
}
