import {
  FP4_CODE,
  FP4_MAGNITUDE_CODES,
  FP4_SIGN_BIT,
  FP4_THRESHOLDS,
  NF4_CODE,
  NF4_THRESHOLDS,
  NF4_ZERO_CODE,
} from './codebooks.js';
import { type BucketTables, buildBucketTables, quantizeBlocksKernel } from './blockwise-kernel.js';
import { QuantError } from './errors.js';
import { quantizeBlocksWasm } from './wasm/blockwise-wasm.js';
import {
  assertArrayType,
  assertBlockSize,
  assertFinite,
  type Bnb4Format,
  BNB4_DEFAULT_BLOCK_SIZE,
  isBnb4Format,
} from './formats.js';

/**
 * A tensor quantized the bitsandbytes way: blocks of `blockSize` consecutive values of the
 * flattened (row-major) tensor, one float32 absmax per block, two 4-bit codes per byte.
 *
 * Layout (sizes asserted by {@link assertBlockwiseLayout}):
 * - `packed`: `ceil(length / 2)` bytes; value `2j` in the HIGH nibble, `2j + 1` in the LOW nibble.
 *   An odd count is padded with the code of 0.0 (NF4 7, FP4 0).
 * - `absmax`: `ceil(length / blockSize)` float32; the last partial block covers only its real values.
 */
export interface Blockwise4Bit {
  readonly format: Bnb4Format;
  readonly blockSize: number;
  /** Number of quantized values. */
  readonly length: number;
  readonly packed: Uint8Array;
  readonly absmax: Float32Array;
}

export interface BlockwiseOptions {
  format: Bnb4Format;
  /** Values per block, 32..4096 (power of two). Default 64. */
  blockSize?: number;
  /** Tensor name used in error messages. */
  name?: string;
}

/** The code table of a bitsandbytes 4-bit format. */
export function codeTable(format: Bnb4Format): Float32Array {
  return format === 'nf4' ? NF4_CODE : FP4_CODE;
}

export function blockCount(length: number, blockSize: number): number {
  return Math.ceil(length / blockSize);
}

/** Throws QUANT_SHAPE unless the arrays have the sizes the layout requires, QUANT_NON_FINITE on a NaN/Inf absmax. */
export function assertBlockwiseLayout(q: Blockwise4Bit): void {
  assertArrayType(q.packed, 'Uint8Array', 'packed', 'dequantizeBlockwise');
  assertArrayType(q.absmax, 'Float32Array', 'absmax', 'dequantizeBlockwise');
  const wantPacked = Math.ceil(q.length / 2);
  const wantAbsmax = blockCount(q.length, q.blockSize);
  if (q.packed.length !== wantPacked || q.absmax.length !== wantAbsmax) {
    throw new QuantError(
      'QUANT_SHAPE',
      `${q.format} blocks of ${q.blockSize} over ${q.length} values need ${wantPacked} packed bytes and ${wantAbsmax} absmax values, got ${q.packed.length} and ${q.absmax.length}.`,
      { length: q.length, blockSize: q.blockSize },
    );
  }
  // A NaN or infinite scale makes its whole block NaN/Inf: refuse rather than write such weights.
  for (let b = 0; b < q.absmax.length; b++) {
    if (!Number.isFinite(q.absmax[b])) {
      throw new QuantError(
        'QUANT_NON_FINITE',
        `absmax of block ${b} is ${q.absmax[b]}: the stored quantization state is damaged and would give non-finite weights. Re-quantize the model from its original weights.`,
        { block: b },
      );
    }
  }
}

// --- Reference: the decision rules written out one value at a time ----------------------------

/**
 * The code of one normalised value, as the bitsandbytes kernel decides it. NF4: the number of
 * thresholds strictly below `y`. FP4: sign bit for `y < 0`, magnitude level = number of
 * thresholds strictly below `|y|`. NaN (0/0 in an all-zero block) fails every comparison and
 * gives code 0, as on CUDA.
 */
export function quantizeValueRef(format: Bnb4Format, y: number): number {
  if (format === 'nf4') {
    let code = 0;
    for (let k = 0; k < NF4_THRESHOLDS.length; k++) if (y > NF4_THRESHOLDS[k]) code = k + 1;
    return code;
  }
  const sign = y < 0 ? FP4_SIGN_BIT : 0;
  const magnitude = Math.abs(y);
  let level = 0;
  for (let k = 0; k < FP4_THRESHOLDS.length; k++) if (magnitude > FP4_THRESHOLDS[k]) level = k + 1;
  return sign | FP4_MAGNITUDE_CODES[level];
}

/**
 * Reference blockwise quantization (slow, plain): absmax per block, `y = f32(x * f32(1/absmax))`,
 * {@link quantizeValueRef}, pack high nibble first. The fast {@link quantizeBlockwise} must give
 * the same bytes.
 */
export function quantizeBlockwiseRef(
  values: Float32Array,
  options: BlockwiseOptions,
): Blockwise4Bit {
  const { format } = options;
  const blockSize = options.blockSize ?? BNB4_DEFAULT_BLOCK_SIZE;
  assertBlockSize(format, blockSize);
  assertFinite(values, options.name);
  const n = values.length;
  const absmax = new Float32Array(blockCount(n, blockSize));
  const codes = new Uint8Array(n + (n % 2));
  for (let b = 0; b < absmax.length; b++) {
    const start = b * blockSize;
    const end = Math.min(start + blockSize, n);
    let m = 0;
    for (let i = start; i < end; i++) m = Math.max(m, Math.abs(values[i]));
    absmax[b] = m;
    const inverse = Math.fround(1 / m);
    for (let i = start; i < end; i++)
      codes[i] = quantizeValueRef(format, Math.fround(values[i] * inverse));
    // Padding of an odd count is the value 0.0, normalised like the rest (NaN when absmax is 0).
    if (end === n && n % 2 === 1) codes[n] = quantizeValueRef(format, Math.fround(0 * inverse));
  }
  const packed = new Uint8Array(Math.ceil(n / 2));
  for (let j = 0; j < packed.length; j++) packed[j] = (codes[2 * j] << 4) | codes[2 * j + 1];
  return { format, blockSize, length: n, packed, absmax };
}

// --- Fast path: bucket tables (see blockwise-kernel.ts) ------------------------------------

/** Largest float32 below `x` (turns `y >= t` into `y > t'` for float32 values y). */
function previousFloat32(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  if (x === 0)
    u[0] = 0x80000001; // -(smallest subnormal)
  else if (x > 0) u[0]--;
  else u[0]++;
  return f[0];
}

function tablesFor(format: Bnb4Format): BucketTables {
  const special = {
    zeroCode: format === 'nf4' ? NF4_ZERO_CODE : 0,
    posInfCode: quantizeValueRef(format, Number.POSITIVE_INFINITY),
    negInfCode: quantizeValueRef(format, Number.NEGATIVE_INFINITY),
    nanCode: quantizeValueRef(format, Number.NaN),
  };
  if (format === 'nf4')
    return buildBucketTables(
      [...NF4_THRESHOLDS],
      Array.from({ length: 16 }, (_, k) => k),
      special,
    );
  // FP4 along the signed axis: on the negative side the magnitude level drops when y >= -t,
  // i.e. y > previousFloat32(-t); at zero, y >= 0 (-0 included) loses the sign bit.
  const points = [
    ...[...FP4_THRESHOLDS].reverse().map((t) => previousFloat32(-t)),
    previousFloat32(0),
    ...FP4_THRESHOLDS,
  ];
  const codes: number[] = [];
  for (let level = 7; level >= 0; level--) codes.push(FP4_SIGN_BIT | FP4_MAGNITUDE_CODES[level]);
  for (let level = 0; level <= 7; level++) codes.push(FP4_MAGNITUDE_CODES[level]);
  return buildBucketTables(points, codes, special);
}

/** The fast-path tables of each format (immutable after construction). */
export const BUCKET_TABLES: Readonly<Record<Bnb4Format, BucketTables>> = {
  nf4: tablesFor('nf4'),
  fp4: tablesFor('fp4'),
};

/**
 * Quantizes `values` (the flattened tensor) to NF4 or FP4 exactly as bitsandbytes does: one
 * absmax per block, `x * (1/absmax)` in float32, the kernel's thresholds and tie rules, high
 * nibble first. An all-zero block gets absmax 0 and codes 0 (bytes 0x00, as the CUDA kernel
 * writes; the pure-torch backend writes 0x77 for NF4, which also decodes to zeros).
 * Throws QUANT_NON_FINITE on NaN/Inf (with the first bad index), QUANT_BLOCK_SIZE on a block
 * size bitsandbytes does not allow.
 */
export function quantizeBlockwise(values: Float32Array, options: BlockwiseOptions): Blockwise4Bit {
  assertArrayType(values, 'Float32Array', 'values', 'quantizeBlockwise');
  const { format } = options;
  if (!isBnb4Format(format)) {
    throw new QuantError('QUANT_FORMAT', `quantizeBlockwise takes nf4 or fp4, got ${format}.`, {
      format,
    });
  }
  const blockSize = options.blockSize ?? BNB4_DEFAULT_BLOCK_SIZE;
  assertBlockSize(format, blockSize);
  const n = values.length;
  const absmax = new Float32Array(blockCount(n, blockSize));
  const packed = new Uint8Array(Math.ceil(n / 2));
  quantizeBlocksInto(values, format, blockSize, 0, absmax.length, packed, absmax, options.name);
  return { format, blockSize, length: n, packed, absmax };
}

/**
 * Quantizes blocks `[firstBlock, endBlock)` of `values` into `packed` and `absmax` (full-size
 * outputs). The unit of work that parallel quantization hands to each thread.
 */
export function quantizeBlocksInto(
  values: Float32Array,
  format: Bnb4Format,
  blockSize: number,
  firstBlock: number,
  endBlock: number,
  packed: Uint8Array,
  absmax: Float32Array,
  name = 'tensor',
): void {
  const t = BUCKET_TABLES[format];
  // The SIMD wasm kernel (same bytes) for large ranges; the TypeScript kernel otherwise.
  const bad =
    quantizeBlocksWasm(values, format, blockSize, firstBlock, endBlock, packed, absmax) ??
    quantizeBlocksKernel(
      values,
      blockSize,
      firstBlock,
      endBlock,
      packed,
      absmax,
      t.threshold,
      t.below,
      t.above,
      t.zeroCode,
      t.posInfCode,
      t.negInfCode,
      t.nanCode,
    );
  if (bad >= 0)
    assertFinite(values, name, bad * blockSize, Math.min((bad + 1) * blockSize, values.length));
}

/** The absmax of each block (what quantization would store), refusing NaN/Inf. */
export function blockAbsmax(values: Float32Array, blockSize: number, name?: string): Float32Array {
  assertArrayType(values, 'Float32Array', 'values', 'blockAbsmax');
  const n = values.length;
  const absmax = new Float32Array(blockCount(n, blockSize));
  for (let b = 0; b < absmax.length; b++) {
    const end = Math.min((b + 1) * blockSize, n);
    let m = 0;
    for (let i = b * blockSize; i < end; i++) {
      const a = Math.abs(values[i]);
      if (!(a <= m)) {
        if (Number.isNaN(a) || a === Number.POSITIVE_INFINITY) assertFinite(values, name, i, i + 1);
        m = a;
      }
    }
    absmax[b] = m;
  }
  return absmax;
}

/**
 * Dequantizes to float32: `w = f32(table[code] * absmax[i / blockSize])`. Writes into `out` when
 * given (length >= q.length).
 */
export function dequantizeBlockwise(
  q: Blockwise4Bit,
  out: Float32Array = new Float32Array(q.length),
): Float32Array {
  assertBlockwiseLayout(q);
  assertArrayType(out, 'Float32Array', 'out', 'dequantizeBlockwise');
  dequantizeBlocksInto(q, 0, q.absmax.length, out);
  return out;
}

/** Dequantizes blocks `[firstBlock, endBlock)` of `q` into `out` (full size). */
export function dequantizeBlocksInto(
  q: Blockwise4Bit,
  firstBlock: number,
  endBlock: number,
  out: Float32Array,
): void {
  const code = codeTable(q.format);
  const { packed, absmax, blockSize, length: n } = q;
  // The 16 scaled values of a block, copied as raw 32-bit patterns (no float conversions per value).
  const scaled = new Float32Array(16);
  const scaledBits = new Int32Array(scaled.buffer);
  const outBits = new Int32Array(out.buffer, out.byteOffset, out.length);
  for (let b = firstBlock; b < endBlock; b++) {
    const a = absmax[b];
    for (let c = 0; c < 16; c++) scaled[c] = code[c] * a;
    const start = b * blockSize;
    const end = Math.min(start + blockSize, n);
    let o = start >> 1;
    let i = start;
    for (; i + 1 < end; i += 2) {
      const byte = packed[o++];
      outBits[i] = scaledBits[byte >> 4];
      outBits[i + 1] = scaledBits[byte & 15];
    }
    if (i < end) outBits[i] = scaledBits[packed[o] >> 4];
  }
}
