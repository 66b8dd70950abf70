import * as op from './ops.js';
import {
  binary,
  binaryVjp,
  cast,
  castVjp,
  unary,
  unaryVjp,
  whereOp,
  whereVjp,
} from './opset/elementwise.js';
import {
  gather,
  gatherElements,
  gatherElementsVjp,
  gatherND,
  gatherNDVjp,
  gatherVjp,
  scatterElements,
  scatterElementsVjp,
  scatterND,
  scatterNDVjp,
} from './opset/indexing.js';
import {
  frozenWeightVjp,
  fusedMatMul,
  fusedMatMulVjp,
  matMulBnb4,
  matMulNBits,
  matmul,
  matmulVjp,
} from './opset/matmul.js';
import { nonDiff, type OpDef, withVjp } from './opset/op-def.js';
import { scalarLike } from './vjp-helpers.js';
import {
  logSoftmaxVjp,
  reduceMaxVjp,
  reduceMeanVjp,
  reduceSumVjp,
  reduction,
  softmaxOp,
  softmaxVjp,
} from './opset/reductions.js';
import {
  concat,
  concatVjp,
  expand,
  expandVjp,
  pad,
  padVjp,
  range,
  reshape,
  reshapeVjp,
  shapeOp,
  slice,
  sliceVjp,
  squeeze,
  transpose,
  transposeVjp,
  unsqueeze,
} from './opset/shape-ops.js';

export {
  attrInt,
  attrInts,
  type InferInput,
  type InferOutput,
  MS_DOMAIN,
  type OpDef,
  OPSET_VERSION,
  type VjpContext,
  type VjpRule,
} from './opset/op-def.js';
export { refMatMul } from './opset/matmul.js';

/*
 * The op set: every op the builder can emit, each entry pairing shape inference and a float64
 * reference (the op's definition in `opset/`) with its backward rule (`withVjp`) or the
 * non-differentiable mark (`nonDiff`). The set is small on purpose: one rule per entry covers
 * every graph the package builds. A test fails when an entry has neither.
 */

/** Every operator the builder can emit, by ONNX op type, each with its backward rule. */
export const OPS: Readonly<Record<string, OpDef>> = {
  Add: withVjp(
    binary((a, b) => a + b),
    binaryVjp((_g, _a, _b, _y, dy) => [() => dy, () => dy]),
  ),
  Sub: withVjp(
    binary((a, b) => a - b),
    binaryVjp((g, _a, _b, _y, dy) => [() => dy, () => op.neg(g, dy)]),
  ),
  Mul: withVjp(
    binary((a, b) => a * b),
    binaryVjp((g, a, b, _y, dy) => [() => op.mul(g, dy, b), () => op.mul(g, dy, a)]),
  ),
  Div: withVjp(
    binary((a, b) => a / b),
    // d(a/b)/db = -y/b
    binaryVjp((g, _a, b, y, dy) => [
      () => op.div(g, dy, b),
      () => op.neg(g, op.div(g, op.mul(g, dy, y), b)),
    ]),
  ),
  LessOrEqual: nonDiff(binary((a, b) => (a <= b ? 1 : 0), 'bool')),
  Equal: nonDiff(binary((a, b) => (a === b ? 1 : 0), 'bool')),
  Neg: withVjp(
    unary((a) => -a),
    unaryVjp((g, _x, _y, dy) => op.neg(g, dy)),
  ),
  Sqrt: withVjp(
    unary(Math.sqrt),
    unaryVjp((g, _x, y, dy) => op.div(g, op.mul(g, dy, scalarLike(g, dy, 0.5)), y)),
  ),
  Reciprocal: withVjp(
    unary((a) => 1 / a),
    unaryVjp((g, _x, y, dy) => op.neg(g, op.mul(g, dy, op.mul(g, y, y)))),
  ),
  Sigmoid: withVjp(
    unary((a) => 1 / (1 + Math.exp(-a))),
    unaryVjp((g, _x, y, dy) => op.mul(g, dy, op.mul(g, y, op.sub(g, scalarLike(g, y, 1), y)))),
  ),
  Cos: withVjp(
    unary(Math.cos),
    unaryVjp((g, x, _y, dy) => op.neg(g, op.mul(g, dy, op.sin(g, x)))),
  ),
  Sin: withVjp(
    unary(Math.sin),
    unaryVjp((g, x, _y, dy) => op.mul(g, dy, op.cos(g, x))),
  ),
  Exp: withVjp(
    unary(Math.exp),
    unaryVjp((g, _x, y, dy) => op.mul(g, dy, y)),
  ),
  Log: withVjp(
    unary(Math.log),
    unaryVjp((g, x, _y, dy) => op.div(g, dy, x)),
  ),
  Identity: withVjp(
    unary((a) => a),
    unaryVjp((_g, _x, _y, dy) => dy),
  ),
  Cast: withVjp(cast, castVjp),
  MatMul: withVjp(matmul, matmulVjp),
  FusedMatMul: withVjp(fusedMatMul, fusedMatMulVjp),
  Gather: withVjp(gather, gatherVjp),
  GatherElements: withVjp(gatherElements, gatherElementsVjp),
  ScatterElements: withVjp(scatterElements, scatterElementsVjp),
  GatherND: withVjp(gatherND, gatherNDVjp),
  ScatterND: withVjp(scatterND, scatterNDVjp),
  Where: withVjp(whereOp, whereVjp),
  Expand: withVjp(expand, expandVjp),
  Pad: withVjp(pad, padVjp),
  Reshape: withVjp(reshape, reshapeVjp),
  Squeeze: withVjp(squeeze, reshapeVjp),
  Unsqueeze: withVjp(unsqueeze, reshapeVjp),
  Transpose: withVjp(transpose, transposeVjp),
  Concat: withVjp(concat, concatVjp),
  Slice: withVjp(slice, sliceVjp),
  Shape: nonDiff(shapeOp),
  Range: nonDiff(range),
  ReduceMean: withVjp(reduction('mean', false), reduceMeanVjp),
  ReduceSum: withVjp(reduction('sum', true), reduceSumVjp),
  ReduceMax: withVjp(reduction('max', false), reduceMaxVjp),
  Softmax: withVjp(softmaxOp(false), softmaxVjp),
  LogSoftmax: withVjp(softmaxOp(true), logSoftmaxVjp),
  MatMulNBits: withVjp(matMulNBits, frozenWeightVjp('MatMulNBits')),
  MatMulBnb4: withVjp(matMulBnb4, frozenWeightVjp('MatMulBnb4')),
};
