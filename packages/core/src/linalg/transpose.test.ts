import { describe, expect, it } from 'vitest';
import { f32, tensor } from '../tensor.js';
import { transpose } from './transpose.js';

describe('transpose', () => {
  it('transposes a hand-written matrix', () => {
    const t = transpose(f32([2, 3], [1, 2, 3, 4, 5, 6]));
    expect(t.shape).toEqual([3, 2]);
    expect(Array.from(t.data)).toEqual([1, 4, 2, 5, 3, 6]);
  });

  it('puts element (i, j) at (j, i) across several tiles, and twice is the identity', () => {
    const rows = 70;
    const cols = 45;
    const data = new Int32Array(rows * cols).map((_, idx) => idx);
    const t = transpose(tensor('i32', [rows, cols], data));
    const expected = new Int32Array(rows * cols);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) expected[j * rows + i] = i * cols + j;
    }
    let wrong = 0;
    for (let i = 0; i < expected.length; i++) if (t.data[i] !== expected[i]) wrong++;
    expect(wrong).toBe(0);
    const back = transpose(t).data;
    for (let i = 0; i < data.length; i++) if (back[i] !== data[i]) wrong++;
    expect(wrong).toBe(0);
  });

  it('works for any dtype (bigint and 16-bit raw patterns) and keeps the dtype', () => {
    const t = transpose(tensor('i64', [1, 2], BigInt64Array.of(5n, -7n)));
    expect(t.dtype).toBe('i64');
    expect(Array.from(t.data)).toEqual([5n, -7n]);
    expect(transpose(tensor('bf16', [2, 1], Uint16Array.of(0x3f80, 0x4000))).shape).toEqual([1, 2]);
  });

  it('handles empty matrices and rejects non-matrices', () => {
    expect(transpose(f32([0, 4])).shape).toEqual([4, 0]);
    expect(() => transpose(f32([2, 2, 2]))).toThrow(/2-D matrix/);
  });
});
