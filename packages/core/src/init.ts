import { CoreError } from './errors.js';
import { type MatrixDType, toMatrix } from './linalg/matrix.js';
import { qr } from './linalg/qr.js';
import type { Rng } from './random.js';
import { numel, type Tensor, tensor } from './tensor.js';

/**
 * Weight initialisation with the formulas of `torch.nn.init` (same names for modes and
 * nonlinearities), drawing from a seeded {@link Rng} so results are reproducible everywhere.
 * Values are drawn in row-major element order. Results are f32 unless `dtype: 'f64'` is asked.
 *
 * Fans follow torch: for a weight `[out, in, ...receptive]`, fan_in = in * prod(receptive) and
 * fan_out = out * prod(receptive); so a Linear weight `[out, in]` has fan_in = in.
 */
export type Nonlinearity =
  | 'linear'
  | 'conv1d'
  | 'conv2d'
  | 'conv3d'
  | 'conv_transpose1d'
  | 'conv_transpose2d'
  | 'conv_transpose3d'
  | 'sigmoid'
  | 'tanh'
  | 'relu'
  | 'leaky_relu'
  | 'selu';

/** `fan_in` or `fan_out`: which fan the variance is preserved for (forward or backward pass). */
export type FanMode = 'fan_in' | 'fan_out';

/** Options shared by every initialiser. */
export interface InitOptions {
  /** Element type of the result (default f32). */
  readonly dtype?: MatrixDType;
}

/** Options of the Kaiming (He) initialisers. */
export interface KaimingOptions extends InitOptions {
  /** Negative slope of the leaky ReLU that follows (torch's `a`, default 0). */
  readonly a?: number;
  /** Default `fan_in`. */
  readonly mode?: FanMode;
  /** Default `leaky_relu` (with slope `a`), as in torch. */
  readonly nonlinearity?: Nonlinearity;
}

/** Options of the Xavier (Glorot) initialisers. */
export interface XavierOptions extends InitOptions {
  /** Default 1. */
  readonly gain?: number;
}

/**
 * The recommended gain for a nonlinearity (torch `calculate_gain`): 1 for linear, conv and
 * sigmoid; 5/3 for tanh; sqrt(2) for relu; sqrt(2 / (1 + slope^2)) for leaky_relu (slope =
 * `param`, default 0.01); 3/4 for selu.
 */
export function calculateGain(nonlinearity: Nonlinearity, param?: number): number {
  switch (nonlinearity) {
    case 'linear':
    case 'conv1d':
    case 'conv2d':
    case 'conv3d':
    case 'conv_transpose1d':
    case 'conv_transpose2d':
    case 'conv_transpose3d':
    case 'sigmoid':
      return 1;
    case 'tanh':
      return 5 / 3;
    case 'relu':
      return Math.SQRT2;
    case 'leaky_relu': {
      const slope = param ?? 0.01;
      if (!Number.isFinite(slope)) {
        throw new CoreError(
          'INIT_PARAMETER_INVALID',
          `calculateGain: leaky_relu slope must be finite, got ${slope}.`,
        );
      }
      return Math.sqrt(2 / (1 + slope * slope));
    }
    case 'selu':
      return 3 / 4;
    default:
      throw new CoreError(
        'INIT_NONLINEARITY_UNKNOWN',
        `calculateGain: unknown nonlinearity ${JSON.stringify(nonlinearity)}; use one of linear, conv1d, ` +
          'conv2d, conv3d, conv_transpose1d/2d/3d, sigmoid, tanh, relu, leaky_relu, selu.',
        { nonlinearity },
      );
  }
}

/** fan_in and fan_out of a weight shape (torch `_calculate_fan_in_and_fan_out`); needs >= 2 dims. */
export function computeFans(shape: readonly number[]): { fanIn: number; fanOut: number } {
  if (shape.length < 2) {
    throw new CoreError(
      'INIT_SHAPE_INVALID',
      `Fan in and fan out need a tensor with at least 2 dimensions, got shape [${shape.join(', ')}].`,
      { shape },
    );
  }
  const receptive = numel(shape.slice(2));
  return { fanIn: shape[1] * receptive, fanOut: shape[0] * receptive };
}

function fanFor(shape: readonly number[], mode: FanMode): number {
  const { fanIn, fanOut } = computeFans(shape);
  if (mode !== 'fan_in' && mode !== 'fan_out') {
    throw new CoreError(
      'INIT_MODE_INVALID',
      `Fan mode must be "fan_in" or "fan_out", got ${JSON.stringify(mode)}.`,
    );
  }
  const fan = mode === 'fan_in' ? fanIn : fanOut;
  if (fan === 0) {
    throw new CoreError(
      'INIT_SHAPE_INVALID',
      `Cannot initialise a tensor with zero ${mode} (shape [${shape.join(', ')}]).`,
      {
        shape,
      },
    );
  }
  return fan;
}

function kaimingStd(shape: readonly number[], options: KaimingOptions): number {
  const gain = calculateGain(options.nonlinearity ?? 'leaky_relu', options.a ?? 0);
  return gain / Math.sqrt(fanFor(shape, options.mode ?? 'fan_in'));
}

function floatTensor(
  shape: readonly number[],
  dtype: MatrixDType = 'f32',
): Tensor<'f32'> | Tensor<'f64'> {
  return dtype === 'f64' ? tensor('f64', shape) : tensor('f32', shape);
}

/** U(low, high), torch `uniform_`. */
export function initUniform(
  shape: readonly number[],
  rng: Rng,
  { low = 0, high = 1, dtype }: InitOptions & { low?: number; high?: number } = {},
): Tensor<'f32'> | Tensor<'f64'> {
  const t = floatTensor(shape, dtype);
  rng.fillUniform(t.data, low, high);
  return t;
}

/** N(mean, std^2), torch `normal_`. */
export function initNormal(
  shape: readonly number[],
  rng: Rng,
  { mean = 0, std = 1, dtype }: InitOptions & { mean?: number; std?: number } = {},
): Tensor<'f32'> | Tensor<'f64'> {
  const t = floatTensor(shape, dtype);
  rng.fillNormal(t.data, mean, std);
  return t;
}

/** All zeros, torch `zeros_`. */
export function initZeros(
  shape: readonly number[],
  { dtype }: InitOptions = {},
): Tensor<'f32'> | Tensor<'f64'> {
  return floatTensor(shape, dtype);
}

/**
 * Kaiming (He) uniform, torch `kaiming_uniform_`: U(-bound, bound) with
 * bound = gain * sqrt(3 / fan). With `a = sqrt(5)` (torch's Linear default, and LoRA's A)
 * gain = sqrt(2 / 6), so bound = 1 / sqrt(fan_in).
 */
export function initKaimingUniform(
  shape: readonly number[],
  rng: Rng,
  options: KaimingOptions = {},
): Tensor<'f32'> | Tensor<'f64'> {
  const bound = Math.sqrt(3) * kaimingStd(shape, options);
  return initUniform(shape, rng, { low: -bound, high: bound, dtype: options.dtype });
}

/** Kaiming (He) normal, torch `kaiming_normal_`: N(0, std^2) with std = gain / sqrt(fan). */
export function initKaimingNormal(
  shape: readonly number[],
  rng: Rng,
  options: KaimingOptions = {},
): Tensor<'f32'> | Tensor<'f64'> {
  return initNormal(shape, rng, { std: kaimingStd(shape, options), dtype: options.dtype });
}

/** Xavier (Glorot) uniform, torch `xavier_uniform_`: bound = gain * sqrt(6 / (fan_in + fan_out)). */
export function initXavierUniform(
  shape: readonly number[],
  rng: Rng,
  { gain = 1, dtype }: XavierOptions = {},
): Tensor<'f32'> | Tensor<'f64'> {
  const { fanIn, fanOut } = computeFans(shape);
  const bound = gain * Math.sqrt(6 / (fanIn + fanOut));
  return initUniform(shape, rng, { low: -bound, high: bound, dtype });
}

/** Xavier (Glorot) normal, torch `xavier_normal_`: std = gain * sqrt(2 / (fan_in + fan_out)). */
export function initXavierNormal(
  shape: readonly number[],
  rng: Rng,
  { gain = 1, dtype }: XavierOptions = {},
): Tensor<'f32'> | Tensor<'f64'> {
  const { fanIn, fanOut } = computeFans(shape);
  return initNormal(shape, rng, { std: gain * Math.sqrt(2 / (fanIn + fanOut)), dtype });
}

/**
 * (Semi-)orthogonal, torch `orthogonal_`: a Gaussian [rows, cols] matrix (cols = product of the
 * trailing dims) is factored by QR (transposed first when rows < cols), Q's columns are multiplied
 * by the signs of R's diagonal so the result is uniformly distributed (Haar), and scaled by
 * `gain`. Rows are orthonormal when rows <= cols, columns when rows >= cols.
 */
export function initOrthogonal(
  shape: readonly number[],
  rng: Rng,
  { gain = 1, dtype }: XavierOptions = {},
): Tensor<'f32'> | Tensor<'f64'> {
  if (shape.length < 2) {
    throw new CoreError(
      'INIT_SHAPE_INVALID',
      `Orthogonal init needs at least 2 dimensions, got shape [${shape.join(', ')}].`,
      { shape },
    );
  }
  const rows = shape[0];
  const cols = numel(shape) / Math.max(rows, 1);
  const gaussian = rng.normalArray(rows * cols); // [rows, cols], row-major draw order
  const wide = rows < cols;
  // Factor the tall orientation: [big, small].
  const big = wide ? cols : rows;
  const small = wide ? rows : cols;
  const tall = new Float64Array(big * small);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      if (wide) tall[j * small + i] = gaussian[i * cols + j];
      else tall[i * small + j] = gaussian[i * cols + j];
    }
  }
  // positiveDiagonal multiplies Q's columns by sign(diag R): torch's `q *= d.sign()`.
  const q = qr(toMatrix(tall, big, small), { positiveDiagonal: true }).q.data; // [big, small]
  const out = floatTensor(shape, dtype);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++)
      out.data[i * cols + j] = gain * (wide ? q[j * small + i] : q[i * small + j]);
  }
  return out;
}
