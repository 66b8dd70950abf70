import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors, type Tensor, tensor, writeSafetensors } from '@lora/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/test-utils/run-cli.js';
import { writeSyntheticAdapter, writeSyntheticLlama } from '../src/test-utils/synthetic-model.js';

/**
 * Commands that write weights refuse NaN/Inf results before writing anything (merge already did):
 * combine with a weight of 1e308, dequantize of a damaged absmax, extract from a model holding
 * NaN; and extract between unrelated models says so instead of "no weight differs".
 */

let root: string;
let model: string;
let adapter: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'lora-nonfinite-'));
  model = join(root, 'model');
  adapter = join(root, 'adapter');
  await writeSyntheticLlama(model);
  await writeSyntheticAdapter(adapter, 1);
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

const outcomes: string[] = [];
afterAll(() =>
  process.stderr.write(`\nnon-finite and unrelated inputs:\n${outcomes.join('\n')}\n`),
);

async function refusedWithoutOutput(name: string, args: string[], out: string, message: RegExp) {
  const r = await runCli([...args, '-o', out, '--quiet']);
  outcomes.push(
    `${name.padEnd(34)} exit ${r.code}  ${r.stderr.trim().split('\n')[0]?.slice(0, 120)}`,
  );
  expect(r.code, r.stderr).not.toBe(0);
  expect(r.stderr).toMatch(message);
  expect(existsSync(out), `${out} must not exist`).toBe(false);
  // no temporary folder left beside the output either
  expect(readdirSync(root).filter((f) => f.includes('.tmp-'))).toEqual([]);
}

/** A copy of the synthetic model with `edit` applied to its tensors. */
async function editedModel(name: string, edit: (t: Map<string, Tensor>) => void): Promise<string> {
  const dir = join(root, name);
  await writeSyntheticLlama(dir);
  const file = join(dir, 'model.safetensors');
  const { tensors } = await readSafetensors(file);
  edit(tensors);
  await writeSafetensors(file, tensors);
  return dir;
}

describe('non-finite results are refused before writing', () => {
  it('combine with a weight of 1e308 (the result overflows float32)', async () => {
    await refusedWithoutOutput(
      'combine --adapter a:1e308',
      ['combine', '--adapter', `${adapter}:1e308`, '--adapter', adapter, '--method', 'linear'],
      join(root, 'combined'),
      /beyond float32.*Nothing was written/,
    );
  });

  it('dequantize when a stored absmax is NaN', async () => {
    const q = join(root, 'quantized');
    const r = await runCli(['quantize', model, '-o', q, '--layout', 'ort', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    const file = join(q, 'model.safetensors');
    const { tensors } = await readSafetensors(file);
    const absmaxName = [...tensors.keys()].find((k) => k.endsWith('.absmax'));
    expect(absmaxName, 'the ort layout stores a float32 absmax per block').toBeDefined();
    const absmax = tensors.get(absmaxName!)!;
    const damaged = Float32Array.from(absmax.data as Float32Array);
    damaged[0] = Number.NaN;
    tensors.set(absmaxName!, tensor('f32', [...absmax.shape], damaged));
    await writeSafetensors(file, tensors);
    await refusedWithoutOutput(
      'dequantize: absmax NaN',
      ['dequantize', q],
      join(root, 'dequantized'),
      /absmax of block 0 is NaN/,
    );
  });

  it('extract when the tuned model holds NaN', async () => {
    const tuned = await editedModel('tuned-nan', (t) => {
      const name = 'model.layers.0.self_attn.q_proj.weight';
      const w = t.get(name)!;
      const values = Float32Array.from(w.data as Float32Array);
      values[3] = Number.NaN;
      t.set(name, tensor('f32', [...w.shape], values));
    });
    await refusedWithoutOutput(
      'extract: tuned holds NaN',
      ['extract', '--base', model, '--tuned', tuned, '--rank', '2'],
      join(root, 'extracted-nan'),
      /q_proj\.weight: tuned NaN minus base .* is not a finite float32/,
    );
  });

  it('extract between unrelated models names the mismatch, not "no weight differs"', async () => {
    const other = await editedModel('unrelated', (t) => {
      const renamed = [...t].map(([k, v]) => [k.replace('model.', 'transformer.'), v] as const);
      t.clear();
      for (const [k, v] of renamed) t.set(k, v);
    });
    await mkdir(join(root, 'unused'), { recursive: true });
    await refusedWithoutOutput(
      'extract: unrelated models',
      ['extract', '--base', model, '--tuned', other, '--rank', '2'],
      join(root, 'extracted-unrelated'),
      /share only 1 of \d+ weights by name and shape.*not the same architecture/,
    );
  });
});
