import { TrainError } from '../errors.js';
import type { Parameter } from './parameters.js';

/** AdamW hyperparameters, with torch.optim.AdamW's defaults except `lr` (transformers': 2e-4 here). */
export interface AdamWOptions {
  readonly lr: number;
  readonly betas?: readonly [number, number];
  readonly eps?: number;
  readonly weightDecay?: number;
}

/** The optimizer's state for checkpoints: the step count and both moments of every parameter. */
export interface AdamWState {
  readonly step: number;
  /** exp_avg per parameter, in parameter order. */
  readonly expAvg: readonly Float32Array[];
  /** exp_avg_sq per parameter, in parameter order. */
  readonly expAvgSq: readonly Float32Array[];
}

/**
 * `torch.optim.AdamW` (single-tensor path, amsgrad off, not maximize), over float32 parameters
 * and float32 moments, as torch stores them. Per element of each parameter, in torch's order:
 *
 * ```
 * p   = p * (1 - lr * wd)                      (decay only where Parameter.decay)
 * m   = m + (g - m) * (1 - beta1)              (torch's lerp with weight < 0.5)
 * v   = v * beta2 + g * g * (1 - beta2)
 * p   = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * ```
 *
 * Precision: torch rounds every one of these tensor operations to float32; here each line is
 * computed in float64 and rounded to float32 when stored (p, m, v). The two differ by at most
 * an ulp or so per step: relative 1e-7, far below the 1e-3 adapter tolerance of the PyTorch
 * comparison, and the float64 arithmetic is never less accurate. The learning rate is passed
 * per step (the scheduler's value).
 */
export class AdamW {
  private t = 0;
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  private readonly beta1: number;
  private readonly beta2: number;
  private readonly eps: number;
  private readonly weightDecay: number;

  constructor(
    private readonly params: readonly Parameter[],
    options: Omit<AdamWOptions, 'lr'>,
  ) {
    [this.beta1, this.beta2] = options.betas ?? [0.9, 0.999];
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0;
    for (const [name, b] of [
      ['beta1', this.beta1],
      ['beta2', this.beta2],
    ] as const) {
      if (!(b >= 0 && b < 1))
        throw new TrainError('SETTINGS_INVALID', `AdamW ${name} must be in [0, 1), got ${b}.`);
    }
    if (!(this.eps >= 0))
      throw new TrainError('SETTINGS_INVALID', `AdamW eps must be >= 0, got ${this.eps}.`);
    if (!(this.weightDecay >= 0))
      throw new TrainError(
        'SETTINGS_INVALID',
        `weight decay must be >= 0, got ${this.weightDecay}.`,
      );
    this.m = params.map((p) => new Float32Array(p.data.length));
    this.v = params.map((p) => new Float32Array(p.data.length));
  }

  /** Optimizer steps taken so far. */
  get stepCount(): number {
    return this.t;
  }

  /** One update of every parameter from its gradient (same order and sizes as the parameters). */
  step(grads: readonly Float32Array[], lr: number): void {
    if (grads.length !== this.params.length) {
      throw new TrainError(
        'INTERNAL',
        `AdamW: ${grads.length} gradients for ${this.params.length} parameters.`,
      );
    }
    this.t++;
    const { beta1, beta2, eps } = this;
    const biasCorrection1 = 1 - beta1 ** this.t;
    const biasCorrection2Sqrt = Math.sqrt(1 - beta2 ** this.t);
    const stepSize = lr / biasCorrection1;
    // torch casts these Python floats to the float32 op's scalar type.
    const oneMinusBeta1 = Math.fround(1 - beta1);
    const oneMinusBeta2 = Math.fround(1 - beta2);
    const beta2f = Math.fround(beta2);
    const epsF = Math.fround(eps);
    for (let i = 0; i < this.params.length; i++) {
      const p = this.params[i].data;
      const g = grads[i];
      const m = this.m[i];
      const v = this.v[i];
      if (g.length !== p.length) {
        throw new TrainError(
          'INTERNAL',
          `AdamW: gradient of ${this.params[i].name} has ${g.length} values, the parameter ${p.length}.`,
        );
      }
      const decay = this.params[i].decay ? Math.fround(1 - lr * this.weightDecay) : 1;
      for (let j = 0; j < p.length; j++) {
        const gj = g[j];
        // The moments are read back after the float32 store, as torch uses its rounded tensors.
        m[j] = m[j] + (gj - m[j]) * oneMinusBeta1;
        v[j] = v[j] * beta2f + gj * gj * oneMinusBeta2;
        const denom = Math.sqrt(v[j]) / biasCorrection2Sqrt + epsF;
        p[j] = p[j] * decay - (stepSize * m[j]) / denom;
      }
    }
  }

  /** A copy of the state, for a checkpoint. */
  saveState(): AdamWState {
    return {
      step: this.t,
      expAvg: this.m.map((a) => a.slice()),
      expAvgSq: this.v.map((a) => a.slice()),
    };
  }

  /** Continues from a checkpoint's state (sizes must match the parameters). */
  loadState(state: AdamWState): void {
    if (state.expAvg.length !== this.m.length || state.expAvgSq.length !== this.v.length) {
      throw new TrainError(
        'CHECKPOINT_INVALID',
        `optimizer state holds ${state.expAvg.length} tensors, the run has ${this.m.length} parameters.`,
      );
    }
    for (let i = 0; i < this.m.length; i++) {
      if (
        state.expAvg[i].length !== this.m[i].length ||
        state.expAvgSq[i].length !== this.v[i].length
      ) {
        throw new TrainError(
          'CHECKPOINT_INVALID',
          `optimizer state of ${this.params[i].name} has the wrong size.`,
        );
      }
      this.m[i].set(state.expAvg[i]);
      this.v[i].set(state.expAvgSq[i]);
    }
    this.t = state.step;
  }
}
