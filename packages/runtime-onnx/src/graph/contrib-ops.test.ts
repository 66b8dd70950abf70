import { f32, tensor } from '@lora/core';
import { describe, it } from 'vitest';
import { emitLinear } from '../models/linear.js';
import { quantizeLinear } from '../models/quantize-linear.js';
import { checkParity } from '../test-utils/parity.js';
import { randomF32, seededRandom } from '../test-utils/random.js';

const rand = seededRandom(3);

describe('4-bit contrib ops: onnxruntime kernels match the float64 reference ops', () => {
  // Partial last blocks on purpose: K = 40 is not a multiple of 16/32, N*K = 7*40 is not of 64.
  const cases = [
    { format: 'int4', blockSize: 16 },
    { format: 'uint4', blockSize: 32 },
    { format: 'nf4', blockSize: 64 },
    { format: 'fp4', blockSize: 32 },
  ] as const;
  for (const { format, blockSize } of cases) {
    it(`${format}, block ${blockSize}, x [2, 3, 40] times W^T with W [7, 40]`, async () => {
      const N = 7;
      const K = 40;
      const weight = quantizeLinear(randomF32(N * K, rand), N, K, { format, blockSize }, 'w');
      const x = f32([2, 3, K], randomF32(2 * 3 * K, rand));
      await checkParity(
        (g) => emitLinear(g, 'w', g.input('x', 'f32', [2, 3, K]), weight),
        { x },
        { atol: 1e-5 },
      );
    });
  }

  it('MatMulNBits with float zero points and no zero points, bias added after', async () => {
    const N = 5;
    const K = 32;
    const packed = tensor(
      'u8',
      [N, 2, 8],
      Uint8Array.from({ length: N * 16 }, () => Math.floor(rand() * 256)),
    );
    const scales = f32([N * 2], randomF32(N * 2, rand));
    const zp = f32(
      [N * 2],
      Array.from({ length: N * 2 }, () => Math.floor(rand() * 16)),
    );
    const bias = f32([N], randomF32(N, rand));
    const x = f32([3, K], randomF32(3 * K, rand));
    const attrs = { K: { int: K }, N: { int: N }, bits: { int: 4 }, block_size: { int: 16 } };
    await checkParity(
      (g) => {
        const input = g.input('x', 'f32', [3, K]);
        const B = g.initializer('B', packed);
        const S = g.initializer('S', scales);
        const [withZp] = g.node(
          'MatMulNBits',
          [input, B, S, g.initializer('zp', zp), undefined, g.initializer('b', bias)],
          attrs,
        );
        const [noZp] = g.node('MatMulNBits', [input, B, S], attrs);
        return [withZp, noZp];
      },
      { x },
    );
  });
});
