import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tensor } from '@lora/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  randomLlamaWeights,
  tinyConfig,
  tinyConfigJson,
  writeHfModel,
} from '../../test-utils/tiny-llama.js';
import { memoryWeights } from '../weights.js';
import { parseLlamaConfig, ropeInverseFrequencies } from './config.js';
import { loadLlama } from './model.js';
import { validateLlamaWeights } from './prepare.js';

describe('parseLlamaConfig names what is wrong', () => {
  const bad = (overrides: Record<string, unknown>) => () =>
    parseLlamaConfig(tinyConfigJson(overrides), 'm/config.json');

  it('missing or non-integer fields', () => {
    expect(bad({ hidden_size: undefined })).toThrow(/m\/config.json: "hidden_size" is missing/);
    expect(bad({ num_hidden_layers: 2.5 })).toThrow(
      /"num_hidden_layers" must be a positive integer, got 2.5/,
    );
    expect(bad({ vocab_size: -1 })).toThrow(/"vocab_size" must be a positive integer/);
  });

  it('heads that do not divide the hidden size, kv heads that do not divide heads', () => {
    expect(bad({ hidden_size: 30 })).toThrow(
      /"hidden_size" \(30\) is not divisible by num_attention_heads \(4\)/,
    );
    expect(bad({ num_key_value_heads: 3 })).toThrow(
      /"num_key_value_heads" \(3\) must divide num_attention_heads \(4\)/,
    );
    expect(bad({ head_dim: 7 })).toThrow(/"head_dim" \(7\) must be even/);
  });

  it('unsupported model types, activations and rope scalings', () => {
    expect(bad({ model_type: 'gpt2' })).toThrow(
      /"model_type" "gpt2" is not a supported LLaMA-family model/,
    );
    expect(bad({ hidden_act: 'gelu' })).toThrow(/"hidden_act" "gelu" is not supported/);
    expect(bad({ rope_scaling: { rope_type: 'proportional', factor: 4 } })).toThrow(
      /"rope_scaling.rope_type" "proportional" is not supported: proportional rope/,
    );
    expect(bad({ rope_scaling: { rope_type: 'dynamic', factor: 2 } })).toThrow(
      /"config.max_position_embeddings" is missing/,
    );
    expect(bad({ rope_parameters: { rope_type: 'su', rope_theta: 1 } })).toThrow(
      /"rope_parameters.rope_type" "su" is not supported \(supported: default, linear, dynamic, llama3, yarn, longrope\)/,
    );
    expect(
      bad({ rope_scaling: { rope_type: 'yarn' }, max_position_embeddings: undefined }),
    ).toThrow(/"rope_scaling.original_max_position_embeddings" is missing/);
    expect(bad({ partial_rotary_factor: 0.5 })).toThrow(/"partial_rotary_factor" is 0.5/);
    expect(
      bad({ rope_parameters: { full_attention: { rope_type: 'default' }, sliding_attention: {} } }),
    ).toThrow(/one rope per layer type/);
  });

  it('config keys that change the math and are not implemented are refused, not ignored', () => {
    expect(bad({ model_type: 'mistral', sliding_window: 8, max_position_embeddings: 64 })).toThrow(
      /"sliding_window" is 8 \(below max_position_embeddings 64\)/,
    );
    // A window that covers every position changes nothing; Qwen2 uses it only when enabled.
    expect(
      bad({ model_type: 'mistral', sliding_window: 64, max_position_embeddings: 64 }),
    ).not.toThrow();
    expect(
      bad({ model_type: 'qwen2', sliding_window: 8, use_sliding_window: false }),
    ).not.toThrow();
    expect(bad({ model_type: 'qwen2', sliding_window: 8, use_sliding_window: true })).toThrow(
      /sliding-window attention is not implemented/,
    );
    expect(bad({ attn_logit_softcapping: 50 })).toThrow(/"attn_logit_softcapping" is set \(50\)/);
    expect(bad({ final_logit_softcapping: 30 })).toThrow(/"final_logit_softcapping"/);
    expect(bad({ final_logit_softcapping: null })).not.toThrow();
  });

  it('defaults: kv heads = heads, head_dim = hidden / heads; Qwen2 has q/k/v bias and no o_proj bias', () => {
    const c = parseLlamaConfig(
      tinyConfigJson({ num_key_value_heads: undefined, model_type: 'qwen2' }),
    );
    expect(c).toMatchObject({
      numKvHeads: 4,
      headDim: 8,
      qkvBias: true,
      outputBias: false,
      mlpBias: false,
    });
    const l = parseLlamaConfig(tinyConfigJson({ attention_bias: true }));
    expect(l).toMatchObject({ qkvBias: true, outputBias: true });
  });
});

describe('RoPE inverse frequencies', () => {
  it('plain: 1 / theta^(2i/d)', () => {
    const c = tinyConfig({ hidden_size: 32, num_attention_heads: 4, rope_theta: 10000 }); // head_dim 8
    const inv = ropeInverseFrequencies(c);
    for (const [i, v] of [1, 0.1, 0.01, 0.001].entries()) expect(inv[i]).toBeCloseTo(v, 15);
  });

  it('llama3 scaling keeps short wavelengths, divides long ones, blends the band between', () => {
    const c = tinyConfig({
      rope_theta: 10000,
      rope_scaling: {
        rope_type: 'llama3',
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 16,
      },
    });
    const inv = ropeInverseFrequencies(c);
    // Wavelengths 2*pi/f: 6.28 (between 16/4 = 4 and 16/1 = 16: blended), 62.8, 628, 6283 (> 16: divided by 8).
    const smooth = (16 / (2 * Math.PI) - 1) / (4 - 1);
    expect(inv[0]).toBeCloseTo((1 - smooth) * (1 / 8) + smooth * 1, 14);
    expect(inv[1]).toBeCloseTo(0.1 / 8, 15);
    expect(inv[3]).toBeCloseTo(0.001 / 8, 15);
  });
});

describe('weights that do not fit the config are named before any session is built', () => {
  const config = tinyConfig();
  it('wrong shape', () => {
    const w = randomLlamaWeights(config);
    w.set('model.layers.1.self_attn.k_proj.weight', tensor('f32', [32, 32]));
    expect(() => validateLlamaWeights(config, memoryWeights(w))).toThrow(
      /"model.layers.1.self_attn.k_proj.weight" has shape \[32, 32\], the config implies \[16, 32\]/,
    );
  });

  it('missing tensors, with the tie_word_embeddings hint for lm_head', () => {
    const w = randomLlamaWeights(config);
    w.delete('lm_head.weight');
    w.delete('model.layers.0.mlp.up_proj.weight');
    expect(() => validateLlamaWeights(config, memoryWeights(w))).toThrow(
      /missing tensor "model.layers.0.mlp.up_proj.weight", "lm_head.weight".*tie_word_embeddings/,
    );
  });

  it('more layers in the weights than num_hidden_layers', async () => {
    const w = randomLlamaWeights(tinyConfig({ num_hidden_layers: 3 }));
    expect(() => validateLlamaWeights(config, memoryWeights(w))).toThrow(
      /the weights hold 3 layers .* "num_hidden_layers": 2; running it would drop layers/,
    );
  });

  it('integer weights', () => {
    const w = randomLlamaWeights(config) as Map<string, ReturnType<typeof tensor>>;
    w.set('model.norm.weight', tensor('i32', [32]));
    expect(() => validateLlamaWeights(config, memoryWeights(w))).toThrow(
      /"model.norm.weight" is i32/,
    );
  });

  describe('from folders', () => {
    let root: string;
    beforeAll(async () => {
      root = await mkdtemp(join(tmpdir(), 'lora-llama-bad-'));
    });
    afterAll(async () => rm(root, { recursive: true, force: true }));

    it('a config that disagrees with the safetensors fails in loadLlama with the tensor named', async () => {
      const dir = join(root, 'mismatch');
      await writeHfModel(
        dir,
        tinyConfigJson({ intermediate_size: 40 }),
        randomLlamaWeights(config),
      );
      await expect(loadLlama(dir)).rejects.toMatchObject({
        code: 'WEIGHT_SHAPE',
        message: expect.stringMatching(
          /gate_proj.weight" has shape \[48, 32\], the config implies \[40, 32\]/,
        ),
      });
    });

    it('folders without config.json or weights', async () => {
      await expect(loadLlama(join(root, 'nothing'))).rejects.toMatchObject({
        code: 'CONFIG_NOT_FOUND',
      });
      const dir = join(root, 'config-only');
      await writeHfModel(dir, tinyConfigJson(), new Map());
      const { unlink } = await import('node:fs/promises');
      await unlink(join(dir, 'model.safetensors'));
      await expect(loadLlama(dir)).rejects.toMatchObject({ code: 'WEIGHTS_NOT_FOUND' });
    });
  });
});
