import { describe, expect, it } from 'vitest';
import { castFloat } from '../convert.js';
import { CoreError } from '../errors.js';
import { createRng } from '../random.js';
import { f32, f64 } from '../tensor.js';
import { deltaWeight } from './delta.js';

describe('deltaWeight', () => {
  it('hand example, rank 1 and fan_in_fan_out', () => {
    const A = f32([1, 3], [1, 2, 3]); // [r=1, in=3]
    const B = f32([2, 1], [1, 2]); // [out=2, r=1]
    const d = deltaWeight(A, B, 2);
    expect(d.shape).toEqual([2, 3]);
    expect(Array.from(d.data as Float32Array)).toEqual([2, 4, 6, 4, 8, 12]);
    const t = deltaWeight(A, B, 2, { fanInFanOut: true });
    expect(t.shape).toEqual([3, 2]);
    expect(Array.from(t.data as Float32Array)).toEqual([2, 4, 4, 8, 6, 12]);
  });

  it('hand example, rank 2', () => {
    // B = [[1, 0], [0, 1], [1, 1]], A = [[1, 2], [3, 4]] -> B@A = [[1,2],[3,4],[4,6]]
    const d = deltaWeight(f32([2, 2], [1, 2, 3, 4]), f32([3, 2], [1, 0, 0, 1, 1, 1]), 0.5, {
      dtype: 'f64',
    });
    expect(d.dtype).toBe('f64');
    expect(Array.from(d.data as Float64Array)).toEqual([0.5, 1, 1.5, 2, 2, 3]);
  });

  it('equals a float64 triple loop on random factors, any input dtype', () => {
    const rng = createRng(3);
    const [r, inF, outF] = [4, 7, 5];
    const A = f32([r, inF], rng.normalArray(r * inF, 0, 1, 'f32'));
    const B = f32([outF, r], rng.normalArray(outF * r, 0, 1, 'f32'));
    const s = 16 / r;
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      const a = castFloat(A, dtype);
      const b = castFloat(B, dtype);
      const av = castFloat(a, 'f64').data as Float64Array;
      const bv = castFloat(b, 'f64').data as Float64Array;
      const got = deltaWeight(a, b, s, { dtype: 'f64' }).data as Float64Array;
      for (let o = 0; o < outF; o++) {
        for (let i = 0; i < inF; i++) {
          let sum = 0;
          for (let k = 0; k < r; k++) sum += bv[o * r + k] * av[k * inF + i];
          expect(got[o * inF + i]).toBeCloseTo(s * sum, 12);
        }
      }
    }
  });

  it('rejects rank and rank-2 mismatches with a clear error', () => {
    expect(() => deltaWeight(f32([2, 3]), f32([4, 3]), 1)).toThrow(CoreError);
    expect(() => deltaWeight(f32([2, 3]), f32([4, 3]), 1)).toThrow(/r = 2.*r = 3/);
    expect(() => deltaWeight(f64([6]), f32([4, 3]), 1)).toThrow(/2-D/);
    expect(() => deltaWeight(f32([1, 1]), f32([1, 1]), Number.NaN)).toThrow(/scaling/);
  });
});
