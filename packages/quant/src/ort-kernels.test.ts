import { createRng } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { quantizeBnb4, toBlockwise } from './bnb4-weight.js';
import { dequantizeBlockwise } from './blockwise.js';
import { NBITS_BLOCK_SIZES, type NBitsFormat } from './formats.js';
import { dequantizeMatMulNBits, quantizeMatMulNBits } from './nbits.js';
import { toMatMulBnb4 } from './ort-layout.js';
import { type Init, matmulTransposedF64, runContribOp } from './test-utils/ort-graph.js';

// Proof against onnxruntime's own kernels: a one-node graph fed this package's bytes must compute
// A x dequant(W)^T. Tolerance: float32 accumulation over K terms of size |a||w| ~ 1 * 1, so a
// relative 1e-5 of sum |a_k w_k| (the kernels accumulate in float32; the reference in float64).
function expectClose(actual: Float32Array, expected: Float64Array, scale: Float64Array) {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < actual.length; i++)
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / (scale[i] + 1e-30));
  expect(worst).toBeLessThan(1e-5);
}

function absScale(A: Float32Array, W: Float32Array, M: number, K: number, N: number): Float64Array {
  return matmulTransposedF64(A.map(Math.abs), W.map(Math.abs), M, K, N);
}

describe('MatMulNBits (com.microsoft) runs our int4/uint4 bytes', () => {
  const M = 3;
  const cases: { format: NBitsFormat; K: number; N: number; blockSize: number }[] = [];
  for (const format of ['uint4', 'int4'] as NBitsFormat[]) {
    for (const blockSize of NBITS_BLOCK_SIZES)
      cases.push({ format, K: blockSize * 2, N: 5, blockSize });
    cases.push({ format, K: 100, N: 7, blockSize: 32 }); // K not a multiple of the block size
    cases.push({ format, K: 37, N: 3, blockSize: 16 }); // odd K, 3 blocks (odd count of zero points)
  }
  it.each(cases)('$format K=$K N=$N block $blockSize', async ({ format, K, N, blockSize }) => {
    const rng = createRng(K * 31 + N);
    const W = rng.normalArray(N * K, 0, 1, 'f32');
    const A = rng.normalArray(M * K, 0, 1, 'f32');
    const q = quantizeMatMulNBits(W, N, K, { format, blockSize });
    const deq = dequantizeMatMulNBits(q);
    const nb = Math.ceil(K / blockSize);
    const initializers: Init[] = [
      { name: 'B', type: 'uint8', dims: [N, nb, blockSize / 2], data: q.B },
      { name: 'scales', type: 'float', dims: [N * nb], data: q.scales },
    ];
    if (q.zeroPoints)
      initializers.push({
        name: 'zero_points',
        type: 'uint8',
        dims: [q.zeroPoints.length],
        data: q.zeroPoints,
      });
    const Y = await runContribOp({
      op: 'MatMulNBits',
      inputs: q.zeroPoints ? ['A', 'B', 'scales', 'zero_points'] : ['A', 'B', 'scales'],
      initializers,
      attributes: { K, N, bits: 4, block_size: blockSize, accuracy_level: 0 },
      A,
      M,
      K,
      N,
    });
    expectClose(Y, matmulTransposedF64(A, deq, M, K, N), absScale(A, deq, M, K, N));
  });
});

describe('MatMulBnb4 (com.microsoft) runs our nf4/fp4 bytes', () => {
  const M = 2;
  it.each([
    { format: 'nf4', N: 8, K: 64, blockSize: 64, doubleQuant: false },
    { format: 'fp4', N: 8, K: 64, blockSize: 64, doubleQuant: false },
    { format: 'nf4', N: 5, K: 39, blockSize: 32, doubleQuant: false }, // odd N*K, partial last block
    { format: 'fp4', N: 7, K: 45, blockSize: 128, doubleQuant: false },
    { format: 'nf4', N: 64, K: 96, blockSize: 64, doubleQuant: true }, // absmax expanded from DQ
  ] as const)(
    '$format N=$N K=$K block $blockSize dq=$doubleQuant',
    async ({ format, N, K, blockSize, doubleQuant }) => {
      const rng = createRng(N * 131 + K);
      const W = rng.normalArray(N * K, 0, 1, 'f32');
      const A = rng.normalArray(M * K, 0, 1, 'f32');
      const w = quantizeBnb4(W, [N, K], { format, blockSize, doubleQuant });
      const init = toMatMulBnb4(w);
      const deq = dequantizeBlockwise(toBlockwise(w));
      const Y = await runContribOp({
        op: 'MatMulBnb4',
        inputs: ['A', 'B', 'absmax'],
        initializers: [
          { name: 'B', type: 'uint8', dims: [init.B.length], data: init.B },
          { name: 'absmax', type: 'float', dims: [init.absmax.length], data: init.absmax },
        ],
        attributes: { K, N, block_size: blockSize, quant_type: init.quantType },
        A,
        M,
        K,
        N,
      });
      expectClose(Y, matmulTransposedF64(A, deq, M, K, N), absScale(A, deq, M, K, N));
    },
  );
});
