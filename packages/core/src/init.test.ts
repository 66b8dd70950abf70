import { describe, expect, it } from 'vitest';
import { CoreError } from './errors.js';
import {
  calculateGain,
  computeFans,
  initKaimingNormal,
  initKaimingUniform,
  initNormal,
  initOrthogonal,
  initUniform,
  initXavierNormal,
  initXavierUniform,
  initZeros,
} from './init.js';
import { matmulReference } from './linalg/matmul.js';
import { identity, maxAbsDiff } from './linalg/matrix.js';
import { transpose } from './linalg/transpose.js';
import { createRng } from './random.js';
import { reshape } from './tensor.js';

function stats(x: ArrayLike<number>): { mean: number; std: number; maxAbs: number } {
  let sum = 0;
  let maxAbs = 0;
  for (let i = 0; i < x.length; i++) {
    sum += x[i];
    maxAbs = Math.max(maxAbs, Math.abs(x[i]));
  }
  const mean = sum / x.length;
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += (x[i] - mean) ** 2;
  return { mean, std: Math.sqrt(ss / (x.length - 1)), maxAbs };
}

describe('calculateGain and computeFans (torch formulas)', () => {
  it('returns the documented gains', () => {
    expect(calculateGain('linear')).toBe(1);
    expect(calculateGain('conv2d')).toBe(1);
    expect(calculateGain('sigmoid')).toBe(1);
    expect(calculateGain('tanh')).toBeCloseTo(5 / 3, 15);
    expect(calculateGain('relu')).toBeCloseTo(Math.sqrt(2), 15);
    expect(calculateGain('selu')).toBe(0.75);
    expect(calculateGain('leaky_relu')).toBeCloseTo(Math.sqrt(2 / (1 + 0.0001)), 15);
    // a = sqrt(5): sqrt(2 / 6) = 1 / sqrt(3)
    expect(calculateGain('leaky_relu', Math.sqrt(5))).toBeCloseTo(1 / Math.sqrt(3), 15);
    expect(() => calculateGain('swish' as never)).toThrow(CoreError);
  });

  it('computes fans: Linear [out, in] has fan_in = in; conv multiplies by the kernel size', () => {
    expect(computeFans([16, 40])).toEqual({ fanIn: 40, fanOut: 16 });
    expect(computeFans([8, 3, 5, 5])).toEqual({ fanIn: 75, fanOut: 200 });
    expect(() => computeFans([5])).toThrow(/at least 2 dimensions/);
  });
});

describe('initialisers', () => {
  it('kaiming_uniform with a = sqrt(5) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))', () => {
    const t = initKaimingUniform([200, 100], createRng(1), { a: Math.sqrt(5) });
    expect(t.dtype).toBe('f32');
    expect(t.shape).toEqual([200, 100]);
    const bound = 1 / Math.sqrt(100);
    const s = stats(t.data);
    expect(s.maxAbs).toBeLessThanOrEqual(Math.fround(bound));
    expect(s.maxAbs).toBeGreaterThan(0.99 * bound); // 20,000 draws reach the edges
    expect(s.std).toBeCloseTo(bound / Math.sqrt(3), 3); // sd of U(-b, b) = b / sqrt(3)
    expect(Math.abs(s.mean)).toBeLessThan((5 * (bound / Math.sqrt(3))) / Math.sqrt(20_000));
  });

  it('kaiming_uniform defaults (a = 0, leaky_relu, fan_in): bound sqrt(6 / fan_in)', () => {
    const t = initKaimingUniform([50, 24], createRng(2), { dtype: 'f64' });
    expect(t.dtype).toBe('f64');
    const s = stats(t.data);
    expect(s.maxAbs).toBeLessThan(Math.sqrt(6 / 24));
    expect(s.maxAbs).toBeGreaterThan(0.98 * Math.sqrt(6 / 24));
  });

  it('kaiming_normal with relu and fan_out: std sqrt(2) / sqrt(fan_out)', () => {
    const t = initKaimingNormal([80, 500], createRng(3), { mode: 'fan_out', nonlinearity: 'relu' });
    const expected = Math.sqrt(2) / Math.sqrt(80);
    // sd of the sample sd for n = 40,000 normals: std / sqrt(2n) ~ 0.35%; allow 2%.
    expect(Math.abs(stats(t.data).std / expected - 1)).toBeLessThan(0.02);
  });

  it('normal, uniform and zeros', () => {
    const n = stats(initNormal([100, 100], createRng(4), { mean: 1, std: 0.02 }).data);
    expect(n.mean).toBeCloseTo(1, 3);
    expect(Math.abs(n.std / 0.02 - 1)).toBeLessThan(0.03);
    const u = initUniform([1000], createRng(5), { low: 2, high: 3 }).data;
    expect(Math.min(...u)).toBeGreaterThanOrEqual(2);
    expect(Math.max(...u)).toBeLessThanOrEqual(3);
    expect(Array.from(initZeros([3, 2]).data)).toEqual([0, 0, 0, 0, 0, 0]);
  });

  it('xavier uniform and normal use fan_in + fan_out', () => {
    const bound = 2 * Math.sqrt(6 / (30 + 70));
    const xu = stats(initXavierUniform([70, 30], createRng(6), { gain: 2 }).data);
    expect(xu.maxAbs).toBeLessThanOrEqual(Math.fround(bound));
    expect(xu.maxAbs).toBeGreaterThan(0.98 * bound);
    const xn = stats(initXavierNormal([300, 100], createRng(7)).data);
    expect(Math.abs(xn.std / Math.sqrt(2 / 400) - 1)).toBeLessThan(0.02);
  });

  it('draws in element order from the rng: same seed, same tensor', () => {
    const a = initKaimingUniform([4, 5], createRng(8), { a: Math.sqrt(5) });
    const b = initKaimingUniform([4, 5], createRng(8), { a: Math.sqrt(5) });
    expect(a.data).toEqual(b.data);
    // Element i is -bound + 2 * bound * u_i for the i-th uniform of the stream.
    const rng = createRng(8);
    const bound = 1 / Math.sqrt(5);
    for (let i = 0; i < 20; i++)
      expect(a.data[i]).toBe(Math.fround(-bound + 2 * bound * rng.uniform()));
  });

  it('rejects a zero fan and an unknown mode', () => {
    expect(() => initKaimingUniform([4, 0], createRng(1))).toThrow(/zero fan_in/);
    expect(() => initKaimingUniform([4, 3], createRng(1), { mode: 'fan_avg' as never })).toThrow(
      CoreError,
    );
  });
});

describe('initOrthogonal', () => {
  it('wide [6, 10]: orthonormal rows (Q Q^T = I)', () => {
    const w = initOrthogonal([6, 10], createRng(9), { dtype: 'f64' });
    expect(maxAbsDiff(matmulReference(w, transpose(w)), identity(6))).toBeLessThan(1e-14);
  });

  it('tall [10, 6]: orthonormal columns (Q^T Q = I), scaled by gain', () => {
    const w = initOrthogonal([10, 6], createRng(10), { gain: 3, dtype: 'f64' });
    const gram = matmulReference(transpose(w), w);
    const nine = identity(6).data.map((v) => 9 * v);
    for (let i = 0; i < 36; i++) expect(gram.data[i]).toBeCloseTo(nine[i], 13);
  });

  it('flattens trailing dims like torch ([4, 2, 3] -> [4, 6]) and works in float32', () => {
    const w = initOrthogonal([4, 2, 3], createRng(11));
    expect(w.shape).toEqual([4, 2, 3]);
    expect(w.dtype).toBe('f32');
    const flat = reshape(w, [4, 6]);
    expect(
      maxAbsDiff(matmulReference(flat, transpose(flat), { dtype: 'f64' }), identity(4)),
    ).toBeLessThan(1e-6);
  });

  it('square: an orthogonal matrix, from a Gaussian draw whose QR has positive R diagonal', () => {
    const w = initOrthogonal([5, 5], createRng(12), { dtype: 'f64' });
    expect(maxAbsDiff(matmulReference(transpose(w), w), identity(5))).toBeLessThan(1e-14);
    // W^T G must be upper triangular with a positive diagonal (it is R of G = W R).
    const g = createRng(12).normalArray(25);
    for (let i = 0; i < 5; i++) {
      for (let j = 0; j <= i; j++) {
        let r = 0;
        for (let p = 0; p < 5; p++) r += w.data[p * 5 + i] * g[p * 5 + j];
        if (j < i) expect(Math.abs(r)).toBeLessThan(1e-12);
        else expect(r).toBeGreaterThan(0);
      }
    }
  });
});
