import { type Tensor, toFloat32Array } from '@lora/core';
import { type Bnb4Format, bnb4StateDictEntries, quantizeBnb4 } from '@lora/quant';
import type { LlamaConfig, WeightSource } from '@lora/runtime-onnx';
import { llamaLinearModules } from '../lora/lora-setup.js';

/**
 * A weight source with some tensors replaced (PiSSA / OLoRA residual bases), the rest read from
 * `source` as stored.
 */
export function overriddenWeights(
  source: WeightSource,
  overrides: ReadonlyMap<string, Tensor>,
): WeightSource {
  if (overrides.size === 0) return source;
  return {
    description: source.description,
    names: () => source.names(),
    info: (name) => {
      const t = overrides.get(name);
      return t ? { dtype: t.dtype, shape: t.shape } : source.info(name);
    },
    read: async (name) => overrides.get(name) ?? source.read(name),
    close: () => source.close(),
  };
}

/**
 * The base with every decoder linear weight quantized to bitsandbytes 4-bit with double
 * quantization (QLoRA's `bnb_4bit_use_double_quant`), presented as the bitsandbytes state dict a
 * `lora quantize --double-quant` folder holds, so the runtime reads it as it reads such a folder
 * (MatMulBnb4 with the absmax expanded from their 8-bit codes exactly as bitsandbytes does).
 * Embeddings, norms and lm_head stay float. Weights are quantized one at a time.
 */
export async function doubleQuantizedBase(
  source: WeightSource,
  config: LlamaConfig,
  format: Bnb4Format,
  blockSize: number,
): Promise<WeightSource> {
  const replaced = new Map<string, Tensor>();
  const hidden = new Set<string>();
  for (const { module } of llamaLinearModules(config)) {
    const name = `${module}.weight`;
    const w = await source.read(name);
    const q = quantizeBnb4(Float32Array.from(toFloat32Array(w)), w.shape, {
      format,
      blockSize,
      doubleQuant: true,
      name,
    });
    hidden.add(name);
    for (const e of bnb4StateDictEntries(name, q)) {
      replaced.set(e.name, { dtype: e.dtype, shape: e.shape, data: e.data } as Tensor);
    }
  }
  return {
    description: `${source.description} (decoder linears ${format} + double quant, block ${blockSize})`,
    names: () => [...source.names().filter((n) => !hidden.has(n)), ...replaced.keys()],
    info: (name) => {
      const t = replaced.get(name);
      if (t) return { dtype: t.dtype, shape: t.shape };
      return hidden.has(name) ? undefined : source.info(name);
    },
    read: async (name) => replaced.get(name) ?? source.read(name),
    close: () => source.close(),
  };
}
