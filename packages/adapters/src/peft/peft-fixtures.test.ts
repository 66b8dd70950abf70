import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensorsHeader } from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import { describeAdapter } from '../describe.js';
import { loraParameterCount, savedParameterCount } from '../adapter.js';
import { FIXTURES, HAVE_PEFT_FIXTURES, PEFT_FIXTURES } from '../test-utils/fixtures.js';
import { loadPeftAdapter } from './load.js';
import { savePeftAdapter } from './save.js';

const tmpDirs: string[] = [];
afterAll(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
});

function bytesOf(t: { data: ArrayBufferView }): Buffer {
  return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

describe.skipIf(!HAVE_PEFT_FIXTURES)('real PEFT adapters (shared/fixtures/peft)', () => {
  for (const fx of FIXTURES) {
    describe(fx.name, () => {
      const dir = join(PEFT_FIXTURES, fx.name);

      it('describeAdapter reports the facts listed in SOURCES.md', async () => {
        const d = await describeAdapter(dir);
        expect(d.r).toBe(fx.r);
        expect(d.alpha).toBe(fx.alpha);
        expect(d.scaling).toBe(fx.alpha / fx.r);
        expect(d.targets).toEqual(fx.targets);
        expect(d.fanInFanOut).toBe(fx.fanInFanOut);
        expect(d.useDora).toBe(false);
        expect(d.useRslora).toBe(false);
        expect(d.modulesToSave).toEqual(fx.modulesToSave);
        expect(d.tensors.length).toBe(fx.tensorCount);
        expect(d.tensors.filter((t) => t.role === 'lora').length).toBe(fx.loraTensorCount);
        expect(d.loraParameterCount).toBe(fx.loraParameterCount);
        expect(d.savedParameterCount).toBe(fx.savedParameterCount);
        expect(d.dtypes).toEqual([fx.dtype]);
        expect(d.modules.length).toBe(fx.loraTensorCount / 2);
      });

      it('loads, saves and loads again with identical tensors and an equivalent config', async () => {
        const first = await loadPeftAdapter(dir);
        expect(first.adapter.modules.size).toBe(fx.loraTensorCount / 2);
        expect(loraParameterCount(first.adapter)).toBe(fx.loraParameterCount);
        expect(savedParameterCount(first.adapter)).toBe(fx.savedParameterCount);
        for (const m of first.adapter.modules.values()) {
          expect(m.A.dtype).toBe(fx.dtype);
          expect(m.A.shape[0]).toBe(fx.r);
          expect(m.B.shape[1]).toBe(fx.r);
        }

        const tmp = await mkdtemp(join(tmpdir(), 'lora-adapters-'));
        tmpDirs.push(tmp);
        const out = join(tmp, 'saved');
        await savePeftAdapter(out, first.adapter);
        const second = await loadPeftAdapter(out);

        expect([...second.adapter.modules.keys()].sort()).toEqual(
          [...first.adapter.modules.keys()].sort(),
        );
        for (const [name, m] of first.adapter.modules) {
          const n = second.adapter.modules.get(name)!;
          expect(n.A.dtype).toBe(m.A.dtype);
          expect(n.A.shape).toEqual(m.A.shape);
          expect(n.B.shape).toEqual(m.B.shape);
          expect(bytesOf(n.A).equals(bytesOf(m.A))).toBe(true);
          expect(bytesOf(n.B).equals(bytesOf(m.B))).toBe(true);
        }
        expect([...second.adapter.modulesToSave.keys()].sort()).toEqual(
          [...first.adapter.modulesToSave.keys()].sort(),
        );
        for (const [name, t] of first.adapter.modulesToSave) {
          expect(bytesOf(second.adapter.modulesToSave.get(name)!).equals(bytesOf(t))).toBe(true);
        }
        // Config: every key of the original file comes back with the same value.
        const original = JSON.parse(
          await readFile(join(dir, 'adapter_config.json'), 'utf8'),
        ) as Record<string, unknown>;
        const savedText = await readFile(join(out, 'adapter_config.json'), 'utf8');
        const saved = JSON.parse(savedText) as Record<string, unknown>;
        for (const [k, v] of Object.entries(original)) expect(saved[k], k).toEqual(v);
        // PEFT's layout: sorted keys, indent 2, metadata {"format": "pt"}, single prefix.
        expect(Object.keys(saved)).toEqual([...Object.keys(saved)].sort());
        expect(savedText.split('\n')[1]).toMatch(/^ {2}"/);
        const header = await readSafetensorsHeader(join(out, 'adapter_model.safetensors'));
        expect(header.metadata).toEqual({ format: 'pt' });
        for (const e of header.entries) {
          expect(e.name.startsWith('base_model.model.')).toBe(true);
          expect(e.name.startsWith('base_model.model.base_model.model.')).toBe(false);
        }
        expect(header.entries.length).toBe(fx.tensorCount);
      });
    });
  }

  it('smollm2: the doubled key prefix is removed from module names, with a warning', async () => {
    const { adapter, warnings } = await loadPeftAdapter(
      join(PEFT_FIXTURES, 'smollm2-360m-nested-prefix'),
    );
    expect(adapter.modules.has('model.layers.0.self_attn.q_proj')).toBe(true);
    expect(adapter.modules.get('model.layers.31.self_attn.v_proj')!.B.shape).toEqual([320, 8]);
    expect(warnings.some((w) => w.includes('2 times'))).toBe(true);
  });

  it('gpt2-seqcls: the undeclared score head is kept as a saved module, with a warning', async () => {
    const { adapter, warnings } = await loadPeftAdapter(join(PEFT_FIXTURES, 'gpt2-seqcls-score'));
    expect(adapter.modulesToSave.get('score.weight')!.shape).toEqual([6, 768]);
    expect(warnings.some((w) => w.includes('"score.weight"') && w.includes('not declared'))).toBe(
      true,
    );
  });

  it('distilbert: the newest PEFT fields are kept and not reported as unknown', async () => {
    const { adapter, warnings } = await loadPeftAdapter(join(PEFT_FIXTURES, 'distilbert-seqcls'));
    expect(adapter.config.extra.velora_config).toBeNull();
    expect(adapter.config.peft_version).toBe('0.20.0');
    expect(warnings.filter((w) => w.includes('unknown config key'))).toEqual([]);
    expect(adapter.modulesToSave.get('pre_classifier.weight')!.shape).toEqual([768, 768]);
  });
});
