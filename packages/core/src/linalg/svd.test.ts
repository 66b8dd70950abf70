import { describe, expect, it } from 'vitest';
import { CoreError } from '../errors.js';
import { createRng } from '../random.js';
import { f32, f64 } from '../tensor.js';
import { matmulReference } from './matmul.js';
import { diagonal, identity, type Matrix, maxAbsDiff } from './matrix.js';
import { qr } from './qr.js';
import { type SvdResult, singularValues, svd } from './svd.js';
import { transpose } from './transpose.js';

function expectOrthonormalColumns(q: Matrix, tol: number): void {
  expect(maxAbsDiff(matmulReference(transpose(q), q), identity(q.shape[1]))).toBeLessThan(tol);
}

/** U diag(s) V^T, computed with the reference matmul. */
function reconstruct({ u, s, vt }: SvdResult): Matrix {
  return matmulReference(matmulReference(u, diagonal(s)), vt);
}

function expectValidSvd(a: Matrix, result: SvdResult, tol: number): void {
  const [m, n] = a.shape;
  const k = Math.min(m, n);
  expect(result.u.shape).toEqual([m, k]);
  expect(result.vt.shape).toEqual([k, n]);
  expect(result.s.length).toBe(k);
  for (let i = 1; i < k; i++) expect(result.s[i]).toBeLessThanOrEqual(result.s[i - 1]);
  expect(result.s[k - 1]).toBeGreaterThanOrEqual(0);
  expectOrthonormalColumns(result.u, tol);
  expectOrthonormalColumns(transpose(result.vt), tol);
  expect(maxAbsDiff(reconstruct(result), a)).toBeLessThan(tol * Math.max(1, result.s[0]));
}

/** An orthonormal [rows, cols] matrix: the Q of a Gaussian matrix. */
function randomOrthonormal(rows: number, cols: number, seed: number): Matrix {
  return qr(f64([rows, cols], createRng(seed).normalArray(rows * cols))).q;
}

describe('svd (one-sided Jacobi)', () => {
  it('finds the hand-computed singular values of [[3, 0], [4, 5]]: 3*sqrt(5) and sqrt(5)', () => {
    // A^T A = [[25, 20], [20, 25]] has eigenvalues 45 and 5.
    const a = f64([2, 2], [3, 0, 4, 5]);
    const result = svd(a);
    expect(result.s[0]).toBeCloseTo(3 * Math.sqrt(5), 14);
    expect(result.s[1]).toBeCloseTo(Math.sqrt(5), 14);
    expectValidSvd(a, result, 1e-14);
  });

  it('sorts the absolute diagonal of a diagonal matrix', () => {
    const a = f64([3, 3], [3, 0, 0, 0, -1, 0, 0, 0, 2]);
    const result = svd(a);
    expect(Array.from(result.s)).toEqual([3, 2, 1]);
    expectValidSvd(a, result, 1e-15);
  });

  it('gives ||u|| ||v|| and zeros for a rank-1 matrix u v^T, with U and V completed to orthonormal', () => {
    const u = [1, 2, 2]; // norm 3
    const v = [3, 0, 4, 0]; // norm 5
    const a = f64(
      [3, 4],
      u.flatMap((ui) => v.map((vj) => ui * vj)),
    );
    const result = svd(a);
    expect(result.s[0]).toBeCloseTo(15, 13);
    expect(result.s[1]).toBeLessThan(1e-14);
    expect(result.s[2]).toBeLessThan(1e-14);
    // Leading vectors are +-u/3 and +-v/5 with a common sign.
    const sign = Math.sign(result.u.data[0]);
    u.forEach((ui, i) => {
      expect(result.u.data[i * 3] * sign).toBeCloseTo(ui / 3, 14);
    });
    v.forEach((vj, j) => {
      expect(result.vt.data[j] * sign).toBeCloseTo(vj / 5, 14);
    });
    expectValidSvd(a, result, 1e-14);
  });

  it('recovers chosen singular values from chosen orthogonal factors (tall and wide)', () => {
    const chosen = [10, 5, 2, 1, 0.5, 1e-3];
    const u0 = randomOrthonormal(9, 6, 1);
    const v0 = randomOrthonormal(7, 6, 2);
    const a = matmulReference(matmulReference(u0, diagonal(chosen)), transpose(v0)); // [9, 7], rank 6
    const result = svd(a);
    chosen.forEach((s, i) => {
      expect(result.s[i]).toBeCloseTo(s, 13);
    });
    expect(result.s[6]).toBeLessThan(1e-14);
    expectValidSvd(a, result, 1e-13);
    const wide = svd(transpose(a));
    chosen.forEach((s, i) => {
      expect(wide.s[i]).toBeCloseTo(s, 13);
    });
    expectValidSvd(transpose(a), wide, 1e-13);
    // Each leading right vector matches the chosen one up to sign: |<v_i, v0_i>| = 1.
    for (let i = 0; i < chosen.length; i++) {
      let d = 0;
      for (let j = 0; j < 7; j++) d += result.vt.data[i * 7 + j] * v0.data[j * 6 + i];
      expect(Math.abs(d)).toBeCloseTo(1, 10);
    }
  });

  for (const [m, n] of [
    [12, 7],
    [7, 12],
    [10, 10],
    [1, 5],
    [5, 1],
    [40, 64],
  ] as const) {
    it(`is valid on a Gaussian [${m}, ${n}] matrix`, () => {
      const a = f64([m, n], createRng(m * 100 + n).normalArray(m * n));
      expectValidSvd(a, svd(a), 1e-13);
    });
  }

  it('gives the same decomposition with and without QR preconditioning', () => {
    for (const [m, n] of [
      [30, 12],
      [12, 30],
    ] as const) {
      const a = f64([m, n], createRng(m + n).normalArray(m * n));
      const pre = svd(a);
      const plain = svd(a, { precondition: false });
      expectValidSvd(a, plain, 1e-13);
      for (let i = 0; i < Math.min(m, n); i++) expect(pre.s[i]).toBeCloseTo(plain.s[i], 13);
    }
  });

  it('handles the zero matrix (all singular values 0, factors still orthonormal)', () => {
    const a = f64([4, 3]);
    const result = svd(a);
    expect(Array.from(result.s)).toEqual([0, 0, 0]);
    expectValidSvd(a, result, 1e-15);
  });

  it('equals the sorted eigenvalues of A^T A square-rooted for a matrix with repeated values', () => {
    // Orthogonal Q times 2: all singular values are exactly 2.
    const q = randomOrthonormal(5, 5, 3);
    const a = f64(
      [5, 5],
      Float64Array.from(q.data, (x) => 2 * x),
    );
    for (const s of singularValues(a)) expect(s).toBeCloseTo(2, 13);
  });

  it('computes in float64 from float32 input and returns float32 factors on request', () => {
    const values = createRng(4).normalArray(30, 0, 1, 'f32');
    const a32 = f32([6, 5], values);
    const a64 = f64([6, 5], Float64Array.from(values));
    const r32 = svd(a32, { dtype: 'f32' });
    expect(r32.u.dtype).toBe('f32');
    expect(r32.s).toEqual(svd(a64).s);
    expectValidSvd(a64, r32, 1e-6);
  });

  it('reports non-convergence and non-finite input as CoreErrors; the input is untouched', () => {
    const a = f64([8, 8], createRng(5).normalArray(64));
    const copy = Float64Array.from(a.data);
    expect(() => svd(a, { maxSweeps: 1 })).toThrow(CoreError);
    expect(() => svd(a, { maxSweeps: 1 })).toThrow(/did not converge in 1 sweeps/);
    expect(a.data).toEqual(copy);
    expect(() => svd(f64([1, 2], [1, Number.POSITIVE_INFINITY]))).toThrow(
      /element \[0, 1\] is Infinity/,
    );
  });
});
