import { type FloatDType, fromFloat32Array, type TypedArrayOf } from '@lora/core';
import { type Blockwise4Bit, dequantizeBlockwise } from './blockwise.js';
import {
  type Bnb4Weight,
  dequantizeBnb4,
  isDoubleQuantized,
  numelOf,
  quantizeBnb4,
  toBlockwise,
  type WeightDType,
} from './bnb4-weight.js';
import { combineErrors, type ErrorStats, measureError } from './error-report.js';
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

/**
 * The error of a quantized weight against its original values, dequantizing a chunk at a time
 * (a few MiB of scratch instead of a second tensor-sized buffer). Includes `storedBits(w)`.
 */
export function measureQuantizationError(
  values: Float32Array,
  w: QuantizedWeight,
  chunkValues = 1 << 20,
): ErrorStats {
  const parts: ErrorStats[] = [];
  if (isBnb4Format(w.format)) {
    const q = toBlockwise(w as Bnb4Weight);
    const blocksPerChunk = Math.max(1, Math.floor(chunkValues / q.blockSize));
    const scratch = new Float32Array(Math.min(values.length, blocksPerChunk * q.blockSize));
    for (let b0 = 0; b0 < q.absmax.length; b0 += blocksPerChunk) {
      const b1 = Math.min(q.absmax.length, b0 + blocksPerChunk);
      const start = b0 * q.blockSize;
      const end = Math.min(values.length, b1 * q.blockSize);
      const part: Blockwise4Bit = {
        format: q.format,
        blockSize: q.blockSize,
        length: end - start,
        packed: q.packed.subarray(start / 2, Math.ceil(end / 2)),
        absmax: q.absmax.subarray(b0, b1),
      };
      const out = scratch.subarray(0, end - start);
      dequantizeBlockwise(part, out);
      parts.push(measureError(values.subarray(start, end), out));
    }
  } else {
    const m = w as MatMulNBitsWeight;
    const nb = blocksPerRow(m.K, m.blockSize);
    const rowBytes = nb * (m.blockSize / 2);
    const zpRow = Math.ceil(nb / 2);
    const rowsPerChunk = Math.max(1, Math.floor(chunkValues / Math.max(1, m.K)));
    const scratch = new Float32Array(Math.min(m.N, rowsPerChunk) * m.K);
    for (let n0 = 0; n0 < m.N; n0 += rowsPerChunk) {
      const n1 = Math.min(m.N, n0 + rowsPerChunk);
      const part: MatMulNBitsWeight = {
        format: m.format,
        N: n1 - n0,
        K: m.K,
        blockSize: m.blockSize,
        B: m.B.subarray(n0 * rowBytes, n1 * rowBytes),
        scales: m.scales.subarray(n0 * nb, n1 * nb),
        ...(m.zeroPoints ? { zeroPoints: m.zeroPoints.subarray(n0 * zpRow, n1 * zpRow) } : {}),
      };
      const out = scratch.subarray(0, (n1 - n0) * m.K);
      dequantizeMatMulNBits(part, out);
      parts.push(measureError(values.subarray(n0 * m.K, n1 * m.K), out));
    }
  }
  const total = combineErrors(parts);
  return combineErrors([{ ...total, storedBits: storedBits(w) }]);
}
