import { type AnyTypedArray, DTYPES, type DType, type TypedArrayOf } from './dtype.js';
import { CoreError } from './errors.js';

/**
 * A contiguous row-major tensor: a dtype, a shape and a flat typed array of exactly
 * `product(shape)` elements. Plain data, no methods, so tensors cross worker and file
 * boundaries unchanged.
 */
export interface Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly data: TypedArrayOf[D];
}

/** Number of elements of a shape (1 for a scalar `[]`). Throws on negative or fractional dims. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new CoreError(
        'SHAPE_INVALID',
        `Invalid shape [${shape.join(', ')}]: dimensions must be non-negative integers.`,
        {
          shape,
        },
      );
    }
    n *= d;
  }
  if (!Number.isSafeInteger(n)) {
    throw new CoreError(
      'SHAPE_TOO_LARGE',
      `Shape [${shape.join(', ')}] has more elements than can be addressed.`,
      {
        shape,
      },
    );
  }
  return n;
}

/** Row-major strides (in elements) of a shape. */
export function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** Creates a tensor; with `data`, checks that its type and length fit the dtype and shape. */
export function tensor<D extends DType>(
  dtype: D,
  shape: readonly number[],
  data?: TypedArrayOf[D],
): Tensor<D> {
  const n = numel(shape);
  if (data === undefined) {
    return { dtype, shape: [...shape], data: DTYPES[dtype].create(n) as TypedArrayOf[D] };
  }
  const expected = DTYPES[dtype].create(0).constructor;
  if (data.constructor !== expected) {
    throw new CoreError(
      'TENSOR_DATA_TYPE',
      `A ${dtype} tensor needs a ${expected.name}, got a ${data.constructor.name}.`,
      { dtype },
    );
  }
  if (data.length !== n) {
    throw new CoreError(
      'SHAPE_MISMATCH',
      `Shape [${shape.join(', ')}] needs ${n} elements, the data has ${data.length}.`,
      { shape, length: data.length },
    );
  }
  return { dtype, shape: [...shape], data };
}

/** Shorthand for a float32 tensor. */
export function f32(
  shape: readonly number[],
  data?: Float32Array | readonly number[],
): Tensor<'f32'> {
  return tensor(
    'f32',
    shape,
    data === undefined || data instanceof Float32Array ? data : Float32Array.from(data),
  );
}

/** Shorthand for a float64 tensor. */
export function f64(
  shape: readonly number[],
  data?: Float64Array | readonly number[],
): Tensor<'f64'> {
  return tensor(
    'f64',
    shape,
    data === undefined || data instanceof Float64Array ? data : Float64Array.from(data),
  );
}

/** Same data, new shape (no copy). One dimension may be -1. */
export function reshape<D extends DType>(t: Tensor<D>, shape: readonly number[]): Tensor<D> {
  const resolved = [...shape];
  const free = resolved.indexOf(-1);
  if (free >= 0) {
    const rest = numel(resolved.filter((_, i) => i !== free));
    resolved[free] = rest === 0 ? 0 : t.data.length / rest;
  }
  if (numel(resolved) !== t.data.length) {
    throw new CoreError(
      'SHAPE_MISMATCH',
      `Cannot reshape [${t.shape.join(', ')}] to [${shape.join(', ')}]: element counts differ.`,
      { from: t.shape, to: shape },
    );
  }
  return { dtype: t.dtype, shape: resolved, data: t.data };
}

/** Throws a SHAPE_MISMATCH error naming `what` unless `t.shape` equals `expected`. */
export function assertShape(
  t: { shape: readonly number[] },
  expected: readonly number[],
  what: string,
): void {
  if (!sameShape(t.shape, expected)) {
    throw new CoreError(
      'SHAPE_MISMATCH',
      `${what}: expected shape [${expected.join(', ')}], got [${t.shape.join(', ')}].`,
      { what, expected, actual: t.shape },
    );
  }
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** The bytes behind a tensor's data (a view, no copy). */
export function tensorBytes(t: { data: AnyTypedArray }): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}
