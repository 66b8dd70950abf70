import {
  type Bnb4Weight,
  dequantizeBnb4,
  dequantizeMatMulNBits,
  isDoubleQuantized,
  quantizeBnb4,
  quantizeMatMulNBits,
} from '@lora/quant';
import { describe, expect, it } from 'vitest';
import { GraphBuilder } from '../graph/builder.js';
import { ModelSession } from '../session/session.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { TRAINING_OPTIMIZATION } from '../training/session-options.js';
import { emitDequantizedWeight } from './dequantize-graph.js';
import type { LinearWeight } from './linear.js';
import { bnb4Linear, nbitsLinear } from './quantize-linear.js';

/** Runs deq(W) in onnxruntime (constant folding off, so the kernels compute it at run time). */
async function dequantizeInOnnxruntime(weight: LinearWeight): Promise<Float32Array> {
  const g = new GraphBuilder('dequantize');
  g.output(emitDequantizedWeight(g, 'w', weight), 'w_deq');
  const session = await ModelSession.fromGraph(g.build(), {
    intraOpNumThreads: 1,
    optimization: TRAINING_OPTIMIZATION,
  });
  try {
    const out = await session.run({});
    expect(out.w_deq.shape).toEqual([weight.outFeatures, weight.inFeatures]);
    return out.w_deq.data as Float32Array;
  } finally {
    await session.release();
  }
}

/** Bit-for-bit comparison (so -0 vs +0 and every last ulp count); reports the first mismatch. */
function expectSameBits(actual: Float32Array, expected: Float32Array): void {
  expect(actual.length).toBe(expected.length);
  const a = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const e = new Uint32Array(expected.buffer, expected.byteOffset, expected.length);
  const first = a.findIndex((bits, i) => bits !== e[i]);
  if (first >= 0) {
    expect.fail(
      `element ${first}: ${actual[first]} (0x${a[first].toString(16)}), expected ${expected[first]} (0x${e[first].toString(16)})`,
    );
  }
}

/** Gaussian-ish weights with exact zeros sprinkled in (they hit the zero codes, and fp4's -0). */
function weights(n: number, seed: number): Float32Array {
  const rand = seededRandom(seed);
  const w = randomF32(n, rand, 0.5);
  for (let i = 0; i < n; i += 7) w[i] = i % 14 === 0 ? 0 : -0;
  for (let i = 3; i < n; i += 11) w[i] *= 1e-3; // values far below a block's absmax
  return w;
}

describe('in-graph dequantize of 4-bit linears equals @lora/quant bit for bit', () => {
  const bnb4Cases: {
    what: string;
    N: number;
    K: number;
    format: 'nf4' | 'fp4';
    blockSize: number;
    doubleQuant: boolean;
  }[] = [
    { what: 'nf4, whole blocks', N: 24, K: 64, format: 'nf4', blockSize: 64, doubleQuant: false },
    {
      what: 'fp4, odd N*K, partial last block',
      N: 7,
      K: 37,
      format: 'fp4',
      blockSize: 64,
      doubleQuant: false,
    },
    {
      what: 'nf4, double quant over 2 absmax groups, partial last block',
      N: 61,
      K: 300,
      format: 'nf4',
      blockSize: 64,
      doubleQuant: true,
    },
    {
      what: 'fp4, double quant, block 32',
      N: 33,
      K: 17,
      format: 'fp4',
      blockSize: 32,
      doubleQuant: true,
    },
  ];
  for (const c of bnb4Cases) {
    it(`MatMulBnb4 layout: ${c.what}`, async () => {
      const w: Bnb4Weight = quantizeBnb4(weights(c.N * c.K, c.N), [c.N, c.K], {
        format: c.format,
        blockSize: c.blockSize,
        doubleQuant: c.doubleQuant,
      });
      expect(isDoubleQuantized(w.absmax)).toBe(c.doubleQuant);
      if (c.doubleQuant && c.N * c.K > 256 * c.blockSize) {
        expect((w.absmax as { absmax2: Float32Array }).absmax2.length).toBeGreaterThan(1);
      }
      const got = await dequantizeInOnnxruntime(bnb4Linear(w));
      expectSameBits(got, dequantizeBnb4(w));
    });
  }

  const nbitsCases: {
    what: string;
    N: number;
    K: number;
    format: 'int4' | 'uint4';
    blockSize: number;
  }[] = [
    { what: 'int4, whole blocks', N: 16, K: 64, format: 'int4', blockSize: 32 },
    { what: 'int4, partial last block', N: 5, K: 40, format: 'int4', blockSize: 16 },
    {
      what: 'uint4, odd block count (padded zero-point byte), partial block',
      N: 9,
      K: 40,
      format: 'uint4',
      blockSize: 16,
    },
    { what: 'uint4, even block count', N: 6, K: 128, format: 'uint4', blockSize: 32 },
  ];
  for (const c of nbitsCases) {
    it(`MatMulNBits layout: ${c.what}`, async () => {
      const q = quantizeMatMulNBits(weights(c.N * c.K, c.K), c.N, c.K, {
        format: c.format,
        blockSize: c.blockSize,
      });
      expect(q.zeroPoints !== undefined).toBe(c.format === 'uint4');
      const got = await dequantizeInOnnxruntime(nbitsLinear(q));
      expectSameBits(got, dequantizeMatMulNBits(q));
    });
  }

  it('a wrong code table would be caught: the fp4 graph differs from the nf4 dequantize', async () => {
    const values = weights(8 * 64, 3);
    const nf4 = quantizeBnb4(values, [8, 64], { format: 'nf4' });
    const asFp4 = bnb4Linear({ ...nf4, format: 'fp4' });
    const got = await dequantizeInOnnxruntime(asFp4);
    const want = dequantizeBnb4(nf4);
    expect(got.some((v, i) => !Object.is(v, want[i]))).toBe(true);
  });
});
