import { type LoraFactors, loraScaling, mergeWeight, type Tensor } from '@lora/core';
import { RuntimeError } from '../errors.js';
import { readDequantized, storedQuantization } from '../models/quantize-linear.js';
import type { WeightSource } from '../models/weights.js';
import type { SlotAdapter } from './slots.js';
import type { Adapter } from '@lora/adapters';

/**
 * A weight source whose adapted linears are merged: `W' = W + sum_i scale_i * s_i * B_i A_i`
 * (core's `mergeWeight`: the same merge engine and ΔW as `lora merge`, so the weights are
 * byte-identical to a merged model's; one rounding to W's dtype, NaN/Inf refused). The zero-overhead
 * path: a model built from it runs at base speed and matches the unmerged LoRA graph within
 * float32 rounding. Other tensors pass through untouched; merged ones are computed when read.
 */
export function mergedWeights(
  source: WeightSource,
  adapters: readonly SlotAdapter[],
): WeightSource {
  const terms = new Map<string, LoraFactors[]>(); // weight name -> terms
  for (const [k, { adapter, scale = 1, name }] of adapters.entries()) {
    refuseSavedModules(adapter, name ?? `adapter #${k}`);
    for (const [module, m] of adapter.modules) {
      const label = name ?? `adapter #${k}`;
      if (m.magnitude || m.bias || m.embedding) {
        throw new RuntimeError(
          'LORA_UNSUPPORTED',
          `${label}: ${module} uses ${m.magnitude ? 'DoRA' : m.bias ? 'a LoRA bias' : 'an embedding LoRA'}; merge it with \`lora merge\` (adapters package) instead.`,
          { module },
        );
      }
      const weight = `${module}.weight`;
      if (!source.info(weight)) {
        throw new RuntimeError(
          'LORA_TARGET_NOT_IN_MODEL',
          `${label} adapts ${module}, but ${source.description} has no tensor ${weight}.`,
          {
            module,
          },
        );
      }
      const list = terms.get(weight) ?? [];
      list.push({
        A: m.A,
        B: m.B,
        scaling: loraScaling(adapter.config, module) * scale,
        fanInFanOut: adapter.config.fan_in_fan_out,
      });
      terms.set(weight, list);
    }
  }
  // 4-bit stored weights (a `lora quantize` folder) that an adapter touches are dequantized and
  // merged to float32, as `lora merge` does; their packed tensors and statistics are hidden so
  // the model reads them as plain float weights.
  const quantized = new Map<string, number[]>(); // weight -> logical shape
  for (const [weight, list] of terms) {
    if (!storedQuantization(source, weight)) continue;
    const { A, B, fanInFanOut } = list[0];
    quantized.set(weight, fanInFanOut ? [A.shape[1], B.shape[0]] : [B.shape[0], A.shape[1]]);
  }
  const hidden = (name: string) => {
    for (const w of quantized.keys()) if (name.startsWith(`${w}.`)) return true;
    return false;
  };
  // Reads of a weight still being merged share its promise; a finished one is not kept, so a
  // caller that lets a tensor go (an export transposing it) frees it.
  const pending = new Map<string, Promise<Tensor>>();
  return {
    description: `${source.description} with ${adapters.length} adapter(s) merged`,
    names: () => source.names().filter((n) => !hidden(n)),
    info: (name) => {
      if (hidden(name)) return undefined;
      const shape = quantized.get(name);
      return shape ? { dtype: 'f32', shape } : source.info(name);
    },
    read: (name) => {
      const t = terms.get(name);
      if (!t) return source.read(name);
      let merged = pending.get(name);
      if (!merged) {
        const base = quantized.has(name) ? readDequantized(source, name) : source.read(name);
        merged = base.then((W) => mergeWeight(W, t, { name })).finally(() => pending.delete(name));
        pending.set(name, merged);
      }
      return merged;
    },
    close: () => source.close(),
  };
}

/**
 * Full modules saved with an adapter (modules_to_save, `base_layer` weights) replace base
 * tensors; running without them would silently give another model, so they are refused here.
 */
export function refuseSavedModules(adapter: Adapter, label: string): void {
  const saved = [...adapter.modulesToSave.keys()];
  if (saved.length === 0) return;
  throw new RuntimeError(
    'LORA_UNSUPPORTED',
    `${label} saves full module weights (${saved.slice(0, 3).join(', ')}${saved.length > 3 ? ', ...' : ''}) that replace the base model's; the runtime applies LoRA factors only. Write the merged model with \`lora merge\` and run that.`,
    { saved },
  );
}
