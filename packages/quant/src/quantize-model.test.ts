import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createRng,
  f32ToBf16Array,
  f32ToF16Array,
  SafetensorsFile,
  type Tensor,
  tensor,
  writeSafetensors,
} from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import { dequantizeBnb4 } from './bnb4-weight.js';
import { dequantizeModel } from './dequantize-model.js';
import { dequantizeMatMulNBits } from './nbits.js';
import { findOrtWeights, readOrtWeight } from './ort-layout.js';
import { isDefaultQuantTarget, quantizeModel } from './quantize-model.js';
import { dequantizeWeight, dequantizeWeightF32, quantizeWeight } from './quantized-weight.js';

const root = await mkdtemp(join(tmpdir(), 'lora-quant-model-'));
afterAll(() => rm(root, { recursive: true, force: true }));

const rng = createRng(61);
const w = (shape: number[]) =>
  tensor('f32', shape, rng.normalArray(shape[0] * shape[1], 0, 0.02, 'f32'));

describe('quantizeModel', () => {
  it('default targets: 2-D linear weights only', () => {
    expect(isDefaultQuantTarget('model.layers.0.self_attn.q_proj.weight', 'f32', [4, 4])).toBe(
      true,
    );
    expect(isDefaultQuantTarget('transformer.h.0.mlp.c_fc.weight', 'bf16', [4, 4])).toBe(true);
    for (const name of [
      'model.embed_tokens.weight',
      'lm_head.weight',
      'output.weight',
      'model.norm.weight',
      'transformer.wte.weight',
      'transformer.ln_f.weight',
    ]) {
      expect(isDefaultQuantTarget(name, 'f32', [4, 4]), name).toBe(false);
    }
    expect(isDefaultQuantTarget('model.layers.0.self_attn.q_proj.bias', 'f32', [4, 4])).toBe(false);
    expect(isDefaultQuantTarget('model.layers.0.self_attn.q_proj.weight', 'f32', [16])).toBe(false);
    expect(isDefaultQuantTarget('model.layers.0.self_attn.q_proj.weight', 'i8', [4, 4])).toBe(
      false,
    );
  });

  it('sharded folder, nf4 in the onnxruntime MatMulBnb4 layout: shards keep their names, the index is rewritten', async () => {
    const dir = join(root, 'sharded');
    await mkdir(dir);
    const a = new Map<string, Tensor>([['model.layers.0.mlp.up_proj.weight', w([40, 24])]]);
    const b = new Map<string, Tensor>([
      ['model.layers.1.mlp.up_proj.weight', w([24, 40])],
      ['model.norm.weight', tensor('f32', [24])],
    ]);
    await writeSafetensors(join(dir, 'model-00001-of-00002.safetensors'), a);
    await writeSafetensors(join(dir, 'model-00002-of-00002.safetensors'), b);
    await writeFile(
      join(dir, 'model.safetensors.index.json'),
      JSON.stringify({
        metadata: { total_size: 1 },
        weight_map: { 'model.layers.0.mlp.up_proj.weight': 'model-00001-of-00002.safetensors' },
      }),
    );
    await writeFile(join(dir, 'config.json'), '{"model_type":"llama"}');
    const out = join(root, 'sharded-out');
    const report = await quantizeModel(dir, out, { format: 'nf4', layout: 'ort', blockSize: 32 });
    expect(report.tensors.length).toBe(2);
    expect((await readdir(out)).sort()).toEqual([
      'config.json',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
      'model.safetensors.index.json',
    ]);
    const index = JSON.parse(await readFile(join(out, 'model.safetensors.index.json'), 'utf8'));
    expect(index.weight_map['model.layers.1.mlp.up_proj.weight.absmax']).toBe(
      'model-00002-of-00002.safetensors',
    );
    expect(index.weight_map['model.layers.0.mlp.up_proj.weight']).toBe(
      'model-00001-of-00002.safetensors',
    );
    const f = await SafetensorsFile.open(join(out, 'model-00002-of-00002.safetensors'));
    try {
      expect(findOrtWeights(f.names())).toEqual(['model.layers.1.mlp.up_proj.weight']);
      const o = await readOrtWeight(f, 'model.layers.1.mlp.up_proj.weight');
      expect(o.op).toBe('MatMulBnb4');
      const expected = quantizeWeight(
        b.get('model.layers.1.mlp.up_proj.weight')!.data as Float32Array,
        [24, 40],
        { format: 'nf4', blockSize: 32 },
      );
      expect([...dequantizeBnb4(o.weight as never)]).toEqual([...dequantizeWeightF32(expected)]);
    } finally {
      await f.close();
    }
    // And back: dequantize restores plain tensors and the index.
    const back = join(root, 'sharded-back');
    const d = await dequantizeModel(out, back, { dtype: 'f32' });
    expect(d.tensors.length).toBe(2);
    const index2 = JSON.parse(await readFile(join(back, 'model.safetensors.index.json'), 'utf8'));
    expect(Object.keys(index2.weight_map).sort()).toEqual([
      'model.layers.0.mlp.up_proj.weight',
      'model.layers.1.mlp.up_proj.weight',
      'model.norm.weight',
    ]);
  });

  it('int4 MatMulNBits layout round-trips through the file; failure leaves no output and no temporary folder', async () => {
    const dir = join(root, 'one');
    await mkdir(dir);
    const t = w([8, 100]);
    await writeSafetensors(join(dir, 'model.safetensors'), new Map([['x.q_proj.weight', t]]));
    const out = join(root, 'one-out');
    await quantizeModel(dir, out, { format: 'int4' });
    const f = await SafetensorsFile.open(join(out, 'model.safetensors'));
    const o = await readOrtWeight(f, 'x.q_proj.weight');
    await f.close();
    expect(o.op).toBe('MatMulNBits');
    const expected = quantizeWeight(t.data as Float32Array, [8, 100], { format: 'int4' });
    expect([...dequantizeMatMulNBits(o.weight as never)]).toEqual([
      ...dequantizeWeightF32(expected),
    ]);

    await expect(quantizeModel(dir, out, { format: 'int4' })).rejects.toThrowError(/exists/);
    const bad = join(root, 'bad');
    await mkdir(bad);
    const poisoned = w([8, 100]);
    (poisoned.data as Float32Array)[799] = Number.POSITIVE_INFINITY;
    await writeSafetensors(
      join(bad, 'model.safetensors'),
      new Map([['x.q_proj.weight', poisoned]]),
    );
    await expect(
      quantizeModel(bad, join(root, 'bad-out'), { format: 'uint4' }),
    ).rejects.toThrowError(/x\.q_proj\.weight: value Infinity at flat index 799/);
    expect(existsSync(join(root, 'bad-out'))).toBe(false);
    expect((await readdir(root)).some((n) => n.includes('bad-out'))).toBe(false);
  });
});

describe('quantizeModel refuses inputs whose output would be useless, writing nothing', () => {
  it('an already 4-bit folder (bnb and ort layouts), an adapter folder or file, a model with nothing to quantize', async () => {
    const model = join(root, 'refuse-model');
    await mkdir(model);
    await writeSafetensors(
      join(model, 'model.safetensors'),
      new Map([
        ['model.layers.0.mlp.up_proj.weight', w([8, 64])],
        ['model.embed_tokens.weight', w([10, 8])],
      ]),
    );
    await writeFile(join(model, 'config.json'), JSON.stringify({ model_type: 'llama' }));
    const cases: [string, string, RegExp][] = [];
    for (const layout of ['bnb', 'ort'] as const) {
      const q = join(root, `refuse-${layout}`);
      await quantizeModel(model, q, { format: 'nf4', layout });
      // Without the config's quantization_config, the tensors still say it: both are checked.
      const bare = join(root, `refuse-${layout}-bare`);
      await mkdir(bare);
      await writeFile(
        join(bare, 'model.safetensors'),
        await readFile(join(q, 'model.safetensors')),
      );
      cases.push([q, 'QUANT_ALREADY_QUANTIZED', /config.json has a quantization_config/]);
      cases.push([
        bare,
        'QUANT_ALREADY_QUANTIZED',
        /already holds 4-bit weights \(e.g. "model.layers.0.mlp.up_proj.weight"\)/,
      ]);
    }
    const adapter = join(root, 'refuse-adapter');
    await mkdir(adapter);
    const lora = new Map([
      ['base_model.model.model.layers.0.mlp.up_proj.lora_A.weight', w([4, 64])],
      ['base_model.model.model.layers.0.mlp.up_proj.lora_B.weight', w([8, 4])],
    ]);
    await writeSafetensors(join(adapter, 'adapter_model.safetensors'), lora);
    await writeFile(join(adapter, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA' }));
    cases.push([
      adapter,
      'QUANT_ADAPTER_INPUT',
      /is a LoRA adapter folder \(adapter_config.json\)/,
    ]);
    cases.push([
      join(adapter, 'adapter_model.safetensors'),
      'QUANT_ADAPTER_INPUT',
      /is a LoRA adapter \("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"\)/,
    ]);
    const nothing = join(root, 'refuse-nothing');
    await mkdir(nothing);
    await writeSafetensors(
      join(nothing, 'model.safetensors'),
      new Map([['model.embed_tokens.weight', w([10, 8])]]),
    );
    cases.push([nothing, 'QUANT_NOTHING', /no tensor was selected for quantization/]);
    cases.push([join(nothing, 'model.safetensors'), 'QUANT_NOTHING', /no tensor was selected/]);
    for (const [input, code, message] of cases) {
      for (const out of [join(root, 'refused-out'), join(root, 'refused-out.safetensors')]) {
        await expect(quantizeModel(input, out, { format: 'nf4' }), input).rejects.toMatchObject({
          code,
          message: expect.stringMatching(message),
        });
        expect(existsSync(out), out).toBe(false);
      }
    }
    expect((await readdir(root)).some((n) => n.startsWith('refused-out'))).toBe(false);

    // The other way round: dequantizing a model without 4-bit weights would only copy it.
    for (const input of [model, join(model, 'model.safetensors')]) {
      for (const out of [join(root, 'refused-deq'), join(root, 'refused-deq.safetensors')]) {
        await expect(dequantizeModel(input, out), input).rejects.toMatchObject({
          code: 'QUANT_NOTHING',
          message: expect.stringMatching(/holds no 4-bit weights/),
        });
        expect(existsSync(out), out).toBe(false);
      }
    }
  });
});

describe('dequantizeWeight', () => {
  it('f16 and bf16 are the float32 dequantization rounded to nearest even', () => {
    const v = createRng(62).normalArray(300, 0, 1, 'f32');
    for (const format of ['nf4', 'uint4'] as const) {
      const q = quantizeWeight(v, [3, 100], { format, blockSize: 32 });
      const exact = dequantizeWeightF32(q);
      expect([...dequantizeWeight(q, 'f16')]).toEqual([...f32ToF16Array(exact)]);
      expect([...dequantizeWeight(q, 'bf16')]).toEqual([...f32ToBf16Array(exact)]);
      expect(() => dequantizeWeight(q, 'i8' as never)).toThrowError(/f32, f16 or bf16/);
    }
  });
});

describe('measureQuantizationError', () => {
  it('chunked measurement equals measuring against a full dequantization', async () => {
    const { measureError } = await import('./error-report.js');
    const { measureQuantizationError, storedBits } = await import('./quantized-weight.js');
    const v = createRng(63).normalArray(7 * 333, 0, 1, 'f32');
    for (const format of ['nf4', 'fp4', 'int4', 'uint4'] as const) {
      const q = quantizeWeight(v, [7, 333], {
        format,
        blockSize: 32,
        doubleQuant: format === 'nf4',
      });
      const full = measureError(v, dequantizeWeightF32(q), storedBits(q));
      const chunked = measureQuantizationError(v, q, 100); // chunks far smaller than the tensor
      expect(chunked.count).toBe(full.count);
      expect(chunked.maxAbsError).toBe(full.maxAbsError);
      expect(chunked.rmse).toBeCloseTo(full.rmse, 14);
      expect(chunked.bitsPerParameter).toBe(full.bitsPerParameter);
    }
  });
});
