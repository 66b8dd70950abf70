import { type DType, numel, strides } from '@lora/core';
import { RuntimeError } from '../errors.js';
import { dtypeOfElemType } from './dtypes.js';
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
import type { Attr, Attrs, Dim, RefTensor } from './types.js';

/** The ONNX opset version of the default domain the builder emits (ReduceMean keeps its `axes` attribute). */
export const OPSET_VERSION = 17;
export const MS_DOMAIN = 'com.microsoft';

/** What shape inference sees of an input: dtype, shape, and the values when it is a small constant. */
export interface InferInput {
  readonly dtype: DType;
  readonly shape: readonly Dim[];
  readonly constant?: RefTensor;
}

export interface InferOutput {
  readonly dtype: DType;
  readonly shape: readonly Dim[];
}

/**
 * One operator: its domain, its shape/dtype inference, and a float64 reference implementation.
 * The set is small on purpose: every graph the package builds uses only these, so a reverse-mode
 * pass later needs one backward rule per entry.
 */
export interface OpDef {
  readonly domain: string;
  infer(inputs: readonly (InferInput | undefined)[], attrs: Attrs, where: string): InferOutput[];
  reference(inputs: readonly (RefTensor | undefined)[], attrs: Attrs): RefTensor[];
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
    const target = constInts(shapeInput, `${where} shape`);
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

const reduceMean: OpDef = {
  domain: '',
  infer([x], attrs, where) {
    const input = need(x, `${where} input`);
    const rank = input.shape.length;
    const axes = (attrInts(attrs, 'axes') ?? input.shape.map((_, i) => i)).map((a) =>
      normAxis(a, rank, where),
    );
    const keep = attrInt(attrs, 'keepdims', 1) === 1;
    const shape: Dim[] = [];
    input.shape.forEach((d, i) => {
      if (!axes.includes(i)) shape.push(d);
      else if (keep) shape.push(1);
    });
    return [{ dtype: input.dtype, shape }];
  },
  reference([x], attrs) {
    const input = need(x, 'data');
    const rank = input.shape.length;
    const axes = (attrInts(attrs, 'axes') ?? input.shape.map((_, i) => i)).map((a) =>
      normAxis(a, rank, 'ReduceMean'),
    );
    const keep = attrInt(attrs, 'keepdims', 1) === 1;
    const keptShape = input.shape.map((d, i) => (axes.includes(i) ? 1 : d));
    const sums = new Float64Array(numel(keptShape));
    const st = broadcastStrides(keptShape, input.shape);
    forEachBroadcast(input.shape, [st], (i, [o]) => {
      sums[o] += input.data[i];
    });
    const count = axes.reduce((n, a) => n * input.shape[a], 1);
    const shape = keep ? keptShape : input.shape.filter((_, i) => !axes.includes(i));
    return [{ dtype: input.dtype, shape, data: sums.map((s) => s / count) }];
  },
};

const softmax: OpDef = {
  domain: '',
  infer([x], _attrs, where) {
    const input = need(x, `${where} input`);
    return [{ dtype: input.dtype, shape: input.shape }];
  },
  reference([x], attrs) {
    const input = need(x, 'input');
    const axis = normAxis(attrInt(attrs, 'axis', -1), input.shape.length, 'Softmax');
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
        for (let j = 0; j < dim; j++)
          out[base + j * inner] = Math.exp(input.data[base + j * inner] - max) / sum;
      }
    }
    return [{ dtype: input.dtype, shape: input.shape, data: out }];
  },
};

/** Every operator the builder can emit, by ONNX op type. */
export const OPS: Readonly<Record<string, OpDef>> = {
  Add: binary((a, b) => a + b),
  Sub: binary((a, b) => a - b),
  Mul: binary((a, b) => a * b),
  Div: binary((a, b) => a / b),
  LessOrEqual: binary((a, b) => (a <= b ? 1 : 0), 'bool'),
  Neg: unary((a) => -a),
  Sqrt: unary(Math.sqrt),
  Reciprocal: unary((a) => 1 / a),
  Sigmoid: unary((a) => 1 / (1 + Math.exp(-a))),
  Cos: unary(Math.cos),
  Sin: unary(Math.sin),
  Identity: unary((a) => a),
  Cast: cast,
  MatMul: {
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
  },
  Gather: gather,
  Reshape: reshape,
  Transpose: transpose,
  Unsqueeze: unsqueeze,
  Concat: concat,
  Slice: slice,
  Shape: shapeOp,
  Range: range,
  ReduceMean: reduceMean,
  Softmax: softmax,
  MatMulNBits: matMulNBits,
  MatMulBnb4: matMulBnb4,
};
