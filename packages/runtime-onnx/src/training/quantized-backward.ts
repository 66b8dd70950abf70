import { RuntimeError } from '../errors.js';
import type { GraphBuilder } from '../graph/builder.js';
import * as op from '../graph/ops.js';
import { attrInt, type VjpContext, type VjpRule } from '../graph/opset.js';
import type { Value } from '../graph/types.js';
import { emitBnb4Dequantize, emitNBitsDequantize } from '../models/dequantize-graph.js';

/**
 * Backward rules of the 4-bit matmuls for `gradients(..., { overrides })`. The 4-bit weight is
 * frozen, so only the activation gets a gradient: dX = dY · deq(W), with deq(W) [N, K] built
 * from the node's own packed initializers (exactly @lora/quant's dequantize) right where the
 * backward pass reaches the node: one float32 weight exists at a time, and only transiently.
 * Never a second, transposed quantized copy (a different function) nor `MatMulBnb4` with
 * `transB = 0` (wrong results on CPU in onnxruntime 1.30).
 */

function need(v: Value | undefined, what: string, ctx: VjpContext): Value {
  if (!v) {
    throw new RuntimeError('GRAPH_GRADIENT', `${ctx.name}: ${what} is missing.`, {
      node: ctx.name,
    });
  }
  return v;
}

/** dX [..., K] = dY [..., N] · W [N, K]. */
function inputGradient(g: GraphBuilder, ctx: VjpContext, weight: Value): (Value | undefined)[] {
  const dy = need(ctx.grads[0], 'the output gradient', ctx);
  return [op.matmul(g, dy, weight, `${ctx.name}/dX`)];
}

const matMulBnb4Backward: VjpRule = (g, ctx) => {
  if (!ctx.needs[0]) return [];
  if (attrInt(ctx.attrs, 'transB', 1) !== 1) {
    throw new RuntimeError(
      'GRAPH_GRADIENT',
      `${ctx.name}: only MatMulBnb4 with transB = 1 is differentiated.`,
    );
  }
  const [, packed, absmax] = ctx.inputs;
  const weight = emitBnb4Dequantize(
    g,
    need(packed, 'B', ctx),
    need(absmax, 'absmax', ctx),
    {
      N: attrInt(ctx.attrs, 'N'),
      K: attrInt(ctx.attrs, 'K'),
      blockSize: attrInt(ctx.attrs, 'block_size'),
      quantType: attrInt(ctx.attrs, 'quant_type') === 1 ? 'nf4' : 'fp4',
    },
    `${ctx.name}/dequantize`,
  );
  return inputGradient(g, ctx, weight);
};

const matMulNBitsBackward: VjpRule = (g, ctx) => {
  if (!ctx.needs[0]) return [];
  if (attrInt(ctx.attrs, 'bits', 4) !== 4) {
    throw new RuntimeError(
      'GRAPH_GRADIENT',
      `${ctx.name}: only 4-bit MatMulNBits is differentiated.`,
    );
  }
  const [, packed, scales, zeroPoints, , bias] = ctx.inputs;
  if (zeroPoints && zeroPoints.dtype !== 'u8') {
    throw new RuntimeError('GRAPH_GRADIENT', `${ctx.name}: float zero points are not supported.`);
  }
  if (bias) {
    throw new RuntimeError(
      'GRAPH_GRADIENT',
      `${ctx.name}: a fused bias is not supported (emit it as an Add).`,
    );
  }
  const weight = emitNBitsDequantize(
    g,
    need(packed, 'B', ctx),
    need(scales, 'scales', ctx),
    zeroPoints,
    {
      N: attrInt(ctx.attrs, 'N'),
      K: attrInt(ctx.attrs, 'K'),
      blockSize: attrInt(ctx.attrs, 'block_size'),
    },
    `${ctx.name}/dequantize`,
  );
  return inputGradient(g, ctx, weight);
};

/** Pass as `gradients(g, loss, wrt, { overrides: QUANTIZED_BACKWARD })`. */
export const QUANTIZED_BACKWARD: Readonly<Record<string, VjpRule>> = {
  MatMulBnb4: matMulBnb4Backward,
  MatMulNBits: matMulNBitsBackward,
};
