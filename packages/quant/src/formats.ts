import { QuantError } from './errors.js';

/** bitsandbytes 4-bit formats: a 16-entry code table times one absmax per block. */
export type Bnb4Format = 'nf4' | 'fp4';
/** Integer 4-bit formats in onnxruntime's `MatMulNBits` layout: `(q - zeroPoint) * scale`. */
export type NBitsFormat = 'int4' | 'uint4';
export type QuantFormat = Bnb4Format | NBitsFormat;

export const QUANT_FORMATS: readonly QuantFormat[] = ['nf4', 'fp4', 'int4', 'uint4'];

export function isBnb4Format(format: string): format is Bnb4Format {
  return format === 'nf4' || format === 'fp4';
}

export function isNBitsFormat(format: string): format is NBitsFormat {
  return format === 'int4' || format === 'uint4';
}

/** Parses a user-facing format name. */
export function parseQuantFormat(name: string): QuantFormat {
  const n = name.trim().toLowerCase();
  if ((QUANT_FORMATS as readonly string[]).includes(n)) return n as QuantFormat;
  throw new QuantError(
    'QUANT_FORMAT',
    `Unknown 4-bit format "${name}". Use one of: ${QUANT_FORMATS.join(', ')}.`,
    { format: name },
  );
}

/** Block sizes bitsandbytes accepts for 4-bit (blocks over the flattened tensor). */
export const BNB4_BLOCK_SIZES: readonly number[] = [32, 64, 128, 256, 512, 1024, 2048, 4096];
/** Default bitsandbytes 4-bit block size. */
export const BNB4_DEFAULT_BLOCK_SIZE = 64;

/**
 * Block sizes of `MatMulNBits` (blocks along K in each row): a power of two, at least 16. The
 * onnxruntime CPU kernel (MLAS) runs 16 to 256; larger sizes are refused so every file this
 * package writes runs there.
 */
export const NBITS_BLOCK_SIZES: readonly number[] = [16, 32, 64, 128, 256];
/** Default `MatMulNBits` block size (onnxruntime's quantizer default). */
export const NBITS_DEFAULT_BLOCK_SIZE = 32;

/** The default block size of a format. */
export function defaultBlockSize(format: QuantFormat): number {
  return isBnb4Format(format) ? BNB4_DEFAULT_BLOCK_SIZE : NBITS_DEFAULT_BLOCK_SIZE;
}

/** Throws QUANT_BLOCK_SIZE unless `blockSize` is allowed for `format`. */
export function assertBlockSize(format: QuantFormat, blockSize: number): void {
  const allowed = isBnb4Format(format) ? BNB4_BLOCK_SIZES : NBITS_BLOCK_SIZES;
  if (!allowed.includes(blockSize)) {
    throw new QuantError(
      'QUANT_BLOCK_SIZE',
      `Block size ${blockSize} is not allowed for ${format}. Use one of: ${allowed.join(', ')}.`,
      { format, blockSize },
    );
  }
}

/**
 * Refuses NaN and Inf: a non-finite weight would poison its whole block. Names the tensor and the
 * first bad flat index.
 */
export function assertFinite(
  values: ArrayLike<number>,
  name = 'tensor',
  from = 0,
  to = values.length,
): void {
  for (let i = from; i < to; i++) {
    const v = values[i];
    if (v - v !== 0) {
      throw new QuantError(
        'QUANT_NON_FINITE',
        `${name}: value ${v} at flat index ${i} is not finite; 4-bit quantization needs finite weights. Fix or drop the tensor (e.g. --exclude) first.`,
        { tensor: name, index: i, value: String(v) },
      );
    }
  }
}

type TypedArrayName = 'Float32Array' | 'Uint8Array';

/**
 * Refuses an array whose element type is not the declared one. A `Uint16Array` of raw f16/bf16
 * bits passed as values would otherwise be quantized as if its integers were the numbers.
 * Checked by tag, so arrays from another realm (worker threads) pass.
 */
export function assertArrayType(
  value: unknown,
  expected: TypedArrayName,
  what: string,
  fn: string,
): void {
  const tag = Object.prototype.toString.call(value).slice(8, -1);
  if (tag === expected) return;
  const hint =
    tag === 'Uint16Array'
      ? ' (raw f16/bf16 bits? convert them first, e.g. with toFloat32Array from @lora/core)'
      : tag === 'Float64Array' || tag === 'Array'
        ? ' (copy it with Float32Array.from first)'
        : '';
  throw new QuantError(
    'QUANT_INPUT_TYPE',
    `${fn}: ${what} must be a ${expected}, got ${tag}${hint}.`,
    { function: fn, expected, actual: tag },
  );
}
