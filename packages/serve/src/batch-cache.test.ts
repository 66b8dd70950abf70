import { type Tensor, tensor } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { BatchCache } from './batch-cache.js';

/** A one-layer cache [B, H=2, S, D=1] whose value at (b, h, s) is 100*b + 10*h + s. */
function numbered(B: number, S: number): { keys: Tensor<'f32'>[]; values: Tensor<'f32'>[] } {
  const data = new Float32Array(B * 2 * S);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < 2; h++)
      for (let s = 0; s < S; s++) data[(b * 2 + h) * S + s] = 100 * b + 10 * h + s;
  const t = tensor('f32', [B, 2, S, 1], data);
  return {
    keys: [t],
    values: [
      tensor(
        'f32',
        [B, 2, S, 1],
        data.map((v) => -v),
      ),
    ],
  };
}

describe('BatchCache', () => {
  it('packs rows right-aligned, trims padding, and masks exactly the padding', () => {
    const cache = new BatchCache(1, 2, 1);
    const old = numbered(2, 4); // row 0 real length 4, row 1 real length 2 (positions 2, 3)
    const joining = numbered(1, 3); // real length 3
    cache.pack([
      { cache: old, row: 1, length: 2 },
      { cache: joining, row: 0, length: 3 },
    ]);
    expect(cache.keys[0].shape).toEqual([2, 2, 3, 1]);
    // Row 0 <- old row 1, last 2 positions (values 102, 103 / 112, 113), after one pad slot.
    // Row 1 <- joining row 0, all 3 positions.
    expect([...cache.keys[0].data]).toEqual([0, 102, 103, 0, 112, 113, 0, 1, 2, 10, 11, 12]);
    expect([...cache.values[0].data]).toEqual([
      0, -102, -103, 0, -112, -113, -0, -1, -2, -10, -11, -12,
    ]);
    expect(cache.lengths).toEqual([2, 3]);
    expect(cache.mask(1)).toEqual([
      [0, 1, 1, 1],
      [1, 1, 1, 1],
    ]);
    // After a decode step both rows have one more real token.
    cache.advance(numbered(2, 4));
    expect(cache.lengths).toEqual([3, 4]);
    cache.pack([]);
    expect(cache.size).toBe(0);
  });
});
