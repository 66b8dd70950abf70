import { type FloatDType, fromFloat32Array, type TypedArrayOf } from '@lora/core';
import {
  type Bnb4Weight,
  dequantizeBnb4,
  isDoubleQuantized,
  numelOf,
  quantizeBnb4,
  type WeightDType,
} from './bnb4-weight.js';
import { QuantError } from './errors.js';
import { defaultBlockSize, isBnb4Format, type QuantFormat } from './formats.js';
import {
  blocksPerRow,
  dequantizeMatMulNBits,
  type MatMulNBitsWeight,
  quantizeMatMulNBits,
} from './nbits.js';

/**
 * A quantized weight in memory, whatever the format: a bitsandbytes weight (nf4, fp4) or a
 * `MatMulNBits` weight (int4, uint4). Tell them apart by `format`.
 */
export type QuantizedWeight =
  | Bnb4Weight
  | (MatMulNBitsWeight & { readonly shape: readonly number[]; readonly dtype: WeightDType });

export interface QuantizeWeightOptions {
  format: QuantFormat;
  /** Default: 64 for nf4/fp4, 32 for int4/uint4. */
  blockSize?: number;
  /** nf4/fp4 only. */
  doubleQuant?: boolean;
  /** Original dtype to record. Default 'f32'. */
  dtype?: WeightDType;
  name?: string;
}

/**
 * `[N, K]` view of a shape for per-row formats: 2-D as is, 1-D as one row, higher ranks as
 * `[shape[0], rest]` (a conv weight `[out, in, kh, kw]` becomes `[out, in*kh*kw]`).
 */
export function rowsAndColumns(shape: readonly number[]): [number, number] {
  if (shape.length === 0) return [1, 1];
  if (shape.length === 1) return [1, shape[0]];
  return [shape[0], numelOf(shape) / shape[0]];
}

/** Quantizes a weight (row-major float32 values) in any of the four formats. */
export function quantizeWeight(
  values: Float32Array,
  shape: readonly number[],
  options: QuantizeWeightOptions,
): QuantizedWeight {
  const { format } = options;
  const blockSize = options.blockSize ?? defaultBlockSize(format);
  const dtype = options.dtype ?? 'f32';
  if (isBnb4Format(format))
    return quantizeBnb4(values, shape, { ...options, format, blockSize, dtype });
  if (options.doubleQuant) {
    throw new QuantError(
      'QUANT_FORMAT',
      `Double quantization applies to nf4/fp4 absmax, not to ${format} scales.`,
      { format },
    );
  }
  const [N, K] = rowsAndColumns(shape);
  const w = quantizeMatMulNBits(values, N, K, { format, blockSize, name: options.name });
  return { ...w, shape: [...shape], dtype };
}

/** Dequantizes to float32 in row-major order of `w.shape`. */
export function dequantizeWeightF32(w: QuantizedWeight, out?: Float32Array): Float32Array {
  return isBnb4Format(w.format)
    ? dequantizeBnb4(w as Bnb4Weight, out)
    : dequantizeMatMulNBits(w as MatMulNBitsWeight, out);
}

/** Dequantizes to f32, f16 or bf16 (float32 values rounded to nearest even). */
export function dequantizeWeight<D extends Exclude<FloatDType, 'f64'>>(
  w: QuantizedWeight,
  dtype: D,
): TypedArrayOf[D] {
  if (dtype !== 'f32' && dtype !== 'f16' && dtype !== 'bf16') {
    throw new QuantError('QUANT_DTYPE', `Dequantize to f32, f16 or bf16, not ${dtype}.`, { dtype });
  }
  return fromFloat32Array(dequantizeWeightF32(w), dtype);
}

/**
 * Bits stored for the weight: codes plus statistics (absmax or scales and zero points; with
 * double quantization the 8-bit codes, the float32 absmax2 and the float32 offset). Per-tensor
 * constants (code tables, JSON state) are not counted.
 */
export function storedBits(w: QuantizedWeight): number {
  if (isBnb4Format(w.format)) {
    const b = w as Bnb4Weight;
    const codes = numelOf(b.shape) * 4;
    if (isDoubleQuantized(b.absmax))
      return codes + b.absmax.codes.length * 8 + b.absmax.absmax2.length * 32 + 32;
    return codes + b.absmax.length * 32;
  }
  const q = w as MatMulNBitsWeight;
  const nb = blocksPerRow(q.K, q.blockSize);
  return q.N * q.K * 4 + q.N * nb * 32 + (q.zeroPoints ? q.N * nb * 4 : 0);
}
