import { DYNAMIC_MAP } from './codebooks.js';
import { QuantError } from './errors.js';
import { assertArrayType } from './formats.js';

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
 * (the first index, as an argmin over distances would pick). A +Inf sentinel at index 255 makes
 * the table 256 long, so the search below takes exactly 8 halving steps.
 */
const DYNAMIC_MIDPOINTS: Float64Array = (() => {
  const m = new Float64Array(256);
  for (let k = 0; k < 255; k++) m[k] = (DYNAMIC_MAP[k] + DYNAMIC_MAP[k + 1]) / 2;
  m[255] = Number.POSITIVE_INFINITY;
  return m;
})();

/**
 * Index of the dynamic-map code nearest to `y` (ties to the lower index): the count of midpoints
 * below `y`, by a binary search without data-dependent branches (each step adds 0 or its width).
 */
export function nearestDynamicCode(y: number): number {
  const m = DYNAMIC_MIDPOINTS;
  let lo = 0; // invariant: m[lo - 1] < y (or lo = 0), and the answer is in [lo, lo + width]
  lo += y > m[lo + 127] ? 128 : 0;
  lo += y > m[lo + 63] ? 64 : 0;
  lo += y > m[lo + 31] ? 32 : 0;
  lo += y > m[lo + 15] ? 16 : 0;
  lo += y > m[lo + 7] ? 8 : 0;
  lo += y > m[lo + 3] ? 4 : 0;
  lo += y > m[lo + 1] ? 2 : 0;
  lo += y > m[lo] ? 1 : 0;
  return lo;
}

let prefixTable: Uint8Array | undefined;

/**
 * For each top 16 bits of a float32 pattern, the nearest code of the smallest value with those
 * bits. No such range holds two midpoints (checked on construction), so the code of any float32
 * `y` is `c + (y > midpoint[c])` with `c = table[bits(y) >>> 16]`: two loads, no search.
 */
function dynamicPrefixTable(): Uint8Array {
  if (prefixTable) return prefixTable;
  const table = new Uint8Array(65536);
  const f = new Float32Array(2);
  const u = new Uint32Array(f.buffer);
  for (let prefix = 0; prefix < 65536; prefix++) {
    u[0] = prefix << 16;
    u[1] = (prefix << 16) | 0xffff;
    if (!Number.isFinite(f[0]) || !Number.isFinite(f[1])) continue; // y is always finite
    const low = nearestDynamicCode(Math.min(f[0], f[1]));
    const high = nearestDynamicCode(Math.max(f[0], f[1]));
    if (high - low > 1) throw new Error('internal: two dynamic-map midpoints under one prefix');
    table[prefix] = low;
  }
  prefixTable = table;
  return table;
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
  assertArrayType(absmax, 'Float32Array', 'absmax', 'doubleQuantize');
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
  const centredBits = new Uint32Array(centred.buffer);
  for (let i = 0; i < n; i++) centred[i] = absmax[i] - offset;
  const prefix = dynamicPrefixTable();
  const midpoints = DYNAMIC_MIDPOINTS;
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
      // y = f32(centred * inverse), stored in place to read its bits; 0 * Inf (a block where
      // every absmax equals the offset) would be NaN: use the code of 0.
      centred[i] = m === 0 ? 0 : centred[i] * inverse;
      const c = prefix[centredBits[i] >>> 16];
      codes[i] = c + (centred[i] > midpoints[c] ? 1 : 0);
    }
  }
  return { codes, absmax2, offset, blockSize, codeTable: DYNAMIC_MAP };
}

/** Reconstructs float32 absmax values from their double quantization. */
export function dequantizeAbsmax(
  dq: DoubleQuantizedAbsmax,
  out: Float32Array = new Float32Array(dq.codes.length),
): Float32Array {
  assertArrayType(dq.codes, 'Uint8Array', 'codes', 'dequantizeAbsmax');
  assertArrayType(dq.absmax2, 'Float32Array', 'absmax2', 'dequantizeAbsmax');
  assertArrayType(out, 'Float32Array', 'out', 'dequantizeAbsmax');
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
