import {
  createRng,
  type Matrix,
  matmul,
  matmulReference,
  matmulTransposeB,
  qr,
  randomizedSvd,
  svd,
  tensor,
} from '@lora/core';
import { medianMs } from './timing.js';
import type { BenchSection } from './types.js';

/** @lora/core small linear algebra: blocked vs reference matmul, exact SVD, randomized SVD. */
export const linalgBench: BenchSection = {
  name: 'linalg',
  title: '@lora/core linear algebra on one core: matmul, Jacobi SVD, randomized SVD',
  async run(ctx) {
    const rows: (string | number)[][] = [];
    const notes: string[] = [];

    // Square f64 matmul: the reference triple loop against the blocked kernel, same run.
    const n = ctx.quick ? 192 : 512;
    const rng = createRng(1);
    const a = tensor('f64', [n, n], rng.normalArray(n * n));
    const b = tensor('f64', [n, n], rng.normalArray(n * n));
    const repeats = 3;
    ctx.log(`matmul ${n}^3`);
    const refMs = await medianMs(() => matmulReference(a, b), repeats);
    const fastMs = await medianMs(() => matmul(a, b), repeats);
    const gflop = (2 * n ** 3) / 1e9;
    rows.push([`matmulReference f64 ${n}x${n}x${n}`, refMs, gflop / (refMs / 1e3), 1]);
    rows.push([
      `matmul (blocked) f64 ${n}x${n}x${n}`,
      fastMs,
      gflop / (fastMs / 1e3),
      refMs / fastMs,
    ]);
    const goal = n >= 512 ? 5 : 2; // the reference falls out of cache as n grows
    notes.push(
      `blocked matmul is ${(refMs / fastMs).toFixed(1)}x the reference at n = ${n} (goal >= ${goal}x): ${refMs / fastMs >= goal ? 'met' : 'NOT met'}`,
    );

    // Exact SVD (one-sided Jacobi) of a square Gaussian matrix.
    const ns = ctx.quick ? 64 : 256;
    const g = tensor('f64', [ns, ns], rng.normalArray(ns * ns));
    ctx.log(`svd ${ns}x${ns}`);
    let sweeps = 0;
    const svdMs = await medianMs(
      () => {
        sweeps = svd(g).sweeps;
      },
      ctx.quick ? 1 : 3,
    );
    rows.push([`svd (Jacobi) ${ns}x${ns}, ${sweeps} sweeps`, svdMs, '', '']);

    // Randomized SVD of a float32 matrix with a known spectrum sigma_i = 0.9^i (i < 64).
    const m = ctx.quick ? 1024 : 4096;
    const rank = 16;
    const sigma = Array.from({ length: 64 }, (_, i) => 0.9 ** i);
    ctx.log(`building a ${m}x${m} matrix with a known spectrum`);
    const w = withSpectrum(m, sigma, 2);
    const tail = Math.sqrt(sigma.slice(rank).reduce((s, x) => s + x * x, 0));
    ctx.log(`randomizedSvd ${m}x${m} rank ${rank}`);
    let residual = 0;
    const rsvdMs = await medianMs(
      () => {
        residual = randomizedSvd(w, { rank, seed: 3 }).frobeniusResidual;
      },
      ctx.quick ? 1 : 3,
      0,
    );
    rows.push([`randomizedSvd f32 ${m}x${m}, k=${rank}, p=10, q=2`, rsvdMs, '', '']);
    notes.push(
      `randomized SVD residual / optimal tail sqrt(sum_{i>k} sigma_i^2) = ${(residual / tail).toFixed(6)} (goal <= 1.01): ${residual / tail <= 1.01 ? 'met' : 'NOT met'}`,
      `randomized SVD of ${m}x${m} in ${(rsvdMs / 1e3).toFixed(2)} s (goal: seconds, < 10 s at 4096): ${rsvdMs < 10_000 ? 'met' : 'NOT met'}`,
      'times are medians on a shared machine; the ratio column is measured in the same run',
    );
    return { columns: ['operation', 'median ms', 'GFLOP/s', 'speed-up vs reference'], rows, notes };
  },
};

/** float32 [m, m] = U0 diag(sigma) V0^T with random orthonormal U0, V0 [m, len(sigma)]. */
function withSpectrum(m: number, sigma: number[], seed: number): Matrix {
  const k = sigma.length;
  const rng = createRng(seed);
  const u0 = qr(tensor('f64', [m, k], rng.normalArray(m * k))).q;
  const v0 = qr(tensor('f64', [m, k], rng.normalArray(m * k))).q;
  const scaled = new Float64Array(m * k); // U0 diag(sigma): [m, k]
  for (let i = 0; i < m; i++)
    for (let j = 0; j < k; j++) scaled[i * k + j] = u0.data[i * k + j] * sigma[j];
  // (U0 S) V0^T: [m, k] x [m, k]^T
  return matmulTransposeB(tensor('f64', [m, k], scaled), v0, { dtype: 'f32' });
}
