import { type FloatDType, isFloatDType } from '../convert.js';
import { CoreError } from '../errors.js';
import { initKaimingUniform, initNormal, initZeros } from '../init.js';
import { matmul } from '../linalg/matmul.js';
import { type Matrix, type MatrixDType, matrixCopyF64, toMatrix } from '../linalg/matrix.js';
import { qr } from '../linalg/qr.js';
import { randomizedSvd } from '../linalg/randomized-svd.js';
import { svd } from '../linalg/svd.js';
import { createRng, type Rng, type Seed64 } from '../random.js';
import { type Tensor, tensor } from '../tensor.js';
import { roundF64Array } from './round-once.js';

/**
 * How LoRA factors start, with PEFT's `init_lora_weights` meanings:
 * - `default` (PEFT `true`): A kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in));
 *   B = 0. The adapter starts as a no-op.
 * - `gaussian`: A ~ N(0, (1/r)^2), B = 0. Also a no-op at start.
 * - `random` (PEFT `false`, for tests and debugging): A and B both kaiming-uniform with
 *   a = sqrt(5) over their own fan_in (bounds 1/sqrt(in) and 1/sqrt(r)). NOT a no-op.
 * - `pissa`: principal singular triplets of W (exact SVD) go into the adapter, the rest stays in
 *   the base weight, which is returned as `base`.
 * - `pissa_niter_N`: the same with a randomized SVD and N power iterations (large weights).
 * - `olora`: thin QR of W; B = Q[:, :r], A = R[:r]; the base weight is returned as `base`.
 */
export type LoraInitMethod =
  | 'default'
  | 'gaussian'
  | 'random'
  | 'pissa'
  | `pissa_niter_${number}`
  | 'olora';

/** Options of {@link initLoraWeights}. */
export interface LoraInitOptions {
  /** LoRA rank r. */
  readonly rank: number;
  /**
   * The adapter's scaling s (lora_alpha / r, or / sqrt(r) with rslora). PiSSA divides the
   * singular values by it and both PiSSA and OLoRA subtract s * B @ A from the base; the other
   * methods ignore it. Default 1.
   */
  readonly scaling?: number;
  /** A method, or PEFT's raw `init_lora_weights` value (true, false, "gaussian", ...). Default `default`. */
  readonly method?: LoraInitMethod | boolean | string;
  /** Seed of the generator for random methods (default 0); ignored when `rng` is given. */
  readonly seed?: Seed64;
  /** Generator for random methods (A is drawn first, then B). */
  readonly rng?: Rng;
  /** The base weight is stored [in, out] (GPT-2 Conv1D) instead of [out, in]. */
  readonly fanInFanOut?: boolean;
  /** Element type of A and B (default f32, as PEFT stores adapters). */
  readonly dtype?: MatrixDType;
}

/**
 * LoRA factors in PEFT shapes: `A` (lora_A.weight) [r, in] and `B` (lora_B.weight) [out, r].
 * For `pissa*` and `olora`, `base` is the new base weight W - s * B @ A, in W's stored layout
 * and dtype, so that `base + s * B @ A` reproduces W.
 */
export interface LoraInitResult {
  readonly A: Matrix;
  readonly B: Matrix;
  readonly base?: Tensor;
}

/**
 * Reads PEFT's `init_lora_weights` value: `true` -> `default`, `false` -> `random`, and the
 * strings `gaussian`, `pissa`, `pissa_niter_<N>`, `olora` (case-insensitive, as PEFT).
 * Other PEFT methods (loftq, eva, corda, lora_ga, orthogonal) are rejected with
 * LORA_INIT_UNSUPPORTED.
 */
export function parseLoraInitMethod(value: boolean | string): LoraInitMethod {
  if (value === true) return 'default';
  if (value === false) return 'random';
  const lower = String(value).toLowerCase();
  if (
    lower === 'default' ||
    lower === 'gaussian' ||
    lower === 'random' ||
    lower === 'pissa' ||
    lower === 'olora'
  ) {
    return lower;
  }
  const niter = /^pissa_niter_(\d+)$/.exec(lower);
  if (niter) return `pissa_niter_${Number(niter[1])}`;
  throw new CoreError(
    'LORA_INIT_UNSUPPORTED',
    `init_lora_weights ${JSON.stringify(value)} is not supported; use true, false, "gaussian", "pissa", ` +
      '"pissa_niter_<N>" or "olora".',
    { value },
  );
}

/**
 * Creates the starting A and B of a LoRA adapter for one weight (and the new base weight for
 * PiSSA and OLoRA). Pure: `weight` is never modified.
 *
 * `weight` is the base weight [out, in] ([in, out] with `fanInFanOut`); for `default`,
 * `gaussian` and `random` only its shape is used, so `{ shape }` is enough.
 *
 * Precision: SVD and QR run in float64 on the weight's values; A and B are rounded to `dtype`
 * first, and `base` is computed from the ROUNDED factors as W - s * B @ A in float64, then
 * rounded once to W's dtype. So `base + s * B @ A` (in float64) equals W up to half an ulp of
 * each `base` element in W's dtype (plus float64 rounding), whatever the SVD's own accuracy.
 *
 * PEFT differences: the same formulas, but PEFT's `pissa_niter_N` (torch `svd_lowrank`) uses
 * no oversampling; here the randomized SVD takes 10 extra samples, which is more accurate.
 * PEFT's OLoRA ignores `fan_in_fan_out`; here both PiSSA and OLoRA work on the [out, in] view.
 * `pissa` uses the exact Jacobi SVD, fine up to a few hundred rows/columns; prefer
 * `pissa_niter_N` for large weights.
 */
export function initLoraWeights(
  weight: Tensor | { readonly shape: readonly number[] },
  options: LoraInitOptions,
): LoraInitResult {
  const method = parseLoraInitMethod(options.method ?? 'default');
  const fanInFanOut = options.fanInFanOut ?? false;
  const dtype = options.dtype ?? 'f32';
  const scaling = options.scaling ?? 1;
  const r = options.rank;
  if (weight.shape.length !== 2) {
    throw new CoreError(
      'SHAPE_MISMATCH',
      `LoRA init needs a 2-D base weight, got shape [${weight.shape.join(', ')}].`,
      { shape: weight.shape },
    );
  }
  const [out, inFeatures] = fanInFanOut
    ? [weight.shape[1], weight.shape[0]]
    : [weight.shape[0], weight.shape[1]];
  if (!Number.isInteger(r) || r < 1) {
    throw new CoreError('LORA_RANK_INVALID', `LoRA rank must be a positive integer, got ${r}.`, {
      rank: r,
    });
  }
  if (!Number.isFinite(scaling)) {
    throw new CoreError('LORA_SCALING_INVALID', `LoRA scaling must be finite, got ${scaling}.`, {
      scaling,
    });
  }
  const rng = options.rng ?? createRng(options.seed ?? 0);

  switch (method) {
    case 'default':
      return {
        A: initKaimingUniform([r, inFeatures], rng, { a: Math.sqrt(5), dtype }),
        B: initZeros([out, r], { dtype }),
      };
    case 'gaussian':
      return {
        A: initNormal([r, inFeatures], rng, { std: 1 / r, dtype }),
        B: initZeros([out, r], { dtype }),
      };
    case 'random': {
      const A = initKaimingUniform([r, inFeatures], rng, { a: Math.sqrt(5), dtype });
      const B = initKaimingUniform([out, r], rng, { a: Math.sqrt(5), dtype });
      return { A, B };
    }
    default:
      return decompositionInit(weight, method, {
        out,
        inFeatures,
        r,
        scaling,
        fanInFanOut,
        dtype,
        rng,
      });
  }
}

interface DecompositionContext {
  out: number;
  inFeatures: number;
  r: number;
  scaling: number;
  fanInFanOut: boolean;
  dtype: MatrixDType;
  rng: Rng;
}

/** PiSSA and OLoRA: factors from a decomposition of W [out, in], base = W - s * B @ A. */
function decompositionInit(
  weight: Tensor | { readonly shape: readonly number[] },
  method: LoraInitMethod,
  ctx: DecompositionContext,
): LoraInitResult {
  const { out, inFeatures, r, scaling, fanInFanOut, dtype } = ctx;
  if (!('data' in weight) || !isFloatDType(weight.dtype)) {
    throw new CoreError(
      'LORA_INIT_NEEDS_WEIGHT',
      `LoRA init "${method}" decomposes the base weight: pass the float weight tensor, not only its shape.`,
      { method },
    );
  }
  if (r > Math.min(out, inFeatures)) {
    throw new CoreError(
      'LORA_RANK_INVALID',
      `LoRA init "${method}": rank ${r} exceeds min(out, in) = ${Math.min(out, inFeatures)} of the [${out}, ${inFeatures}] weight.`,
      { rank: r, out, in: inFeatures },
    );
  }
  // w: [out, in] in float64 (transposed from [in, out] storage when fanInFanOut)
  const stored = matrixCopyF64(weight, `LoRA init "${method}"`);
  const w = fanInFanOut ? transposeF64(stored, inFeatures, out) : stored;
  const wMatrix = toMatrix(w, out, inFeatures);
  const a = new Float64Array(r * inFeatures); // A: [r, in]
  const b = new Float64Array(out * r); // B: [out, r]

  if (method === 'olora') {
    const { q, r: rFactor } = qr(wMatrix); // Q [out, k], R [k, in], k = min(out, in)
    const k = q.shape[1];
    for (let i = 0; i < out; i++) for (let j = 0; j < r; j++) b[i * r + j] = q.data[i * k + j];
    a.set(rFactor.data.subarray(0, r * inFeatures));
  } else {
    if (!(scaling > 0)) {
      throw new CoreError(
        'LORA_SCALING_INVALID',
        `PiSSA divides the singular values by the scaling and takes square roots: it must be > 0, got ${scaling}.`,
        { scaling },
      );
    }
    // U [out, k], s [k], V^T [k, in]
    const niter = /^pissa_niter_(\d+)$/.exec(method);
    const dec = niter
      ? randomizedSvd(wMatrix, { rank: r, powerIterations: Number(niter[1]), rng: ctx.rng })
      : svd(wMatrix);
    const k = dec.u.shape[1];
    for (let j = 0; j < r; j++) {
      const root = Math.sqrt(dec.s[j] / scaling); // sqrt(Sr), Sr = S[:r] / s
      for (let c = 0; c < inFeatures; c++)
        a[j * inFeatures + c] = root * dec.vt.data[j * inFeatures + c];
      for (let i = 0; i < out; i++) b[i * r + j] = dec.u.data[i * k + j] * root;
    }
  }

  const A = toMatrix(a, r, inFeatures, dtype);
  const B = toMatrix(b, out, r, dtype);
  // base = W - s * B @ A with the factors as stored (rounded), in float64: [out, in]
  const product = matmul(B, A, { dtype: 'f64' }).data;
  const residual = new Float64Array(out * inFeatures);
  for (let i = 0; i < residual.length; i++) residual[i] = w[i] - scaling * product[i];
  const baseValues = fanInFanOut ? transposeF64(residual, out, inFeatures) : residual;
  const baseDType = weight.dtype as FloatDType;
  const base = tensor(baseDType, weight.shape, roundF64Array(baseValues, baseDType));
  return { A, B, base };
}

/** [rows, cols] -> [cols, rows] for a float64 buffer. */
function transposeF64(x: Float64Array, rows: number, cols: number): Float64Array {
  const outArr = new Float64Array(x.length);
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < cols; j++) outArr[j * rows + i] = x[i * cols + j];
  return outArr;
}
