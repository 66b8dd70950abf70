import type { DType } from '@lora/core';
import type { GraphBuilder } from './builder.js';
import { onnxElemType } from './dtypes.js';
import type { Value } from './types.js';

/**
 * Typed one-liners over {@link GraphBuilder.node}, one per op of the op set (see `opset.ts`).
 * Shape comments in model code use these names.
 */

const one = (vs: Value[]): Value => vs[0];

export const add = (g: GraphBuilder, a: Value, b: Value, name?: string) =>
  one(g.node('Add', [a, b], {}, name));
export const sub = (g: GraphBuilder, a: Value, b: Value, name?: string) =>
  one(g.node('Sub', [a, b], {}, name));
export const mul = (g: GraphBuilder, a: Value, b: Value, name?: string) =>
  one(g.node('Mul', [a, b], {}, name));
export const div = (g: GraphBuilder, a: Value, b: Value, name?: string) =>
  one(g.node('Div', [a, b], {}, name));
export const lessOrEqual = (g: GraphBuilder, a: Value, b: Value) =>
  one(g.node('LessOrEqual', [a, b]));
export const neg = (g: GraphBuilder, x: Value) => one(g.node('Neg', [x]));
export const sqrt = (g: GraphBuilder, x: Value) => one(g.node('Sqrt', [x]));
export const reciprocal = (g: GraphBuilder, x: Value) => one(g.node('Reciprocal', [x]));
export const sigmoid = (g: GraphBuilder, x: Value) => one(g.node('Sigmoid', [x]));
export const cos = (g: GraphBuilder, x: Value) => one(g.node('Cos', [x]));
export const sin = (g: GraphBuilder, x: Value) => one(g.node('Sin', [x]));
export const identity = (g: GraphBuilder, x: Value, name?: string) =>
  one(g.node('Identity', [x], {}, name));

export const cast = (g: GraphBuilder, x: Value, to: DType) =>
  one(g.node('Cast', [x], { to: { int: onnxElemType(to) } }));

/** a [..., M, K] x b [..., K, N] -> [..., M, N] */
export const matmul = (g: GraphBuilder, a: Value, b: Value, name?: string) =>
  one(g.node('MatMul', [a, b], {}, name));

/** Rows of `data` along `axis` picked by `indices` (embedding lookup with axis 0). */
export const gather = (g: GraphBuilder, data: Value, indices: Value, axis = 0, name?: string) =>
  one(g.node('Gather', [data, indices], { axis: { int: axis } }, name));

/** New shape; 0 copies the input's dim, -1 is inferred. */
export const reshape = (g: GraphBuilder, x: Value, shape: readonly number[]) =>
  one(g.node('Reshape', [x, g.constant(shape)]));

export const transpose = (g: GraphBuilder, x: Value, perm: readonly number[]) =>
  one(g.node('Transpose', [x], { perm: { ints: perm } }));

export const unsqueeze = (g: GraphBuilder, x: Value, axes: readonly number[]) =>
  one(g.node('Unsqueeze', [x, g.constant(axes)]));

export const concat = (g: GraphBuilder, xs: readonly Value[], axis: number) =>
  one(g.node('Concat', xs, { axis: { int: axis } }));

/** x[start:end] along `axis` (ONNX clamping rules; use a large `end` for "to the end"). */
export const slice = (
  g: GraphBuilder,
  x: Value,
  axis: number,
  start: number,
  end: number,
  step = 1,
) =>
  one(
    g.node('Slice', [
      x,
      g.constant([start]),
      g.constant([end]),
      g.constant([axis]),
      g.constant([step]),
    ]),
  );

/** The shape of `x` as an int64 vector. */
export const shapeOf = (g: GraphBuilder, x: Value) => one(g.node('Shape', [x]));

/** [start, start + delta, ...) up to `limit`; scalars in, 1-D out. */
export const range = (g: GraphBuilder, start: Value, limit: Value, delta: Value) =>
  one(g.node('Range', [start, limit, delta]));

export const reduceMean = (g: GraphBuilder, x: Value, axes: readonly number[], keepdims = true) =>
  one(g.node('ReduceMean', [x], { axes: { ints: axes }, keepdims: { int: keepdims ? 1 : 0 } }));

export const softmax = (g: GraphBuilder, x: Value, axis = -1) =>
  one(g.node('Softmax', [x], { axis: { int: axis } }));

// ---------- ops added for reverse mode (backward graphs use them too) ----------

export const equal = (g: GraphBuilder, a: Value, b: Value) => one(g.node('Equal', [a, b]));
export const exp = (g: GraphBuilder, x: Value) => one(g.node('Exp', [x]));
export const log = (g: GraphBuilder, x: Value) => one(g.node('Log', [x]));

/** Picks `x` where `condition` is true, else `y` (all three broadcast). */
export const where = (g: GraphBuilder, condition: Value, x: Value, y: Value) =>
  one(g.node('Where', [condition, x, y]));

/** Sum over `axes` (all axes when empty). */
export const reduceSum = (g: GraphBuilder, x: Value, axes: readonly number[], keepdims = true) =>
  one(
    g.node('ReduceSum', [x, axes.length > 0 ? g.constant(axes) : undefined], {
      keepdims: { int: keepdims ? 1 : 0 },
    }),
  );

export const reduceMax = (g: GraphBuilder, x: Value, axes: readonly number[], keepdims = true) =>
  one(g.node('ReduceMax', [x], { axes: { ints: axes }, keepdims: { int: keepdims ? 1 : 0 } }));

/** Broadcasts `x` to `shape` (an int64 vector value, NumPy rules in both directions). */
export const expand = (g: GraphBuilder, x: Value, shape: Value) =>
  one(g.node('Expand', [x, shape]));

export const squeeze = (g: GraphBuilder, x: Value, axes: readonly number[]) =>
  one(g.node('Squeeze', [x, g.constant(axes)]));

/** Zero padding: `pads` = [begin of each axis..., end of each axis...]. */
export const pad = (g: GraphBuilder, x: Value, pads: readonly number[]) =>
  one(g.node('Pad', [x, g.constant(pads)]));

export const logSoftmax = (g: GraphBuilder, x: Value, axis = -1) =>
  one(g.node('LogSoftmax', [x], { axis: { int: axis } }));

/**
 * `com.microsoft.FusedMatMul`: alpha * op(a) x op(b), op = transpose of the last two dims when the
 * flag is set. `x·Wᵀ` through `transB` keeps one copy of an initializer W (a `Transpose(W)` node
 * would be constant-folded into a second copy).
 */
export const fusedMatMul = (
  g: GraphBuilder,
  a: Value,
  b: Value,
  { transA = false, transB = false, alpha = 1 } = {},
  name?: string,
) =>
  one(
    g.node(
      'FusedMatMul',
      [a, b],
      { transA: { int: transA ? 1 : 0 }, transB: { int: transB ? 1 : 0 }, alpha: { float: alpha } },
      name,
    ),
  );

/** out[i][j] = data[i][indices[i][j]] along `axis` (same rank, output shaped like `indices`). */
export const gatherElements = (g: GraphBuilder, data: Value, indices: Value, axis: number) =>
  one(g.node('GatherElements', [data, indices], { axis: { int: axis } }));

/** Writes (or with `'add'`, adds) `updates` into a copy of `data` at `indices` along `axis`. */
export const scatterElements = (
  g: GraphBuilder,
  data: Value,
  indices: Value,
  updates: Value,
  axis: number,
  reduction: 'none' | 'add' = 'none',
) =>
  one(
    g.node('ScatterElements', [data, indices, updates], {
      axis: { int: axis },
      reduction: { string: reduction },
    }),
  );

/** Slices of `data` addressed by the last axis of `indices` ([..., q] picks data[i0..iq-1, ...]). */
export const gatherND = (g: GraphBuilder, data: Value, indices: Value) =>
  one(g.node('GatherND', [data, indices]));

/** Writes (or adds) `updates` into a copy of `data` at the slices `indices` address. */
export const scatterND = (
  g: GraphBuilder,
  data: Value,
  indices: Value,
  updates: Value,
  reduction: 'none' | 'add' = 'none',
) => one(g.node('ScatterND', [data, indices, updates], { reduction: { string: reduction } }));
