import { type Blockwise4Bit, dequantizeBlockwise, quantizeBlockwise } from './blockwise.js';
import { type DoubleQuantizedAbsmax, dequantizeAbsmax, doubleQuantize } from './double-quant.js';
import { QuantError } from './errors.js';
import { assertArrayType, type Bnb4Format } from './formats.js';

/** Float dtypes a weight can come from (recorded so it can be restored). */
export type WeightDType = 'f32' | 'f16' | 'bf16';

/**
 * A bitsandbytes 4-bit weight: the packed codes of the flattened tensor plus its statistics,
 * either float32 absmax or their double quantization. What a `Linear4bit` holds.
 */
export interface Bnb4Weight {
  readonly format: Bnb4Format;
  /** Original shape (a torch Linear weight is `[out, in]`). */
  readonly shape: readonly number[];
  /** Original dtype. */
  readonly dtype: WeightDType;
  readonly blockSize: number;
  /** `ceil(numel / 2)` bytes, high nibble first. */
  readonly packed: Uint8Array;
  /** float32 absmax per block, or (double quantization) their 8-bit codes and statistics. */
  readonly absmax: Float32Array | DoubleQuantizedAbsmax;
}

export interface Bnb4Options {
  format: Bnb4Format;
  blockSize?: number;
  /** Quantize absmax again (QLoRA double quantization). Default false. */
  doubleQuant?: boolean;
  /** Original dtype to record. Default 'f32'. */
  dtype?: WeightDType;
  /** Tensor name used in error messages. */
  name?: string;
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Quantizes a weight (values in row-major order) to a bitsandbytes 4-bit weight. */
export function quantizeBnb4(
  values: Float32Array,
  shape: readonly number[],
  options: Bnb4Options,
): Bnb4Weight {
  assertArrayType(values, 'Float32Array', 'values', 'quantizeBnb4');
  if (numelOf(shape) !== values.length) {
    throw new QuantError(
      'QUANT_SHAPE',
      `${options.name ?? 'weight'}: shape [${shape.join(', ')}] needs ${numelOf(shape)} values, got ${values.length}.`,
      {
        tensor: options.name,
      },
    );
  }
  const blocks = quantizeBlockwise(values, options);
  return fromBlockwise(blocks, shape, options.dtype ?? 'f32', options.doubleQuant ?? false);
}

/**
 * Wraps blockwise codes as a weight; with `doubleQuant` the absmax are double-quantized (the codes
 * were computed with the exact absmax, as bitsandbytes does).
 */
export function fromBlockwise(
  blocks: Blockwise4Bit,
  shape: readonly number[],
  dtype: WeightDType,
  doubleQuant: boolean,
): Bnb4Weight {
  return {
    format: blocks.format,
    shape: [...shape],
    dtype,
    blockSize: blocks.blockSize,
    packed: blocks.packed,
    absmax: doubleQuant ? doubleQuantize(blocks.absmax) : blocks.absmax,
  };
}

export function isDoubleQuantized(
  absmax: Float32Array | DoubleQuantizedAbsmax,
): absmax is DoubleQuantizedAbsmax {
  return !(absmax instanceof Float32Array);
}

/** The float32 absmax a kernel multiplies by (double quantization expanded). */
export function expandedAbsmax(w: Bnb4Weight): Float32Array {
  return isDoubleQuantized(w.absmax) ? dequantizeAbsmax(w.absmax) : w.absmax;
}

/** The weight as blockwise codes with float32 absmax. */
export function toBlockwise(w: Bnb4Weight): Blockwise4Bit {
  return {
    format: w.format,
    blockSize: w.blockSize,
    length: numelOf(w.shape),
    packed: w.packed,
    absmax: expandedAbsmax(w),
  };
}

/** Dequantizes to float32, row-major in `w.shape`. */
export function dequantizeBnb4(w: Bnb4Weight, out?: Float32Array): Float32Array {
  return dequantizeBlockwise(toBlockwise(w), out);
}
