import { QuantError } from './errors.js';
import {
  assertArrayType,
  assertBlockSize,
  assertFinite,
  isNBitsFormat,
  NBITS_DEFAULT_BLOCK_SIZE,
  type NBitsFormat,
} from './formats.js';

/**
 * A weight `[N, K]` (torch Linear layout: N outputs, K inputs) in onnxruntime's
 * `com.microsoft.MatMulNBits` layout, 4 bits. Blocks of `blockSize` run along K within each row;
 * dequantization is `(q - zeroPoint) * scale`.
 *
 * Layout (sizes asserted by {@link assertNBitsLayout}), with `blocksPerRow = ceil(K / blockSize)`
 * and `bytesPerBlock = blockSize / 2`:
 * - `B`: uint8 `[N, blocksPerRow, bytesPerBlock]`; element k of a block at byte k/2, LOW nibble
 *   when k is even (the opposite of bitsandbytes). The row stride is `blocksPerRow *
 *   bytesPerBlock`, not K/2, when K is not a multiple of the block size.
 * - `scales`: float32 `[N * blocksPerRow]`.
 * - `zeroPoints` (uint4 only): uint8 `[N * ceil(blocksPerRow / 2)]`, two per byte, low nibble
 *   first, each row padded to whole bytes. Absent for int4: the kernel then uses zero point 8.
 */
export interface MatMulNBitsWeight {
  readonly format: NBitsFormat;
  /** Rows (output features). */
  readonly N: number;
  /** Columns (input features), the reduction dimension. */
  readonly K: number;
  readonly blockSize: number;
  readonly B: Uint8Array;
  readonly scales: Float32Array;
  readonly zeroPoints?: Uint8Array;
}

export interface NBitsOptions {
  format: NBitsFormat;
  /** Values per block along K: 16, 32, 64, 128 or 256. Default 32. */
  blockSize?: number;
  /** Tensor name used in error messages. */
  name?: string;
}

/** Number of blocks in each row. */
export function blocksPerRow(K: number, blockSize: number): number {
  return Math.ceil(K / blockSize);
}

/** Throws QUANT_SHAPE unless the arrays have the sizes the layout requires. */
export function assertNBitsLayout(w: MatMulNBitsWeight): void {
  assertArrayType(w.B, 'Uint8Array', 'B', 'MatMulNBits weight');
  assertArrayType(w.scales, 'Float32Array', 'scales', 'MatMulNBits weight');
  if (w.zeroPoints) assertArrayType(w.zeroPoints, 'Uint8Array', 'zeroPoints', 'MatMulNBits weight');
  const nb = blocksPerRow(w.K, w.blockSize);
  const wantB = w.N * nb * (w.blockSize / 2);
  const wantScales = w.N * nb;
  const wantZp = w.format === 'uint4' ? w.N * Math.ceil(nb / 2) : 0;
  const gotZp = w.zeroPoints?.length ?? 0;
  if (w.B.length !== wantB || w.scales.length !== wantScales || gotZp !== wantZp) {
    throw new QuantError(
      'QUANT_SHAPE',
      `MatMulNBits ${w.format} [N=${w.N}, K=${w.K}] in blocks of ${w.blockSize} needs B ${wantB} bytes, ${wantScales} scales, ${wantZp} zero-point bytes; got ${w.B.length}, ${w.scales.length}, ${gotZp}.`,
      { N: w.N, K: w.K, blockSize: w.blockSize },
    );
  }
}

/** C's `roundf`: halves away from zero (JS `Math.round` sends -2.5 to -2). Exact for float32 input. */
export function roundHalfAwayFromZero(v: number): number {
  return v < 0 ? -Math.floor(-v + 0.5) : Math.floor(v + 0.5);
}

/** Largest magnitude of int4 codes: q in [-7, 7], stored as q + 8 (see README for why not -8). */
export const INT4_MAX = 7;

/**
 * Quantizes `weight` `[N, K]` (row-major float32) into the `MatMulNBits` layout.
 *
 * - `uint4`: asymmetric with a zero point, identical to onnxruntime's own quantizer (MLAS):
 *   `min = min(block, 0)`, `max = max(block, 0)`, `scale = f32(max - min) / 15`,
 *   `zp = roundf(-min / scale)` clamped to 0..15, `q = clamp(roundf(f32(v * f32(1/scale)) + zp), 0, 15)`;
 *   scale 0 gives q = zp.
 * - `int4`: symmetric absmax, `scale = absmax / 7`, `q = clamp(roundf(v * f32(1/scale)), -7, 7)`,
 *   stored as `q + 8` with no zero points (the kernel's default zero point is 8).
 *
 * Padding: a block's odd last value pairs with the zero-point code; whole missing bytes of a
 * partial block are 0 (what onnxruntime's quantizer leaves). Kernels never read them.
 */
export function quantizeMatMulNBits(
  weight: Float32Array,
  N: number,
  K: number,
  options: NBitsOptions,
): MatMulNBitsWeight {
  assertArrayType(weight, 'Float32Array', 'weight', 'quantizeMatMulNBits');
  const { format } = options;
  if (!isNBitsFormat(format))
    throw new QuantError(
      'QUANT_FORMAT',
      `quantizeMatMulNBits takes int4 or uint4, got ${format}.`,
      { format },
    );
  const blockSize = options.blockSize ?? NBITS_DEFAULT_BLOCK_SIZE;
  assertBlockSize(format, blockSize);
  if (
    !Number.isSafeInteger(N) ||
    !Number.isSafeInteger(K) ||
    N < 0 ||
    K < 0 ||
    weight.length !== N * K
  ) {
    throw new QuantError(
      'QUANT_SHAPE',
      `${options.name ?? 'weight'}: expected N x K = ${N} x ${K} values, got ${weight.length}.`,
      {
        tensor: options.name,
      },
    );
  }
  const nb = blocksPerRow(K, blockSize);
  const bytesPerBlock = blockSize / 2;
  const B = new Uint8Array(N * nb * bytesPerBlock);
  const scales = new Float32Array(N * nb);
  const zpBytesPerRow = Math.ceil(nb / 2);
  const zeroPoints = format === 'uint4' ? new Uint8Array(N * zpBytesPerRow) : undefined;
  const f = Math.fround;
  for (let n = 0; n < N; n++) {
    const row = n * K;
    for (let blk = 0; blk < nb; blk++) {
      const k0 = blk * blockSize;
      const k1 = Math.min(k0 + blockSize, K);
      let min = 0;
      let max = 0;
      let poison = 0;
      for (let k = row + k0; k < row + k1; k++) {
        const v = weight[k];
        if (v < min) min = v;
        if (v > max) max = v;
        poison += v * 0;
      }
      if (poison !== 0) assertFinite(weight, options.name, row + k0, row + k1);
      let scale: number;
      let zp: number;
      if (format === 'uint4') {
        scale = f(f(max - min) / 15);
        const zpReal = scale !== 0 ? f(0 - f(min / scale)) : min;
        zp = zpReal < 0 ? 0 : zpReal > 15 ? 15 : roundHalfAwayFromZero(zpReal);
        zeroPoints![n * zpBytesPerRow + (blk >> 1)] |= (blk & 1) === 0 ? zp : zp << 4;
      } else {
        const absmax = Math.max(max, -min);
        scale = f(absmax / INT4_MAX);
        zp = 8;
      }
      scales[n * nb + blk] = scale;
      const inverse = scale !== 0 ? f(1 / scale) : 0;
      const out = (n * nb + blk) * bytesPerBlock;
      if (zeroPoints) {
        // uint4: round after adding the zero point in float32 (as MLAS). floor(w + 0.5) equals
        // roundf(w) wherever the result survives the clamp (they differ only below zero).
        for (let k = k0; k < k1; k += 2) {
          const w0 = f(f(weight[row + k] * inverse) + zp);
          const w1 = k + 1 < k1 ? f(f(weight[row + k + 1] * inverse) + zp) : zp;
          let q0 = Math.floor(w0 + 0.5);
          let q1 = Math.floor(w1 + 0.5);
          q0 = Math.max(0, Math.min(15, q0));
          q1 = Math.max(0, Math.min(15, q1));
          B[out + ((k - k0) >> 1)] = q0 | (q1 << 4);
        }
      } else {
        // int4: round the signed value half away from zero (q(-v) = -q(v)), then add 8.
        for (let k = k0; k < k1; k += 2) {
          const v0 = f(weight[row + k] * inverse);
          const v1 = k + 1 < k1 ? f(weight[row + k + 1] * inverse) : 0;
          const q0 = int4Code(v0);
          const q1 = int4Code(v1);
          B[out + ((k - k0) >> 1)] = q0 | (q1 << 4);
        }
      }
    }
  }
  return zeroPoints
    ? { format, N, K, blockSize, B, scales, zeroPoints }
    : { format, N, K, blockSize, B, scales };
}

/** `clamp(roundf(v), -7, 7) + 8` for a float32 value v. */
function int4Code(v: number): number {
  let q = Math.floor(v + 8.5); // = roundf(v) + 8, except at exact negative halves
  if (q === v + 8.5 && v < 0) q -= 1; // -2.5 -> -3, away from zero
  return Math.max(8 - INT4_MAX, Math.min(8 + INT4_MAX, q));
}

/** Zero point of block `blk` in row `n` (8 when the layout has none). */
export function nbitsZeroPoint(w: MatMulNBitsWeight, n: number, blk: number): number {
  if (!w.zeroPoints) return 8;
  const nb = blocksPerRow(w.K, w.blockSize);
  const byte = w.zeroPoints[n * Math.ceil(nb / 2) + (blk >> 1)];
  return (blk & 1) === 0 ? byte & 15 : byte >> 4;
}

/** Dequantizes a `MatMulNBits` weight to float32 `[N, K]`: `f32((q - zp) * scale)`. */
export function dequantizeMatMulNBits(
  w: MatMulNBitsWeight,
  out: Float32Array = new Float32Array(w.N * w.K),
): Float32Array {
  assertNBitsLayout(w);
  assertArrayType(out, 'Float32Array', 'out', 'dequantizeMatMulNBits');
  const { N, K, blockSize, B, scales } = w;
  const nb = blocksPerRow(K, blockSize);
  const bytesPerBlock = blockSize / 2;
  // Per block, the 16 possible values f32((q - zp) * scale), copied as raw 32-bit patterns.
  const table = new Float32Array(16);
  const tableBits = new Int32Array(table.buffer);
  const outBits = new Int32Array(out.buffer, out.byteOffset, out.length);
  for (let n = 0; n < N; n++) {
    for (let blk = 0; blk < nb; blk++) {
      const scale = scales[n * nb + blk];
      const zp = nbitsZeroPoint(w, n, blk);
      for (let q = 0; q < 16; q++) table[q] = (q - zp) * scale;
      const k0 = blk * blockSize;
      const k1 = Math.min(k0 + blockSize, K);
      const base = (n * nb + blk) * bytesPerBlock - (k0 >> 1);
      const row = n * K;
      let k = k0;
      for (; k + 1 < k1; k += 2) {
        const byte = B[base + (k >> 1)];
        outBits[row + k] = tableBits[byte & 15];
        outBits[row + k + 1] = tableBits[byte >> 4];
      }
      if (k < k1) outBits[row + k] = tableBits[B[base + (k >> 1)] & 15];
    }
  }
  return out;
}
