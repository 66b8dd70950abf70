import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, type Tensor, toFloat64Array } from '@lora/core';
import { afterEach, describe, expect, it } from 'vitest';
import { combineAdapters } from './combine.js';
import { describeAdapter, peftParameterCounts } from './describe.js';
import { mergeIntoModel } from './merge/merge-model.js';
import { unmergeModel } from './merge/unmerge-model.js';
import { loadPeftAdapter } from './peft/load.js';

// Values written by the real PEFT 0.21 (scripts/reference/fidelity.py); no Python needed here.
const DATA = fileURLToPath(new URL('./testdata/', import.meta.url));

function maxAbsDiff(a: Tensor, b: Tensor): number {
  expect(a.shape).toEqual(b.shape);
  const x = toFloat64Array(a);
  const y = toFloat64Array(b);
  let d = 0;
  for (let i = 0; i < x.length; i++) d = Math.max(d, Math.abs(x[i] - y[i]));
  return d;
}

const tiesDir = join(DATA, 'peft-ties');
const cases = JSON.parse(await readFile(join(tiesDir, 'cases.json'), 'utf8')) as {
  density: number;
  cases: { name: string; weights: number[]; majority_sign_method: 'total' | 'frequency' }[];
};
const { tensors: expected } = await readSafetensors(join(tiesDir, 'expected.safetensors'));
const first = (await loadPeftAdapter(join(tiesDir, 'first'))).adapter;
const second = (await loadPeftAdapter(join(tiesDir, 'second'))).adapter;

describe('PEFT add_weighted_adapter ties (reference values from PEFT)', () => {
  it.each(cases.cases)('$name: A and B equal PEFT to float32 rounding', (c) => {
    const { adapter } = combineAdapters(
      [
        { adapter: first, weight: c.weights[0] },
        { adapter: second, weight: c.weights[1] },
      ],
      { method: 'ties', density: cases.density, majoritySignMethod: c.majority_sign_method },
    );
    for (const module of ['q', 'v']) {
      const m = adapter.modules.get(module)!;
      for (const [part, got] of [
        ['lora_A', m.A],
        ['lora_B', m.B],
      ] as const) {
        const want = expected.get(`${c.name}.${module}.${part}`)!;
        // PEFT computes in float32, this in float64: agreement to a few float32 ulps of ~1.
        expect(maxAbsDiff(got, want), `${c.name} ${module} ${part}`).toBeLessThan(1e-6);
      }
    }
  });
});

describe('PEFT save_embedding_layers: base_layer.weight is the new base embedding', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });

  it('lora merge equals PEFT merge_and_unload, and unmerge restores the base bit for bit', async () => {
    const root = join(DATA, 'peft-embedding');
    const loaded = await loadPeftAdapter(join(root, 'adapter'));
    expect([...loaded.adapter.modulesToSave.keys()]).toEqual([
      'model.embed_tokens.base_layer.weight',
    ]);
    const tmp = await mkdtemp(join(tmpdir(), 'lora-peft-embed-'));
    dirs.push(tmp);
    const out = join(tmp, 'merged');
    const report = await mergeIntoModel(join(root, 'base'), [{ adapter: loaded.adapter }], out);
    expect(report.replaced).toContain('model.embed_tokens.weight');
    const { tensors: ours } = await readSafetensors(join(out, 'model.safetensors'));
    const { tensors: peft } = await readSafetensors(join(root, 'merged.safetensors'));
    for (const name of ['model.embed_tokens.weight', 'model.layers.0.self_attn.q_proj.weight']) {
      expect(maxAbsDiff(ours.get(name)!, peft.get(name)!), name).toBeLessThan(1e-6);
    }
    // The base's own embedding is far from the merged one: the saved base_layer.weight was used.
    const { tensors: base } = await readSafetensors(join(root, 'base', 'model.safetensors'));
    expect(
      maxAbsDiff(base.get('model.embed_tokens.weight')!, peft.get('model.embed_tokens.weight')!),
    ).toBeGreaterThan(0.1);

    const back = join(tmp, 'back');
    await unmergeModel(out, [{ adapter: loaded.adapter }], back);
    const restored = await readFile(join(back, 'model.safetensors'));
    const original = await readFile(join(root, 'base', 'model.safetensors'));
    expect(Buffer.compare(restored, original)).toBe(0);
  });
});

describe('PEFT print_trainable_parameters figures (reference values from PEFT)', () => {
  it.each(['peft-modules-to-save', 'peft-embedding'])('%s', async (name) => {
    const dir = join(DATA, name);
    const want = JSON.parse(await readFile(join(dir, 'trainable.json'), 'utf8')) as {
      trainable_params: number;
      all_params: number;
      base_params: number;
    };
    const { tensors } = await readSafetensors(join(dir, 'base', 'model.safetensors'));
    let baseParams = 0;
    for (const t of tensors.values()) baseParams += t.data.length;
    expect(baseParams).toBe(want.base_params);
    const described = await describeAdapter(join(dir, 'adapter'));
    expect(peftParameterCounts(described, baseParams)).toEqual({
      trainableParams: want.trainable_params,
      allParams: want.all_params,
    });
  });
});
