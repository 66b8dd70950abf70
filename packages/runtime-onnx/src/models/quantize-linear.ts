import { tensor } from '@lora/core';
import {
  dequantizeBlockwise,
  dequantizeMatMulNBits,
  type QuantFormat,
  quantizeBlockwise,
  quantizeMatMulNBits,
} from '@lora/quant';
import type { LinearWeight } from './linear.js';

/** How to quantize a float base on load: the 4-bit format and its block size. */
export interface BaseQuantOptions {
  /** nf4/fp4 run through `MatMulBnb4`, int4/uint4 through `MatMulNBits`. */
  readonly format: QuantFormat;
  /** Values per block; default 64 for nf4/fp4, 32 for int4/uint4 (the formats' own defaults). */
  readonly blockSize?: number;
}

/** Quantizes a torch-layout [out, in] float32 weight into the layout of the matching onnxruntime op. */
export function quantizeLinear(
  weight: Float32Array,
  outFeatures: number,
  inFeatures: number,
  options: BaseQuantOptions,
  name: string,
): LinearWeight {
  if (options.format === 'nf4' || options.format === 'fp4') {
    const q = quantizeBlockwise(weight, {
      format: options.format,
      blockSize: options.blockSize,
      name,
    });
    return {
      kind: 'bnb4',
      inFeatures,
      outFeatures,
      blockSize: q.blockSize,
      quantType: options.format,
      packed: tensor('u8', [q.packed.length], q.packed),
      absmax: tensor('f32', [q.absmax.length], q.absmax),
    };
  }
  const q = quantizeMatMulNBits(weight, outFeatures, inFeatures, {
    format: options.format,
    blockSize: options.blockSize,
    name,
  });
  const blocks = Math.ceil(inFeatures / q.blockSize);
  return {
    kind: 'nbits',
    inFeatures,
    outFeatures,
    blockSize: q.blockSize,
    packed: tensor('u8', [outFeatures, blocks, q.blockSize / 2], q.B),
    scales: tensor('f32', [q.scales.length], q.scales),
    zeroPoints: q.zeroPoints && tensor('u8', [q.zeroPoints.length], q.zeroPoints),
  };
}

/** The float32 [out, in] weight a 4-bit linear stands for (what the reference forward compares against). */
export function dequantizeLinear(w: LinearWeight): Float32Array {
  switch (w.kind) {
    case 'dense': {
      // weightT is [in, out]; give back [out, in].
      const out = new Float32Array(w.inFeatures * w.outFeatures);
      const src = w.weightT.data;
      for (let i = 0; i < w.inFeatures; i++) {
        for (let o = 0; o < w.outFeatures; o++)
          out[o * w.inFeatures + i] = src[i * w.outFeatures + o];
      }
      return out;
    }
    case 'bnb4':
      return dequantizeBlockwise({
        format: w.quantType,
        blockSize: w.blockSize,
        length: w.inFeatures * w.outFeatures,
        packed: w.packed.data,
        absmax: w.absmax.data,
      });
    case 'nbits':
      return dequantizeMatMulNBits({
        format: w.zeroPoints ? 'uint4' : 'int4',
        N: w.outFeatures,
        K: w.inFeatures,
        blockSize: w.blockSize,
        B: w.packed.data,
        scales: w.scales.data,
        zeroPoints: w.zeroPoints?.data,
      });
  }
}
