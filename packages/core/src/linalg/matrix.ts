import { toFloat32Array } from '../convert.js';
import { CoreError } from '../errors.js';
import { type Tensor, tensor } from '../tensor.js';

/**
 * Matrices in `@lora/core` linear algebra are plain 2-D row-major {@link Tensor}s:
 * element (i, j) of an `[rows, cols]` matrix is `data[i * cols + j]`.
 *
 * Inputs may be f64, f32, f16 or bf16 (f16/bf16 are decoded to float32 first). All arithmetic
 * runs in float64 (JavaScript numbers); results are f64 unless a function says otherwise.
 */
export type Matrix = Tensor<'f64' | 'f32'>;

/** Float values a matrix kernel can read directly. */
export type FloatValues = Float64Array | Float32Array;

/** Output precision of a linear algebra result. */
export type MatrixDType = 'f64' | 'f32';

/** `[rows, cols]` of a 2-D tensor, or a SHAPE_MISMATCH error naming `what`. */
export function matrixShape(t: Tensor, what: string): [rows: number, cols: number] {
  if (t.shape.length !== 2) {
    throw new CoreError(
      'SHAPE_MISMATCH',
      `${what}: expected a 2-D matrix [rows, cols], got shape [${t.shape.join(', ')}].`,
      { what, shape: t.shape },
    );
  }
  return [t.shape[0], t.shape[1]];
}

/** The values of a float matrix as float32/float64 (a view for f32/f64, decoded for f16/bf16). */
export function matrixValues(t: Tensor, what: string): FloatValues {
  switch (t.dtype) {
    case 'f64':
      return t.data as Float64Array;
    case 'f32':
      return t.data as Float32Array;
    case 'f16':
    case 'bf16':
      return toFloat32Array(t);
    default:
      throw new CoreError(
        'DTYPE_UNSUPPORTED',
        `${what}: linear algebra needs a float tensor (f64, f32, f16, bf16), got ${t.dtype}.`,
        { what, dtype: t.dtype },
      );
  }
}

/** A float64 copy of a matrix's values (safe to modify). */
export function matrixCopyF64(t: Tensor, what: string): Float64Array {
  return Float64Array.from(matrixValues(t, what));
}

/** Wraps float64 values as an `[rows, cols]` matrix of the requested precision. */
export function toMatrix(
  values: Float64Array,
  rows: number,
  cols: number,
  dtype: MatrixDType = 'f64',
): Matrix {
  return dtype === 'f64'
    ? tensor('f64', [rows, cols], values)
    : tensor('f32', [rows, cols], Float32Array.from(values));
}

/** The `n x n` identity. */
export function identity(n: number, dtype: MatrixDType = 'f64'): Matrix {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) out[i * n + i] = 1;
  return toMatrix(out, n, n, dtype);
}

/** A square matrix with `values` on the diagonal. */
export function diagonal(values: ArrayLike<number>, dtype: MatrixDType = 'f64'): Matrix {
  const n = values.length;
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) out[i * n + i] = values[i];
  return toMatrix(out, n, n, dtype);
}

/** Frobenius norm sqrt(sum of squares), accumulated in float64. */
export function frobeniusNorm(t: Tensor): number {
  const v = matrixValues(t, 'frobeniusNorm');
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += v[i] * v[i];
  return Math.sqrt(sum);
}

/** Largest absolute elementwise difference of two same-shape float tensors. */
export function maxAbsDiff(a: Tensor, b: Tensor): number {
  const x = matrixValues(a, 'maxAbsDiff(a)');
  const y = matrixValues(b, 'maxAbsDiff(b)');
  if (x.length !== y.length) {
    throw new CoreError(
      'SHAPE_MISMATCH',
      `maxAbsDiff: shapes [${a.shape.join(', ')}] and [${b.shape.join(', ')}] differ.`,
      { a: a.shape, b: b.shape },
    );
  }
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    const d = Math.abs(x[i] - y[i]);
    if (d > m || Number.isNaN(d)) m = d;
  }
  return m;
}

/** Throws MATRIX_NOT_FINITE naming `what` and the first bad index if any value is NaN or infinite. */
export function assertFiniteMatrix(values: FloatValues, cols: number, what: string): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) {
      const row = Math.floor(i / cols);
      throw new CoreError(
        'MATRIX_NOT_FINITE',
        `${what}: element [${row}, ${i - row * cols}] is ${values[i]}; the decomposition needs finite values.`,
        { what, row, col: i - row * cols },
      );
    }
  }
}
