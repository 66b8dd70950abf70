import { type Tensor, tensor } from '@lora/core';
import {
  BNB4_QUANT_STATE_PREFIX,
  type Bnb4Weight,
  dequantizeBlockwise,
  dequantizeBnb4,
  dequantizeMatMulNBits,
  isBnb4Format,
  type MatMulNBitsWeight,
  ORT_QUANT_STATE_SUFFIX,
  type QuantFormat,
  quantizeBlockwise,
  quantizeMatMulNBits,
  readBnb4Weight,
  readOrtWeight,
  type TensorSource,
  toMatMulBnb4,
} from '@lora/quant';
import { RuntimeError } from '../errors.js';
import type { LinearWeight } from './linear.js';
import type { WeightSource } from './weights.js';

/** How to quantize a float base on load: the 4-bit format and its block size. */
export interface BaseQuantOptions {
  /** nf4/fp4 run through `MatMulBnb4`, int4/uint4 through `MatMulNBits`. */
  readonly format: QuantFormat;
  /** Values per block; default 64 for nf4/fp4, 32 for int4/uint4 (the formats' own defaults). */
  readonly blockSize?: number;
  /**
   * int4/uint4 only: onnxruntime's `accuracy_level`. 4 = int8 activations (faster CPU decode,
   * results no longer match a float32 forward exactly). Default: float32 compute.
   */
  readonly accuracyLevel?: 0 | 1 | 4;
}

/** A linear in onnxruntime's `MatMulNBits` layout (int4, or uint4 with zero points). */
export function nbitsLinear(q: MatMulNBitsWeight, accuracyLevel?: 0 | 1 | 4): LinearWeight {
  const blocks = Math.ceil(q.K / q.blockSize);
  return {
    accuracyLevel,
    kind: 'nbits',
    inFeatures: q.K,
    outFeatures: q.N,
    blockSize: q.blockSize,
    packed: tensor('u8', [q.N, blocks, q.blockSize / 2], q.B),
    scales: tensor('f32', [q.scales.length], q.scales),
    zeroPoints: q.zeroPoints && tensor('u8', [q.zeroPoints.length], q.zeroPoints),
  };
}

/** A linear for `MatMulBnb4` from a bitsandbytes weight (double-quantized absmax expanded to float32). */
export function bnb4Linear(w: Bnb4Weight): LinearWeight {
  const init = toMatMulBnb4(w);
  return {
    kind: 'bnb4',
    inFeatures: init.K,
    outFeatures: init.N,
    blockSize: init.blockSize,
    quantType: init.quantType === 1 ? 'nf4' : 'fp4',
    packed: tensor('u8', [init.B.length], init.B),
    absmax: tensor('f32', [init.absmax.length], init.absmax),
  };
}

/** Quantizes a torch-layout [out, in] float32 weight into the layout of the matching onnxruntime op. */
export function quantizeLinear(
  weight: Float32Array,
  outFeatures: number,
  inFeatures: number,
  options: BaseQuantOptions,
  name: string,
): LinearWeight {
  if (isBnb4Format(options.format)) {
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
  return nbitsLinear(q, options.accuracyLevel);
}

/** The float32 [out, in] weight a linear stands for (what the reference forward compares against). */
export function dequantizeLinear(w: LinearWeight): Float32Array {
  switch (w.kind) {
    case 'dense':
      return w.weight.data;
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

/** How a tensor is stored in a folder written by `lora quantize` (or transformers + bitsandbytes). */
export function storedQuantization(source: WeightSource, name: string): 'bnb4' | 'ort' | undefined {
  if (
    source.info(`${name}${BNB4_QUANT_STATE_PREFIX}nf4`) ||
    source.info(`${name}${BNB4_QUANT_STATE_PREFIX}fp4`)
  ) {
    return 'bnb4';
  }
  if (source.info(`${name}${ORT_QUANT_STATE_SUFFIX}`)) return 'ort';
  return undefined;
}

function tensorSource(source: WeightSource): TensorSource {
  return { has: (n) => source.info(n) !== undefined, read: (n) => source.read(n) };
}

function checkShape(
  source: WeightSource,
  name: string,
  shape: readonly number[],
  expected: readonly number[],
): void {
  if (shape.length !== expected.length || shape.some((d, i) => d !== expected[i])) {
    throw new RuntimeError(
      'WEIGHT_SHAPE',
      `${source.description}: quantized tensor "${name}" has shape [${shape.join(', ')}], the config implies [${expected.join(', ')}].`,
      { tensor: name, expected, actual: shape },
    );
  }
}

/**
 * Reads a pre-quantized linear weight as its onnxruntime op wants it: bitsandbytes state dicts
 * (double quantization expanded) feed MatMulBnb4, the onnxruntime layout feeds its own op.
 */
export async function readQuantizedLinear(
  source: WeightSource,
  name: string,
  expectedShape: readonly [number, number],
): Promise<LinearWeight> {
  const kind = storedQuantization(source, name);
  if (kind === 'bnb4') {
    const w = await readBnb4Weight(tensorSource(source), name);
    checkShape(source, name, w.shape, expectedShape);
    return bnb4Linear(w);
  }
  const w = await readOrtWeight(tensorSource(source), name);
  checkShape(source, name, w.shape, expectedShape);
  return w.op === 'MatMulNBits' ? nbitsLinear(w.weight) : bnb4Linear(w.weight);
}

/** Reads a tensor stored quantized back to float32 (for embeddings and norms, which no 4-bit op takes). */
export async function readDequantized(source: WeightSource, name: string): Promise<Tensor<'f32'>> {
  const kind = storedQuantization(source, name);
  if (kind === 'bnb4') {
    const w = await readBnb4Weight(tensorSource(source), name);
    return tensor('f32', w.shape, dequantizeBnb4(w));
  }
  const w = await readOrtWeight(tensorSource(source), name);
  const values =
    w.op === 'MatMulNBits' ? dequantizeMatMulNBits(w.weight) : dequantizeBnb4(w.weight);
  return tensor('f32', w.shape, values);
}
