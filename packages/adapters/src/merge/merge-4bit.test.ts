import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors, SafetensorsFile, toFloat64Array, writeSafetensors } from '@lora/core';
import { dequantizeBnb4, findBnb4Weights, quantizeModel, readBnb4Weight } from '@lora/quant';
import { afterAll, describe, expect, it } from 'vitest';
import { randomTensor, syntheticAdapter } from '../test-utils/synthetic.js';
import { mergeIntoModel } from './merge-model.js';
import { unmergeModel } from './unmerge-model.js';

const tmpDirs: string[] = [];
afterAll(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
});

async function quantizedBase() {
  const dir = await mkdtemp(join(tmpdir(), 'lora-merge-4bit-'));
  tmpDirs.push(dir);
  const full = join(dir, 'full');
  await mkdir(full);
  await writeSafetensors(
    join(full, 'model.safetensors'),
    new Map([
      ['model.layers.0.self_attn.q_proj.weight', randomTensor(1, [128, 256], 'f16')],
      ['model.layers.0.mlp.up_proj.weight', randomTensor(2, [192, 128], 'f16')],
      ['model.norm.weight', randomTensor(3, [128], 'f16')],
    ]),
  );
  await writeFile(join(full, 'config.json'), '{"model_type": "llama"}\n');
  const q4 = join(dir, 'nf4');
  await quantizeModel(full, q4, { format: 'nf4', doubleQuant: true, layout: 'bnb' });
  const adapter = syntheticAdapter(
    { 'model.layers.0.self_attn.q_proj': { in: 256, out: 128 } },
    { r: 8, lora_alpha: 16 },
    4,
  );
  return { dir, q4, adapter };
}

describe('merging into a 4-bit (bitsandbytes nf4, double quant) base', () => {
  it('dequantizes, merges, writes full precision (no quantization_config); unmerge restores the 4-bit files', async () => {
    const { dir, q4, adapter } = await quantizedBase();
    const names = (await SafetensorsFile.open(join(q4, 'model.safetensors')).then(async (f) => {
      const n = f.names();
      await f.close();
      return n;
    })) as string[];
    expect(findBnb4Weights(names).sort()).toEqual([
      'model.layers.0.mlp.up_proj.weight',
      'model.layers.0.self_attn.q_proj.weight',
    ]);

    const out = join(dir, 'merged');
    const report = await mergeIntoModel(q4, [{ adapter }], out);
    expect(report.quantized.length).toBe(2);
    const { tensors } = await readSafetensors(join(out, 'model.safetensors'));
    expect([...tensors.keys()].sort()).toEqual([
      'model.layers.0.mlp.up_proj.weight',
      'model.layers.0.self_attn.q_proj.weight',
      'model.norm.weight',
    ]);

    // Reference: quant's dequantization of the stored 4-bit weight, plus s·B·A in float64.
    const qfile = await SafetensorsFile.open(join(q4, 'model.safetensors'));
    const w = await readBnb4Weight(qfile, 'model.layers.0.self_attn.q_proj.weight');
    await qfile.close();
    const W = dequantizeBnb4(w);
    const m = adapter.modules.get('model.layers.0.self_attn.q_proj')!;
    const A = toFloat64Array(m.A);
    const B = toFloat64Array(m.B);
    const merged = toFloat64Array(tensors.get('model.layers.0.self_attn.q_proj.weight')!);
    expect(tensors.get('model.layers.0.self_attn.q_proj.weight')!.dtype).toBe('f16'); // the original dtype
    let worst = 0;
    for (let o = 0; o < 128; o++)
      for (let i = 0; i < 256; i++) {
        let acc = 0;
        for (let k = 0; k < 8; k++) acc += B[o * 8 + k] * A[k * 256 + i];
        const want = W[o * 256 + i] + 2 * acc;
        worst = Math.max(
          worst,
          Math.abs(merged[o * 256 + i] - want) / Math.max(Math.abs(want), 2 ** -14),
        );
      }
    expect(worst).toBeLessThanOrEqual(2 ** -11); // one f16 rounding
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(config.quantization_config).toBeUndefined();
    expect(config.model_type).toBe('llama');

    const restored = join(dir, 'restored');
    await unmergeModel(out, [{ adapter }], restored);
    for (const f of await readdir(q4))
      expect((await readFile(join(restored, f))).equals(await readFile(join(q4, f))), f).toBe(true);
  });

  it('--requantize: the merged weight is quantized again, with an error report, and untouched 4-bit weights are copied', async () => {
    const { dir, q4, adapter } = await quantizedBase();
    const out = join(dir, 'requant');
    const report = await mergeIntoModel(q4, [{ adapter }], out, { requantize: true });
    expect(report.requantizationError!.perTensor.map((t) => t.tensor)).toEqual([
      'model.layers.0.self_attn.q_proj.weight',
    ]);
    expect(report.requantizationError!.total.rmse).toBeGreaterThan(0);
    expect(report.requantizationError!.total.snrDb).toBeGreaterThan(10);
    const a = await SafetensorsFile.open(join(q4, 'model.safetensors'));
    const b = await SafetensorsFile.open(join(out, 'model.safetensors'));
    expect(b.names().sort()).toEqual(a.names().sort());
    const up = 'model.layers.0.mlp.up_proj.weight';
    expect(Buffer.from(await b.readBytes(up)).equals(Buffer.from(await a.readBytes(up)))).toBe(
      true,
    );
    const q = 'model.layers.0.self_attn.q_proj.weight';
    expect(Buffer.from(await b.readBytes(q)).equals(Buffer.from(await a.readBytes(q)))).toBe(false);
    await a.close();
    await b.close();
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(config.quantization_config).toBeDefined();
    const restored = join(dir, 'restored');
    await unmergeModel(out, [{ adapter }], restored);
    for (const f of await readdir(q4))
      expect((await readFile(join(restored, f))).equals(await readFile(join(q4, f))), f).toBe(true);
  });
});
