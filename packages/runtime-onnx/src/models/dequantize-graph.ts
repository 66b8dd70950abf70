import { tensor } from '@lora/core';
import { codeTable } from '@lora/quant';
import type { GraphBuilder } from '../graph/builder.js';
import * as op from '../graph/ops.js';
import type { Value } from '../graph/types.js';
import { RuntimeError } from '../errors.js';
import { type LinearWeight, linearInitializers } from './linear.js';

/**
 * Dequantization of a 4-bit linear weight INSIDE the graph, from its packed bytes: what the
 * backward pass of a 4-bit base needs for `dX = dY · deq(W)` (onnxruntime has no transposed
 * 4-bit kernel that is right on CPU). The result equals `@lora/quant`'s dequantize bit for bit:
 * both compute `f32(code * scale)` with one float32 rounding of an exact product.
 *
 *   bytes [P] u8 --Cast i32--> Gather(pair table [256, 2]) --> codes [P, 2]   (the byte's two values, in storage order)
 *   codes --Reshape--> [blocks, blockSize] --Mul absmax/scale [blocks, 1]--> values --Reshape/Slice--> W [N, K]
 *
 * No float32 copy of W exists outside the backward pass: the packed bytes stay the initializers
 * (shared with the forward's MatMulBnb4 / MatMulNBits), and the dequantized tensor is transient.
 * onnxruntime's constant folding would turn this subgraph into a float32 initializer: training
 * sessions turn that optimizer off (see `training/session-options.ts`).
 */

/** The zero point `MatMulNBits` uses when a weight has none (symmetric int4 stores q + 8). */
const NBITS_DEFAULT_ZERO_POINT = 8;

/** [256, 2] float32: for each byte, its two 4-bit codes mapped through `code`, in storage order. */
function bytePairTable(code: ArrayLike<number>, highNibbleFirst: boolean) {
  const data = new Float32Array(512);
  for (let byte = 0; byte < 256; byte++) {
    const hi = code[byte >> 4];
    const lo = code[byte & 15];
    data[2 * byte] = highNibbleFirst ? hi : lo;
    data[2 * byte + 1] = highNibbleFirst ? lo : hi;
  }
  return tensor('f32', [256, 2], data);
}

/** The identity code (q -> q) of the integer formats, as float32. */
const NIBBLE_VALUES = Float32Array.from({ length: 16 }, (_, q) => q);

/** bytes [..., n] u8 -> their two values each through a [256, 2] table: [..., n, 2] f32. */
function unpackPairs(g: GraphBuilder, bytes: Value, table: Value): Value {
  return op.gather(g, table, op.cast(g, bytes, 'i32'));
}

/** Layout of a `MatMulBnb4` weight (bitsandbytes blockwise over the flattened [N, K]). */
export interface Bnb4DequantizeAttrs {
  readonly N: number;
  readonly K: number;
  readonly blockSize: number;
  readonly quantType: 'nf4' | 'fp4';
}

/**
 * deq(W) [N, K] f32 of a `MatMulBnb4` weight: `packed` u8 [ceil(N*K/2)] (high nibble first),
 * `absmax` f32 [ceil(N*K/blockSize)] (double quantization already expanded, as the op takes it).
 * A partial last block is padded with zero bytes to a whole block, then sliced off.
 */
export function emitBnb4Dequantize(
  g: GraphBuilder,
  packed: Value,
  absmax: Value,
  { N, K, blockSize, quantType }: Bnb4DequantizeAttrs,
  name = 'bnb4_dequantize',
): Value {
  const length = N * K;
  const blocks = Math.ceil(length / blockSize);
  const paddedBytes = (blocks * blockSize) / 2;
  const storedBytes = Math.ceil(length / 2);
  let bytes = packed;
  if (paddedBytes > storedBytes) {
    const pad = g.initializer(
      g.uniqueName(`${name}.pad`),
      tensor('u8', [paddedBytes - storedBytes], new Uint8Array(paddedBytes - storedBytes)),
    );
    bytes = op.concat(g, [packed, pad], 0);
  }
  const table = g.initializer(
    g.uniqueName(`${name}.${quantType}_pairs`),
    bytePairTable(codeTable(quantType), true),
  );
  const codes = op.reshape(g, unpackPairs(g, bytes, table), [blocks, blockSize]);
  const values = op.mul(g, codes, op.reshape(g, absmax, [blocks, 1]), `${name}/Mul`);
  let flat = op.reshape(g, values, [blocks * blockSize]);
  if (blocks * blockSize > length) flat = op.slice(g, flat, 0, 0, length);
  return op.reshape(g, flat, [N, K]);
}

/** Layout of a `MatMulNBits` weight (blocks along K within each row). */
export interface NBitsDequantizeAttrs {
  readonly N: number;
  readonly K: number;
  readonly blockSize: number;
}

/**
 * deq(W) [N, K] f32 of a 4-bit `MatMulNBits` weight: `packed` u8 [N, blocks, blockSize/2] (low
 * nibble first), `scales` f32 [N * blocks], `zeroPoints` u8 [N * ceil(blocks/2)] (uint4, low
 * nibble first) or absent (int4: zero point 8). Values are `f32((q - zp) * scale)`.
 */
export function emitNBitsDequantize(
  g: GraphBuilder,
  packed: Value,
  scales: Value,
  zeroPoints: Value | undefined,
  { N, K, blockSize }: NBitsDequantizeAttrs,
  name = 'nbits_dequantize',
): Value {
  const blocks = Math.ceil(K / blockSize);
  const table = g.initializer(g.uniqueName(`${name}.q_pairs`), bytePairTable(NIBBLE_VALUES, false));
  const q = op.reshape(g, unpackPairs(g, packed, table), [N, blocks, blockSize]);
  let zp: Value;
  if (zeroPoints) {
    const zpBytes = Math.ceil(blocks / 2);
    const pairs = unpackPairs(g, op.reshape(g, zeroPoints, [N, zpBytes]), table); // [N, zpBytes, 2]
    let perBlock = op.reshape(g, pairs, [N, 2 * zpBytes]);
    if (2 * zpBytes > blocks) perBlock = op.slice(g, perBlock, 1, 0, blocks);
    zp = op.reshape(g, perBlock, [N, blocks, 1]);
  } else zp = g.scalar(NBITS_DEFAULT_ZERO_POINT);
  // q - zp is a small exact integer in float32; the product rounds once, as the TypeScript table does.
  const centered = op.sub(g, q, zp);
  const values = op.mul(g, centered, op.reshape(g, scales, [N, blocks, 1]), `${name}/Mul`);
  let rows = op.reshape(g, values, [N, blocks * blockSize]);
  if (blocks * blockSize > K) rows = op.slice(g, rows, 1, 0, K);
  return rows;
}

/**
 * deq(W) [out, in] f32 of a 4-bit linear, from the same initializers its forward op reads
 * (see {@link linearInitializers}). Dense weights have nothing to dequantize: refused.
 */
export function emitDequantizedWeight(
  g: GraphBuilder,
  moduleName: string,
  weight: LinearWeight,
): Value {
  const w = linearInitializers(g, moduleName, weight);
  const N = weight.outFeatures;
  const K = weight.inFeatures;
  const name = `${moduleName}/dequantize`;
  switch (w.kind) {
    case 'bnb4':
      return emitBnb4Dequantize(
        g,
        w.packed,
        w.absmax,
        { N, K, blockSize: w.blockSize, quantType: w.quantType },
        name,
      );
    case 'nbits':
      return emitNBitsDequantize(
        g,
        w.packed,
        w.scales,
        w.zeroPoints,
        { N, K, blockSize: w.blockSize },
        name,
      );
    case 'dense':
      throw new RuntimeError(
        'GRAPH_INVALID',
        `emitDequantizedWeight: "${moduleName}" is a float32 linear; only 4-bit weights are dequantized.`,
        { module: moduleName },
      );
  }
}
