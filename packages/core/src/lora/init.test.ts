import { describe, expect, it } from 'vitest';
import { castFloat, toFloat64Array } from '../convert.js';
import { CoreError } from '../errors.js';
import { matmulReference } from '../linalg/matmul.js';
import { diagonal, identity, type Matrix, maxAbsDiff } from '../linalg/matrix.js';
import { qr } from '../linalg/qr.js';
import { singularValues } from '../linalg/svd.js';
import { transpose } from '../linalg/transpose.js';
import { createRng } from '../random.js';
import { f32, f64, type Tensor } from '../tensor.js';
import { initLoraWeights, parseLoraInitMethod } from './init.js';

function randomOrthonormal(rows: number, cols: number, seed: number): Matrix {
  return qr(f64([rows, cols], createRng(seed).normalArray(rows * cols))).q;
}

/** W = U0 diag(sigma) V0^T as float32 [out, in]: a weight with chosen singular values. */
function weightWithSpectrum(
  out: number,
  inFeatures: number,
  sigma: number[],
  seed: number,
): Tensor<'f32'> {
  const u0 = randomOrthonormal(out, sigma.length, seed);
  const v0 = randomOrthonormal(inFeatures, sigma.length, seed + 1);
  const w = matmulReference(matmulReference(u0, diagonal(sigma)), transpose(v0));
  return f32([out, inFeatures], Float32Array.from(w.data));
}

/**
 * Asserts base + s * B @ A == W elementwise (computed here in float64) within the stated bound:
 * half an ulp of each float32 base element (2^-24 |base|) plus float64 noise.
 */
function expectReconstructs(
  w: Tensor,
  base: Tensor,
  A: Matrix,
  B: Matrix,
  s: number,
  fanInFanOut = false,
): void {
  let ba = matmulReference(B, A, { dtype: 'f64' }).data;
  if (fanInFanOut) ba = transpose(f64([B.shape[0], A.shape[1]], ba as Float64Array)).data;
  expect(base.shape).toEqual(w.shape);
  expect(base.dtype).toBe(w.dtype);
  for (let i = 0; i < w.data.length; i++) {
    const bv = base.data[i] as number;
    const error = Math.abs(bv + s * ba[i] - (w.data[i] as number));
    expect(error).toBeLessThanOrEqual(2 ** -24 * Math.abs(bv) + 1e-12);
  }
}

describe('parseLoraInitMethod (PEFT init_lora_weights)', () => {
  it('maps booleans and method names, case-insensitively', () => {
    expect(parseLoraInitMethod(true)).toBe('default');
    expect(parseLoraInitMethod(false)).toBe('random');
    expect(parseLoraInitMethod('Gaussian')).toBe('gaussian');
    expect(parseLoraInitMethod('PiSSA')).toBe('pissa');
    expect(parseLoraInitMethod('pissa_niter_16')).toBe('pissa_niter_16');
    expect(parseLoraInitMethod('olora')).toBe('olora');
  });

  it('rejects methods it does not implement, naming the supported ones', () => {
    expect(() => parseLoraInitMethod('loftq')).toThrow(CoreError);
    expect(() => parseLoraInitMethod('eva')).toThrow(/"pissa_niter_<N>"/);
  });
});

describe('initLoraWeights: no-op methods', () => {
  it('default: A ~ U(-1/sqrt(in), 1/sqrt(in)) [r, in], B = 0 [out, r], so the delta is zero', () => {
    const { A, B, base } = initLoraWeights({ shape: [48, 400] }, { rank: 8, seed: 1 });
    expect(A.shape).toEqual([8, 400]);
    expect(B.shape).toEqual([48, 8]);
    expect(A.dtype).toBe('f32');
    expect(base).toBeUndefined();
    expect(B.data.every((v) => v === 0)).toBe(true);
    expect(matmulReference(B, A).data.every((v) => v === 0)).toBe(true);
    const bound = 1 / Math.sqrt(400); // 0.05
    let maxAbs = 0;
    let ss = 0;
    for (const v of A.data) {
      maxAbs = Math.max(maxAbs, Math.abs(v));
      ss += v * v;
    }
    expect(maxAbs).toBeLessThanOrEqual(Math.fround(bound));
    expect(maxAbs).toBeGreaterThan(0.99 * bound);
    expect(Math.sqrt(ss / A.data.length)).toBeCloseTo(bound / Math.sqrt(3), 3);
  });

  it('gaussian: A ~ N(0, 1/r^2), B = 0', () => {
    const { A, B } = initLoraWeights(
      { shape: [16, 2500] },
      { rank: 4, method: 'gaussian', seed: 2 },
    );
    let ss = 0;
    for (const v of A.data) ss += v * v;
    // sd 1/r = 0.25; 10,000 draws: the sample sd is within 2% with overwhelming probability.
    expect(Math.abs(Math.sqrt(ss / A.data.length) / 0.25 - 1)).toBeLessThan(0.02);
    expect(B.data.every((v) => v === 0)).toBe(true);
  });

  it('random (PEFT false): both factors kaiming-uniform over their own fan_in', () => {
    const { A, B } = initLoraWeights({ shape: [30, 100] }, { rank: 9, method: false, seed: 3 });
    expect(Math.max(...A.data.map(Math.abs))).toBeLessThanOrEqual(Math.fround(1 / Math.sqrt(100)));
    expect(Math.max(...B.data.map(Math.abs))).toBeLessThanOrEqual(Math.fround(1 / Math.sqrt(9)));
    expect(B.data.some((v) => v !== 0)).toBe(true);
  });

  it('is deterministic for a seed; fanInFanOut swaps which dim is "in"', () => {
    const a1 = initLoraWeights({ shape: [12, 20] }, { rank: 2, seed: 9 }).A;
    const a2 = initLoraWeights({ shape: [12, 20] }, { rank: 2, seed: 9 }).A;
    expect(a1.data).toEqual(a2.data);
    const t = initLoraWeights({ shape: [20, 12] }, { rank: 2, seed: 9, fanInFanOut: true });
    expect(t.A.shape).toEqual([2, 20]);
    expect(t.B.shape).toEqual([12, 2]);
  });
});

describe('initLoraWeights: PiSSA', () => {
  const sigma = [8, 5, 3, 2, 1, 0.5, 0.25, 0.125];
  const w = weightWithSpectrum(20, 14, sigma, 1);
  const r = 3;
  const s = 2; // lora_alpha / r, e.g. 6 / 3

  it('puts the top-r singular values (divided by s) in the adapter and the rest in the base', () => {
    const { A, B, base } = initLoraWeights(w, { rank: r, scaling: s, method: 'pissa' });
    expect(A.shape).toEqual([r, 14]);
    expect(B.shape).toEqual([20, r]);
    // B = U_r diag(sqrt(S_r / s)) and A = diag(sqrt(S_r / s)) V_r^T, so
    // B^T B = A A^T = diag(S_r / s) with the chosen singular values.
    const expected = diagonal(sigma.slice(0, r).map((x) => x / s));
    expect(maxAbsDiff(matmulReference(transpose(B), B, { dtype: 'f64' }), expected)).toBeLessThan(
      1e-5,
    );
    expect(maxAbsDiff(matmulReference(A, transpose(A), { dtype: 'f64' }), expected)).toBeLessThan(
      1e-5,
    );
    // The residual keeps exactly the remaining singular values.
    const rest = singularValues(base!);
    sigma.slice(r).forEach((x, i) => {
      expect(rest[i]).toBeCloseTo(x, 5);
    });
    expectReconstructs(w, base!, A, B, s);
  });

  it('fan_in_fan_out: works on the [out, in] view and returns the base in [in, out] storage', () => {
    const stored = transpose(w); // [in, out] = [14, 20]
    const { A, B, base } = initLoraWeights(stored, {
      rank: r,
      scaling: s,
      method: 'pissa',
      fanInFanOut: true,
    });
    expect(A.shape).toEqual([r, 14]);
    expect(B.shape).toEqual([20, r]);
    expectReconstructs(stored, base!, A, B, s, true);
  });

  it('pissa_niter_N (randomized SVD) gives the same spectrum split', () => {
    const { A, B, base } = initLoraWeights(w, {
      rank: r,
      scaling: s,
      method: 'pissa_niter_4',
      seed: 5,
    });
    const expected = diagonal(sigma.slice(0, r).map((x) => x / s));
    expect(maxAbsDiff(matmulReference(transpose(B), B, { dtype: 'f64' }), expected)).toBeLessThan(
      1e-5,
    );
    expectReconstructs(w, base!, A, B, s);
  });

  it('keeps the base dtype: a bf16 weight gets a bf16 base, rounded once', () => {
    const w16 = castFloat(w, 'bf16');
    const { A, B, base } = initLoraWeights(w16, { rank: r, scaling: s, method: 'pissa' });
    expect(base!.dtype).toBe('bf16');
    const wValues = toFloat64Array(w16);
    const baseValues = toFloat64Array(base!);
    const ba = matmulReference(B, A, { dtype: 'f64' }).data;
    for (let i = 0; i < wValues.length; i++) {
      // half an ulp of bf16 (8 significand bits): 2^-8 relative
      expect(Math.abs(baseValues[i] + s * ba[i] - wValues[i])).toBeLessThanOrEqual(
        2 ** -8 * Math.abs(baseValues[i]) + 1e-12,
      );
    }
  });

  it('rejects scaling <= 0, rank > min(out, in) and a shape without data', () => {
    expect(() => initLoraWeights(w, { rank: r, scaling: 0, method: 'pissa' })).toThrow(
      /must be > 0/,
    );
    expect(() => initLoraWeights(w, { rank: 15, method: 'pissa' })).toThrow(
      /exceeds min\(out, in\) = 14/,
    );
    expect(() => initLoraWeights({ shape: [20, 14] }, { rank: 2, method: 'pissa' })).toThrow(
      CoreError,
    );
  });
});

describe('initLoraWeights: OLoRA', () => {
  it('B = Q[:, :r] orthonormal, A = R[:r] upper triangular, base + s B A = W', () => {
    const w = f32([16, 10], createRng(7).normalArray(160, 0, 0.1, 'f32'));
    const s = 0.5;
    const { A, B, base } = initLoraWeights(w, { rank: 4, scaling: s, method: 'olora' });
    expect(
      maxAbsDiff(matmulReference(transpose(B), B, { dtype: 'f64' }), identity(4)),
    ).toBeLessThan(1e-6);
    for (let i = 0; i < 4; i++) for (let j = 0; j < i; j++) expect(A.data[i * 10 + j]).toBe(0);
    expectReconstructs(w, base!, A, B, s);
  });

  it('at full rank with s = 1 the adapter holds all of W and the base is ~0', () => {
    const w = f32([6, 9], createRng(8).normalArray(54, 0, 1, 'f32'));
    const { base } = initLoraWeights(w, { rank: 6, scaling: 1, method: 'olora', dtype: 'f64' });
    expect(Math.max(...Array.from(base!.data as Float32Array, Math.abs))).toBeLessThan(1e-6);
  });
});

describe('initLoraWeights: input checks', () => {
  it('rejects non-2-D weights and bad ranks; never modifies the weight', () => {
    expect(() => initLoraWeights({ shape: [4, 4, 4] }, { rank: 2 })).toThrow(/2-D base weight/);
    expect(() => initLoraWeights({ shape: [4, 4] }, { rank: 0 })).toThrow(/positive integer/);
    const w = f32([5, 4], createRng(1).normalArray(20, 0, 1, 'f32'));
    const copy = Float32Array.from(w.data);
    initLoraWeights(w, { rank: 2, scaling: 1, method: 'pissa' });
    initLoraWeights(w, { rank: 2, scaling: 1, method: 'olora' });
    expect(w.data).toEqual(copy);
  });
});
