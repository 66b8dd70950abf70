import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32ToBf16Array, readSafetensorsHeader, tensor, writeSafetensors } from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import { isLoraErrorWithCode } from '../test-utils/errors.js';
import { parseAdapterKey } from './keys.js';
import { loadPeftAdapter } from './load.js';
import { savePeftAdapter } from './save.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function folder(
  config: object,
  tensors: Map<string, ReturnType<typeof tensor>>,
): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'lora-peft-io-'));
  dirs.push(dir);
  await writeFile(join(dir, 'adapter_config.json'), JSON.stringify(config));
  await writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors, {
    metadata: { format: 'pt' },
  });
  return dir;
}
const bf16 = (shape: number[], v: number[]) =>
  tensor('bf16', shape, f32ToBf16Array(Float32Array.from(v)));

describe('PEFT key names', () => {
  it('parses every tensor kind, with and without the adapter name', () => {
    expect(parseAdapterKey('m.q.lora_A.weight')).toEqual({
      type: 'lora',
      module: 'm.q',
      kind: 'A',
    });
    expect(parseAdapterKey('m.q.lora_A.default.weight')).toEqual({
      type: 'lora',
      module: 'm.q',
      kind: 'A',
      adapterName: 'default',
    });
    expect(parseAdapterKey('m.q.lora_B.bias')).toEqual({
      type: 'lora',
      module: 'm.q',
      kind: 'bias',
    });
    expect(parseAdapterKey('m.q.lora_magnitude_vector')).toEqual({
      type: 'lora',
      module: 'm.q',
      kind: 'magnitude',
    });
    expect(parseAdapterKey('m.q.lora_magnitude_vector.default.weight')).toEqual({
      type: 'lora',
      module: 'm.q',
      kind: 'magnitude',
      adapterName: 'default',
    });
    expect(parseAdapterKey('embed_tokens.lora_embedding_A')).toEqual({
      type: 'lora',
      module: 'embed_tokens',
      kind: 'embeddingA',
    });
    expect(parseAdapterKey('embed_tokens.lora_embedding_B.sql')).toEqual({
      type: 'lora',
      module: 'embed_tokens',
      kind: 'embeddingB',
      adapterName: 'sql',
    });
    expect(parseAdapterKey('classifier.modules_to_save.default.weight')).toEqual({
      type: 'saved',
      parameter: 'classifier.weight',
      adapterName: 'default',
    });
    expect(parseAdapterKey('score.weight')).toEqual({ type: 'saved', parameter: 'score.weight' });
    expect(parseAdapterKey('m.q.lora_A.bias')).toBeUndefined();
  });
});

describe('loadPeftAdapter / savePeftAdapter', () => {
  it('bf16 DoRA + lora_bias + embedding + adapter names + unknown key: loads, saves with PEFT names, loads again', async () => {
    const dir = await folder(
      {
        peft_type: 'LORA',
        r: 1,
        lora_alpha: 2,
        use_dora: true,
        lora_bias: true,
        target_modules: ['q', 'embed_tokens'],
        my_future_field: { a: 1 },
      },
      new Map([
        ['base_model.model.m.q.lora_A.default.weight', bf16([1, 3], [1, 2, 3])],
        ['base_model.model.m.q.lora_B.default.weight', bf16([2, 1], [4, 5])],
        ['base_model.model.m.q.lora_B.default.bias', bf16([2], [0.5, -0.5])],
        ['base_model.model.m.q.lora_magnitude_vector.default.weight', bf16([2], [1, 2])],
        ['base_model.model.embed_tokens.lora_embedding_A.default', bf16([1, 5], [1, 1, 1, 1, 1])],
        ['base_model.model.embed_tokens.lora_embedding_B.default', bf16([4, 1], [2, 2, 2, 2])],
        [
          'base_model.model.lm_head.modules_to_save.default.weight',
          bf16([5, 4], Array(20).fill(0.25)),
        ],
      ]),
    );
    const { adapter, warnings } = await loadPeftAdapter(dir);
    expect(warnings.some((w) => w.includes('"my_future_field"'))).toBe(true);
    expect(warnings.some((w) => w.includes('adapter name'))).toBe(true);
    const q = adapter.modules.get('m.q')!;
    expect(q.A.dtype).toBe('bf16');
    expect(q.bias!.shape).toEqual([2]);
    expect(q.magnitude!.shape).toEqual([2]);
    expect(adapter.modules.get('embed_tokens')!.embedding).toBe(true);
    expect(adapter.modulesToSave.get('lm_head.weight')!.shape).toEqual([5, 4]);

    const out = join(dirs[dirs.length - 1], 'saved');
    await savePeftAdapter(out, adapter);
    const header = await readSafetensorsHeader(join(out, 'adapter_model.safetensors'));
    expect(header.entries.map((e) => e.name).sort()).toEqual([
      'base_model.model.embed_tokens.lora_embedding_A',
      'base_model.model.embed_tokens.lora_embedding_B',
      'base_model.model.lm_head.weight',
      'base_model.model.m.q.lora_A.weight',
      'base_model.model.m.q.lora_B.bias',
      'base_model.model.m.q.lora_B.weight',
      'base_model.model.m.q.lora_magnitude_vector',
    ]);
    expect(header.entries.every((e) => e.dtype === 'bf16')).toBe(true);
    const cfg = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8'));
    expect(cfg.my_future_field).toEqual({ a: 1 });
    const again = await loadPeftAdapter(out);
    expect(
      Buffer.from(again.adapter.modules.get('m.q')!.magnitude!.data.buffer).equals(
        Buffer.from(q.magnitude!.data.buffer),
      ),
    ).toBe(true);
  });

  it('a config without r, lora_alpha or target_modules: PEFT defaults named in warnings; a rank that disagrees with r = 8 refused', async () => {
    const tensors = (r: number) =>
      new Map([
        ['base_model.model.m.q.lora_A.weight', tensor('f32', [r, 3])],
        ['base_model.model.m.q.lora_B.weight', tensor('f32', [2, r])],
      ]);
    const ok = await folder({ peft_type: 'LORA' }, tensors(8));
    const { adapter, warnings } = await loadPeftAdapter(ok);
    expect(adapter.config.r).toBe(8);
    expect(warnings.join('\n')).toMatch(/"r" is missing; PEFT's default r = 8 applies/);
    expect(warnings.join('\n')).toMatch(/"lora_alpha" is missing; PEFT's default lora_alpha = 8/);
    expect(warnings.join('\n')).toMatch(
      /"target_modules" is missing; PEFT then picks its defaults/,
    );
    const bad = await folder(
      { peft_type: 'LORA', lora_alpha: 16, target_modules: ['q'] },
      tensors(4),
    );
    await expect(loadPeftAdapter(bad)).rejects.toThrow(
      /rank 4 in its tensors but the config says r = 8/,
    );
  });

  it('clear errors: rank disagreement, missing B, not a LoRA config, pickled weights only', async () => {
    const rank = await folder(
      { peft_type: 'LORA', r: 4, target_modules: ['q'] },
      new Map([
        ['base_model.model.m.q.lora_A.weight', bf16([2, 3], [1, 2, 3, 4, 5, 6])],
        ['base_model.model.m.q.lora_B.weight', bf16([2, 2], [1, 2, 3, 4])],
      ]),
    );
    const e1 = await loadPeftAdapter(rank).catch((e) => e);
    expect(isLoraErrorWithCode(e1, 'ADAPTER_RANK_MISMATCH')).toBe(true);
    expect(e1.message).toContain('m.q');

    const noB = await folder(
      { peft_type: 'LORA', r: 2, target_modules: ['q'] },
      new Map([['base_model.model.m.q.lora_A.weight', bf16([2, 3], [1, 2, 3, 4, 5, 6])]]),
    );
    expect(
      isLoraErrorWithCode(await loadPeftAdapter(noB).catch((e) => e), 'ADAPTER_TENSOR_MISSING'),
    ).toBe(true);

    const ia3 = await folder({ peft_type: 'IA3' }, new Map([['x', bf16([1], [1])]]));
    expect(
      isLoraErrorWithCode(await loadPeftAdapter(ia3).catch((e) => e), 'LORA_CONFIG_NOT_LORA'),
    ).toBe(true);

    const pickled = await mkdtemp(join(tmpdir(), 'lora-peft-io-'));
    dirs.push(pickled);
    await mkdir(join(pickled, 'sub'));
    await writeFile(join(pickled, 'adapter_config.json'), '{"peft_type": "LORA"}');
    await writeFile(join(pickled, 'adapter_model.bin'), 'not read');
    const e4 = await loadPeftAdapter(pickled).catch((e) => e);
    expect(isLoraErrorWithCode(e4, 'ADAPTER_WEIGHTS_MISSING')).toBe(true);
    expect(e4.message).toContain('adapter_model.bin');
  });
});
