import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { type Adapter, savePeftAdapter } from '@lora/adapters';
import { createLoraConfig, fromFloat32Array, tensor, writeSafetensors } from '@lora/core';
import { llamaWeightSpec, parseLlamaConfig } from '@lora/runtime-onnx';
import { xorshiftValues } from '../synthetic-values.js';

/** SHA-256 of every file below `path` (or of the file itself), keyed by relative path. */
export function hashTree(path: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!existsSync(path)) return out;
  const walk = (p: string) => {
    if (statSync(p).isDirectory()) {
      for (const name of readdirSync(p).sort()) walk(join(p, name));
    } else {
      out[relative(path, p) || '.'] = createHash('sha256').update(readFileSync(p)).digest('hex');
    }
  };
  walk(path);
  return out;
}

/** Hidden size, layers and vocabulary of the synthetic LLaMA: ~2 MB of f32. */
const H = 128;
const I = 256;
const LAYERS = 2;
const VOCAB = 512;

/**
 * Writes a small but not tiny LLaMA folder (config.json + model.safetensors, random f32 weights),
 * large enough that quantize, merge, extract and export take a measurable time to kill in.
 */
export async function writeSyntheticLlama(dir: string, seed = 1): Promise<void> {
  await mkdir(dir, { recursive: true });
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: H,
    intermediate_size: I,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    num_hidden_layers: LAYERS,
    vocab_size: VOCAB,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    hidden_act: 'silu',
    tie_word_embeddings: false,
    torch_dtype: 'float32',
    bos_token_id: 1,
    eos_token_id: 2,
  };
  await writeFile(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  const tensors = new Map<string, ReturnType<typeof tensor>>();
  let s = seed * 1000;
  const add = (name: string, shape: number[], scale = 0.1) => {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.set(name, tensor('f32', shape, xorshiftValues(n, ++s, scale)));
  };
  add('model.embed_tokens.weight', [VOCAB, H]);
  for (let l = 0; l < LAYERS; l++) {
    const p = `model.layers.${l}`;
    for (const m of ['q_proj', 'k_proj', 'v_proj', 'o_proj'])
      add(`${p}.self_attn.${m}.weight`, [H, H]);
    add(`${p}.mlp.gate_proj.weight`, [I, H]);
    add(`${p}.mlp.up_proj.weight`, [I, H]);
    add(`${p}.mlp.down_proj.weight`, [H, I]);
    tensors.set(`${p}.input_layernorm.weight`, tensor('f32', [H], new Float32Array(H).fill(1)));
    tensors.set(
      `${p}.post_attention_layernorm.weight`,
      tensor('f32', [H], new Float32Array(H).fill(1)),
    );
  }
  tensors.set('model.norm.weight', tensor('f32', [H], new Float32Array(H).fill(1)));
  add('lm_head.weight', [VOCAB, H]);
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
}

/** A PEFT adapter (rank 8) on every attention and MLP projection of the synthetic LLaMA. */
export async function writeSyntheticAdapter(dir: string, seed = 1): Promise<void> {
  const r = 8;
  const modules = new Map<string, { A: ReturnType<typeof tensor>; B: ReturnType<typeof tensor> }>();
  let s = seed * 7919;
  for (let l = 0; l < LAYERS; l++) {
    const shapes: Record<string, [number, number]> = {
      'self_attn.q_proj': [H, H],
      'self_attn.k_proj': [H, H],
      'self_attn.v_proj': [H, H],
      'self_attn.o_proj': [H, H],
      'mlp.gate_proj': [I, H],
      'mlp.up_proj': [I, H],
      'mlp.down_proj': [H, I],
    };
    for (const [m, [out, inp]] of Object.entries(shapes)) {
      modules.set(`model.layers.${l}.${m}`, {
        A: tensor('f32', [r, inp], xorshiftValues(r * inp, ++s, 0.1)),
        B: tensor('f32', [out, r], xorshiftValues(out * r, ++s, 0.1)),
      });
    }
  }
  const adapter: Adapter = {
    config: createLoraConfig({
      r,
      lora_alpha: 16,
      target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
    }),
    modules,
    modulesToSave: new Map(),
  };
  await savePeftAdapter(dir, adapter);
}

/**
 * Writes a LLaMA folder for `configJson` (config.json + model.safetensors) with every tensor the
 * config implies filled with xorshift values in [-0.05, 0.05), stored as `dtype`; tensors are
 * produced one at a time while the file is written.
 */
export async function writeRandomLlamaFolder(
  dir: string,
  configJson: Record<string, unknown>,
  dtype: 'f32' | 'bf16',
  seed: number,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(configJson));
  let s = seed;
  await writeSafetensors(
    join(dir, 'model.safetensors'),
    llamaWeightSpec(parseLlamaConfig(configJson)).map(({ name, shape }) => ({
      name,
      dtype,
      shape,
      data: () => {
        const values = xorshiftValues(
          shape.reduce((a, b) => a * b, 1),
          s++,
          0.1,
        );
        return dtype === 'f32' ? values : fromFloat32Array(values, dtype);
      },
    })),
  );
}
