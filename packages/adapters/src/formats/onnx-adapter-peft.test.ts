import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLoraConfig, f32, fromF16Bits, loraScaling } from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import type { Adapter } from '../adapter.js';
import { loadPeftAdapter } from '../peft/load.js';
import { HAVE_PEFT_FIXTURES, PEFT_FIXTURES } from '../test-utils/fixtures.js';
import { decodeOnnxAdapter, encodeOnnxAdapter } from './onnx-adapter.js';
import {
  adapterFromOnnxParameters,
  adapterToOnnxParameters,
  genaiModuleName,
  loadOnnxAdapter,
  ONNX_ADAPTER_METADATA,
  saveOnnxAdapter,
} from './onnx-adapter-peft.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** A small adapter: two modules of different ranks, rslora and an alpha_pattern entry. */
function synthetic(): Adapter {
  const config = createLoraConfig({
    r: 2,
    lora_alpha: 6,
    use_rslora: true,
    rank_pattern: { down_proj: 3 },
    alpha_pattern: { down_proj: 5 },
    target_modules: ['q_proj', 'down_proj'],
  });
  const vals = (n: number, k: number) =>
    Array.from({ length: n }, (_, i) => Math.sin(i * 1.7 + k) / 3);
  return {
    config,
    modules: new Map([
      [
        'model.layers.0.self_attn.q_proj',
        { A: f32([2, 4], vals(8, 1)), B: f32([5, 2], vals(10, 2)) },
      ],
      [
        'model.layers.1.mlp.down_proj',
        { A: f32([3, 5], vals(15, 3)), B: f32([4, 3], vals(12, 4)) },
      ],
    ]),
    modulesToSave: new Map(),
  };
}

describe('PEFT adapter <-> .onnx_adapter', () => {
  it('lays A out as [in, r] and B as (s B)^T [r, out] under genai names', () => {
    const adapter = synthetic();
    const file = decodeOnnxAdapter(encodeOnnxAdapter(adapterToOnnxParameters(adapter)));
    expect([...file.parameters.keys()]).toEqual([
      'model.layers.0.attn.q_proj.lora_A.MatMul.weight',
      'model.layers.0.attn.q_proj.lora_B.MatMul.weight',
      'model.layers.1.mlp.down_proj.lora_A.MatMul.weight',
      'model.layers.1.mlp.down_proj.lora_B.MatMul.weight',
    ]);
    // rslora: s = alpha / sqrt(r): q_proj 6 / sqrt(2), down_proj (patterns) 5 / sqrt(3).
    const sq = 6 / Math.sqrt(2);
    const sd = 5 / Math.sqrt(3);
    const q = adapter.modules.get('model.layers.0.self_attn.q_proj')!;
    const a = file.parameters.get('model.layers.0.attn.q_proj.lora_A.MatMul.weight')!;
    const b = file.parameters.get('model.layers.0.attn.q_proj.lora_B.MatMul.weight')!;
    expect(a.shape).toEqual([4, 2]);
    expect(b.shape).toEqual([2, 5]);
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < 4; j++) expect(a.data[j * 2 + i]).toBe(q.A.data[i * 4 + j]);
      for (let o = 0; o < 5; o++)
        expect(b.data[i * 5 + o]).toBe(Math.fround(sq * Number(q.B.data[o * 2 + i])));
    }
    const d = adapter.modules.get('model.layers.1.mlp.down_proj')!;
    const bd = file.parameters.get('model.layers.1.mlp.down_proj.lora_B.MatMul.weight')!;
    expect(bd.shape).toEqual([3, 4]);
    expect(bd.data[1 * 4 + 2]).toBe(Math.fround(sd * Number(d.B.data[2 * 3 + 1])));
  });

  it('without metadata reads back as alpha = r (s = 1) with the scaled B: the same delta', () => {
    const adapter = synthetic();
    const back = adapterFromOnnxParameters({ parameters: adapterToOnnxParameters(adapter) });
    expect(back.config.r).toBe(2);
    for (const [module, m] of adapter.modules) {
      const got = back.modules.get(module)!;
      expect(loraScaling(back.config, module)).toBe(1);
      expect(got.A).toEqual(m.A);
      const s = loraScaling(adapter.config, module);
      expect([...got.B.data]).toEqual([...m.B.data].map((x) => Math.fround(s * Number(x))));
    }
  });

  it('with metadata restores the config exactly and B within the rounding of s B / s', () => {
    const adapter = synthetic();
    const params = adapterToOnnxParameters(adapter, { metadata: true });
    expect(params.get(ONNX_ADAPTER_METADATA)?.dtype).toBe('u8');
    const back = adapterFromOnnxParameters({ parameters: params });
    expect(back.config).toEqual(adapter.config);
    for (const [module, m] of adapter.modules) {
      const got = back.modules.get(module)!;
      expect(got.A).toEqual(m.A);
      m.B.data.forEach((x, i) => {
        // One f32 rounding of s*B, then an exact-in-f64 division rounded once: within 1 ulp.
        expect(Math.abs(Number(got.B.data[i]) - Number(x))).toBeLessThanOrEqual(
          Math.abs(Number(x)) * 2 ** -23,
        );
      });
    }
  });

  it('writes f16 files when asked (genai fp16 models)', () => {
    const adapter = synthetic();
    const params = adapterToOnnxParameters(adapter, { dtype: 'f16' });
    const a = params.get('model.layers.0.attn.q_proj.lora_A.MatMul.weight')!;
    expect(a.dtype).toBe('f16');
    const q = adapter.modules.get('model.layers.0.self_attn.q_proj')!;
    for (let i = 0; i < 2; i++)
      for (let j = 0; j < 4; j++) {
        const x = Number(q.A.data[i * 4 + j]);
        expect(Math.abs(fromF16Bits(a.data[j * 2 + i] as number) - x)).toBeLessThanOrEqual(
          Math.abs(x) * 2 ** -11,
        );
      }
  });

  it('refuses what genai cannot run and files that are not LoRA pairs', () => {
    const dora = synthetic();
    const q = dora.modules.get('model.layers.0.self_attn.q_proj')!;
    (dora.modules as Map<string, unknown>).set('model.layers.0.self_attn.q_proj', {
      ...q,
      magnitude: f32([5]),
    });
    expect(() => adapterToOnnxParameters(dora)).toThrow(/DoRA/);
    const saved = { ...synthetic(), modulesToSave: new Map([['score.weight', f32([1, 1])]]) };
    expect(() => adapterToOnnxParameters(saved)).toThrow(/modules_to_save/);
    const params = adapterToOnnxParameters(synthetic());
    params.delete('model.layers.0.attn.q_proj.lora_B.MatMul.weight');
    expect(() => adapterFromOnnxParameters({ parameters: params })).toThrow(
      expect.objectContaining({ code: 'ONNX_ADAPTER_UNPAIRED' }),
    );
    expect(() =>
      adapterFromOnnxParameters({ parameters: new Map([['input_ids', f32([1])]]) }),
    ).toThrow(/not a LoRA factor/);
  });

  it('maps LLaMA attention names to genai names and back', () => {
    expect(genaiModuleName('model.layers.12.self_attn.v_proj')).toBe('model.layers.12.attn.v_proj');
    expect(genaiModuleName('model.layers.12.mlp.up_proj')).toBe('model.layers.12.mlp.up_proj');
    expect(genaiModuleName('transformer.h.0.attn.c_attn')).toBe('transformer.h.0.attn.c_attn');
  });
});

describe.skipIf(!HAVE_PEFT_FIXTURES)(
  'a real PEFT adapter through .onnx_adapter (qwen2.5-0.5b-qv)',
  () => {
    it('round-trips PEFT -> .onnx_adapter file -> PEFT, with and without metadata', async () => {
      const { adapter } = await loadPeftAdapter(join(PEFT_FIXTURES, 'qwen2.5-0.5b-qv'));
      const dir = await mkdtemp(join(tmpdir(), 'onnx-adapter-peft-'));
      dirs.push(dir);
      const plain = join(dir, 'plain.onnx_adapter');
      const withMeta = join(dir, 'meta.onnx_adapter');
      await saveOnnxAdapter(plain, adapter);
      await saveOnnxAdapter(withMeta, adapter, { metadata: true });

      // SOURCES.md: 24 layers x (q, v), r = 8, q_proj B [896, 8], v_proj B [128, 8], alpha 16 (s = 2).
      const raw = decodeOnnxAdapter(await readFile(plain));
      expect(raw.parameters.size).toBe(96);
      expect(raw.parameters.get('model.layers.0.attn.q_proj.lora_A.MatMul.weight')?.shape).toEqual([
        896, 8,
      ]);
      expect(raw.parameters.get('model.layers.23.attn.v_proj.lora_B.MatMul.weight')?.shape).toEqual(
        [8, 128],
      );

      const a = await loadOnnxAdapter(plain);
      const b = await loadOnnxAdapter(withMeta);
      expect(b.config.lora_alpha).toBe(16);
      expect(b.config.r).toBe(8);
      expect(a.config.lora_alpha).toBe(8); // alpha = r once s is baked in
      expect(a.modules.size).toBe(48);
      let mismatches = 0;
      for (const [module, m] of adapter.modules) {
        const pa = a.modules.get(module)!;
        const pb = b.modules.get(module)!;
        expect(pa.A.shape).toEqual(m.A.shape);
        for (let i = 0; i < m.A.data.length; i++) {
          if (pa.A.data[i] !== m.A.data[i] || pb.A.data[i] !== m.A.data[i]) mismatches++;
        }
        for (let i = 0; i < m.B.data.length; i++) {
          const x = Number(m.B.data[i]);
          if (pa.B.data[i] !== 2 * x) mismatches++; // s = 2 is a power of two: baking is exact
          if (pb.B.data[i] !== x) mismatches++;
        }
      }
      expect(mismatches).toBe(0);
    });
  },
);
