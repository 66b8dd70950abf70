import { readFileSync } from 'node:fs';
import { matmul, toMatrix } from '@lora/core';
import { parseLlamaConfig } from '@lora/runtime-onnx';
import { describe, expect, it } from 'vitest';
import { convertToPlainLora } from '../output/pissa-conversion.js';
import {
  contradictions,
  createLoraSetup,
  loraConfigFromSettings,
  loraSetupToAdapter,
} from './lora-setup.js';

// The tiny LLaMA of the trajectory test: hidden 32, intermediate 64, 4 heads on 2 kv heads, 2 layers.
const config = parseLlamaConfig(
  JSON.parse(
    readFileSync(new URL('../testdata/trajectory/model/config.json', import.meta.url), 'utf8'),
  ),
);

describe('createLoraSetup', () => {
  it('matches targets with PEFT rules: list, all-linear (saved expanded), regex', async () => {
    const names = async (targets: string | string[]) => {
      const c = loraConfigFromSettings({ targets }, config, null);
      return {
        config: c,
        modules: (await createLoraSetup(config, c, { seed: 0 })).modules.map((m) => m.module),
      };
    };
    expect((await names(['q_proj', 'v_proj'])).modules).toEqual([
      'model.layers.0.self_attn.q_proj',
      'model.layers.0.self_attn.v_proj',
      'model.layers.1.self_attn.q_proj',
      'model.layers.1.self_attn.v_proj',
    ]);
    const all = await names('all-linear');
    expect(all.modules).toHaveLength(14);
    expect(all.config.target_modules).toEqual([
      'down_proj',
      'gate_proj',
      'k_proj',
      'o_proj',
      'q_proj',
      'up_proj',
      'v_proj',
    ]);
    expect((await names('.*\\.1\\.mlp\\.(up|down)_proj')).modules).toEqual([
      'model.layers.1.mlp.up_proj',
      'model.layers.1.mlp.down_proj',
    ]);
  });

  it('default init: A kaiming-uniform within 1/sqrt(in), B zero, reproducible per seed; shapes in PEFT layout', async () => {
    const c = loraConfigFromSettings({ rank: 4, targets: ['down_proj'] }, config, null);
    const a = await createLoraSetup(config, c, { seed: 5 });
    const b = await createLoraSetup(config, c, { seed: 5 });
    const other = await createLoraSetup(config, c, { seed: 6 });
    const m = a.modules[0];
    expect(m.A.shape).toEqual([4, 64]);
    expect(m.B.shape).toEqual([32, 4]);
    expect(m.A.name).toBe('base_model.model.model.layers.0.mlp.down_proj.lora_A.weight');
    expect(m.scaling).toBe(16 / 4);
    expect(Math.max(...m.A.data.map(Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(64));
    expect(m.B.data.every((x) => x === 0)).toBe(true);
    expect(Array.from(b.modules[0].A.data)).toEqual(Array.from(m.A.data));
    expect(Array.from(other.modules[0].A.data)).not.toEqual(Array.from(m.A.data));
  });

  it('refuses targets that match nothing and ranks above the layer', async () => {
    await expect(
      createLoraSetup(config, loraConfigFromSettings({ targets: ['qkv'] }, config, null), {
        seed: 0,
      }),
    ).rejects.toMatchObject({
      code: 'TARGETS_NO_MATCH',
    });
    await expect(
      createLoraSetup(
        config,
        loraConfigFromSettings({ rank: 17, targets: ['k_proj'] }, config, null),
        { seed: 0 },
      ),
    ).rejects.toMatchObject({
      code: 'RANK_TOO_LARGE',
      message: expect.stringMatching(/it is \[16, 32\], so the rank can be at most 16/),
    });
  });

  it('names the flags an init adapter contradicts', () => {
    const theirs = loraConfigFromSettings(
      { rank: 4, alpha: 8, targets: 'all-linear', dropout: 0 },
      config,
      null,
    );
    expect(contradictions({ rank: 4, targets: 'all-linear' }, theirs, config)).toEqual([]);
    expect(contradictions({ rank: 8, alpha: 8, targets: ['q_proj'] }, theirs, config)).toEqual([
      '--rank 8 but the adapter has 4',
      '--targets ["q_proj"] but the adapter targets ["down_proj","gate_proj","k_proj","o_proj","q_proj","up_proj","v_proj"]',
    ]);
  });

  it('PiSSA trains on the residual base and saves a rank-2r LoRA on the original base with the same delta', async () => {
    const W = Float32Array.from({ length: 32 * 32 }, (_, i) => Math.sin(i * 0.37) * 0.3);
    const c = loraConfigFromSettings(
      { rank: 2, alpha: 4, targets: ['o_proj'], init: 'pissa' },
      config,
      null,
    );
    const setup = await createLoraSetup(config, c, {
      seed: 0,
      readBase: async () => ({ dtype: 'f32', shape: [32, 32], data: W }),
    });
    const m = setup.modules[0];
    const initial = new Map(
      setup.modules.map((x) => [x.module, { A: x.A.data.slice(), B: x.B.data.slice() }]),
    );
    const residual = setup.baseOverrides.get(`${m.module}.weight`)!.data;
    // "Training" moves A and B; the effective weight is residual + s B A.
    m.A.data.forEach((v, i) => {
      m.A.data[i] = v + 0.01 * Math.cos(i);
    });
    m.B.data.forEach((v, i) => {
      m.B.data[i] = v - 0.02 * Math.sin(i);
    });
    const trained = loraSetupToAdapter(setup);
    const plain = convertToPlainLora(trained, initial);
    expect(plain.config.r).toBe(4);
    const s = m.scaling;
    expect(plain.config.lora_alpha / plain.config.r).toBe(s);
    const pm = plain.modules.get(m.module)!;
    const effective = matmul(
      toMatrix(Float64Array.from(m.B.data), 32, 2),
      toMatrix(Float64Array.from(m.A.data), 2, 32),
      { dtype: 'f64' },
    ).data;
    const converted = matmul(
      toMatrix(Float64Array.from(pm.B.data as Float32Array), 32, 4),
      toMatrix(Float64Array.from(pm.A.data as Float32Array), 4, 32),
      {
        dtype: 'f64',
      },
    ).data;
    for (let i = 0; i < W.length; i++) {
      expect(Math.abs(W[i] + s * converted[i] - (residual[i] + s * effective[i]))).toBeLessThan(
        1e-6,
      );
    }
  });
});
