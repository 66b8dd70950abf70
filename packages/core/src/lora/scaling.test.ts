import { readFileSync } from 'node:fs';
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

describe("PEFT's get_pattern_key (reference: PEFT 0.21)", () => {
  // scripts/reference/regex-targets.py
  const reference = JSON.parse(
    readFileSync(new URL('./testdata/regex-targets.json', import.meta.url), 'utf8'),
  ) as { pattern_keys: { keys: string[]; name: string; key: string | null }[] };

  it(`picks the same key on ${reference.pattern_keys.length} (keys, module) pairs`, () => {
    const wrong = reference.pattern_keys
      .filter((c) => {
        const dict = Object.fromEntries(c.keys.map((k, i) => [k, i + 1]));
        return (findPatternKey(dict, c.name) ?? null) !== c.key;
      })
      .map((c) => `${JSON.stringify(c.keys)} ${c.name} -> PEFT ${c.key}`);
    expect(wrong).toEqual([]);
    expect(new Set(reference.pattern_keys.map((c) => c.key === null)).size).toBe(2);
  });

  it('refuses a key the linear-time engine cannot run, naming the dict', () => {
    const c = createLoraConfig({
      r: 8,
      lora_alpha: 16,
      alpha_pattern: { '(?<=attn\\.)q_proj': 4 },
    });
    expect(() => loraAlpha(c, 'model.self_attn.q_proj')).toThrow(
      /^alpha_pattern: the regular expression "\(\?<=attn\\\.\)q_proj" \(as PEFT matches it: .*lookbehind/,
    );
  });

  it('a catastrophic key answers at once on a long adversarial name', () => {
    const c = createLoraConfig({ r: 8, lora_alpha: 16, rank_pattern: { '(a|aa)*b': 4 } });
    expect(loraRank(c, `model.${'a'.repeat(100)}`)).toBe(8);
    expect(loraRank(c, `model.${'a'.repeat(100)}b`)).toBe(4);
  });
});
