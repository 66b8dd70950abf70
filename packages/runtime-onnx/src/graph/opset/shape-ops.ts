import { numel, strides } from '@lora/core';
import { RuntimeError } from '../../errors.js';
import * as op from '../ops.js';
import { broadcastConcrete, mapBroadcast, permuteCopy, ref } from '../refmath.js';
import { broadcastShapes, knownSize, normAxis, unknownDim } from '../shape.js';
import type { Dim, RefTensor } from '../types.js';
import { reshapeLike, sumToShape } from '../vjp-helpers.js';
import {
  attrInt,
  attrInts,
  constInts,
  type InferInput,
  need,
  type OpDef,
  shapeDims,
  type VjpRule,
} from './op-def.js';

/** Ops that move or select elements without arithmetic (Reshape, Transpose, Slice, Concat, Pad, Expand, ...) and their backward rules. */

export const reshape: OpDef = {
  domain: '',
  infer([x, shapeInput], _attrs, where) {
    const input = need(x, `${where} input`);
    const target = shapeDims(shapeInput, `${where} shape`);
    const out: Dim[] = target.map((d, i) => (d === 0 ? input.shape[i] : d));
    const free = out.indexOf(-1);
    if (free >= 0) {
      const total = knownSize(input.shape);
      const rest = knownSize(out.filter((_, i) => i !== free));
      out[free] =
        total !== undefined && rest !== undefined && rest !== 0 ? total / rest : unknownDim();
    }
    return [{ dtype: input.dtype, shape: out }];
  },
  reference([x, shapeInput]) {
    const input = need(x, 'data');
    const target = constInts(shapeInput, 'shape').map((d, i) => (d === 0 ? input.shape[i] : d));
    const free = target.indexOf(-1);
    if (free >= 0) target[free] = numel(input.shape) / numel(target.filter((_, i) => i !== free));
    if (numel(target) !== input.data.length)
      throw new Error(`reference Reshape: bad target ${target}`);
    return [{ dtype: input.dtype, shape: target, data: input.data }];
  },
};

export const transpose: OpDef = {
  domain: '',
  infer([x], attrs, where) {
    const input = need(x, `${where} input`);
    const perm = attrInts(attrs, 'perm') ?? input.shape.map((_, i) => input.shape.length - 1 - i);
    return [{ dtype: input.dtype, shape: perm.map((p) => input.shape[p]) }];
  },
  reference([x], attrs) {
    const input = need(x, 'data');
    const perm = attrInts(attrs, 'perm') ?? input.shape.map((_, i) => input.shape.length - 1 - i);
    const st = strides(input.shape);
    const outShape = perm.map((p) => input.shape[p]);
    return [
      permuteCopy(input, outShape, (idx) => idx.reduce((acc, v, d) => acc + v * st[perm[d]], 0)),
    ];
  },
};

function unsqueezedShape<T extends Dim>(shape: readonly T[], axes: readonly number[]): T[] {
  const rank = shape.length + axes.length;
  const norm = axes.map((a) => (a < 0 ? a + rank : a));
  const out: T[] = [];
  let src = 0;
  for (let i = 0; i < rank; i++) out.push(norm.includes(i) ? (1 as T) : shape[src++]);
  return out;
}

export const unsqueeze: OpDef = {
  domain: '',
  infer([x, axes], _attrs, where) {
    const input = need(x, `${where} input`);
    return [
      { dtype: input.dtype, shape: unsqueezedShape(input.shape, constInts(axes, `${where} axes`)) },
    ];
  },
  reference([x, axes]) {
    const input = need(x, 'data');
    return [
      {
        dtype: input.dtype,
        shape: unsqueezedShape(input.shape, constInts(axes, 'axes')),
        data: input.data,
      },
    ];
  },
};

export const concat: OpDef = {
  domain: '',
  infer(inputs, attrs, where) {
    const xs = inputs.map((x, i) => need(x, `${where} input ${i}`));
    const axis = normAxis(attrInt(attrs, 'axis'), xs[0].shape.length, where);
    const shape = [...xs[0].shape];
    let total: Dim = 0;
    for (const x of xs) {
      const d = x.shape[axis];
      total = typeof total === 'number' && typeof d === 'number' ? total + d : unknownDim();
    }
    shape[axis] = total;
    return [{ dtype: xs[0].dtype, shape }];
  },
  reference(inputs, attrs) {
    const xs = inputs.map((x) => need(x, 'input'));
    const axis = normAxis(attrInt(attrs, 'axis'), xs[0].shape.length, 'Concat');
    const outer = numel(xs[0].shape.slice(0, axis));
    const inner = numel(xs[0].shape.slice(axis + 1));
    const total = xs.reduce((s, x) => s + x.shape[axis], 0);
    const out = new Float64Array(outer * total * inner);
    let offset = 0;
    for (const x of xs) {
      const len = x.shape[axis] * inner;
      for (let o = 0; o < outer; o++)
        out.set(x.data.subarray(o * len, (o + 1) * len), o * total * inner + offset);
      offset += len;
    }
    const shape = [...xs[0].shape];
    shape[axis] = total;
    return [{ dtype: xs[0].dtype, shape, data: out }];
  },
};

/** ONNX Slice clamping rules for one axis: returns [start, step, count]. */
function sliceAxis(
  dim: number,
  start: number,
  end: number,
  step: number,
): [number, number, number] {
  let s = start < 0 ? start + dim : start;
  let e = end < 0 ? end + dim : end;
  if (step > 0) {
    s = Math.min(Math.max(s, 0), dim);
    e = Math.min(Math.max(e, 0), dim);
  } else {
    s = Math.min(Math.max(s, 0), dim - 1);
    e = Math.min(Math.max(e, -1), dim - 1);
  }
  const count = Math.max(0, Math.ceil((e - s) / step));
  return [s, step, count];
}

function sliceParams(
  rank: number,
  rest: readonly (InferInput | RefTensor | undefined)[],
  where: string,
) {
  const starts = constInts(rest[0], `${where} starts`);
  const ends = constInts(rest[1], `${where} ends`);
  const axes = rest[2] ? constInts(rest[2], `${where} axes`) : starts.map((_, i) => i);
  const steps = rest[3] ? constInts(rest[3], `${where} steps`) : starts.map(() => 1);
  return axes.map((a, i) => ({
    axis: normAxis(a, rank, where),
    start: starts[i],
    end: ends[i],
    step: steps[i],
  }));
}

export const slice: OpDef = {
  domain: '',
  infer([x, ...rest], _attrs, where) {
    const input = need(x, `${where} input`);
    const shape = [...input.shape];
    for (const p of sliceParams(shape.length, rest, where)) {
      const d = shape[p.axis];
      shape[p.axis] =
        typeof d === 'number' ? sliceAxis(d, p.start, p.end, p.step)[2] : unknownDim();
    }
    return [{ dtype: input.dtype, shape }];
  },
  reference([x, ...rest]) {
    const input = need(x, 'data');
    const starts = input.shape.map(() => 0);
    const steps = input.shape.map(() => 1);
    const outShape = [...input.shape];
    for (const p of sliceParams(input.shape.length, rest, 'Slice')) {
      const [s, st, n] = sliceAxis(input.shape[p.axis], p.start, p.end, p.step);
      starts[p.axis] = s;
      steps[p.axis] = st;
      outShape[p.axis] = n;
    }
    const strd = strides(input.shape);
    return [
      permuteCopy(input, outShape, (idx) =>
        idx.reduce((acc, v, d) => acc + (starts[d] + v * steps[d]) * strd[d], 0),
      ),
    ];
  },
};

export const shapeOp: OpDef = {
  domain: '',
  infer([x], _attrs, where) {
    return [{ dtype: 'i64', shape: [need(x, `${where} input`).shape.length] }];
  },
  reference([x]) {
    const input = need(x, 'data');
    return [ref('i64', [input.shape.length], input.shape)];
  },
};

export const range: OpDef = {
  domain: '',
  infer([start], _attrs, where) {
    return [{ dtype: need(start, `${where} start`).dtype, shape: [unknownDim()] }];
  },
  reference([start, limit, delta]) {
    const s = need(start, 'start').data[0];
    const l = need(limit, 'limit').data[0];
    const d = need(delta, 'delta').data[0];
    const n = Math.max(Math.ceil((l - s) / d), 0);
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = s + i * d;
    return [{ dtype: need(start, 'start').dtype, shape: [n], data: out }];
  },
};

export const expand: OpDef = {
  domain: '',
  infer([x, shapeInput], _attrs, where) {
    const input = need(x, `${where} input`);
    return [
      {
        dtype: input.dtype,
        shape: broadcastShapes(input.shape, shapeDims(shapeInput, `${where} shape`), where),
      },
    ];
  },
  reference([x, shapeInput]) {
    const input = need(x, 'input');
    const outShape = broadcastConcrete([input.shape, constInts(shapeInput, 'shape')]);
    return [mapBroadcast([input, ref(input.dtype, outShape)], input.dtype, (v) => v[0])];
  },
};

export const squeeze: OpDef = {
  domain: '',
  infer([x, axes], _attrs, where) {
    const input = need(x, `${where} input`);
    const drop = axes
      ? constInts(axes, `${where} axes`).map((a) => normAxis(a, input.shape.length, where))
      : input.shape.flatMap((d, i) => (d === 1 ? [i] : []));
    for (const a of drop) {
      if (typeof input.shape[a] === 'number' && input.shape[a] !== 1) {
        throw new RuntimeError(
          'GRAPH_SHAPE',
          `${where}: axis ${a} has size ${input.shape[a]}, not 1.`,
        );
      }
    }
    return [{ dtype: input.dtype, shape: input.shape.filter((_, i) => !drop.includes(i)) }];
  },
  reference([x, axes]) {
    const input = need(x, 'data');
    const drop = axes
      ? constInts(axes, 'axes').map((a) => normAxis(a, input.shape.length, 'Squeeze'))
      : input.shape.flatMap((d, i) => (d === 1 ? [i] : []));
    return [{ ...input, shape: input.shape.filter((_, i) => !drop.includes(i)) }];
  },
};

/** Constant-mode Pad with non-negative pads [begin_0, ..., begin_r-1, end_0, ..., end_r-1]. */
function padAmounts(pads: InferInput | RefTensor | undefined, rank: number, where: string) {
  const p = constInts(pads, `${where} pads`);
  if (p.length !== 2 * rank || p.some((v) => v < 0)) {
    throw new RuntimeError(
      'GRAPH_INVALID',
      `${where}: pads must be ${2 * rank} non-negative numbers, got [${p.join(', ')}].`,
    );
  }
  return { begin: p.slice(0, rank), end: p.slice(rank) };
}

export const pad: OpDef = {
  domain: '',
  infer([x, pads, , axes], attrs, where) {
    const input = need(x, `${where} input`);
    if (axes || (attrs.mode && 'string' in attrs.mode && attrs.mode.string !== 'constant')) {
      throw new RuntimeError('GRAPH_INVALID', `${where}: only constant padding of all axes.`);
    }
    const { begin, end } = padAmounts(pads, input.shape.length, where);
    const shape = input.shape.map((d, i) =>
      typeof d === 'number' ? d + begin[i] + end[i] : begin[i] + end[i] === 0 ? d : unknownDim(),
    );
    return [{ dtype: input.dtype, shape }];
  },
  reference([x, pads, value]) {
    const input = need(x, 'data');
    const { begin, end } = padAmounts(pads, input.shape.length, 'Pad');
    const outShape = input.shape.map((d, i) => d + begin[i] + end[i]);
    const out = new Float64Array(numel(outShape)).fill(value ? value.data[0] : 0);
    const outStrides = strides(outShape);
    const st = strides(input.shape);
    for (let i = 0; i < input.data.length; i++) {
      let o = 0;
      for (let d = 0; d < input.shape.length; d++) {
        o += (Math.floor(i / st[d]) % input.shape[d]) * outStrides[d] + begin[d] * outStrides[d];
      }
      out[o] = input.data[i];
    }
    return [{ dtype: input.dtype, shape: outShape, data: out }];
  },
};

/** dx = dy[begin : begin + dim] on every axis. */
export const padVjp: VjpRule = (g, { inputs: [x, pads], grads: [dy] }) => {
  const input = need(x, 'Pad input');
  const p = constInts(g.constantValue(need(pads, 'pads')), 'Pad pads');
  const rank = input.shape.length;
  const axes = Array.from({ length: rank }, (_, i) => i);
  const ends = axes.map((i) => (p[rank + i] > 0 ? -p[rank + i] : Number.MAX_SAFE_INTEGER));
  return [
    g.node('Slice', [
      need(dy, 'dy'),
      g.constant(p.slice(0, rank)),
      g.constant(ends),
      g.constant(axes),
    ])[0],
  ];
};

export const sliceVjp: VjpRule = (g, { inputs: [x, ...rest], grads: [dy], name }) => {
  const input = need(x, 'data');
  const constants = rest.map((v) => (v ? g.constantValue(v) : undefined));
  const params = sliceParams(input.shape.length, constants, `Slice node "${name}"`);
  const begin = input.shape.map(() => 0);
  const end = input.shape.map(() => 0);
  for (const p of params) {
    const dim = input.shape[p.axis];
    if (typeof dim !== 'number' || p.step !== 1) {
      throw new RuntimeError(
        'GRAPH_GRADIENT',
        `Slice node "${name}": gradients need step 1 and a known size on axis ${p.axis}.`,
      );
    }
    const [s, , count] = sliceAxis(dim, p.start, p.end, p.step);
    begin[p.axis] = s;
    end[p.axis] = dim - s - count;
  }
  return [op.pad(g, need(dy, 'dy'), [...begin, ...end])];
};

export const concatVjp: VjpRule = (g, { inputs, grads: [dy], attrs, needs, name }) => {
  const xs = inputs.map((x) => need(x, 'input'));
  const axis = normAxis(attrInt(attrs, 'axis'), xs[0].shape.length, name);
  let offset = 0;
  return xs.map((x, i) => {
    const len = x.shape[axis];
    if (typeof len !== 'number') {
      throw new RuntimeError(
        'GRAPH_GRADIENT',
        `Concat node "${name}": gradients need known sizes along the concatenated axis.`,
      );
    }
    const start = offset;
    offset += len;
    return needs[i] ? op.slice(g, need(dy, 'dy'), axis, start, start + len) : undefined;
  });
};

export const transposeVjp: VjpRule = (g, { inputs: [x], grads: [dy], attrs }) => {
  const rank = need(x, 'data').shape.length;
  const perm = attrInts(attrs, 'perm') ?? Array.from({ length: rank }, (_, i) => rank - 1 - i);
  return [
    op.transpose(
      g,
      need(dy, 'dy'),
      perm.map((_, i) => perm.indexOf(i)),
    ),
  ];
};

export const reshapeVjp: VjpRule = (g, { inputs: [x], grads: [dy] }) => [
  reshapeLike(g, need(dy, 'dy'), need(x, 'data')),
];

export const expandVjp: VjpRule = (g, { inputs: [x], grads: [dy] }) => [
  sumToShape(g, need(dy, 'dy'), need(x, 'input').shape),
];
