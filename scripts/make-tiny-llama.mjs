// Writes a tiny LLaMA-architecture model in Hugging Face layout (config.json + model.safetensors)
// with seeded random weights, and a seeded random PEFT adapter for it. Byte-level vocabulary
// (ids 0..255 = bytes, 256 = BOS, 257 = EOS), so no tokenizer file is needed.
// Usage: node scripts/make-tiny-llama.mjs <model-dir> [<adapter-dir>]
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  createLoraConfig,
  createRng,
  tensor,
  writeSafetensors,
} from '../packages/core/dist/index.js';
import { savePeftAdapter } from '../packages/adapters/dist/index.js';

const [modelDir, adapterDir] = process.argv.slice(2);
if (!modelDir) {
  console.error('usage: node scripts/make-tiny-llama.mjs <model-dir> [<adapter-dir>]');
  process.exit(2);
}

const config = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 128,
  intermediate_size: 352,
  num_hidden_layers: 4,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 16,
  vocab_size: 258,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  hidden_act: 'silu',
  attention_bias: false,
  tie_word_embeddings: false,
  torch_dtype: 'float32',
  bos_token_id: 256,
  eos_token_id: 257,
};
const rng = createRng(2026);
const h = config.hidden_size;
const q = config.num_attention_heads * config.head_dim;
const kv = config.num_key_value_heads * config.head_dim;
const tensors = new Map();
const normal = (shape, std) =>
  tensor('f32', shape, rng.normalArray(shape[0] * shape[1], 0, std, 'f32'));
tensors.set('model.embed_tokens.weight', normal([config.vocab_size, h], 0.5));
for (let l = 0; l < config.num_hidden_layers; l++) {
  const p = `model.layers.${l}`;
  tensors.set(`${p}.input_layernorm.weight`, tensor('f32', [h], new Float32Array(h).fill(1)));
  tensors.set(
    `${p}.post_attention_layernorm.weight`,
    tensor('f32', [h], new Float32Array(h).fill(1)),
  );
  tensors.set(`${p}.self_attn.q_proj.weight`, normal([q, h], 1 / Math.sqrt(h)));
  tensors.set(`${p}.self_attn.k_proj.weight`, normal([kv, h], 1 / Math.sqrt(h)));
  tensors.set(`${p}.self_attn.v_proj.weight`, normal([kv, h], 1 / Math.sqrt(h)));
  tensors.set(`${p}.self_attn.o_proj.weight`, normal([h, q], 1 / Math.sqrt(q)));
  tensors.set(`${p}.mlp.gate_proj.weight`, normal([config.intermediate_size, h], 1 / Math.sqrt(h)));
  tensors.set(`${p}.mlp.up_proj.weight`, normal([config.intermediate_size, h], 1 / Math.sqrt(h)));
  tensors.set(
    `${p}.mlp.down_proj.weight`,
    normal([h, config.intermediate_size], 1 / Math.sqrt(config.intermediate_size)),
  );
}
tensors.set('model.norm.weight', tensor('f32', [h], new Float32Array(h).fill(1)));
tensors.set('lm_head.weight', normal([config.vocab_size, h], 1 / Math.sqrt(h)));

mkdirSync(modelDir, { recursive: true });
writeFileSync(join(modelDir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
await writeSafetensors(
  join(modelDir, 'model.safetensors'),
  new Map([...tensors].sort(([a], [b]) => (a < b ? -1 : 1))),
  {
    metadata: { format: 'pt' },
  },
);

if (adapterDir) {
  const r = 8;
  const modules = new Map();
  for (let l = 0; l < config.num_hidden_layers; l++) {
    for (const [name, out] of [
      ['self_attn.q_proj', q],
      ['self_attn.v_proj', kv],
    ]) {
      modules.set(`model.layers.${l}.${name}`, {
        A: normal([r, h], 1 / Math.sqrt(h)),
        B: normal([out, r], 0.05),
      });
    }
  }
  const adapterConfig = createLoraConfig({
    r,
    lora_alpha: 16,
    target_modules: ['q_proj', 'v_proj'],
    task_type: 'CAUSAL_LM',
  });
  await savePeftAdapter(
    adapterDir,
    { config: adapterConfig, modules, modulesToSave: new Map() },
    { overwrite: true },
  );
}
console.log(`wrote ${modelDir}${adapterDir ? ` and ${adapterDir}` : ''}`);
