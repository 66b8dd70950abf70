import type { Adapter, LoraModule } from '@lora/adapters';
import type { LoraConfig } from '@lora/core';

/**
 * PEFT's conversion of a PiSSA / OLoRA adapter into a plain LoRA on the ORIGINAL base
 * (`path_initial_model_for_weight_conversion`): trained factors A, B relative to the residual
 * base W - s B0 A0 become the rank-2r factors `[A; A0]` and `[B, -B0]`, since
 * W - s B0 A0 + s B A = W + s [B, -B0] [A; A0]. The rank doubles, alpha is raised so that the
 * scaling s stays the same (x2, or x sqrt(2) with rsLoRA), and `init_lora_weights` becomes true.
 */
export function convertToPlainLora(
  trained: Adapter,
  initial: ReadonlyMap<string, { A: Float32Array; B: Float32Array }>,
): Adapter {
  const c = trained.config;
  const config: LoraConfig = {
    ...c,
    r: 2 * c.r,
    lora_alpha: c.use_rslora ? c.lora_alpha * Math.SQRT2 : 2 * c.lora_alpha,
    init_lora_weights: true,
  };
  const modules = new Map<string, LoraModule>();
  for (const [name, m] of trained.modules) {
    const init = initial.get(name)!;
    const [r, inF] = m.A.shape;
    const out = m.B.shape[0];
    const A = new Float32Array(2 * r * inF);
    A.set(m.A.data as Float32Array, 0);
    A.set(init.A, r * inF);
    const B = new Float32Array(out * 2 * r);
    const b = m.B.data as Float32Array;
    for (let o = 0; o < out; o++) {
      for (let j = 0; j < r; j++) {
        B[o * 2 * r + j] = b[o * r + j];
        B[o * 2 * r + r + j] = -init.B[o * r + j];
      }
    }
    modules.set(name, {
      A: { dtype: 'f32', shape: [2 * r, inF], data: A },
      B: { dtype: 'f32', shape: [out, 2 * r], data: B },
    });
  }
  return { config, modules, modulesToSave: trained.modulesToSave };
}
