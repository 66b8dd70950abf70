// The bundled model's architecture and its initial weights (transformers' LlamaPreTrainedModel
// init: every linear and the embedding N(0, initializer_range), RMSNorm weights 1), seeded.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRng, tensor, writeSafetensors } from '../../packages/core/dist/index.js';
import {
  BOS_ID,
  byteTokenizerJson,
  EOS_ID,
  PAD_ID,
  tokenizerConfigJson,
  VOCAB_SIZE,
} from './byte-tokenizer.mjs';

export const CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 192,
  intermediate_size: 512,
  num_hidden_layers: 4,
  num_attention_heads: 6,
  num_key_value_heads: 2,
  head_dim: 32,
  vocab_size: VOCAB_SIZE,
  max_position_embeddings: 256,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  hidden_act: 'silu',
  attention_bias: false,
  mlp_bias: false,
  tie_word_embeddings: true,
  initializer_range: 0.02,
  dtype: 'float32',
  bos_token_id: BOS_ID,
  eos_token_id: EOS_ID,
  pad_token_id: PAD_ID,
};

/** Writes config.json, tokenizer files, generation_config.json and seeded initial weights. */
export async function writeInitialModel(dir, seed) {
  const c = CONFIG;
  const rng = createRng(seed);
  const h = c.hidden_size;
  const q = c.num_attention_heads * c.head_dim;
  const kv = c.num_key_value_heads * c.head_dim;
  const normal = (shape) =>
    tensor('f32', shape, rng.normalArray(shape[0] * shape[1], 0, c.initializer_range, 'f32'));
  const ones = (n) => tensor('f32', [n], new Float32Array(n).fill(1));
  const tensors = new Map();
  tensors.set('model.embed_tokens.weight', normal([c.vocab_size, h]));
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    tensors.set(`${p}.input_layernorm.weight`, ones(h));
    tensors.set(`${p}.post_attention_layernorm.weight`, ones(h));
    tensors.set(`${p}.self_attn.q_proj.weight`, normal([q, h]));
    tensors.set(`${p}.self_attn.k_proj.weight`, normal([kv, h]));
    tensors.set(`${p}.self_attn.v_proj.weight`, normal([kv, h]));
    tensors.set(`${p}.self_attn.o_proj.weight`, normal([h, q]));
    tensors.set(`${p}.mlp.gate_proj.weight`, normal([c.intermediate_size, h]));
    tensors.set(`${p}.mlp.up_proj.weight`, normal([c.intermediate_size, h]));
    tensors.set(`${p}.mlp.down_proj.weight`, normal([h, c.intermediate_size]));
  }
  tensors.set('model.norm.weight', ones(h));

  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(c, null, 2)}\n`);
  writeFileSync(join(dir, 'tokenizer.json'), `${JSON.stringify(byteTokenizerJson(), null, 2)}\n`);
  writeFileSync(
    join(dir, 'tokenizer_config.json'),
    `${JSON.stringify(tokenizerConfigJson(), null, 2)}\n`,
  );
  writeFileSync(
    join(dir, 'generation_config.json'),
    `${JSON.stringify({ bos_token_id: BOS_ID, eos_token_id: EOS_ID, pad_token_id: PAD_ID }, null, 2)}\n`,
  );
  await writeSafetensors(
    join(dir, 'model.safetensors'),
    new Map([...tensors].sort(([a], [b]) => (a < b ? -1 : 1))),
    { metadata: { format: 'pt' } },
  );
  let params = 0;
  for (const t of tensors.values()) params += t.data.length;
  return params;
}
