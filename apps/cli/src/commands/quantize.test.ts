import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  createRng,
  readSafetensors,
  SafetensorsFile,
  type Tensor,
  tensor,
  toFloat32Array,
  writeSafetensors,
} from '@lora/core';
import { dequantizeBnb4, readBnb4Weight } from '@lora/quant';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';

const shared = fileURLToPath(new URL('../../../../../shared/', import.meta.url));
const stories = join(shared, 'fixtures/llama2c-stories260k');
const haveStories = existsSync(stories);
if (!haveStories)
  console.warn(`SKIPPED: ${stories} is absent; the real-model quantize test does not run.`);

const root = await mkdtemp(join(tmpdir(), 'lora-quantize-'));
afterAll(() => rm(root, { recursive: true, force: true }));

/** A small LLaMA-like folder with seeded N(0, 0.02) weights. */
async function makeModel(
  name: string,
  poison?: { tensor: string; index: number },
): Promise<string> {
  const dir = join(root, name);
  const rng = createRng(77);
  const w = (shape: number[]) =>
    tensor('f32', shape, rng.normalArray(shape[0] * (shape[1] ?? 1), 0, 0.02, 'f32'));
  const tensors = new Map<string, Tensor>([
    ['model.embed_tokens.weight', w([64, 32])],
    ['model.layers.0.input_layernorm.weight', tensor('f32', [32], new Float32Array(32).fill(1))],
    ['model.layers.0.self_attn.q_proj.weight', w([96, 128])],
    ['model.layers.0.mlp.down_proj.weight', w([128, 250])],
    [
      'model.layers.0.mlp.up_proj.weight',
      tensor('bf16', [64, 128], new Uint16Array(64 * 128).fill(0x3f80)),
    ],
    ['lm_head.weight', w([64, 32])],
  ]);
  if (poison) (tensors.get(poison.tensor)!.data as Float32Array)[poison.index] = Number.NaN;
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir);
  await writeSafetensors(join(dir, 'model.safetensors'), tensors, { metadata: { format: 'pt' } });
  await writeFile(
    join(dir, 'config.json'),
    JSON.stringify({ model_type: 'llama', hidden_size: 32 }),
  );
  await writeFile(join(dir, 'tokenizer.json'), '{"model":{}}');
  return dir;
}

describe('lora quantize', async () => {
  const model = await makeModel('normal');

  it('nf4 + double quant: bitsandbytes layout, config quantization_config, copies, skips embeddings/norms/lm_head', async () => {
    const out = join(root, 'nf4dq');
    const r = await runCli(['quantize', model, '-o', out, '--double-quant', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.tensors.map((t: { name: string }) => t.name).sort()).toEqual([
      'model.layers.0.mlp.down_proj.weight',
      'model.layers.0.mlp.up_proj.weight',
      'model.layers.0.self_attn.q_proj.weight',
    ]);
    expect(j.kept).toEqual(
      expect.arrayContaining([
        'model.embed_tokens.weight',
        'lm_head.weight',
        'model.layers.0.input_layernorm.weight',
      ]),
    );
    // 4 bits + 8/64 + 32/(64*256) per parameter (+ a 32-bit offset per tensor).
    const down = j.tensors.find(
      (t: { name: string }) => t.name === 'model.layers.0.mlp.down_proj.weight',
    );
    // 32000 values: 500 blocks of 64 -> 500 codes (8 bits), 2 absmax2 (32 bits), 1 offset (32 bits).
    expect(down.bitsPerParameter).toBeCloseTo((32000 * 4 + 500 * 8 + 2 * 32 + 32) / 32000, 12);
    expect((await readdir(out)).sort()).toEqual([
      'config.json',
      'model.safetensors',
      'tokenizer.json',
    ]);
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(config.model_type).toBe('llama');
    expect(config.quantization_config).toMatchObject({
      quant_method: 'bitsandbytes',
      load_in_4bit: true,
      bnb_4bit_quant_type: 'nf4',
      bnb_4bit_use_double_quant: true,
      bnb_4bit_compute_dtype: 'float32',
    });
    const file = await SafetensorsFile.open(join(out, 'model.safetensors'));
    try {
      const q = await readBnb4Weight(file, 'model.layers.0.self_attn.q_proj.weight');
      expect(q.shape).toEqual([96, 128]);
      const input = await readSafetensors(join(model, 'model.safetensors'));
      const original = toFloat32Array(input.tensors.get('model.layers.0.self_attn.q_proj.weight')!);
      const row = j.tensors.find(
        (t: { name: string }) => t.name === 'model.layers.0.self_attn.q_proj.weight',
      );
      const back = dequantizeBnb4(q);
      let sse = 0;
      for (let i = 0; i < back.length; i++) sse += (back[i] - original[i]) ** 2;
      // The RMSE the command printed is the RMSE of what it wrote.
      expect(Math.sqrt(sse / back.length)).toBeCloseTo(row.rmse, 12);
      expect(file.entry('model.embed_tokens.weight').dtype).toBe('f32');
      expect(
        file.entry('model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4').dtype,
      ).toBe('u8');
    } finally {
      await file.close();
    }
    const human = await runCli(['quantize', model, '-o', out, '--double-quant', '--force']);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/tensor\s+params\s+rmse\s+max abs\s+snr dB\s+bits\/param/);
    expect(human.stdout).toMatch(/\ntotal\s+/);
  });

  it('on normal weights NF4 has the lowest RMSE at the same block size (QLoRA), printed by the command itself', async () => {
    const rmse: Record<string, number> = {};
    for (const format of ['nf4', 'fp4', 'int4']) {
      const out = join(root, `order-${format}`);
      const r = await runCli([
        'quantize',
        model,
        '-o',
        out,
        '--format',
        format,
        '--block-size',
        '64',
        '--json',
      ]);
      expect(r.code, r.stderr).toBe(0);
      rmse[format] = JSON.parse(r.stdout).total.rmse;
    }
    expect(rmse.nf4).toBeLessThan(rmse.int4);
    expect(rmse.nf4).toBeLessThan(rmse.fp4);
    // Measured, not the paper's perplexity order: bitsandbytes' FP4 table (with its 0.0052 code)
    // has a HIGHER RMSE than absmax int4 [-7, 7] on normal weights. Asserted so a change shows.
    expect(rmse.int4).toBeLessThan(rmse.fp4);
  });

  it('--layout ort writes MatMulNBits initializers for uint4 and --include adds lm_head', async () => {
    const out = join(root, 'uint4');
    const r = await runCli([
      'quantize',
      model,
      '-o',
      out,
      '--format',
      'uint4',
      '--include',
      '^lm_head',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.layout).toBe('ort');
    expect(j.tensors.map((t: { name: string }) => t.name)).toContain('lm_head.weight');
    const { tensors } = await readSafetensors(join(out, 'model.safetensors'));
    // down_proj [128, 250], block 32: 8 blocks per row (last has 26), 16 bytes each.
    expect(tensors.get('model.layers.0.mlp.down_proj.weight')!.shape).toEqual([128, 8, 16]);
    expect(tensors.get('model.layers.0.mlp.down_proj.weight.scales')!.shape).toEqual([1024]);
    expect(tensors.get('model.layers.0.mlp.down_proj.weight.zero_points')!.shape).toEqual([
      128 * 4,
    ]);
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(config.quantization_config).toMatchObject({
      quant_method: 'lora-ort',
      op: 'MatMulNBits',
      format: 'uint4',
      block_size: 32,
    });
  });

  it('dequantize --dtype bf16 restores plain tensors of the original shapes (bnb and ort layouts)', async () => {
    for (const [name, args] of [
      ['dq-bnb', ['--double-quant']],
      ['dq-ort', ['--format', 'int4']],
    ] as const) {
      const q = join(root, name);
      expect((await runCli(['quantize', model, '-o', q, ...args, '--quiet'])).code).toBe(0);
      const out = join(root, `${name}-f`);
      const r = await runCli(['dequantize', q, '-o', out, '--dtype', 'bf16', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j.tensors.length).toBe(3);
      const { tensors } = await readSafetensors(join(out, 'model.safetensors'));
      expect([...tensors.keys()].sort()).toEqual([
        'lm_head.weight',
        'model.embed_tokens.weight',
        'model.layers.0.input_layernorm.weight',
        'model.layers.0.mlp.down_proj.weight',
        'model.layers.0.mlp.up_proj.weight',
        'model.layers.0.self_attn.q_proj.weight',
      ]);
      expect(tensors.get('model.layers.0.mlp.down_proj.weight')!.dtype).toBe('bf16');
      expect(tensors.get('model.layers.0.mlp.down_proj.weight')!.shape).toEqual([128, 250]);
      // up_proj was all 1.0 (bf16 0x3f80): every 4-bit format represents the block maximum exactly.
      const up = toFloat32Array(tensors.get('model.layers.0.mlp.up_proj.weight')!);
      expect(up.every((v) => v === 1)).toBe(true);
      const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
      expect(config.quantization_config).toBeUndefined();
    }
  });

  it('refuses to overwrite without --force', async () => {
    const out = join(root, 'exists');
    expect((await runCli(['quantize', model, '-o', out, '--quiet'])).code).toBe(0);
    const again = await runCli(['quantize', model, '-o', out]);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('--force');
  });

  it('NaN in a weight: exit 2 naming the tensor and the first bad index, nothing written', async () => {
    const bad = await makeModel('poisoned', {
      tensor: 'model.layers.0.mlp.down_proj.weight',
      index: 1234,
    });
    const out = join(root, 'poisoned-out');
    const r = await runCli(['quantize', bad, '-o', out]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('model.layers.0.mlp.down_proj.weight: value NaN at flat index 1234');
    expect(existsSync(out)).toBe(false);
    expect((await readdir(root)).filter((f) => f.includes('poisoned-out'))).toEqual([]);
  });

  it('bad block sizes, formats without a layout and non-float includes are clear errors with nothing written', async () => {
    const cases: [string[], RegExp][] = [
      [['--block-size', '48'], /Block size 48 is not allowed for nf4/],
      [['--format', 'uint4', '--block-size', '512'], /Block size 512 is not allowed for uint4/],
      [['--format', 'int4', '--layout', 'bnb'], /int4 has no bitsandbytes layout/],
      [['--layout', 'ort', '--double-quant'], /MatMulBnb4 takes float32 absmax only/],
      [['--format', 'q8'], /Allowed choices are nf4, fp4, int4, uint4/],
    ];
    for (const [args, message] of cases) {
      const out = join(root, 'never');
      const r = await runCli(['quantize', model, '-o', out, ...args]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(existsSync(out)).toBe(false);
    }
    // An integer tensor selected by --include.
    const dir = join(root, 'ints.safetensors');
    await writeSafetensors(dir, new Map([['ids.weight', tensor('i32', [4, 4])]]));
    const r = await runCli([
      'quantize',
      dir,
      '-o',
      join(root, 'ints-out.safetensors'),
      '--include',
      'ids',
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/"ids.weight" is i32; only float tensors/);
    expect(existsSync(join(root, 'ints-out.safetensors'))).toBe(false);
  });

  it('--include / --exclude are Python regexes matched in linear time; RE2-only refusals are usage errors', async () => {
    // `(.*)*\.weight$`-style nesting is exponential for a backtracking engine on names that fail.
    const out = join(root, 'regex-include');
    const r = await runCli([
      'quantize',
      model,
      '-o',
      out,
      '--include',
      '^(lm|(x+x+)+y)_head',
      '--exclude',
      '((a|a)*|.*)*\\.(up|down)_proj\\.weight$',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const names: string[] = JSON.parse(r.stdout).tensors.map((t: { name: string }) => t.name);
    expect(names).toContain('lm_head.weight');
    expect(names.filter((n) => /(up|down)_proj/.test(n))).toEqual([]);
    expect(names).toContain('model.layers.0.self_attn.q_proj.weight');
    const bad = await runCli(['quantize', model, '-o', join(root, 'never'), '--include', '(a)\\1']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(
      /--include: the regular expression "\(a\)\\1" uses a back-reference/,
    );
  });

  it('re-quantizing a 4-bit folder exits 2 with what to do instead, writing nothing', async () => {
    const model = await makeModel('requant');
    const once = join(root, 'requant-nf4');
    expect((await runCli(['quantize', model, '-o', once, '--quiet'])).code).toBe(0);
    const out = join(root, 'requant-twice');
    const r = await runCli(['quantize', once, '-o', out, '--format', 'int4']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/already quantized.*lora dequantize/);
    expect(existsSync(out)).toBe(false);
  });

  it.skipIf(!haveStories)(
    'quantizes the bundled tiny LLaMA (file input to a .safetensors output)',
    async () => {
      const out = join(root, 'stories-nf4.safetensors');
      const r = await runCli(['quantize', join(stories, 'model.safetensors'), '-o', out, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j.tensors.length).toBe(35); // 5 layers x 7 linears
      expect(j.total.snrDb).toBeGreaterThan(15);
    },
  );
});
