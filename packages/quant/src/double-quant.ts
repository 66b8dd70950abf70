import { DYNAMIC_MAP } from './codebooks.js';
import { QuantError } from './errors.js';

/** bitsandbytes' block size for the second-level quantization of absmax. */
export const DOUBLE_QUANT_BLOCK_SIZE = 256;

/**
 * Absmax values quantized a second time (QLoRA "double quantization"):
 * `absmax[i] = f32(f32(DYNAMIC_MAP[codes[i]] * absmax2[i / 256]) + offset)`.
 *
 * Layout: `codes` uint8 `[length]`, `absmax2` float32 `[ceil(length / 256)]`, `offset` float32.
 */
export interface DoubleQuantizedAbsmax {
  readonly codes: Uint8Array;
  readonly absmax2: Float32Array;
  /** Mean of the original absmax (float32), subtracted before quantizing. */
  readonly offset: number;
  readonly blockSize: number;
  /** The 256-entry code table (the signed dynamic map). */
  readonly codeTable: Float32Array;
}

/**
 * Midpoints between neighbouring dynamic-map codes, rounded to float32. The nearest code of `y`
 * is the number of midpoints strictly below it: a value exactly halfway goes to the LOWER code
 * (the first index, as an argmin over distances would pick).
 */
const DYNAMIC_MIDPOINTS: Float64Array = (() => {
  const m = new Float64Array(255);
  for (let k = 0; k < 255; k++) m[k] = (DYNAMIC_MAP[k] + DYNAMIC_MAP[k + 1]) / 2;
  return m;
})();

/** Index of the dynamic-map code nearest to `y` (ties to the lower index), by binary search. */
export function nearestDynamicCode(y: number): number {
  let lo = 0;
  let hi = 255; // answer in [lo, hi]: count of midpoints < y
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (y > DYNAMIC_MIDPOINTS[mid]) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The double-quantization offset: the float32 mean of absmax (torch sums in float32 pairwise; we
 * sum in float64 and round once, the exactly rounded mean, within an ulp of torch's).
 */
export function absmaxMean(absmax: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < absmax.length; i++) sum += absmax[i];
  return absmax.length === 0 ? 0 : Math.fround(sum / absmax.length);
}

/**
 * Double-quantizes absmax values as bitsandbytes does with `compress_statistics=True`:
 * `offset = mean(absmax)` in float32, then `absmax - offset` blockwise (256) with the signed
 * 8-bit dynamic map, each block keeping a float32 absmax2. Nearest code by exact distance,
 * ties to the lower code.
 */
export function doubleQuantize(
  absmax: Float32Array,
  blockSize = DOUBLE_QUANT_BLOCK_SIZE,
): DoubleQuantizedAbsmax {
  const n = absmax.length;
  if (n === 0) {
    return {
      codes: new Uint8Array(0),
      absmax2: new Float32Array(0),
      offset: 0,
      blockSize,
      codeTable: DYNAMIC_MAP,
    };
  }
  const offset = absmaxMean(absmax);
  const centred = new Float32Array(n);
  for (let i = 0; i < n; i++) centred[i] = absmax[i] - offset;
  const blocks = Math.ceil(n / blockSize);
  const absmax2 = new Float32Array(blocks);
  const codes = new Uint8Array(n);
  for (let b = 0; b < blocks; b++) {
    const start = b * blockSize;
    const end = Math.min(start + blockSize, n);
    let m = 0;
    for (let i = start; i < end; i++) m = Math.max(m, Math.abs(centred[i]));
    absmax2[b] = m;
    const inverse = Math.fround(1 / m);
    for (let i = start; i < end; i++) {
      // 0 * Inf (a block where every absmax equals the offset) is NaN: use the code of 0.
      const y = m === 0 ? 0 : Math.fround(centred[i] * inverse);
      codes[i] = nearestDynamicCode(y);
    }
  }
  return { codes, absmax2, offset, blockSize, codeTable: DYNAMIC_MAP };
}

/** Reconstructs float32 absmax values from their double quantization. */
export function dequantizeAbsmax(
  dq: DoubleQuantizedAbsmax,
  out: Float32Array = new Float32Array(dq.codes.length),
): Float32Array {
  const { codes, absmax2, offset, blockSize, codeTable } = dq;
  if (absmax2.length !== Math.ceil(codes.length / blockSize)) {
    throw new QuantError(
      'QUANT_SHAPE',
      `double-quantized absmax: ${codes.length} codes in blocks of ${blockSize} need ${Math.ceil(codes.length / blockSize)} absmax2 values, got ${absmax2.length}.`,
    );
  }
  for (let i = 0; i < codes.length; i++) {
    out[i] = Math.fround(Math.fround(codeTable[codes[i]] * absmax2[(i / blockSize) | 0]) + offset);
  }
  return out;
}

/**
 * Bits of statistics per parameter for 4-bit blocks of `blockSize`: 32/blockSize with float32
 * absmax, `8/blockSize + 32/(blockSize * 256)` with double quantization (the offset is ignored).
 */
export function statisticsBitsPerParameter(blockSize: number, doubleQuant: boolean): number {
  return doubleQuant ? 8 / blockSize + 32 / (blockSize * DOUBLE_QUANT_BLOCK_SIZE) : 32 / blockSize;
}
