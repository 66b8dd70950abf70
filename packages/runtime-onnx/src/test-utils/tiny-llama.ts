import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { castFloat, type Tensor, tensor, writeSafetensors } from '@lora/core';
import { type LlamaConfig, llamaWeightSpec, parseLlamaConfig } from '../models/llama/config.js';
import { randomF32, seededRandom } from './random.js';

/** A small HF-style config.json for tests; override any field. */
export function tinyConfigJson(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: 32,
    intermediate_size: 48,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    num_hidden_layers: 2,
    vocab_size: 64,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    hidden_act: 'silu',
    ...overrides,
  };
}

/**
 * Random weights for every tensor the config implies: linears ~ U(-1/sqrt(in), 1/sqrt(in)),
 * norms near 1, embeddings ~ U(-1, 1), so activations stay O(1) through the layers.
 */
export function randomLlamaWeights(config: LlamaConfig, seed = 1): Map<string, Tensor<'f32'>> {
  const rand = seededRandom(seed);
  const out = new Map<string, Tensor<'f32'>>();
  for (const { name, shape } of llamaWeightSpec(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    let data: Float32Array;
    if (name.endsWith('norm.weight'))
      data = Float32Array.from(randomF32(n, rand, 0.2), (v) => 1 + v);
    else if (name === 'model.embed_tokens.weight') data = randomF32(n, rand, 1);
    else if (name.endsWith('.bias')) data = randomF32(n, rand, 0.1);
    else data = randomF32(n, rand, 1 / Math.sqrt(shape[1]));
    out.set(name, tensor('f32', shape, data));
  }
  return out;
}

/**
 * Writes a model folder in HF layout (config.json + model.safetensors, or two shards with
 * model.safetensors.index.json), optionally storing weights as f16/bf16.
 */
export async function writeHfModel(
  dir: string,
  configJson: Record<string, unknown>,
  weights: ReadonlyMap<string, Tensor>,
  options: { sharded?: boolean; dtype?: 'f32' | 'f16' | 'bf16' } = {},
): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(configJson, null, 2));
  const stored = new Map<string, Tensor>();
  for (const [name, t] of weights)
    stored.set(name, options.dtype ? castFloat(t, options.dtype) : t);
  if (!options.sharded) {
    await writeSafetensors(join(dir, 'model.safetensors'), stored, { metadata: { format: 'pt' } });
    return;
  }
  const names = [...stored.keys()];
  const halves = [names.slice(0, names.length >> 1), names.slice(names.length >> 1)];
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < 2; i++) {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    const part = new Map(halves[i].map((n) => [n, stored.get(n) as Tensor]));
    await writeSafetensors(join(dir, file), part, { metadata: { format: 'pt' } });
    for (const n of halves[i]) weightMap[n] = file;
  }
  await writeFile(
    join(dir, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
}

export function tinyConfig(overrides: Record<string, unknown> = {}): LlamaConfig {
  return parseLlamaConfig(tinyConfigJson(overrides));
}
