import { numel } from '@lora/core';
import type { GraphBuilder } from '../builder.js';
import * as op from '../ops.js';
import { broadcastStrides, forEachBroadcast } from '../refmath.js';
import { normAxis } from '../shape.js';
import type { Attrs, Dim, RefTensor, Value } from '../types.js';
import { scalarLike, shapeValue } from '../vjp-helpers.js';
import {
  attrInt,
  attrInts,
  constInts,
  type InferInput,
  need,
  type OpDef,
  type VjpRule,
} from './op-def.js';

/** Reductions (ReduceSum, ReduceMean, ReduceMax) and softmaxes, with their backward rules. */

/**
 * The reduced axes of a Reduce* node: from the `axes` attribute (ReduceMean, ReduceMax at opset 17)
 * or the optional second input (ReduceSum since opset 13); none given means all axes.
 */
function reducedAxes(
  inputs: readonly (InferInput | RefTensor | undefined)[],
  attrs: Attrs,
  rank: number,
  axesAsInput: boolean,
  where: string,
): number[] {
  const given = axesAsInput
    ? inputs[1] && constInts(inputs[1], `${where} axes`)
    : attrInts(attrs, 'axes');
  if (!given || given.length === 0) {
    return axesAsInput && attrInt(attrs, 'noop_with_empty_axes', 0) === 1
      ? []
      : Array.from({ length: rank }, (_, i) => i);
  }
  return given.map((a) => normAxis(a, rank, where));
}

function reducedShape<T extends Dim>(shape: readonly T[], axes: readonly number[], keep: boolean) {
  const out: T[] = [];
  shape.forEach((d, i) => {
    if (!axes.includes(i)) out.push(d);
    else if (keep) out.push(1 as T);
  });
  return out;
}

export function reduction(kind: 'mean' | 'sum' | 'max', axesAsInput: boolean): OpDef {
  return {
    domain: '',
    infer(inputs, attrs, where) {
      const input = need(inputs[0], `${where} input`);
      const axes = reducedAxes(inputs, attrs, input.shape.length, axesAsInput, where);
      const keep = attrInt(attrs, 'keepdims', 1) === 1;
      return [{ dtype: input.dtype, shape: reducedShape(input.shape, axes, keep) }];
    },
    reference(inputs, attrs) {
      const input = need(inputs[0], 'data');
      const axes = reducedAxes(inputs, attrs, input.shape.length, axesAsInput, 'Reduce');
      const keep = attrInt(attrs, 'keepdims', 1) === 1;
      const keptShape = reducedShape(input.shape, axes, true);
      const acc = new Float64Array(numel(keptShape)).fill(kind === 'max' ? -Infinity : 0);
      const st = broadcastStrides(keptShape, input.shape);
      forEachBroadcast(input.shape, [st], (i, [o]) => {
        acc[o] = kind === 'max' ? Math.max(acc[o], input.data[i]) : acc[o] + input.data[i];
      });
      const count = axes.reduce((n, a) => n * input.shape[a], 1);
      const data = kind === 'mean' ? acc.map((v) => v / count) : acc;
      return [{ dtype: input.dtype, shape: reducedShape(input.shape, axes, keep), data }];
    },
  };
}

/** The reduced axes of a Reduce* node being differentiated, read from its constant axes. */
function vjpAxes(g: GraphBuilder, x: Value, inputs: readonly (Value | undefined)[], attrs: Attrs) {
  const axesInput = inputs[1] && g.constantValue(inputs[1]);
  return reducedAxes([undefined, axesInput], attrs, x.shape.length, inputs[1] !== undefined, 'vjp');
}

/** dy of a reduction, with the reduced axes back as size 1 (keepdims = 0 removed them). */
function keptGrad(g: GraphBuilder, dy: Value, axes: readonly number[], attrs: Attrs): Value {
  return attrInt(attrs, 'keepdims', 1) === 1 ? dy : op.unsqueeze(g, dy, axes);
}

export const reduceSumVjp: VjpRule = (g, { inputs: [x, axesIn], grads: [dy], attrs }) => {
  const input = need(x, 'ReduceSum input');
  const axes = vjpAxes(g, input, [x, axesIn], attrs);
  return [op.expand(g, keptGrad(g, need(dy, 'dy'), axes, attrs), shapeValue(g, input))];
};

/** dx = expand(dy / count); count from the known sizes, and from a Shape node for symbolic dims. */
export const reduceMeanVjp: VjpRule = (g, { inputs: [x], grads: [dy], attrs }) => {
  const input = need(x, 'ReduceMean input');
  const axes = vjpAxes(g, input, [x], attrs);
  let known = 1;
  let count: Value | undefined;
  for (const a of axes) {
    const d = input.shape[a];
    if (typeof d === 'number') known *= d;
    else {
      const size = op.cast(
        g,
        op.gather(g, op.shapeOf(g, input), g.constant([a], 'i64', [])),
        input.dtype,
      );
      count = count ? op.mul(g, count, size) : size;
    }
  }
  let scaled = op.mul(g, keptGrad(g, need(dy, 'dy'), axes, attrs), scalarLike(g, input, 1 / known));
  if (count) scaled = op.div(g, scaled, count);
  return [op.expand(g, scaled, shapeValue(g, input))];
};

/** The gradient goes to the maximal elements, split evenly between ties. */
export const reduceMaxVjp: VjpRule = (g, { inputs: [x], outputs: [y], grads: [dy], attrs }) => {
  const input = need(x, 'ReduceMax input');
  const axes = vjpAxes(g, input, [x], attrs);
  const isMax = op.cast(g, op.equal(g, input, keptGrad(g, y, axes, attrs)), input.dtype);
  const share = op.div(g, isMax, op.reduceSum(g, isMax, axes, true));
  return [op.mul(g, share, keptGrad(g, need(dy, 'dy'), axes, attrs))];
};

/** Softmax or LogSoftmax along one axis, float64. */
function softmaxReference(input: RefTensor, axisAttr: number, log: boolean): RefTensor {
  const axis = normAxis(axisAttr, input.shape.length, 'Softmax');
  const dim = input.shape[axis];
  const inner = numel(input.shape.slice(axis + 1));
  const outer = numel(input.shape.slice(0, axis));
  const out = new Float64Array(input.data.length);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const base = o * dim * inner + i;
      let max = -Infinity;
      for (let j = 0; j < dim; j++) max = Math.max(max, input.data[base + j * inner]);
      let sum = 0;
      for (let j = 0; j < dim; j++) sum += Math.exp(input.data[base + j * inner] - max);
      for (let j = 0; j < dim; j++) {
        const shifted = input.data[base + j * inner] - max;
        out[base + j * inner] = log ? shifted - Math.log(sum) : Math.exp(shifted) / sum;
      }
    }
  }
  return { dtype: input.dtype, shape: input.shape, data: out };
}

export function softmaxOp(log: boolean): OpDef {
  return {
    domain: '',
    infer([x], _attrs, where) {
      const input = need(x, `${where} input`);
      return [{ dtype: input.dtype, shape: input.shape }];
    },
    reference([x], attrs) {
      return [softmaxReference(need(x, 'input'), attrInt(attrs, 'axis', -1), log)];
    },
  };
}

/** dx = y * (dy - sum(dy * y)) along the axis. */
export const softmaxVjp: VjpRule = (g, { outputs: [y], grads: [dy], attrs }) => {
  const d = need(dy, 'dy');
  const axis = attrInt(attrs, 'axis', -1);
  return [op.mul(g, y, op.sub(g, d, op.reduceSum(g, op.mul(g, d, y), [axis])))];
};

/** dx = dy - softmax * sum(dy) along the axis (softmax = exp of the output). */
export const logSoftmaxVjp: VjpRule = (g, { outputs: [y], grads: [dy], attrs }) => {
  const d = need(dy, 'dy');
  const axis = attrInt(attrs, 'axis', -1);
  return [op.sub(g, d, op.mul(g, op.exp(g, y), op.reduceSum(g, d, [axis])))];
};
