/**
 * What generation needs from a model: logits for the last position of each row, one step at a
 * time, with the model keeping its own KV cache between calls. The LLaMA session implements
 * it; the sampler and the generation loop depend on nothing else.
 */
export interface TokenStepper {
  readonly vocabSize: number;
  /**
   * Starts a batch: runs the prompts (one token-id list per row, lengths may differ; the model
   * pads and masks) and returns each row's next-token logits, `Float32Array(vocabSize)` per row.
   */
  start(prompts: readonly (readonly number[])[]): Promise<Float32Array[]>;
  /** Feeds one new token per row (same row order) and returns each row's next-token logits. */
  step(tokens: readonly number[]): Promise<Float32Array[]>;
  /**
   * Frees the cache and anything else held for this batch (not the model: it can serve the
   * next batch). `generate()` calls it when it finishes, also on error.
   */
  dispose(): Promise<void>;
}
