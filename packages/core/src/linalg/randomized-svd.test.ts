import { describe, expect, it } from 'vitest';
import { CoreError } from '../errors.js';
import { createRng } from '../random.js';
import { f32, f64 } from '../tensor.js';
import { matmulReference } from './matmul.js';
import { diagonal, identity, type Matrix, maxAbsDiff } from './matrix.js';
import { qr } from './qr.js';
import { lowRankResidual, randomizedSvd, spectralResidual } from './randomized-svd.js';
import { transpose } from './transpose.js';

function randomOrthonormal(rows: number, cols: number, seed: number): Matrix {
  return qr(f64([rows, cols], createRng(seed).normalArray(rows * cols))).q;
}

/** A = U0 diag(sigma) V0^T with chosen orthonormal factors: its singular values are sigma. */
function withSpectrum(m: number, n: number, sigma: number[], seed: number): Matrix {
  const u0 = randomOrthonormal(m, sigma.length, seed);
  const v0 = randomOrthonormal(n, sigma.length, seed + 1);
  return matmulReference(matmulReference(u0, diagonal(sigma)), transpose(v0));
}

function optimalTail(sigma: number[], k: number): number {
  return Math.sqrt(sigma.slice(k).reduce((sum, x) => sum + x * x, 0));
}

describe('randomizedSvd (Halko-Martinsson-Tropp)', () => {
  // sigma_i = 0.8^i for i < 60: a decaying spectrum with a non-trivial tail.
  const sigma = Array.from({ length: 60 }, (_, i) => 0.8 ** i);
  const a = withSpectrum(240, 160, sigma, 1);
  const k = 10;

  it('with power iterations: residual within 1% of the optimal tail, leading values within 1e-6', () => {
    const result = randomizedSvd(a, { rank: k, seed: 7 });
    const tail = optimalTail(sigma, k);
    expect(result.u.shape).toEqual([240, k]);
    expect(result.vt.shape).toEqual([k, 160]);
    expect(result.sampleSize).toBe(k + 10);
    expect(result.frobeniusResidual).toBeGreaterThanOrEqual(tail * (1 - 1e-9)); // Eckart-Young
    expect(result.frobeniusResidual).toBeLessThan(1.01 * tail);
    for (let i = 0; i < k; i++)
      expect(Math.abs(result.s[i] - sigma[i]) / sigma[i]).toBeLessThan(1e-6);
    expect(maxAbsDiff(matmulReference(transpose(result.u), result.u), identity(k))).toBeLessThan(
      1e-13,
    );
    expect(maxAbsDiff(matmulReference(result.vt, transpose(result.vt)), identity(k))).toBeLessThan(
      1e-13,
    );
    // The reported residual is the true ||A - U S V^T||_F (computed here independently).
    const exact = lowRankResidual(a, result.u, result.s, result.vt);
    expect(Math.abs(result.frobeniusResidual - exact)).toBeLessThan(1e-8 * result.frobeniusNorm);
  });

  it('without power iterations: within the expected-error bound sqrt(2 + k/(p-1)) * tail', () => {
    const p = 10;
    const result = randomizedSvd(a, { rank: k, oversampling: p, powerIterations: 0, seed: 3 });
    const tail = optimalTail(sigma, k);
    expect(result.frobeniusResidual).toBeLessThan(Math.sqrt(2 + k / (p - 1)) * tail);
    // And power iterations help on the same problem.
    const refined = randomizedSvd(a, { rank: k, oversampling: p, powerIterations: 2, seed: 3 });
    expect(refined.frobeniusResidual).toBeLessThan(result.frobeniusResidual);
  });

  it('recovers an exactly low-rank matrix (residual ~ 0) from float32 input', () => {
    const chosen = [9, 4, 3, 1, 0.25];
    const low = withSpectrum(120, 90, chosen, 11);
    const low32 = f32([120, 90], Float32Array.from(low.data));
    const result = randomizedSvd(low32, { rank: 5, oversampling: 4, powerIterations: 1, seed: 1 });
    // float32 input rounding ~1e-7
    for (let i = 0; i < chosen.length; i++) expect(result.s[i]).toBeCloseTo(chosen[i], 5);
    const reconstruction = matmulReference(
      matmulReference(result.u, diagonal(result.s)),
      result.vt,
    );
    expect(maxAbsDiff(reconstruction, low32)).toBeLessThan(1e-5);
    expect(lowRankResidual(low32, result.u, result.s, result.vt)).toBeLessThan(1e-5);
  });

  it('is deterministic for a seed and accepts an Rng', () => {
    const small = withSpectrum(40, 30, sigma.slice(0, 20), 4);
    const r1 = randomizedSvd(small, { rank: 4, seed: 5 });
    const r2 = randomizedSvd(small, { rank: 4, seed: 5 });
    expect(r1.u.data).toEqual(r2.u.data);
    const r3 = randomizedSvd(small, { rank: 4, rng: createRng(5) });
    expect(r3.s).toEqual(r1.s);
    const other = randomizedSvd(small, { rank: 4, seed: 6, powerIterations: 0 });
    expect(other.u.data).not.toEqual(r1.u.data);
  });

  it('caps the sample size at min(m, n) and then matches the exact decomposition', () => {
    const small = withSpectrum(12, 8, [5, 3, 2, 1, 0.5, 0.1, 0.01, 0.001], 21);
    const result = randomizedSvd(small, { rank: 8, seed: 2 });
    expect(result.sampleSize).toBe(8);
    // The cheap residual carries ~sqrt(eps) ||A|| of rounding; the exact one is near eps.
    expect(result.frobeniusResidual).toBeLessThan(5e-8 * result.frobeniusNorm);
    expect(lowRankResidual(small, result.u, result.s, result.vt)).toBeLessThan(1e-13);
    [5, 3, 2, 1, 0.5, 0.1, 0.01, 0.001].forEach((s, i) => {
      expect(result.s[i]).toBeCloseTo(s, 12);
    });
  });

  it('rejects a bad rank or options with CoreError', () => {
    expect(() => randomizedSvd(a, { rank: 0 })).toThrow(CoreError);
    expect(() => randomizedSvd(a, { rank: 161 })).toThrow(/rank must be an integer in \[1, 160\]/);
    expect(() => randomizedSvd(a, { rank: 2, powerIterations: -1 })).toThrow(/powerIterations/);
  });
});

describe('lowRankResidual', () => {
  it('is the hand-computable Frobenius norm of the difference', () => {
    // A = [[1, 2], [3, 4]], approximation u s v^T with u = e1, s = 1, v = e1: residual [[0, 2], [3, 4]].
    const a = f64([2, 2], [1, 2, 3, 4]);
    const r = lowRankResidual(a, f64([2, 1], [1, 0]), [1], f64([1, 2], [1, 0]));
    expect(r).toBeCloseTo(Math.sqrt(4 + 9 + 16), 15);
    expect(() => lowRankResidual(a, f64([3, 1]), [1], f64([1, 2]))).toThrow(/lowRankResidual/);
  });
});

describe('spectralResidual', () => {
  it('equals sigma_{k+1} for the exact rank-k truncation of a matrix with chosen spectrum', () => {
    // A = U0 diag(sigma) V0^T; its best rank-k approximation keeps the first k terms, and the
    // residual's largest singular value is sigma_k (0-based). Power-iteration gap 0.7/1 per step.
    const sigma = [5, 3, 2, 1, 0.7, 0.49, 0.3, 0.2];
    const k = 3;
    const u0 = randomOrthonormal(50, sigma.length, 31);
    const v0 = randomOrthonormal(40, sigma.length, 32);
    const a = matmulReference(matmulReference(u0, diagonal(sigma)), transpose(v0));
    const uk = f64(
      [50, k],
      Float64Array.from(
        { length: 50 * k },
        (_, idx) => u0.data[Math.floor(idx / k) * 8 + (idx % k)],
      ),
    );
    const vtk = transpose(
      f64(
        [40, k],
        Float64Array.from(
          { length: 40 * k },
          (_, idx) => v0.data[Math.floor(idx / k) * 8 + (idx % k)],
        ),
      ),
    );
    const estimate = spectralResidual(a, uk, sigma.slice(0, k), vtk, { iterations: 60 });
    expect(estimate).toBeCloseTo(sigma[k], 10);
  });

  it('for a randomized SVD with power iterations is within 1% of the optimum sigma_{k+1}', () => {
    const sigma = Array.from({ length: 30 }, (_, i) => 0.85 ** i);
    const a = withSpectrum(90, 70, sigma, 41);
    const k = 6;
    const result = randomizedSvd(a, { rank: k, seed: 2 });
    const estimate = spectralResidual(a, result.u, result.s, result.vt, { iterations: 60 });
    expect(estimate).toBeLessThan(1.01 * sigma[k]);
    // No rank-k approximation beats sigma_{k+1} (Eckart-Young); 60 iterations have converged.
    expect(estimate).toBeGreaterThan(0.99 * sigma[k]);
  });
});
