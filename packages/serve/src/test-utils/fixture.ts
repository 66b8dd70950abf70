import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Adapter, savePeftAdapter } from '@lora/adapters';
import { createLoraConfig, createRng, type Tensor, tensor, writeSafetensors } from '@lora/core';
import {
  llamaLinearShape,
  llamaModuleName,
  llamaWeightSpec,
  parseLlamaConfig,
} from '@lora/runtime-onnx';

/** A chat template in the Hugging Face style, for tests: role tags and a generation prompt. */
export const TEST_CHAT_TEMPLATE =
  '{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}';

/** config.json of the test model: byte-level vocabulary (256 bytes + BOS 256 + EOS 257). */
export const TEST_MODEL_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 32,
  intermediate_size: 64,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_hidden_layers: 2,
  vocab_size: 258,
  max_position_embeddings: 256,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
  bos_token_id: 256,
  eos_token_id: 257,
};

export interface ServeFixture {
  /** Temp folder holding everything; remove with {@link ServeFixture.remove}. */
  root: string;
  model: string;
  adapters: string;
  /** Names of the good adapters in `adapters`. */
  names: string[];
  remove(): Promise<void>;
}

/**
 * A tiny random LLaMA (byte tokenizer, chat template) and a folder of `count` random PEFT
 * adapters (`a0`, `a1`, ...; rank 4, q/v or MLP targets), written to a temp folder.
 */
export async function writeServeFixture(count = 8, seed = 1): Promise<ServeFixture> {
  const root = await mkdtemp(join(tmpdir(), 'lora-serve-'));
  try {
    const model = join(root, 'tiny-model');
    const adapters = join(root, 'adapters');
    await mkdir(model);
    await mkdir(adapters);
    await writeFile(join(model, 'config.json'), JSON.stringify(TEST_MODEL_CONFIG));
    await writeFile(
      join(model, 'tokenizer_config.json'),
      JSON.stringify({ chat_template: TEST_CHAT_TEMPLATE }),
    );
    const config = parseLlamaConfig(TEST_MODEL_CONFIG);
    const rng = createRng(seed);
    const weights = new Map<string, Tensor>();
    for (const { name, shape } of llamaWeightSpec(config)) {
      const n = shape.reduce((a, b) => a * b, 1);
      const data = name.endsWith('norm.weight')
        ? new Float32Array(n).fill(1)
        : rng.uniformArray(n, -1 / Math.sqrt(shape[1]), 1 / Math.sqrt(shape[1]), 'f32');
      if (name === 'model.embed_tokens.weight') for (let i = 0; i < n; i++) data[i] *= 8;
      // EOS gets logit 0, below the largest of the other 257: greedy answers run to max_tokens.
      if (name === 'lm_head.weight') data.fill(0, 257 * shape[1], 258 * shape[1]);
      weights.set(name, tensor('f32', shape, data));
    }
    await writeSafetensors(join(model, 'model.safetensors'), weights, {
      metadata: { format: 'pt' },
    });
    const names: string[] = [];
    for (let k = 0; k < count; k++) {
      const linears =
        k % 2 === 0 ? (['q_proj', 'v_proj'] as const) : (['up_proj', 'down_proj'] as const);
      const r = 4;
      const modules = new Map<string, { A: Tensor; B: Tensor }>();
      for (let l = 0; l < config.numLayers; l++) {
        for (const linear of linears) {
          const [out, inF] = llamaLinearShape(config, linear);
          modules.set(llamaModuleName(l, linear), {
            A: tensor('f32', [r, inF], rng.uniformArray(r * inF, -0.5, 0.5, 'f32')),
            B: tensor('f32', [out, r], rng.uniformArray(out * r, -0.5, 0.5, 'f32')),
          });
        }
      }
      const adapter: Adapter = {
        config: createLoraConfig({ r, lora_alpha: 2 * r, target_modules: [...linears] }),
        modules,
        modulesToSave: new Map(),
      };
      await savePeftAdapter(join(adapters, `a${k}`), adapter);
      names.push(`a${k}`);
    }
    return {
      root,
      model,
      adapters,
      names,
      remove: () => rm(root, { recursive: true, force: true }),
    };
  } catch (e) {
    await rm(root, { recursive: true, force: true });
    throw e;
  }
}
