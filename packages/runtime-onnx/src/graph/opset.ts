import { type DType, numel, strides } from '@lora/core';
import { RuntimeError } from '../errors.js';
import type { GraphBuilder } from './builder.js';
import { dtypeOfElemType, isFloat } from './dtypes.js';
import * as op from './ops.js';
import {
  broadcastConcrete,
  broadcastStrides,
  castValue,
  forEachBroadcast,
  mapBroadcast,
  permuteCopy,
  ref,
} from './refmath.js';
import { broadcastShapes, knownSize, normAxis, unknownDim } from './shape.js';
import type { Attr, Attrs, Dim, RefTensor, Value } from './types.js';
import { reshapeLike, scalarLike, shapeValue, sumToShape, zerosLike } from './vjp-helpers.js';

/** The ONNX opset version of the default domain the builder emits (ReduceMean keeps its `axes` attribute). */
export const OPSET_VERSION = 17;
export const MS_DOMAIN = 'com.microsoft';

/** What shape inference sees of an input: dtype, shape, and the values when it is a small constant. */
export interface InferInput {
  readonly dtype: DType;
  readonly shape: readonly Dim[];
  readonly constant?: RefTensor;
  /** For the output of a `Shape` node: the shape it holds, symbols included. */
  readonly shapeValue?: readonly Dim[];
}

export interface InferOutput {
  readonly dtype: DType;
  readonly shape: readonly Dim[];
}

/** What a backward rule sees of one node (or of one region, see `GraphBuilder.region`). */
export interface VjpContext {
  /** The node's (or region's) name, for error messages and per-node dispatch in overrides. */
  readonly name: string;
  /** The forward inputs (`undefined` for omitted optional inputs). */
  readonly inputs: readonly (Value | undefined)[];
  readonly outputs: readonly Value[];
  /** d(loss)/d(output) per output; `undefined` for outputs the loss does not depend on. */
  readonly grads: readonly (Value | undefined)[];
  readonly attrs: Attrs;
  /**
   * Which inputs need a gradient (float inputs that depend on the differentiated values). A rule
   * should build nothing for the others: every node of a session's graph runs.
   */
  readonly needs: readonly boolean[];
  /** Forward values a region recorded for its rule (empty for single nodes). */
  readonly saved: readonly Value[];
}

/**
 * A vector-Jacobian product as builder code: given d(loss)/d(outputs), emit nodes computing
 * d(loss)/d(inputs) and return one value per input (`undefined` where `needs` is false). Each
 * returned gradient must have its input's shape (rules undo broadcasting with `sumToShape`).
 */
export type VjpRule = (g: GraphBuilder, ctx: VjpContext) => readonly (Value | undefined)[];

/**
 * One operator: its domain, its shape/dtype inference, a float64 reference implementation, and
 * its backward rule: `vjp`, or `nonDifferentiable: true` for ops whose outputs carry no gradient
 * (Shape, Range, comparisons). A test fails when an entry has neither.
 */
export interface OpDef {
  readonly domain: string;
  infer(inputs: readonly (InferInput | undefined)[], attrs: Attrs, where: string): InferOutput[];
  reference(inputs: readonly (RefTensor | undefined)[], attrs: Attrs): RefTensor[];
  readonly vjp?: VjpRule;
  readonly nonDifferentiable?: true;
}

/** Adds a backward rule (or the non-differentiable mark) to an op definition. */
function withVjp(def: OpDef, vjp: VjpRule): OpDef {
  return { ...def, vjp };
}
function nonDiff(def: OpDef): OpDef {
  return { ...def, nonDifferentiable: true };
}

export function attrInt(attrs: Attrs, name: string, fallback?: number): number {
  const a = attrs[name] as Attr | undefined;
  if (a && 'int' in a) return a.int;
  if (fallback !== undefined) return fallback;
  throw new RuntimeError('GRAPH_ATTR', `Missing integer attribute "${name}".`, { name });
}

export function attrInts(attrs: Attrs, name: string): readonly number[] | undefined {
  const a = attrs[name] as Attr | undefined;
  return a && 'ints' in a ? a.ints : undefined;
}

function need<T>(x: T | undefined, what: string): T {
  if (x === undefined) throw new RuntimeError('GRAPH_INVALID', `${what} is required.`);
  return x;
}

/** The integer values of a constant input (Reshape's shape, Slice's starts, Unsqueeze's axes). */
function constInts(input: InferInput | RefTensor | undefined, what: string): number[] {
  const c = input && 'data' in input ? input : input?.constant;
  if (!c) {
    throw new RuntimeError(
      'GRAPH_INVALID',
      `${what} must be a constant (an initializer) for the builder.`,
      { what },
    );
  }
  return Array.from(c.data);
}

/** A shape given as an input (Reshape, Expand): a constant's values, or what a `Shape` node holds. */
function shapeDims(input: InferInput | undefined, what: string): Dim[] {
  if (input?.shapeValue) return [...input.shapeValue];
  return constInts(input, what);
}

// ---------- elementwise ----------

function binary(fn: (a: number, b: number) => number, outDType?: DType): OpDef {
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

function unary(fn: (a: number) => number): OpDef {
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

// ---------- MatMul ----------

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

// ---------- 4-bit contrib ops ----------

/** bitsandbytes NF4 code table (QLoRA), index = nibble. */
const NF4_TABLE = [
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
  0.7229568362236023, 1.0,
];
/** bitsandbytes FP4 (E2M1 variant) code table, index = nibble, bit 3 the sign. */
const FP4_TABLE = [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3].map((v) =>
  Math.fround(v / 12),
);

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
const matMulNBits: OpDef = {
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
const matMulBnb4: OpDef = {
  domain: MS_DOMAIN,
  infer: contribMatMulInfer,
  reference([a, b, absmax], attrs) {
    const K = attrInt(attrs, 'K');
    const N = attrInt(attrs, 'N');
    const bs = attrInt(attrs, 'block_size');
    const table = attrInt(attrs, 'quant_type') === 1 ? NF4_TABLE : FP4_TABLE;
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

// ---------- shape ops ----------

const reshape: OpDef = {
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

const transpose: OpDef = {
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

const unsqueeze: OpDef = {
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

const concat: OpDef = {
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

const slice: OpDef = {
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

const gather: OpDef = {
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

const shapeOp: OpDef = {
  domain: '',
  infer([x], _attrs, where) {
    return [{ dtype: 'i64', shape: [need(x, `${where} input`).shape.length] }];
  },
  reference([x]) {
    const input = need(x, 'data');
    return [ref('i64', [input.shape.length], input.shape)];
  },
};

const range: OpDef = {
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

const cast: OpDef = {
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

// ---------- reductions ----------

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

function reduction(kind: 'mean' | 'sum' | 'max', axesAsInput: boolean): OpDef {
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

const reduceSumVjp: VjpRule = (g, { inputs: [x, axesIn], grads: [dy], attrs }) => {
  const input = need(x, 'ReduceSum input');
  const axes = vjpAxes(g, input, [x, axesIn], attrs);
  return [op.expand(g, keptGrad(g, need(dy, 'dy'), axes, attrs), shapeValue(g, input))];
};

/** dx = expand(dy / count); count from the known sizes, and from a Shape node for symbolic dims. */
const reduceMeanVjp: VjpRule = (g, { inputs: [x], grads: [dy], attrs }) => {
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
const reduceMaxVjp: VjpRule = (g, { inputs: [x], outputs: [y], grads: [dy], attrs }) => {
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

function softmaxOp(log: boolean): OpDef {
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
const softmaxVjp: VjpRule = (g, { outputs: [y], grads: [dy], attrs }) => {
  const d = need(dy, 'dy');
  const axis = attrInt(attrs, 'axis', -1);
  return [op.mul(g, y, op.sub(g, d, op.reduceSum(g, op.mul(g, d, y), [axis])))];
};

/** dx = dy - softmax * sum(dy) along the axis (softmax = exp of the output). */
const logSoftmaxVjp: VjpRule = (g, { outputs: [y], grads: [dy], attrs }) => {
  const d = need(dy, 'dy');
  const axis = attrInt(attrs, 'axis', -1);
  return [op.sub(g, d, op.mul(g, op.exp(g, y), op.reduceSum(g, d, [axis])))];
};

// ---------- broadcasting, selection, padding ----------

const expand: OpDef = {
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

const squeeze: OpDef = {
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

const whereOp: OpDef = {
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

const pad: OpDef = {
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
const padVjp: VjpRule = (g, { inputs: [x, pads], grads: [dy] }) => {
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

// ---------- element gathers and scatters ----------

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

const gatherElements: OpDef = {
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

const scatterElements: OpDef = {
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

const gatherND: OpDef = {
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

const scatterND: OpDef = {
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

const gatherElementsVjp: VjpRule = (g, { inputs: [x, idx], grads: [dy], attrs }) => {
  const data = need(x, 'data');
  const axis = attrInt(attrs, 'axis', 0);
  return [
    op.scatterElements(g, zerosLike(g, data), need(idx, 'indices'), need(dy, 'dy'), axis, 'add'),
  ];
};

/** Overwritten elements of data get no gradient; with duplicate indices the last write wins. */
const scatterElementsVjp: VjpRule = (g, { inputs: [, idx, upd], grads: [dy], attrs, needs }) => {
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

const gatherNDVjp: VjpRule = (g, { inputs: [x, idx], grads: [dy] }) => [
  op.scatterND(g, zerosLike(g, need(x, 'data')), need(idx, 'indices'), need(dy, 'dy'), 'add'),
];

const scatterNDVjp: VjpRule = (g, { inputs: [, idx, upd], grads: [dy], attrs, needs }) => {
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
const gatherVjp: VjpRule = (g, { inputs: [x, idx], grads: [dy], attrs }) => {
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

// ---------- FusedMatMul and the matmul backward ----------

function trans(shape: readonly Dim[], t: boolean): Dim[] {
  if (!t) return [...shape];
  const s = [...shape];
  [s[s.length - 2], s[s.length - 1]] = [s[s.length - 1], s[s.length - 2]];
  return s;
}

function refTransposeLast(x: RefTensor): RefTensor {
  const r = x.shape.length;
  const perm = x.shape.map((_, i) => (i === r - 2 ? r - 1 : i === r - 1 ? r - 2 : i));
  return OPS.Transpose.reference([x], { perm: { ints: perm } })[0];
}

function attrFloat(attrs: Attrs, name: string, fallback: number): number {
  const a = attrs[name] as Attr | undefined;
  return a && 'float' in a ? a.float : fallback;
}

const fusedMatMul: OpDef = {
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

const matmulVjp: VjpRule = (g, { inputs: [a, b], grads: [dy], needs }) =>
  matmulBackward(g, need(a, 'A'), need(b, 'B'), need(dy, 'dy'), needs, {});

const fusedMatMulVjp: VjpRule = (g, { inputs: [a, b], grads: [dy], needs, attrs }) =>
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
function frozenWeightVjp(opName: string): VjpRule {
  return (_g, { name }) => {
    throw new RuntimeError(
      'GRAPH_GRADIENT',
      `${opName} node "${name}": its input needs a gradient, which requires the dequantized weight. Pass a rule as gradients(..., { overrides: { ${opName}: rule } }) that builds dA = dY · deq(W).`,
      { node: name },
    );
  };
}

// ---------- rules of the elementwise and structural ops ----------

const scalarOf = (g: GraphBuilder, like: Value, v: number) => scalarLike(g, like, v);

const sliceVjp: VjpRule = (g, { inputs: [x, ...rest], grads: [dy], name }) => {
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

const concatVjp: VjpRule = (g, { inputs, grads: [dy], attrs, needs, name }) => {
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

const transposeVjp: VjpRule = (g, { inputs: [x], grads: [dy], attrs }) => {
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

const reshapeVjp: VjpRule = (g, { inputs: [x], grads: [dy] }) => [
  reshapeLike(g, need(dy, 'dy'), need(x, 'data')),
];

/** Float-to-float casts pass the gradient back in the input's dtype; casts to or from integers carry none. */
const castVjp: VjpRule = (g, { inputs: [x], outputs: [y], grads: [dy] }) => {
  const input = need(x, 'input');
  if (!isFloat(input.dtype) || !isFloat(y.dtype)) return [undefined];
  return [input.dtype === y.dtype ? need(dy, 'dy') : op.cast(g, need(dy, 'dy'), input.dtype)];
};

const whereVjp: VjpRule = (g, { inputs: [c, x, y], grads: [dy], needs }) => {
  const cond = need(c, 'condition');
  const d = need(dy, 'dy');
  const zero = scalarOf(g, d, 0);
  return [
    undefined,
    needs[1] ? sumToShape(g, op.where(g, cond, d, zero), need(x, 'X').shape) : undefined,
    needs[2] ? sumToShape(g, op.where(g, cond, zero, d), need(y, 'Y').shape) : undefined,
  ];
};

const expandVjp: VjpRule = (g, { inputs: [x], grads: [dy] }) => [
  sumToShape(g, need(dy, 'dy'), need(x, 'input').shape),
];

/** Rule for a binary elementwise op from the two partial products (before un-broadcasting). */
function binaryVjp(
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
function unaryVjp(rule: (g: GraphBuilder, x: Value, y: Value, dy: Value) => Value): VjpRule {
  return (g, { inputs: [x], outputs: [y], grads: [dy] }) => [
    rule(g, need(x, 'input'), y, need(dy, 'dy')),
  ];
}

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
    unaryVjp((g, _x, y, dy) => op.div(g, op.mul(g, dy, scalarOf(g, dy, 0.5)), y)),
  ),
  Reciprocal: withVjp(
    unary((a) => 1 / a),
    unaryVjp((g, _x, y, dy) => op.neg(g, op.mul(g, dy, op.mul(g, y, y)))),
  ),
  Sigmoid: withVjp(
    unary((a) => 1 / (1 + Math.exp(-a))),
    unaryVjp((g, _x, y, dy) => op.mul(g, dy, op.mul(g, y, op.sub(g, scalarOf(g, y, 1), y)))),
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
  MatMul: withVjp(
    {
      domain: '',
      infer([a, b], _attrs, where) {
        const x = need(a, `${where} A`);
        const y = need(b, `${where} B`);
        if (x.dtype !== y.dtype)
          throw new RuntimeError(
            'GRAPH_DTYPE',
            `${where}: dtypes differ (${x.dtype}, ${y.dtype}).`,
          );
        return [{ dtype: x.dtype, shape: matmulShape(x.shape, y.shape, where) }];
      },
      reference([a, b]) {
        return [refMatMul(need(a, 'A'), need(b, 'B'))];
      },
    },
    matmulVjp,
  ),
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
