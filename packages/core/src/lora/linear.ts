import { isFloatDType, toFloat64Array } from '../convert.js';
import { CoreError } from '../errors.js';
import type { Tensor } from '../tensor.js';

/**
 * Reference forward and backward of one LoRA linear layer, in float64, written for clarity
 * (the graph ops of runtime-onnx are checked against it; big matmuls do not belong here).
 *
 *   h = (x ⊙ mask) A^T                       h: [n, r]
 *   y = x W^T + b + s · h B^T                 y: [n, out]
 *
 * x: [n, in], W: [out, in], b: [out] (optional), A: [r, in], B: [out, r], s = scaling.
 * `dropoutMask` (optional, [n, in], already scaled by 1/(1-p)) applies to the LoRA branch only,
 * as in PEFT.
 */
export interface LoraLinearInputs {
  x: Tensor;
  W: Tensor;
  bias?: Tensor;
  A: Tensor;
  B: Tensor;
  scaling: number;
  dropoutMask?: Float64Array;
}

export interface LoraLinearForward {
  /** y: [n, out] */
  y: Float64Array;
  /** h = (x ⊙ mask) A^T: [n, r], kept for the backward pass. */
  h: Float64Array;
  n: number;
  inFeatures: number;
  outFeatures: number;
  rank: number;
}

export interface LoraLinearGradients {
  /** dL/dx: [n, in] */
  dx: Float64Array;
  /** dL/dA: [r, in] */
  dA: Float64Array;
  /** dL/dB: [out, r] */
  dB: Float64Array;
  /** dL/dW: [out, in] (full fine-tuning; LoRA training ignores it). */
  dW: Float64Array;
  /** dL/db: [out] */
  db: Float64Array;
}

interface Dims {
  n: number;
  inF: number;
  outF: number;
  r: number;
}

function dims(p: LoraLinearInputs): Dims {
  const check = (t: Tensor, rank: number, what: string) => {
    if (!isFloatDType(t.dtype) || t.shape.length !== rank) {
      throw new CoreError(
        'LORA_SHAPE_MISMATCH',
        `LoRA linear: ${what} must be a ${rank}-D float tensor, got ${t.dtype} [${t.shape.join(', ')}].`,
      );
    }
  };
  check(p.x, 2, 'x');
  check(p.W, 2, 'W');
  check(p.A, 2, 'A');
  check(p.B, 2, 'B');
  const [n, inF] = p.x.shape;
  const [outF, inW] = p.W.shape;
  const [r, inA] = p.A.shape;
  const [outB, rB] = p.B.shape;
  if (
    inW !== inF ||
    inA !== inF ||
    outB !== outF ||
    rB !== r ||
    (p.bias && p.bias.data.length !== outF)
  ) {
    throw new CoreError(
      'LORA_SHAPE_MISMATCH',
      `LoRA linear: shapes disagree: x [${p.x.shape}], W [${p.W.shape}], A [${p.A.shape}], B [${p.B.shape}]${p.bias ? `, bias [${p.bias.shape}]` : ''}. Expected x [n, in], W [out, in], A [r, in], B [out, r], bias [out].`,
    );
  }
  if (p.dropoutMask && p.dropoutMask.length !== n * inF) {
    throw new CoreError(
      'LORA_SHAPE_MISMATCH',
      `LoRA linear: dropoutMask must have n * in = ${n * inF} elements, got ${p.dropoutMask.length}.`,
    );
  }
  return { n, inF, outF, r };
}

/** y = x W^T + b + s (x ⊙ mask) A^T B^T, in float64. */
export function loraLinearForward(p: LoraLinearInputs): LoraLinearForward {
  const { n, inF, outF, r } = dims(p);
  const x = toFloat64Array(p.x);
  const W = toFloat64Array(p.W);
  const A = toFloat64Array(p.A);
  const B = toFloat64Array(p.B);
  const b = p.bias ? toFloat64Array(p.bias) : undefined;
  const mask = p.dropoutMask;
  const s = p.scaling;

  // h: [n, r]
  const h = new Float64Array(n * r);
  for (let t = 0; t < n; t++) {
    for (let k = 0; k < r; k++) {
      let acc = 0;
      for (let i = 0; i < inF; i++)
        acc += x[t * inF + i] * (mask ? mask[t * inF + i] : 1) * A[k * inF + i];
      h[t * r + k] = acc;
    }
  }
  // y: [n, out]
  const y = new Float64Array(n * outF);
  for (let t = 0; t < n; t++) {
    for (let o = 0; o < outF; o++) {
      let base = b ? b[o] : 0;
      for (let i = 0; i < inF; i++) base += x[t * inF + i] * W[o * inF + i];
      let lora = 0;
      for (let k = 0; k < r; k++) lora += h[t * r + k] * B[o * r + k];
      y[t * outF + o] = base + s * lora;
    }
  }
  return { y, h, n, inFeatures: inF, outFeatures: outF, rank: r };
}

/**
 * Gradients of a loss L given dy = dL/dy [n, out]:
 *   dB = s dy^T h,  dh = s dy B,  dA = dh^T (x ⊙ mask),
 *   dx = dy W + (dh A) ⊙ mask,  dW = dy^T x,  db = sum over rows of dy.
 */
export function loraLinearBackward(
  p: LoraLinearInputs,
  dy: Float64Array,
  forward?: LoraLinearForward,
): LoraLinearGradients {
  const { n, inF, outF, r } = dims(p);
  if (dy.length !== n * outF) {
    throw new CoreError(
      'LORA_SHAPE_MISMATCH',
      `LoRA linear backward: dy must have n * out = ${n * outF} elements, got ${dy.length}.`,
    );
  }
  const h = (forward ?? loraLinearForward(p)).h;
  const x = toFloat64Array(p.x);
  const W = toFloat64Array(p.W);
  const A = toFloat64Array(p.A);
  const B = toFloat64Array(p.B);
  const mask = p.dropoutMask;
  const s = p.scaling;

  const dB = new Float64Array(outF * r); // [out, r]
  const dh = new Float64Array(n * r); // [n, r]
  const db = new Float64Array(outF);
  for (let t = 0; t < n; t++) {
    for (let o = 0; o < outF; o++) {
      const g = dy[t * outF + o];
      db[o] += g;
      for (let k = 0; k < r; k++) {
        dB[o * r + k] += s * g * h[t * r + k];
        dh[t * r + k] += s * g * B[o * r + k];
      }
    }
  }
  const dA = new Float64Array(r * inF); // [r, in]
  const dx = new Float64Array(n * inF); // [n, in]
  const dW = new Float64Array(outF * inF); // [out, in]
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < inF; i++) {
      const m = mask ? mask[t * inF + i] : 1;
      const xm = x[t * inF + i] * m;
      let viaLora = 0;
      for (let k = 0; k < r; k++) {
        dA[k * inF + i] += dh[t * r + k] * xm;
        viaLora += dh[t * r + k] * A[k * inF + i];
      }
      let viaBase = 0;
      for (let o = 0; o < outF; o++) {
        viaBase += dy[t * outF + o] * W[o * inF + i];
        dW[o * inF + i] += dy[t * outF + o] * x[t * inF + i];
      }
      dx[t * inF + i] = viaBase + viaLora * m;
    }
  }
  return { dx, dA, dB, dW, db };
}
