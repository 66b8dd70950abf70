import { type LoraConfig, loraScaling, numel, type Tensor } from '@lora/core';

/**
 * One adapted module's LoRA tensors, in PEFT's (torch) layout whatever the base layout:
 * A: [r, in] and B: [out, r] (for an embedding: `lora_embedding_A` [r, vocab] and
 * `lora_embedding_B` [dim, r]). Tensors keep the dtype they were loaded with.
 */
export interface LoraModule {
  /** `lora_A.weight` [r, in], or `lora_embedding_A` [r, vocab] when `embedding`. */
  readonly A: Tensor;
  /** `lora_B.weight` [out, r], or `lora_embedding_B` [dim, r] when `embedding`. */
  readonly B: Tensor;
  /** `lora_B.bias` [out] (config `lora_bias`): added, scaled, to the base layer's bias on merge. */
  readonly bias?: Tensor;
  /** `lora_magnitude_vector` [out] (DoRA, config `use_dora`). */
  readonly magnitude?: Tensor;
  /** True for an embedding LoRA (`lora_embedding_A/B`): the delta is `(B·A)^T`, [vocab, dim]. */
  readonly embedding?: boolean;
}

/**
 * A LoRA adapter in memory: its config, the LoRA tensors per module (keyed by the module's name
 * in the model, e.g. `model.layers.0.self_attn.q_proj`, no `base_model.model.` prefix), and the
 * full parameters saved with it (`modules_to_save`, trained biases), keyed by parameter name
 * (e.g. `score.weight`).
 */
export interface Adapter {
  readonly config: LoraConfig;
  readonly modules: ReadonlyMap<string, LoraModule>;
  readonly modulesToSave: ReadonlyMap<string, Tensor>;
}

/** Rank of a module (rows of A). */
export function moduleRank(m: LoraModule): number {
  return m.A.shape[0];
}

/**
 * The scaling s of a module's delta `s · B·A`: PEFT's rule (`lora_alpha / r`, or
 * `/ sqrt(r)` with use_rslora; `rank_pattern` / `alpha_pattern` applied per module).
 */
export function moduleScaling(adapter: Adapter, moduleName: string): number {
  return loraScaling(adapter.config, moduleName);
}

/** Number of LoRA parameters (A, B, bias, magnitude of every module). */
export function loraParameterCount(adapter: Adapter): number {
  let n = 0;
  for (const m of adapter.modules.values()) {
    n += numel(m.A.shape) + numel(m.B.shape);
    if (m.bias) n += numel(m.bias.shape);
    if (m.magnitude) n += numel(m.magnitude.shape);
  }
  return n;
}

/** Number of parameters in the saved full modules (modules_to_save). */
export function savedParameterCount(adapter: Adapter): number {
  let n = 0;
  for (const t of adapter.modulesToSave.values()) n += numel(t.shape);
  return n;
}
