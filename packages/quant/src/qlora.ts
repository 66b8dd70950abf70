import type { QuantizedWeight } from './quantized-weight.js';
import { dequantizeWeightF32 } from './quantized-weight.js';

/**
 * Float64 reference of a QLoRA linear: a frozen 4-bit base weight W `[N, K]` (dequantized on the
 * fly) plus a LoRA branch, `y = x W^T + s (x A^T) B^T (+ bias)`.
 * Shapes: x `[M, K]`, A `[r, K]`, B `[N, r]`, y `[M, N]`. Small sizes only: plain loops.
 */
export interface QLoraLinearInputs {
  readonly x: Float64Array;
  readonly M: number;
  readonly weight: QuantizedWeight;
  readonly A: Float64Array;
  readonly B: Float64Array;
  readonly r: number;
  /** LoRA scaling s = alpha / r. */
  readonly scale: number;
  readonly bias?: Float64Array;
}

/** The base weight as float64 `[N, K]`, and N, K. */
function baseWeight(w: QuantizedWeight): { W: Float64Array; N: number; K: number } {
  const W = Float64Array.from(dequantizeWeightF32(w));
  const N = w.shape.length >= 2 ? w.shape[0] : 1;
  return { W, N, K: W.length / N };
}

/** Forward: returns y `[M, N]` and the LoRA intermediate h = x A^T `[M, r]` (needed by backward). */
export function qloraLinearForward(p: QLoraLinearInputs): {
  y: Float64Array;
  h: Float64Array;
  N: number;
  K: number;
} {
  const { x, M, A, B, r, scale, bias } = p;
  const { W, N, K } = baseWeight(p.weight);
  const h = new Float64Array(M * r); // h: [M, r] = x A^T
  for (let m = 0; m < M; m++)
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * A[j * K + k];
      h[m * r + j] = s;
    }
  const y = new Float64Array(M * N); // y: [M, N]
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n] : 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * W[n * K + k];
      let l = 0;
      for (let j = 0; j < r; j++) l += h[m * r + j] * B[n * r + j];
      y[m * N + n] = s + scale * l;
    }
  return { y, h, N, K };
}

/**
 * Backward for an upstream gradient dy `[M, N]`:
 * `dx = dy W + s (dy B) A`, `dA = s (dy B)^T x`, `dB = s dy^T h` with h = x A^T.
 * The base weight is frozen (no dW), as in QLoRA.
 */
export function qloraLinearBackward(
  p: QLoraLinearInputs,
  dy: Float64Array,
): { dx: Float64Array; dA: Float64Array; dB: Float64Array } {
  const { x, M, A, B, r, scale } = p;
  const { W, N, K } = baseWeight(p.weight);
  const { h } = qloraLinearForward(p);
  const g = new Float64Array(M * r); // g: [M, r] = dy B
  for (let m = 0; m < M; m++)
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let n = 0; n < N; n++) s += dy[m * N + n] * B[n * r + j];
      g[m * r + j] = s;
    }
  const dx = new Float64Array(M * K); // dx: [M, K]
  for (let m = 0; m < M; m++)
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let n = 0; n < N; n++) s += dy[m * N + n] * W[n * K + k];
      let l = 0;
      for (let j = 0; j < r; j++) l += g[m * r + j] * A[j * K + k];
      dx[m * K + k] = s + scale * l;
    }
  const dA = new Float64Array(r * K); // dA: [r, K]
  for (let j = 0; j < r; j++)
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let m = 0; m < M; m++) s += g[m * r + j] * x[m * K + k];
      dA[j * K + k] = scale * s;
    }
  const dB = new Float64Array(N * r); // dB: [N, r]
  for (let n = 0; n < N; n++)
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let m = 0; m < M; m++) s += dy[m * N + n] * h[m * r + j];
      dB[n * r + j] = scale * s;
    }
  return { dx, dA, dB };
}
