import type { DType } from '@lora/core';
import { RuntimeError } from '../../errors.js';
import type { GraphBuilder } from '../builder.js';
import { dtypeOfElemType, isFloat } from '../dtypes.js';
import * as op from '../ops.js';
import { castValue, mapBroadcast } from '../refmath.js';
import { broadcastShapes } from '../shape.js';
import type { Value } from '../types.js';
import { scalarLike, sumToShape } from '../vjp-helpers.js';
import { attrInt, need, type OpDef, type VjpRule } from './op-def.js';

/** Elementwise ops (arithmetic, unary math, comparisons, Cast, Where) and their backward rules. */

export function binary(fn: (a: number, b: number) => number, outDType?: DType): OpDef {
  return {
    domain: '',
    infer([a, b], _attrs, where) {
      const x = need(a, `${where} input A`);
      const y = need(b, `${where} input B`);
      if (x.dtype !== y.dtype) {
        throw new RuntimeError(
          'GRAPH_DTYPE',
          `${where}: input dtypes differ (${x.dtype} vs ${y.dtype}).`,
        );
      }
      return [{ dtype: outDType ?? x.dtype, shape: broadcastShapes(x.shape, y.shape, where) }];
    },
    reference([a, b]) {
      const x = need(a, 'A');
      return [mapBroadcast([x, need(b, 'B')], outDType ?? x.dtype, (v) => fn(v[0], v[1]))];
    },
  };
}

export function unary(fn: (a: number) => number): OpDef {
  return {
    domain: '',
    infer([a], _attrs, where) {
      const x = need(a, `${where} input`);
      return [{ dtype: x.dtype, shape: x.shape }];
    },
    reference([a]) {
      const x = need(a, 'X');
      return [{ dtype: x.dtype, shape: x.shape, data: x.data.map(fn) }];
    },
  };
}

export const cast: OpDef = {
  domain: '',
  infer([x], attrs, where) {
    return [
      { dtype: dtypeOfElemType(attrInt(attrs, 'to')), shape: need(x, `${where} input`).shape },
    ];
  },
  reference([x], attrs) {
    const input = need(x, 'input');
    const to = dtypeOfElemType(attrInt(attrs, 'to'));
    return [{ dtype: to, shape: input.shape, data: input.data.map((v) => castValue(v, to)) }];
  },
};

export const whereOp: OpDef = {
  domain: '',
  infer([c, x, y], _attrs, where) {
    const cond = need(c, `${where} condition`);
    const a = need(x, `${where} X`);
    const b = need(y, `${where} Y`);
    if (cond.dtype !== 'bool' || a.dtype !== b.dtype) {
      throw new RuntimeError(
        'GRAPH_DTYPE',
        `${where}: needs a bool condition and X, Y of one dtype (got ${cond.dtype}, ${a.dtype}, ${b.dtype}).`,
      );
    }
    const shape = broadcastShapes(broadcastShapes(cond.shape, a.shape, where), b.shape, where);
    return [{ dtype: a.dtype, shape }];
  },
  reference([c, x, y]) {
    const a = need(x, 'X');
    return [mapBroadcast([need(c, 'C'), a, need(y, 'Y')], a.dtype, (v) => (v[0] ? v[1] : v[2]))];
  },
};

/** Float-to-float casts pass the gradient back in the input's dtype; casts to or from integers carry none. */
export const castVjp: VjpRule = (g, { inputs: [x], outputs: [y], grads: [dy] }) => {
  const input = need(x, 'input');
  if (!isFloat(input.dtype) || !isFloat(y.dtype)) return [undefined];
  return [input.dtype === y.dtype ? need(dy, 'dy') : op.cast(g, need(dy, 'dy'), input.dtype)];
};

export const whereVjp: VjpRule = (g, { inputs: [c, x, y], grads: [dy], needs }) => {
  const cond = need(c, 'condition');
  const d = need(dy, 'dy');
  const zero = scalarLike(g, d, 0);
  return [
    undefined,
    needs[1] ? sumToShape(g, op.where(g, cond, d, zero), need(x, 'X').shape) : undefined,
    needs[2] ? sumToShape(g, op.where(g, cond, zero, d), need(y, 'Y').shape) : undefined,
  ];
};

/** Rule for a binary elementwise op from the two partial products (before un-broadcasting). */
export function binaryVjp(
  partials: (
    g: GraphBuilder,
    a: Value,
    b: Value,
    y: Value,
    dy: Value,
  ) => [() => Value, () => Value],
): VjpRule {
  return (g, { inputs: [a, b], outputs: [y], grads: [dy], needs }) => {
    const x1 = need(a, 'A');
    const x2 = need(b, 'B');
    const [da, db] = partials(g, x1, x2, y, need(dy, 'dy'));
    return [
      needs[0] ? sumToShape(g, da(), x1.shape) : undefined,
      needs[1] ? sumToShape(g, db(), x2.shape) : undefined,
    ];
  };
}

/** Rule for a unary op: dx from x, y and dy. */
export function unaryVjp(rule: (g: GraphBuilder, x: Value, y: Value, dy: Value) => Value): VjpRule {
  return (g, { inputs: [x], outputs: [y], grads: [dy] }) => [
    rule(g, need(x, 'input'), y, need(dy, 'dy')),
  ];
}
