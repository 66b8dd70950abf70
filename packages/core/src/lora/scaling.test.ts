import { describe, expect, it } from 'vitest';
import { createLoraConfig } from './config.js';
import { findPatternKey, loraAlpha, loraRank, loraScaling } from './scaling.js';

describe('loraScaling', () => {
  it('alpha / r, and alpha / sqrt(r) with rsLoRA', () => {
    expect(loraScaling(createLoraConfig({ r: 8, lora_alpha: 16 }))).toBe(2);
    expect(loraScaling(createLoraConfig({ r: 1, lora_alpha: 32 }))).toBe(32); // open-calm fixture
    expect(loraScaling(createLoraConfig({ r: 16, lora_alpha: 16, use_rslora: true }))).toBe(4);
    expect(loraScaling(createLoraConfig({ r: 36, lora_alpha: 32 }))).toBeCloseTo(32 / 36, 15);
  });

  it('rank_pattern and alpha_pattern apply per module, independently', () => {
    const c = createLoraConfig({
      r: 8,
      lora_alpha: 16,
      rank_pattern: { 'layers.0.self_attn.q_proj': 4, v_proj: 2 },
      alpha_pattern: { q_proj: 32 },
    });
    expect(loraRank(c, 'model.layers.0.self_attn.q_proj')).toBe(4);
    expect(loraRank(c, 'model.layers.1.self_attn.q_proj')).toBe(8);
    expect(loraScaling(c, 'model.layers.0.self_attn.q_proj')).toBe(32 / 4);
    expect(loraScaling(c, 'model.layers.1.self_attn.q_proj')).toBe(32 / 8);
    expect(loraScaling(c, 'model.layers.1.self_attn.v_proj')).toBe(16 / 2);
    expect(loraScaling(c, 'model.layers.1.mlp.up_proj')).toBe(2);
    expect(loraScaling(c)).toBe(2);
    expect(loraAlpha(c, 'x.k_proj')).toBe(16);
  });

  it('matches whole dotted parts at the end, and the first key in dict order wins', () => {
    expect(findPatternKey({ proj: 1 }, 'model.q_proj')).toBeUndefined();
    expect(findPatternKey({ q_proj: 1 }, 'model.q_proj.extra')).toBeUndefined();
    expect(findPatternKey({ 'self_attn\\..*': 1, q_proj: 2 }, 'model.self_attn.q_proj')).toBe(
      'self_attn\\..*',
    );
    expect(findPatternKey({ q_proj: 2, 'self_attn\\..*': 1 }, 'model.self_attn.q_proj')).toBe(
      'q_proj',
    );
    expect(
      findPatternKey(
        { 'layers\\.(0|1)\\.self_attn\\.q_proj': 1 },
        'model.layers.1.self_attn.q_proj',
      ),
    ).toBeDefined();
    expect(
      findPatternKey({ 'model.layers.0.self_attn.q_proj': 1 }, 'model.layers.0.self_attn.q_proj'),
    ).toBeDefined();
  });
});
