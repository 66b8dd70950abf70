import { RuntimeError } from '../errors.js';
import type { GraphBuilder } from './builder.js';
import * as op from './ops.js';
import type { Dim, Value } from './types.js';

/** Small graph-building helpers the backward rules share (the VJPs in `opset.ts` and `composites/`). */

/** The shape of `v` as an int64 vector: a constant when every dim is known, else a `Shape` node. */
export function shapeValue(g: GraphBuilder, v: Value): Value {
  return v.shape.every((d) => typeof d === 'number')
    ? g.constant(v.shape as number[])
    : op.shapeOf(g, v);
}

/** A scalar of `like`'s float dtype (f32 or f64). */
export function scalarLike(g: GraphBuilder, like: Value, value: number): Value {
  if (like.dtype !== 'f32' && like.dtype !== 'f64') {
    throw new RuntimeError(
      'GRAPH_GRADIENT',
      `Gradients are built for f32 and f64 values; "${like.name}" is ${like.dtype}.`,
    );
  }
  return g.scalar(value, like.dtype);
}

/** Zeros shaped and typed like `v` (an Expand of a scalar: no tensor-sized initializer). */
export function zerosLike(g: GraphBuilder, v: Value): Value {
  return op.expand(g, scalarLike(g, v, 0), shapeValue(g, v));
}

/**
 * Undoes broadcasting for a gradient: sums `grad` over the axes along which a value of `shape`
 * was broadcast (leading extra axes and size-1 axes), so the result has `shape`. Returns `grad`
 * itself when nothing was broadcast.
 */
export function sumToShape(g: GraphBuilder, grad: Value, shape: readonly Dim[]): Value {
  const rank = grad.shape.length;
  const lead = rank - shape.length;
  if (lead < 0) {
    throw new RuntimeError(
      'GRAPH_GRADIENT',
      `Gradient "${grad.name}" [${grad.shape.join(', ')}] has lower rank than its value [${shape.join(', ')}].`,
    );
  }
  const axes: number[] = [];
  for (let i = 0; i < rank; i++) {
    if (i < lead) axes.push(i);
    else if (shape[i - lead] === 1 && grad.shape[i] !== 1) axes.push(i);
  }
  if (axes.length === 0) return grad;
  const summed = op.reduceSum(g, grad, axes, true);
  return lead > 0 ? op.squeeze(g, summed, axes.slice(0, lead)) : summed;
}

/** Reshapes `grad` back to the shape of `like` (Reshape, Squeeze and Unsqueeze backward). */
export function reshapeLike(g: GraphBuilder, grad: Value, like: Value): Value {
  return g.node('Reshape', [grad, shapeValue(g, like)])[0];
}
