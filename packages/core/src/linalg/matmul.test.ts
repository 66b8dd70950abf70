import { describe, expect, it } from 'vitest';
import { CoreError } from '../errors.js';
import { createRng } from '../random.js';
import { f32, f64, tensor } from '../tensor.js';
import { matmul, matmulReference, matmulTransposeB } from './matmul.js';
import { identity } from './matrix.js';
import { transpose } from './transpose.js';

/** Index of the first element whose bits differ (NaN-safe via Object.is), or -1; with the values. */
function firstMismatch(x: ArrayLike<number>, y: ArrayLike<number>): string {
  if (x.length !== y.length) return `lengths ${x.length} vs ${y.length}`;
  for (let i = 0; i < x.length; i++) {
    if (!Object.is(x[i], y[i])) return `index ${i}: ${x[i]} vs ${y[i]}`;
  }
  return 'none';
}

describe('matmulReference', () => {
  it('computes a hand-worked product', () => {
    // [[1, 2, 3], [4, 5, 6]] @ [[7, 8], [9, 10], [11, 12]] = [[58, 64], [139, 154]]
    const a = f64([2, 3], [1, 2, 3, 4, 5, 6]);
    const b = f64([3, 2], [7, 8, 9, 10, 11, 12]);
    const c = matmulReference(a, b);
    expect(c.shape).toEqual([2, 2]);
    expect(Array.from(c.data)).toEqual([58, 64, 139, 154]);
  });

  it('returns f32 for f32 inputs, f64 when either input is f64, or the requested dtype', () => {
    const a = f32([1, 1], [0.1]);
    const b = f32([1, 1], [3]);
    expect(matmulReference(a, b).dtype).toBe('f32');
    expect(matmulReference(a, f64([1, 1], [3])).dtype).toBe('f64');
    const c = matmulReference(a, b, { dtype: 'f64' });
    // The product is formed in float64 from the float32 inputs and not rounded.
    expect(c.data[0]).toBe(Math.fround(0.1) * 3);
  });
});

describe('matmul and matmulTransposeB against the reference', () => {
  // Shapes chosen to hit every edge of the blocked kernel: odd rows, columns that are not a
  // multiple of 4, depth beyond one DEPTH_BLOCK (256), more than one PANEL_ROWS (64) panel.
  const shapes: [number, number, number][] = [
    [1, 1, 1],
    [3, 5, 7],
    [7, 300, 69],
    [66, 130, 131],
    [2, 513, 4],
  ];
  for (const [m, k, n] of shapes) {
    it(`is bit-identical for [${m}, ${k}] @ [${k}, ${n}] in f64 and f32`, () => {
      const rng = createRng(m * 1000 + k * 10 + n);
      const a = f64([m, k], rng.normalArray(m * k));
      const b = f64([k, n], rng.normalArray(k * n));
      const ref = matmulReference(a, b);
      expect(firstMismatch(matmul(a, b).data, ref.data)).toBe('none');
      expect(firstMismatch(matmulTransposeB(a, transpose(b)).data, ref.data)).toBe('none');

      const a32 = f32([m, k], rng.normalArray(m * k, 0, 1, 'f32'));
      const b32 = f32([k, n], rng.normalArray(k * n, 0, 1, 'f32'));
      const ref32 = matmulReference(a32, b32);
      expect(firstMismatch(matmul(a32, b32).data, ref32.data)).toBe('none');
      expect(firstMismatch(matmulTransposeB(a32, transpose(b32)).data, ref32.data)).toBe('none');
    });
  }

  it('A @ I == A exactly, and (A B)^T == B^T A^T', () => {
    const rng = createRng(11);
    const a = f64([9, 6], rng.normalArray(54));
    const b = f64([6, 5], rng.normalArray(30));
    expect(matmul(a, identity(6)).data).toEqual(a.data);
    const left = transpose(matmul(a, b)).data;
    const right = matmul(transpose(b), transpose(a)).data;
    for (let i = 0; i < left.length; i++) expect(right[i]).toBeCloseTo(left[i], 12);
  });

  it('accepts f16 inputs by decoding them to float32', () => {
    // f16 bits: 0x3c00 = 1, 0x4000 = 2, 0x4200 = 3, 0x4400 = 4
    const a = tensor('f16', [1, 2], Uint16Array.of(0x3c00, 0x4000));
    const b = tensor('f16', [2, 1], Uint16Array.of(0x4200, 0x4400));
    const c = matmul(a, b);
    expect(c.dtype).toBe('f32');
    expect(c.data[0]).toBe(11);
  });

  it('rejects mismatched inner dimensions, non-matrices and integer tensors', () => {
    expect(() => matmul(f64([2, 3]), f64([2, 3]))).toThrow(CoreError);
    expect(() => matmul(f64([2, 3]), f64([2, 3]))).toThrow(/inner dimensions differ/);
    expect(() => matmulTransposeB(f64([2, 3]), f64([2, 2]))).toThrow(/inner dimensions/);
    expect(() => matmul(f64([6]), f64([6, 1]))).toThrow(/2-D matrix/);
    expect(() => matmul(tensor('i32', [1, 1]), f64([1, 1]))).toThrow(/float tensor/);
  });

  it('does not modify its inputs', () => {
    const a = f64([2, 2], [1, 2, 3, 4]);
    const b = f64([2, 2], [5, 6, 7, 8]);
    matmul(a, b);
    matmulTransposeB(a, b);
    expect(Array.from(a.data)).toEqual([1, 2, 3, 4]);
    expect(Array.from(b.data)).toEqual([5, 6, 7, 8]);
  });
});
