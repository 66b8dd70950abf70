import { numel } from '@lora/core';
import { FP4_CODE, NF4_CODE } from '@lora/quant';
import { RuntimeError } from '../../errors.js';
import type { GraphBuilder } from '../builder.js';
import * as op from '../ops.js';
import { broadcastConcrete, broadcastStrides, forEachBroadcast } from '../refmath.js';
import { broadcastShapes } from '../shape.js';
import type { Attrs, Dim, RefTensor, Value } from '../types.js';
import { sumToShape } from '../vjp-helpers.js';
import {
  attrFloat,
  attrInt,
  type InferInput,
  type InferOutput,
  MS_DOMAIN,
  need,
  type OpDef,
  type VjpRule,
} from './op-def.js';
import { transpose } from './shape-ops.js';

/** Matrix products (MatMul, com.microsoft FusedMatMul, the 4-bit MatMulNBits and MatMulBnb4) and their backward rules. */

function matmulShape(a: readonly Dim[], b: readonly Dim[], where: string): Dim[] {
  if (a.length < 2 || b.length < 2) {
    throw new RuntimeError(
      'GRAPH_SHAPE',
      `${where}: both inputs need rank >= 2 (got ${a.length} and ${b.length}).`,
    );
  }
  const k1 = a[a.length - 1];
  const k2 = b[b.length - 2];
  if (typeof k1 === 'number' && typeof k2 === 'number' && k1 !== k2) {
    throw new RuntimeError(
      'GRAPH_SHAPE',
      `${where}: inner dimensions differ ([..., ${k1}] x [${k2}, ...]).`,
      { a, b },
    );
  }
  const batch = broadcastShapes(a.slice(0, -2), b.slice(0, -2), where);
  return [...batch, a[a.length - 2], b[b.length - 1]];
}

/** Batched a [..., M, K] x b [..., K, N] with broadcast batch dims, in float64. */
export function refMatMul(a: RefTensor, b: RefTensor): RefTensor {
  const M = a.shape[a.shape.length - 2];
  const K = a.shape[a.shape.length - 1];
  const N = b.shape[b.shape.length - 1];
  const batchShape = broadcastConcrete([a.shape.slice(0, -2), b.shape.slice(0, -2)]);
  const aBatch = broadcastStrides(a.shape.slice(0, -2), batchShape);
  const bBatch = broadcastStrides(b.shape.slice(0, -2), batchShape);
  const out = new Float64Array(numel(batchShape) * M * N);
  forEachBroadcast(batchShape, [aBatch, bBatch], (bi, [ao, bo]) => {
    const aOff = ao * M * K;
    const bOff = bo * K * N;
    const oOff = bi * M * N;
    for (let m = 0; m < M; m++) {
      for (let k = 0; k < K; k++) {
        const av = a.data[aOff + m * K + k];
        for (let n = 0; n < N; n++) out[oOff + m * N + n] += av * b.data[bOff + k * N + n];
      }
    }
  });
  return { dtype: a.dtype, shape: [...batchShape, M, N], data: out };
}

/** x [..., K] times w^T for a weight w given as [N, K] (torch Linear layout), float64. */
function matmulTransposedWeight(x: RefTensor, w: Float64Array, N: number, K: number): RefTensor {
  const rows = numel(x.shape) / K;
  const out = new Float64Array(rows * N);
  for (let r = 0; r < rows; r++) {
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += x.data[r * K + k] * w[n * K + k];
      out[r * N + n] = acc;
    }
  }
  return { dtype: x.dtype, shape: [...x.shape.slice(0, -1), N], data: out };
}

function contribMatMulInfer(
  inputs: readonly (InferInput | undefined)[],
  attrs: Attrs,
  where: string,
): InferOutput[] {
  const a = need(inputs[0], `${where} input A`);
  const K = attrInt(attrs, 'K');
  const N = attrInt(attrs, 'N');
  const last = a.shape[a.shape.length - 1];
  if (typeof last === 'number' && last !== K) {
    throw new RuntimeError(
      'GRAPH_SHAPE',
      `${where}: A has ${last} columns, the weight expects K = ${K}.`,
    );
  }
  return [{ dtype: a.dtype, shape: [...a.shape.slice(0, -1), N] }];
}

/**
 * `com.microsoft.MatMulNBits` (4 bits): B [N, nBlocks, blockSize/2] low nibble first, scales
 * [N * nBlocks], optional zero points (packed uint8, or one float per block), optional bias [N].
 */
export const matMulNBits: OpDef = {
  domain: MS_DOMAIN,
  infer: contribMatMulInfer,
  reference([a, b, scales, zeroPoints, , bias], attrs) {
    const K = attrInt(attrs, 'K');
    const N = attrInt(attrs, 'N');
    const bs = attrInt(attrs, 'block_size');
    if (attrInt(attrs, 'bits', 4) !== 4) throw new Error('reference MatMulNBits: only bits = 4');
    const nBlocks = Math.ceil(K / bs);
    const blob = bs / 2;
    const packed = need(b, 'B').data;
    const sc = need(scales, 'scales').data;
    const zpBytesPerRow = Math.ceil(nBlocks / 2);
    const w = new Float64Array(N * K);
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) {
        const blk = Math.floor(k / bs);
        const within = k % bs;
        const byte = packed[n * nBlocks * blob + blk * blob + (within >> 1)];
        const q = within % 2 === 0 ? byte & 15 : byte >> 4;
        let zp = 8;
        if (zeroPoints) {
          if (zeroPoints.dtype === 'u8') {
            const zb = zeroPoints.data[n * zpBytesPerRow + (blk >> 1)];
            zp = blk % 2 === 0 ? zb & 15 : zb >> 4;
          } else zp = zeroPoints.data[n * nBlocks + blk];
        }
        w[n * K + k] = (q - zp) * sc[n * nBlocks + blk];
      }
    }
    const y = matmulTransposedWeight(need(a, 'A'), w, N, K);
    if (bias) for (let i = 0; i < y.data.length; i++) y.data[i] += bias.data[i % N];
    return [y];
  },
};

/** `com.microsoft.MatMulBnb4`: B = flattened [N, K] packed high nibble first, absmax per block of the flat index. */
export const matMulBnb4: OpDef = {
  domain: MS_DOMAIN,
  infer: contribMatMulInfer,
  reference([a, b, absmax], attrs) {
    const K = attrInt(attrs, 'K');
    const N = attrInt(attrs, 'N');
    const bs = attrInt(attrs, 'block_size');
    const table = attrInt(attrs, 'quant_type') === 1 ? NF4_CODE : FP4_CODE; // quant's exact tables
    const packed = need(b, 'B').data;
    const am = need(absmax, 'absmax').data;
    const w = new Float64Array(N * K);
    for (let i = 0; i < N * K; i++) {
      const byte = packed[i >> 1];
      const q = i % 2 === 0 ? byte >> 4 : byte & 15;
      w[i] = table[q] * am[Math.floor(i / bs)];
    }
    return [matmulTransposedWeight(need(a, 'A'), w, N, K)];
  },
};

export const matmul: OpDef = {
  domain: '',
  infer([a, b], _attrs, where) {
    const x = need(a, `${where} A`);
    const y = need(b, `${where} B`);
    if (x.dtype !== y.dtype)
      throw new RuntimeError('GRAPH_DTYPE', `${where}: dtypes differ (${x.dtype}, ${y.dtype}).`);
    return [{ dtype: x.dtype, shape: matmulShape(x.shape, y.shape, where) }];
  },
  reference([a, b]) {
    return [refMatMul(need(a, 'A'), need(b, 'B'))];
  },
};

function trans(shape: readonly Dim[], t: boolean): Dim[] {
  if (!t) return [...shape];
  const s = [...shape];
  [s[s.length - 2], s[s.length - 1]] = [s[s.length - 1], s[s.length - 2]];
  return s;
}

function refTransposeLast(x: RefTensor): RefTensor {
  const r = x.shape.length;
  const perm = x.shape.map((_, i) => (i === r - 2 ? r - 1 : i === r - 1 ? r - 2 : i));
  return transpose.reference([x], { perm: { ints: perm } })[0];
}

export const fusedMatMul: OpDef = {
  domain: MS_DOMAIN,
  infer([a, b], attrs, where) {
    const x = need(a, `${where} A`);
    const y = need(b, `${where} B`);
    if (x.dtype !== y.dtype)
      throw new RuntimeError('GRAPH_DTYPE', `${where}: dtypes differ (${x.dtype}, ${y.dtype}).`);
    if (attrInt(attrs, 'transBatchA', 0) !== 0 || attrInt(attrs, 'transBatchB', 0) !== 0) {
      throw new RuntimeError('GRAPH_ATTR', `${where}: transBatchA/B are not supported.`);
    }
    const tA = attrInt(attrs, 'transA', 0) === 1;
    const tB = attrInt(attrs, 'transB', 0) === 1;
    return [{ dtype: x.dtype, shape: matmulShape(trans(x.shape, tA), trans(y.shape, tB), where) }];
  },
  reference([a, b], attrs) {
    let x = need(a, 'A');
    let y = need(b, 'B');
    if (attrInt(attrs, 'transA', 0) === 1) x = refTransposeLast(x);
    if (attrInt(attrs, 'transB', 0) === 1) y = refTransposeLast(y);
    const out = refMatMul(x, y);
    const alpha = attrFloat(attrs, 'alpha', 1);
    return [alpha === 1 ? out : { ...out, data: out.data.map((v) => v * alpha) }];
  },
};

/** Folds leading dims: [..., R, C] -> [-1, C] (C must be a known size). */
function flatRows(g: GraphBuilder, x: Value): Value | undefined {
  const c = x.shape[x.shape.length - 1];
  return typeof c === 'number' ? op.reshape(g, x, [-1, c]) : undefined;
}

/**
 * Backward of y = alpha * op(a) x op(b) (MatMul is the case without flags), every product a
 * FusedMatMul with transpose flags, so no Transpose node (which onnxruntime would fold into a
 * second copy of a weight initializer). A 2-D weight against a batched input gets its gradient
 * from one [rows, K]ᵀ x [rows, N] product instead of a batched product and a sum.
 */
function matmulBackward(
  g: GraphBuilder,
  a: Value,
  b: Value,
  dy: Value,
  needs: readonly boolean[],
  { transA = false, transB = false, alpha = 1 },
): (Value | undefined)[] {
  let da: Value | undefined;
  let db: Value | undefined;
  if (needs[0]) {
    da = transA
      ? op.fusedMatMul(g, b, dy, { transA: transB, transB: true, alpha })
      : op.fusedMatMul(g, dy, b, { transB: !transB, alpha });
    da = sumToShape(g, da, a.shape);
  }
  if (needs[1]) {
    const flatA =
      b.shape.length === 2 && a.shape.length > 2 && !transA ? flatRows(g, a) : undefined;
    const flatDy = flatA && flatRows(g, dy);
    const [aa, dd] = flatA && flatDy ? [flatA, flatDy] : [a, dy];
    db = transB
      ? op.fusedMatMul(g, dd, aa, { transA: true, transB: transA, alpha })
      : op.fusedMatMul(g, aa, dd, { transA: !transA, alpha });
    db = sumToShape(g, db, b.shape);
  }
  return [da, db];
}

export const matmulVjp: VjpRule = (g, { inputs: [a, b], grads: [dy], needs }) =>
  matmulBackward(g, need(a, 'A'), need(b, 'B'), need(dy, 'dy'), needs, {});

export const fusedMatMulVjp: VjpRule = (g, { inputs: [a, b], grads: [dy], needs, attrs }) =>
  matmulBackward(g, need(a, 'A'), need(b, 'B'), need(dy, 'dy'), needs, {
    transA: attrInt(attrs, 'transA', 0) === 1,
    transB: attrInt(attrs, 'transB', 0) === 1,
    alpha: attrFloat(attrs, 'alpha', 1),
  });

/**
 * The 4-bit matmuls have frozen weights: only d/dA exists, dA = dY · deq(W), which needs the
 * dequantized weight inside the graph. That dequantization belongs to the model code that knows
 * the format; pass it as `overrides: { MatMulNBits: rule }` (or `MatMulBnb4`) to `gradients`.
 */
export function frozenWeightVjp(opName: string): VjpRule {
  return (_g, { name }) => {
    throw new RuntimeError(
      'GRAPH_GRADIENT',
      `${opName} node "${name}": its input needs a gradient, which requires the dequantized weight. Pass a rule as gradients(..., { overrides: { ${opName}: rule } }) that builds dA = dY · deq(W).`,
      { node: name },
    );
  };
}
