import { describe, expect, it } from 'vitest';
import { createLoraConfig } from '../lora/config.js';
import { countModelParameters, KNOWN_SHAPES, linearModules } from './model-config.js';
import {
  countLoraParameters,
  formatThousands,
  loraParameterCount,
  trainableParametersLine,
} from './params.js';

describe('LoRA parameter counts (published figures)', () => {
  it('a 4096 x 4096 weight with r = 8: 65,536 trainable parameters, 0.39 % of the weight', () => {
    // 8 x 4096 (A) + 4096 x 8 (B) = 32,768 + 32,768
    expect(loraParameterCount(4096, 4096, 8)).toBe(65_536);
    expect(((100 * 65_536) / (4096 * 4096)).toFixed(2)).toBe('0.39');
  });

  it('GPT-3 175B (96 layers, d = 12288), r = 4 on Wq and Wv: 18,874,368 (LoRA paper)', () => {
    const modules = Array.from({ length: 96 }, (_, l) => [
      { name: `layers.${l}.attn.q`, inFeatures: 12288, outFeatures: 12288, bias: true },
      { name: `layers.${l}.attn.k`, inFeatures: 12288, outFeatures: 12288, bias: true },
      { name: `layers.${l}.attn.v`, inFeatures: 12288, outFeatures: 12288, bias: true },
      { name: `layers.${l}.attn.o`, inFeatures: 12288, outFeatures: 12288, bias: true },
    ]).flat();
    const got = countLoraParameters(
      createLoraConfig({ r: 4, target_modules: ['q', 'v'] }),
      modules,
    );
    // 96 layers x 2 matrices x 4 x (12288 + 12288)
    expect(96 * 2 * 4 * (12288 + 12288)).toBe(18_874_368);
    expect(got.trainable).toBe(18_874_368);
    expect(got.modules).toHaveLength(192);
  });

  it("LLaMA-7B, r = 8 on q_proj, v_proj: PEFT's exact summary line", () => {
    const shape = KNOWN_SHAPES['llama-7b'];
    // Base by hand: embedding 32000 x 4096 = 131,072,000; per layer 4 x 4096^2 (attention)
    // + 3 x 4096 x 11008 (MLP) + 2 x 4096 (norms) = 202,383,360; x 32 = 6,476,267,520;
    // final norm 4,096; lm_head 131,072,000. Total 6,738,415,616.
    expect(countModelParameters(shape).total).toBe(
      131_072_000 + 32 * 202_383_360 + 4096 + 131_072_000,
    );
    expect(countModelParameters(shape).total).toBe(6_738_415_616);
    const lora = countLoraParameters(
      createLoraConfig({ r: 8, target_modules: ['q_proj', 'v_proj'] }),
      linearModules(shape),
    );
    // 32 layers x 2 modules x 8 x (4096 + 4096)
    expect(lora.trainable).toBe(4_194_304);
    expect(trainableParametersLine(lora.trainable, 6_738_415_616 + lora.trainable)).toBe(
      'trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622',
    );
  });

  it('all-linear on a GQA model excludes lm_head; rank_pattern, DoRA and lora_bias add up', () => {
    const shape = KNOWN_SHAPES['tinyllama-1.1b']; // hidden 2048, kv 256, intermediate 5632, 22 layers
    const modules = linearModules(shape);
    const perLayer =
      8 * (2048 + 2048) + // q
      2 * 8 * (2048 + 256) + // k, v
      8 * (2048 + 2048) + // o
      2 * 8 * (2048 + 5632) + // gate, up
      8 * (5632 + 2048); // down
    const all = countLoraParameters(
      createLoraConfig({ r: 8, target_modules: 'all-linear' }),
      modules,
    );
    expect(all.trainable).toBe(22 * perLayer);
    expect(all.modules.some((m) => m.name === 'lm_head')).toBe(false);

    const patterned = countLoraParameters(
      createLoraConfig({
        r: 8,
        target_modules: ['q_proj'],
        rank_pattern: { 'layers.0.self_attn.q_proj': 2 },
        use_dora: true,
        lora_bias: true,
      }),
      modules,
    );
    // layer 0: 2 x 4096 + 2048 (magnitude) + 2048 (bias); others: 8 x 4096 + 4096
    expect(patterned.trainable).toBe(2 * 4096 + 4096 + 21 * (8 * 4096 + 4096));
  });

  it('formats thousands without locale', () => {
    expect(formatThousands(0)).toBe('0');
    expect(formatThousands(999)).toBe('999');
    expect(formatThousands(1000)).toBe('1,000');
    expect(formatThousands(-1234567)).toBe('-1,234,567');
  });
});
