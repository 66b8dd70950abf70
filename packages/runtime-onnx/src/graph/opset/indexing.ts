import { numel, strides } from '@lora/core';
import { RuntimeError } from '../../errors.js';
import * as op from '../ops.js';
import { normAxis } from '../shape.js';
import type { Attrs, Dim, RefTensor } from '../types.js';
import { zerosLike } from '../vjp-helpers.js';
import { attrInt, type InferInput, need, type OpDef, type VjpRule } from './op-def.js';

/** Gathers and scatters (Gather, GatherElements, ScatterElements, GatherND, ScatterND) and their backward rules. */

export const gather: OpDef = {
  domain: '',
  infer([x, indices], attrs, where) {
    const data = need(x, `${where} data`);
    const idx = need(indices, `${where} indices`);
    if (idx.dtype !== 'i64' && idx.dtype !== 'i32') {
      throw new RuntimeError(
        'GRAPH_DTYPE',
        `${where}: indices must be i64 or i32, got ${idx.dtype}.`,
      );
    }
    const axis = normAxis(attrInt(attrs, 'axis', 0), data.shape.length, where);
    return [
      {
        dtype: data.dtype,
        shape: [...data.shape.slice(0, axis), ...idx.shape, ...data.shape.slice(axis + 1)],
      },
    ];
  },
  reference([x, indices], attrs) {
    const data = need(x, 'data');
    const idx = need(indices, 'indices');
    const axis = normAxis(attrInt(attrs, 'axis', 0), data.shape.length, 'Gather');
    const outer = numel(data.shape.slice(0, axis));
    const dim = data.shape[axis];
    const inner = numel(data.shape.slice(axis + 1));
    const n = idx.data.length;
    const out = new Float64Array(outer * n * inner);
    for (let o = 0; o < outer; o++) {
      for (let j = 0; j < n; j++) {
        const i = idx.data[j] < 0 ? idx.data[j] + dim : idx.data[j];
        if (i < 0 || i >= dim)
          throw new Error(`reference Gather: index ${idx.data[j]} out of range ${dim}`);
        out.set(
          data.data.subarray((o * dim + i) * inner, (o * dim + i + 1) * inner),
          (o * n + j) * inner,
        );
      }
    }
    return [
      {
        dtype: data.dtype,
        shape: [...data.shape.slice(0, axis), ...idx.shape, ...data.shape.slice(axis + 1)],
        data: out,
      },
    ];
  },
};

function checkIndices(idx: InferInput, where: string) {
  if (idx.dtype !== 'i64' && idx.dtype !== 'i32') {
    throw new RuntimeError(
      'GRAPH_DTYPE',
      `${where}: indices must be i64 or i32, got ${idx.dtype}.`,
    );
  }
}

/** An index along a dim of size `dim`, negative counting from the end, checked. */
function wrapIndex(i: number, dim: number, what: string): number {
  const w = i < 0 ? i + dim : i;
  if (w < 0 || w >= dim) throw new Error(`reference ${what}: index ${i} out of range ${dim}`);
  return w;
}

function reductionOf(attrs: Attrs): 'none' | 'add' {
  const r = attrs.reduction;
  const v = r && 'string' in r ? r.string : 'none';
  if (v !== 'none' && v !== 'add') {
    throw new RuntimeError('GRAPH_ATTR', `Scatter reduction "${v}" is not supported (none, add).`);
  }
  return v;
}

/** Flat offset into `shape` of the element `indices`' flat element `i` addresses along `axis`. */
function elementOffset(
  shape: readonly number[],
  idxShape: readonly number[],
  i: number,
  axis: number,
  index: number,
): number {
  const idxStrides = strides(idxShape);
  const st = strides(shape);
  let o = 0;
  for (let d = 0; d < idxShape.length; d++) {
    const c = d === axis ? index : Math.floor(i / idxStrides[d]) % idxShape[d];
    o += c * st[d];
  }
  return o;
}

export const gatherElements: OpDef = {
  domain: '',
  infer([x, indices], attrs, where) {
    const data = need(x, `${where} data`);
    const idx = need(indices, `${where} indices`);
    checkIndices(idx, where);
    normAxis(attrInt(attrs, 'axis', 0), data.shape.length, where);
    return [{ dtype: data.dtype, shape: idx.shape }];
  },
  reference([x, indices], attrs) {
    const data = need(x, 'data');
    const idx = need(indices, 'indices');
    const axis = normAxis(attrInt(attrs, 'axis', 0), data.shape.length, 'GatherElements');
    const out = new Float64Array(idx.data.length);
    for (let i = 0; i < out.length; i++) {
      const at = wrapIndex(idx.data[i], data.shape[axis], 'GatherElements');
      out[i] = data.data[elementOffset(data.shape, idx.shape, i, axis, at)];
    }
    return [{ dtype: data.dtype, shape: idx.shape, data: out }];
  },
};

export const scatterElements: OpDef = {
  domain: '',
  infer([x, indices, updates], attrs, where) {
    const data = need(x, `${where} data`);
    checkIndices(need(indices, `${where} indices`), where);
    need(updates, `${where} updates`);
    normAxis(attrInt(attrs, 'axis', 0), data.shape.length, where);
    reductionOf(attrs);
    return [{ dtype: data.dtype, shape: data.shape }];
  },
  reference([x, indices, updates], attrs) {
    const data = need(x, 'data');
    const idx = need(indices, 'indices');
    const upd = need(updates, 'updates');
    const axis = normAxis(attrInt(attrs, 'axis', 0), data.shape.length, 'ScatterElements');
    const add = reductionOf(attrs) === 'add';
    const out = Float64Array.from(data.data);
    for (let i = 0; i < idx.data.length; i++) {
      const at = wrapIndex(idx.data[i], data.shape[axis], 'ScatterElements');
      const o = elementOffset(data.shape, idx.shape, i, axis, at);
      out[o] = add ? out[o] + upd.data[i] : upd.data[i];
    }
    return [{ dtype: data.dtype, shape: data.shape, data: out }];
  },
};

/** GatherND/ScatterND (batch_dims = 0): indices [..., q] address slices data[i0, ..., iq-1, ...]. */
function ndSlices(data: RefTensor, idx: RefTensor, what: string) {
  const q = idx.shape[idx.shape.length - 1];
  const sliceSize = numel(data.shape.slice(q));
  const st = strides(data.shape);
  const count = idx.data.length / q;
  const offsets = new Array<number>(count);
  for (let n = 0; n < count; n++) {
    let o = 0;
    for (let d = 0; d < q; d++) o += wrapIndex(idx.data[n * q + d], data.shape[d], what) * st[d];
    offsets[n] = o;
  }
  return { q, sliceSize, offsets };
}

function ndShape<T extends Dim>(data: readonly T[], idx: readonly Dim[], where: string): Dim[] {
  const q = idx[idx.length - 1];
  if (typeof q !== 'number' || q > data.length) {
    throw new RuntimeError(
      'GRAPH_SHAPE',
      `${where}: the last dim of indices must be a size <= ${data.length}.`,
    );
  }
  return [...idx.slice(0, -1), ...data.slice(q)];
}

export const gatherND: OpDef = {
  domain: '',
  infer([x, indices], attrs, where) {
    const data = need(x, `${where} data`);
    const idx = need(indices, `${where} indices`);
    if (idx.dtype !== 'i64')
      throw new RuntimeError('GRAPH_DTYPE', `${where}: indices must be i64.`);
    if (attrInt(attrs, 'batch_dims', 0) !== 0) {
      throw new RuntimeError('GRAPH_ATTR', `${where}: only batch_dims = 0.`);
    }
    return [{ dtype: data.dtype, shape: ndShape(data.shape, idx.shape, where) }];
  },
  reference([x, indices]) {
    const data = need(x, 'data');
    const idx = need(indices, 'indices');
    const { sliceSize, offsets } = ndSlices(data, idx, 'GatherND');
    const out = new Float64Array(offsets.length * sliceSize);
    offsets.forEach((o, n) => {
      out.set(data.data.subarray(o, o + sliceSize), n * sliceSize);
    });
    return [
      {
        dtype: data.dtype,
        shape: ndShape(data.shape, idx.shape, 'GatherND') as number[],
        data: out,
      },
    ];
  },
};

export const scatterND: OpDef = {
  domain: '',
  infer([x, indices, updates], attrs, where) {
    const data = need(x, `${where} data`);
    const idx = need(indices, `${where} indices`);
    if (idx.dtype !== 'i64')
      throw new RuntimeError('GRAPH_DTYPE', `${where}: indices must be i64.`);
    const upd = need(updates, `${where} updates`);
    const want = ndShape(data.shape, idx.shape, where);
    if (want.length !== upd.shape.length) {
      throw new RuntimeError(
        'GRAPH_SHAPE',
        `${where}: updates are [${upd.shape.join(', ')}], expected [${want.join(', ')}].`,
      );
    }
    reductionOf(attrs);
    return [{ dtype: data.dtype, shape: data.shape }];
  },
  reference([x, indices, updates], attrs) {
    const data = need(x, 'data');
    const upd = need(updates, 'updates');
    const { sliceSize, offsets } = ndSlices(data, need(indices, 'indices'), 'ScatterND');
    const add = reductionOf(attrs) === 'add';
    const out = Float64Array.from(data.data);
    offsets.forEach((o, n) => {
      for (let j = 0; j < sliceSize; j++) {
        const u = upd.data[n * sliceSize + j];
        out[o + j] = add ? out[o + j] + u : u;
      }
    });
    return [{ dtype: data.dtype, shape: data.shape, data: out }];
  },
};

export const gatherElementsVjp: VjpRule = (g, { inputs: [x, idx], grads: [dy], attrs }) => {
  const data = need(x, 'data');
  const axis = attrInt(attrs, 'axis', 0);
  return [
    op.scatterElements(g, zerosLike(g, data), need(idx, 'indices'), need(dy, 'dy'), axis, 'add'),
  ];
};

/** Overwritten elements of data get no gradient; with duplicate indices the last write wins. */
export const scatterElementsVjp: VjpRule = (
  g,
  { inputs: [, idx, upd], grads: [dy], attrs, needs },
) => {
  const d = need(dy, 'dy');
  const indices = need(idx, 'indices');
  const axis = attrInt(attrs, 'axis', 0);
  const dData = !needs[0]
    ? undefined
    : reductionOf(attrs) === 'add'
      ? d
      : op.scatterElements(g, d, indices, zerosLike(g, need(upd, 'updates')), axis);
  return [dData, undefined, needs[2] ? op.gatherElements(g, d, indices, axis) : undefined];
};

export const gatherNDVjp: VjpRule = (g, { inputs: [x, idx], grads: [dy] }) => [
  op.scatterND(g, zerosLike(g, need(x, 'data')), need(idx, 'indices'), need(dy, 'dy'), 'add'),
];

export const scatterNDVjp: VjpRule = (g, { inputs: [, idx, upd], grads: [dy], attrs, needs }) => {
  const d = need(dy, 'dy');
  const indices = need(idx, 'indices');
  const dData = !needs[0]
    ? undefined
    : reductionOf(attrs) === 'add'
      ? d
      : op.scatterND(g, d, indices, zerosLike(g, need(upd, 'updates')));
  return [dData, undefined, needs[2] ? op.gatherND(g, d, indices) : undefined];
};

/**
 * Gather's backward is a scatter-add of dy into zeros shaped like data (embedding rows used by
 * several tokens accumulate). Along axis 0 one ScatterND; along another axis the gathered axis is
 * moved to the front and back.
 */
export const gatherVjp: VjpRule = (g, { inputs: [x, idx], grads: [dy], attrs }) => {
  const data = need(x, 'data');
  const indices = need(idx, 'indices');
  const d = need(dy, 'dy');
  const rank = data.shape.length;
  const axis = normAxis(attrInt(attrs, 'axis', 0), rank, 'Gather');
  const q = indices.shape.length;
  const ndIndices = op.unsqueeze(g, indices, [-1]);
  if (axis === 0) return [op.scatterND(g, zerosLike(g, data), ndIndices, d, 'add')];
  const dyPerm = [
    ...Array.from({ length: q }, (_, i) => axis + i),
    ...Array.from({ length: axis }, (_, i) => i),
    ...Array.from({ length: rank - axis - 1 }, (_, i) => axis + q + i),
  ];
  const dataPerm = [axis, ...Array.from({ length: rank }, (_, i) => i).filter((i) => i !== axis)];
  const inverse = dataPerm.map((_, i) => dataPerm.indexOf(i));
  const moved = op.transpose(g, data, dataPerm);
  const scattered = op.scatterND(
    g,
    zerosLike(g, moved),
    ndIndices,
    op.transpose(g, d, dyPerm),
    'add',
  );
  return [op.transpose(g, scattered, inverse)];
};
