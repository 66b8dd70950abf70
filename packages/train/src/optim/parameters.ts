/**
 * One trainable tensor: float32 storage, like a torch parameter. `decay` says whether AdamW's
 * weight decay applies (see {@link decaysWeight}).
 */
export interface Parameter {
  /** Its name in the saved file (PEFT key or the model's tensor name). */
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Float32Array;
  readonly decay: boolean;
}

/**
 * transformers' Trainer rule for weight decay: every parameter decays except biases and
 * normalisation weights (`get_decay_parameter_names`: names containing "bias", LayerNorm /
 * RMSNorm modules, `norm` / `*_norm` / `*layernorm*` name parts). LoRA A and B always decay.
 */
export function decaysWeight(name: string): boolean {
  const lower = name.toLowerCase();
  if (lower.includes('bias')) return false;
  if (/layernorm|rmsnorm/.test(lower)) return false;
  return !/(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)/.test(lower);
}
