/** One optimizer step as reported (`--json` "steps" entries). */
export interface StepReport {
  /** 1-based optimizer step. */
  readonly step: number;
  readonly epoch: number;
  /** Sum of the step's token cross-entropies / number of predicted label tokens (Trainer >= 4.46). */
  readonly loss: number;
  /** The learning rate this step's update used (the scheduler's value before it steps). */
  readonly lr: number;
  /** Total gradient 2-norm before clipping (clip_grad_norm_'s return value). */
  readonly grad_norm: number;
  /** Predicted label tokens in the step. */
  readonly tokens: number;
  /** Real (non-padding) tokens processed per second of this step's wall time. */
  readonly tokens_per_s: number;
}

/** An evaluation during training (`--eval-data`). */
export interface EvalReport {
  readonly step: number;
  readonly loss: number;
  readonly perplexity: number;
  readonly tokens: number;
}
