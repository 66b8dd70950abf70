import { describe, expect, it } from 'vitest';
import { CoreError } from '../errors.js';
import { createRng } from '../random.js';
import { f32, f64 } from '../tensor.js';
import { matmulReference } from './matmul.js';
import { identity, type Matrix, maxAbsDiff } from './matrix.js';
import { qr } from './qr.js';
import { transpose } from './transpose.js';

function expectOrthonormalColumns(q: Matrix, tol: number): void {
  const gram = matmulReference(transpose(q), q);
  expect(maxAbsDiff(gram, identity(q.shape[1]))).toBeLessThan(tol);
}

function expectUpperTriangular(r: Matrix): void {
  const [rows, cols] = r.shape;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < Math.min(i, cols); j++) expect(r.data[i * cols + j]).toBe(0);
  }
}

describe('qr (Householder)', () => {
  it('factors the textbook 3 x 3 example exactly (positive-diagonal form)', () => {
    // A = [[12, -51, 4], [6, 167, -68], [-4, 24, -41]]: the unique QR with diag(R) > 0 is
    // Q = [[6/7, -69/175, -58/175], [3/7, 158/175, 6/175], [-2/7, 6/35, -33/35]],
    // R = [[14, 21, -14], [0, 175, -70], [0, 0, 35]] (checked by hand: Q^T Q = I, QR = A).
    const a = f64([3, 3], [12, -51, 4, 6, 167, -68, -4, 24, -41]);
    const { q, r } = qr(a, { positiveDiagonal: true });
    const qExpected = [
      6 / 7,
      -69 / 175,
      -58 / 175,
      3 / 7,
      158 / 175,
      6 / 175,
      -2 / 7,
      6 / 35,
      -33 / 35,
    ];
    const rExpected = [14, 21, -14, 0, 175, -70, 0, 0, 35];
    qExpected.forEach((v, i) => {
      expect(q.data[i]).toBeCloseTo(v, 13);
    });
    rExpected.forEach((v, i) => {
      expect(r.data[i]).toBeCloseTo(v, 12);
    });
  });

  it('uses the LAPACK sign convention by default: R[0, 0] = -sign(A[0, 0]) * ||A[:, 0]||', () => {
    const a = f64([3, 3], [12, -51, 4, 6, 167, -68, -4, 24, -41]);
    const { q, r } = qr(a);
    expect(r.data[0]).toBeCloseTo(-14, 12);
    // Same factorisation up to the signs of matching rows of R and columns of Q.
    const diag = [0, 4, 8].map((i) => Math.abs(r.data[i]));
    [14, 175, 35].forEach((v, i) => {
      expect(diag[i]).toBeCloseTo(v, 11);
    });
    expect(maxAbsDiff(matmulReference(q, r), a)).toBeLessThan(1e-12);
  });

  const shapes: [number, number][] = [
    [8, 5],
    [5, 8],
    [6, 6],
    [1, 4],
    [4, 1],
  ];
  for (const [m, n] of shapes) {
    it(`[${m}, ${n}]: reduced and complete modes give A = QR, orthonormal Q, upper-triangular R`, () => {
      const rng = createRng(m * 31 + n);
      const a = f64([m, n], rng.normalArray(m * n));
      const k = Math.min(m, n);
      const thin = qr(a);
      expect(thin.q.shape).toEqual([m, k]);
      expect(thin.r.shape).toEqual([k, n]);
      expectOrthonormalColumns(thin.q, 1e-14);
      expectUpperTriangular(thin.r);
      expect(maxAbsDiff(matmulReference(thin.q, thin.r), a)).toBeLessThan(1e-14);

      const full = qr(a, { mode: 'complete' });
      expect(full.q.shape).toEqual([m, m]);
      expect(full.r.shape).toEqual([m, n]);
      expectOrthonormalColumns(full.q, 1e-14);
      expect(maxAbsDiff(matmulReference(full.q, transpose(full.q)), identity(m))).toBeLessThan(
        1e-14,
      );
      expectUpperTriangular(full.r);
      expect(maxAbsDiff(matmulReference(full.q, full.r), a)).toBeLessThan(1e-14);

      const positive = qr(a, { positiveDiagonal: true });
      for (let i = 0; i < k; i++) expect(positive.r.data[i * n + i]).toBeGreaterThanOrEqual(0);
      expect(maxAbsDiff(matmulReference(positive.q, positive.r), a)).toBeLessThan(1e-14);
    });
  }

  it('column pivoting: A[:, p] = QR with |R[j, j]| non-increasing', () => {
    // Columns of very different sizes (scales 1, 10, 0.01, 100): column 3 must be the first pivot.
    const rng = createRng(9);
    const scales = [1, 10, 0.01, 100];
    const data = new Float64Array(7 * 4);
    for (let i = 0; i < 7; i++)
      for (let j = 0; j < 4; j++) data[i * 4 + j] = scales[j] * rng.normal();
    const a = f64([7, 4], data);
    const { q, r, permutation } = qr(a, { columnPivoting: true });
    expect(permutation![0]).toBe(3);
    expect(Array.from(permutation!).sort()).toEqual([0, 1, 2, 3]);
    for (let j = 1; j < 4; j++)
      expect(Math.abs(r.data[j * 4 + j])).toBeLessThanOrEqual(
        Math.abs(r.data[(j - 1) * 4 + j - 1]),
      );
    expectOrthonormalColumns(q, 1e-14);
    expectUpperTriangular(r);
    const permuted = f64(
      [7, 4],
      Float64Array.from(
        { length: 28 },
        (_, idx) => data[Math.floor(idx / 4) * 4 + permutation![idx % 4]],
      ),
    );
    expect(maxAbsDiff(matmulReference(q, r), permuted)).toBeLessThan(1e-12);
    expect(qr(a).permutation).toBeUndefined();
  });

  it('handles rank deficiency (a zero column and a repeated column)', () => {
    const rng = createRng(5);
    const col = rng.normalArray(6);
    const data = new Float64Array(6 * 4);
    for (let i = 0; i < 6; i++) {
      data[i * 4] = col[i];
      data[i * 4 + 1] = 0;
      data[i * 4 + 2] = 2 * col[i];
      data[i * 4 + 3] = rng.normal();
    }
    const a = f64([6, 4], data);
    const { q, r } = qr(a);
    expectOrthonormalColumns(q, 1e-14);
    expect(maxAbsDiff(matmulReference(q, r), a)).toBeLessThan(1e-14);
  });

  it('computes in float64 from float32 input and can return float32', () => {
    const values = createRng(6).normalArray(20, 0, 1, 'f32');
    const from32 = qr(f32([5, 4], values));
    const from64 = qr(f64([5, 4], Float64Array.from(values)));
    expect(from32.r.data).toEqual(from64.r.data);
    const as32 = qr(f32([5, 4], values), { dtype: 'f32' });
    expect(as32.q.dtype).toBe('f32');
    expect(as32.q.data).toEqual(Float32Array.from(from64.q.data));
  });

  it('rejects non-finite input with a clear error and leaves the input untouched', () => {
    const a = f64([2, 2], [1, Number.NaN, 3, 4]);
    expect(() => qr(a)).toThrow(CoreError);
    expect(() => qr(a)).toThrow(/element \[0, 1\] is NaN/);
    const b = f64([2, 2], [1, 2, 3, 4]);
    qr(b);
    expect(Array.from(b.data)).toEqual([1, 2, 3, 4]);
  });
});
