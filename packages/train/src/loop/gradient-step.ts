import type { Rng } from '@lora/core';
import type { MicroBatch } from '../data/micro-batch.js';
import type { Parameter } from '../optim/parameters.js';

/** What one forward + backward over a micro-batch returns. */
export interface GradientStepResult {
  /** Sum of the token cross-entropies of the micro-batch (positions whose next label is not -100). */
  readonly lossSum: number;
  /** How many positions that sum covers. */
  readonly tokenCount: number;
  /**
   * d lossSum / d parameter, one per {@link GradientStep.parameters} entry, same order and size.
   * Fresh arrays: the loop takes them over (accumulates into and scales them in place).
   */
  readonly grads: readonly Float32Array[];
}

/**
 * The model side of training: a static-shape forward + backward over one micro-batch, reading
 * the CURRENT values of its trainable parameters (the loop updates `parameters[i].data` in place
 * between calls). Implemented over onnxruntime training graphs for LLaMA models
 * ({@link createLlamaGradientStep}); small stand-ins implement it in tests.
 */
export interface GradientStep {
  /** Trainable tensors, in a fixed order: LoRA A/B (PEFT names) or every weight of the model. */
  readonly parameters: readonly Parameter[];
  readonly batchSize: number;
  readonly seqLen: number;
  /**
   * Forward + backward of one micro-batch. `dropoutRng` draws the LoRA dropout masks (absent
   * when dropout is 0); it is advanced by the same amount on every call of the same shape, so a
   * run is reproducible from its saved state.
   */
  run(batch: MicroBatch, dropoutRng?: Rng): Promise<GradientStepResult>;
  /** Frees the session. */
  release(): Promise<void>;
}
