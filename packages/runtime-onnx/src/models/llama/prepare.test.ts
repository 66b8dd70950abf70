import { tensor, toFloat32Array } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { seededRandom } from '../../test-utils/random.js';
import { transpose2d } from '../linear.js';
import { widenTransposed } from './prepare.js';

/** Every 16-bit pattern once (NaNs, infinities, subnormals, both zeros), in a shuffled order. */
function allPatterns(n: number): Uint16Array {
  const rand = seededRandom(11);
  const bits = Uint16Array.from({ length: n }, (_, i) => i % 65536);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [bits[i], bits[j]] = [bits[j], bits[i]];
  }
  return bits;
}

describe('widenTransposed', () => {
  // 257 x 263: neither a multiple of the tile, 67591 elements cover all 65536 patterns.
  const rows = 257;
  const cols = 263;
  const bits = allPatterns(rows * cols);
  /** Index of the first element whose bits differ (NaN payloads aside: JS may canonicalize them), or -1. */
  const firstDifference = (a: Float32Array, b: Float32Array): number => {
    const ab = new Uint32Array(a.buffer);
    const bb = new Uint32Array(b.buffer);
    for (let i = 0; i < a.length; i++) {
      if (Number.isNaN(b[i]) ? !Number.isNaN(a[i]) : ab[i] !== bb[i]) return i;
    }
    return a.length === b.length ? -1 : a.length;
  };

  for (const dtype of ['bf16', 'f16'] as const) {
    it(`${dtype}: bit for bit what widening then transposing gives`, () => {
      const t = tensor(dtype, [rows, cols], bits);
      const expected = transpose2d(toFloat32Array(t), rows, cols);
      expect(firstDifference(widenTransposed(t, rows, cols), expected)).toBe(-1);
    });
  }

  it('f32: the transpose', () => {
    const t = tensor(
      'f32',
      [rows, cols],
      Float32Array.from(bits, (b) => b / 7 - 3000),
    );
    expect(firstDifference(widenTransposed(t, rows, cols), transpose2d(t.data, rows, cols))).toBe(
      -1,
    );
  });
});
