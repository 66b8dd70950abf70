import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { toFloat64Array } from '../convert.js';
import { SafetensorsFile } from '../safetensors/reader.js';
import { createRng } from '../random.js';
import { f32, f64 } from '../tensor.js';
import { lowRankProductSvd } from './low-rank-svd.js';
import { matmul, matmulReference } from './matmul.js';
import { diagonal, identity, type Matrix, maxAbsDiff } from './matrix.js';
import { qr } from './qr.js';
import { lowRankResidual, randomizedSvd } from './randomized-svd.js';
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

const FIXTURES = fileURLToPath(new URL('../../../../../shared/fixtures/peft/', import.meta.url));
const haveFixtures = existsSync(FIXTURES);
if (!haveFixtures) {
  console.warn(
    `[low-rank-svd.test] PEFT fixtures not found at ${FIXTURES}: real-adapter SVD tests skipped.`,
  );
}

async function readFactors(dir: string, module: string) {
  const file = await SafetensorsFile.open(`${FIXTURES}${dir}/adapter_model.safetensors`);
  try {
    const A = await file.read(`base_model.model.${module}.lora_A.weight`);
    const B = await file.read(`base_model.model.${module}.lora_B.weight`);
    return { A, B };
  } finally {
    await file.close();
  }
}

describe.skipIf(!haveFixtures)('SVD of real PEFT deltas', () => {
  it('gpt2 c_attn (B [2304, 8], A [8, 768]): factored SVD == randomized SVD of the formed delta', async () => {
    const { A, B } = await readFactors('gpt2-causal-cattn-cproj', 'transformer.h.0.attn.c_attn');
    const factored = lowRankProductSvd(B, A);
    expect(factored.s.length).toBe(8);
    const delta = matmul(B, A, { dtype: 'f64' }); // [2304, 768], rank <= 8
    let sumSquares = 0;
    for (const x of delta.data) sumSquares += x * x;
    const norm = Math.sqrt(sumSquares);
    expect(lowRankResidual(delta, factored.u, factored.s, factored.vt)).toBeLessThan(1e-12 * norm);
    // The delta has rank 8 exactly, so one pass of sampling already captures its range.
    const sampled = randomizedSvd(delta, { rank: 8, oversampling: 2, powerIterations: 0, seed: 1 });
    for (let i = 0; i < 8; i++) {
      expect(Math.abs(sampled.s[i] - factored.s[i])).toBeLessThan(1e-10 * factored.s[0]);
    }
    expect(lowRankResidual(delta, sampled.u, sampled.s, sampled.vt)).toBeLessThan(1e-12 * norm);
    expect(sampled.frobeniusResidual).toBeLessThan(1e-6 * norm); // cheap estimate: see its doc
  });

  it('open-calm r = 1 (f16): the single singular value is ||B|| * ||A||', async () => {
    const { A, B } = await readFactors(
      'open-calm-1b-fp16-r1',
      'gpt_neox.layers.0.attention.query_key_value',
    );
    expect(A.dtype).toBe('f16');
    const normOf = (x: Float64Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0));
    const expected = normOf(toFloat64Array(A)) * normOf(toFloat64Array(B));
    const { s } = lowRankProductSvd(B, A);
    expect(s.length).toBe(1);
    expect(Math.abs(s[0] - expected) / expected).toBeLessThan(1e-14);
  });
});
