import { describe, expect, it } from 'vitest';
import { createRng } from '../random.js';
import { f32, f64 } from '../tensor.js';
import { lowRankProductSvd } from './low-rank-svd.js';
import { matmulReference } from './matmul.js';
import { diagonal, identity, type Matrix, maxAbsDiff } from './matrix.js';
import { qr } from './qr.js';
import { transpose } from './transpose.js';

function randomOrthonormal(rows: number, cols: number, seed: number): Matrix {
  return qr(f64([rows, cols], createRng(seed).normalArray(rows * cols))).q;
}

describe('lowRankProductSvd', () => {
  it('finds chosen singular values of (U0 S M)(M^T V0^T) with a mixing rotation M', () => {
    const sigma = [7, 3, 1, 0.5, 0.01];
    const r = sigma.length;
    const u0 = randomOrthonormal(30, r, 1);
    const v0 = randomOrthonormal(20, r, 2);
    const mix = randomOrthonormal(r, r, 3); // orthogonal: M^-1 = M^T
    const left = matmulReference(matmulReference(u0, diagonal(sigma)), mix); // [30, r]
    const right = matmulReference(transpose(mix), transpose(v0)); // [r, 20]
    const result = lowRankProductSvd(left, right);
    expect(result.s.length).toBe(r);
    sigma.forEach((s, i) => {
      expect(result.s[i]).toBeCloseTo(s, 12);
    });
    expect(maxAbsDiff(matmulReference(transpose(result.u), result.u), identity(r))).toBeLessThan(
      1e-13,
    );
    expect(maxAbsDiff(matmulReference(result.vt, transpose(result.vt)), identity(r))).toBeLessThan(
      1e-13,
    );
    const product = matmulReference(left, right);
    const rebuilt = matmulReference(matmulReference(result.u, diagonal(result.s)), result.vt);
    expect(maxAbsDiff(rebuilt, product)).toBeLessThan(1e-13);
  });

  it('reports zeros when the factors have lower rank than r, and k = min(m, n, r)', () => {
    // B [6, 4] with columns 2 and 3 equal, A [4, 9] with rows 2 and 3 opposite: their terms
    // cancel in B A, which has rank 2.
    const rng = createRng(4);
    const b = rng.normalArray(24);
    for (let i = 0; i < 6; i++) b[i * 4 + 3] = b[i * 4 + 2];
    const a = f64([4, 9], rng.normalArray(36));
    const a2 = Float64Array.from(a.data);
    for (let j = 0; j < 9; j++) a2[3 * 9 + j] = -a2[2 * 9 + j];
    const result = lowRankProductSvd(f64([6, 4], b), f64([4, 9], a2));
    expect(result.s.length).toBe(4);
    expect(result.s[3]).toBeLessThan(1e-13 * result.s[0]);
    expect(result.s[2]).toBeLessThan(1e-13 * result.s[0]);
    const wide = lowRankProductSvd(
      f64([2, 5], rng.normalArray(10)),
      f64([5, 3], rng.normalArray(15)),
    );
    expect(wide.s.length).toBe(2);
    expect(wide.u.shape).toEqual([2, 2]);
    expect(wide.vt.shape).toEqual([2, 3]);
  });

  it('agrees with the SVD of the formed product for float32 LoRA factors', () => {
    const rng = createRng(5);
    const B = f32([24, 4], rng.normalArray(96, 0, 1, 'f32'));
    const A = f32([4, 16], rng.normalArray(64, 0, 1, 'f32'));
    const result = lowRankProductSvd(B, A);
    const delta = matmulReference(B, A, { dtype: 'f64' });
    // ||B A||_F^2 = sum s_i^2
    let fro2 = 0;
    for (const x of delta.data) fro2 += x * x;
    expect(result.s.reduce((s, x) => s + x * x, 0)).toBeCloseTo(fro2, 9);
    const rebuilt = matmulReference(matmulReference(result.u, diagonal(result.s)), result.vt);
    expect(maxAbsDiff(rebuilt, delta)).toBeLessThan(1e-12);
  });

  it('rejects mismatched inner dimensions', () => {
    expect(() => lowRankProductSvd(f64([3, 2]), f64([3, 2]))).toThrow(
      /inner dimensions must match/,
    );
  });
});
