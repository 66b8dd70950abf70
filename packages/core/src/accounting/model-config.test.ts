import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { readSafetensorsHeader } from '../safetensors/reader.js';
import {
  countModelParameters,
  KNOWN_SHAPES,
  linearModules,
  parseModelConfig,
  shapeForParameterCount,
} from './model-config.js';

const MODEL = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k/', import.meta.url),
);
const haveModel = existsSync(MODEL);
if (!haveModel)
  console.warn(`[model-config.test] ${MODEL} not found: bundled-model tests skipped.`);

describe('parseModelConfig', () => {
  it('fills GQA and head_dim defaults; names the bad field', () => {
    const s = parseModelConfig(
      {
        model_type: 'llama',
        hidden_size: 4096,
        intermediate_size: 11008,
        num_attention_heads: 32,
        num_hidden_layers: 32,
        vocab_size: 32000,
      },
      'config.json',
    );
    expect(s.num_key_value_heads).toBe(32);
    expect(s.head_dim).toBe(128);
    expect(s.tie_word_embeddings).toBe(false);
    expect(() => parseModelConfig({ hidden_size: 0 }, 'm/config.json')).toThrow(
      /m\/config\.json: "hidden_size"/,
    );
    expect(() => parseModelConfig({ model_type: 'gpt2' }, 'x')).toThrow(/not a LLaMA-style/);
  });

  it('Qwen2 has q/k/v biases', () => {
    // Qwen2.5-0.5B: hidden 896, 14 heads, 2 KV heads, intermediate 4864, 24 layers, vocab 151936, tied.
    const s = parseModelConfig(
      {
        model_type: 'qwen2',
        hidden_size: 896,
        intermediate_size: 4864,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        num_hidden_layers: 24,
        vocab_size: 151936,
        tie_word_embeddings: true,
      },
      'qwen',
    );
    const q = linearModules(s).find((m) => m.name === 'model.layers.0.self_attn.v_proj')!;
    expect([q.inFeatures, q.outFeatures, q.bias]).toEqual([896, 128, true]);
    // Published size of Qwen2.5-0.5B: 494,032,768 parameters (tied embeddings counted once).
    expect(countModelParameters(s).total).toBe(494_032_768);
  });
});

describe.skipIf(!haveModel)('the bundled stories260K model', () => {
  it('counts 260,032 parameters, as its file holds', async () => {
    const shape = parseModelConfig(
      JSON.parse(readFileSync(`${MODEL}config.json`, 'utf8')),
      'config.json',
    );
    // By hand: embedding 512 x 64 = 32,768; per layer q 4,096 + k 2,048 + v 2,048 + o 4,096
    // + gate/up/down 3 x 11,008 + norms 128 = 45,440; x 5 = 227,200; final norm 64. lm_head tied.
    expect(countModelParameters(shape).total).toBe(32_768 + 5 * 45_440 + 64);
    const header = await readSafetensorsHeader(`${MODEL}model.safetensors`);
    const inFile = header.entries.reduce((s, e) => s + e.shape.reduce((a, b) => a * b, 1), 0);
    expect(countModelParameters(shape).total).toBe(inFile);
    // Every linear has a weight of that shape in the file (lm_head is tied, so absent).
    for (const m of linearModules(shape).filter((x) => x.name !== 'lm_head')) {
      expect(header.byName.get(`${m.name}.weight`)?.shape).toEqual([m.outFeatures, m.inFeatures]);
    }
  });
});

describe('shapeForParameterCount', () => {
  it('picks the published LLaMA shape near a count', () => {
    expect(shapeForParameterCount(65e9).name).toBe('llama-65b');
    expect(shapeForParameterCount(7e9).name).toBe('llama-7b');
    expect(shapeForParameterCount(70e9).name).toBe('llama-2-70b');
    // LLaMA-65B by hand: 2 x 32000 x 8192 + 80 x (4 x 8192^2 + 3 x 8192 x 22016 + 2 x 8192) + 8192
    expect(countModelParameters(KNOWN_SHAPES['llama-65b']).total).toBe(
      2 * 32000 * 8192 + 80 * (4 * 8192 ** 2 + 3 * 8192 * 22016 + 2 * 8192) + 8192,
    );
  });

  it('derives a LLaMA-like shape elsewhere, within a few percent', () => {
    for (const p of [3e9, 200e9, 5e8]) {
      const { shape, name } = shapeForParameterCount(p);
      expect(name).toBe('derived');
      expect(shape.head_dim).toBe(128);
      expect(Math.abs(countModelParameters(shape).total / p - 1)).toBeLessThan(0.01);
    }
    expect(() => shapeForParameterCount(-1)).toThrow(/positive/);
  });
});
