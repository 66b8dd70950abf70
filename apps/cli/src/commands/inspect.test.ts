import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Tensor, tensor, writeSafetensors } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';

const shared = fileURLToPath(new URL('../../../../../shared/', import.meta.url));
const stories = join(shared, 'fixtures/llama2c-stories260k');
const haveStories = existsSync(stories);
if (!haveStories)
  console.warn(`SKIPPED: ${stories} is absent; the real-model inspect tests do not run.`);

describe('lora inspect', () => {
  it('summarises a safetensors file: tensors, dtypes, shapes, parameters, bytes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-inspect-'));
    try {
      const path = join(dir, 'w.safetensors');
      await writeSafetensors(
        path,
        new Map<string, Tensor>([
          ['a', tensor('f32', [3, 4])],
          ['b', tensor('bf16', [5])],
        ]),
        { metadata: { format: 'pt' } },
      );
      const r = await runCli(['inspect', path, '--json']);
      expect(r.code).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j.kind).toBe('safetensors');
      expect(j.file.params).toBe(17);
      expect(j.file.tensors.map((t: { name: string; bytes: number }) => [t.name, t.bytes])).toEqual(
        [
          ['a', 48],
          ['b', 10],
        ],
      );
      expect(j.file.metadata).toEqual({ format: 'pt' });
      const human = await runCli(['inspect', path]);
      expect(human.stdout).toContain('17 parameters');
      expect(human.stdout).toMatch(/a\s+f32\s+\[3, 4\]\s+12\s+48/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('exits 2 with a clear message for a missing path and for a corrupt file', async () => {
    const missing = await runCli(['inspect', '/nonexistent/model.safetensors']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('does not exist');
    const dir = await mkdtemp(join(tmpdir(), 'lora-inspect-'));
    try {
      const { writeFile } = await import('node:fs/promises');
      await writeFile(
        join(dir, 'bad.safetensors'),
        new Uint8Array([200, 0, 0, 0, 0, 0, 0, 0, 123]),
      );
      const bad = await runCli(['inspect', join(dir, 'bad.safetensors')]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain('truncated');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(!haveStories)(
    'summarises the stories260K model folder (figures from its SOURCE.md)',
    async () => {
      const r = await runCli(['inspect', stories, '--json']);
      expect(r.code).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j.kind).toBe('model');
      expect(j.params).toBe(260_032);
      expect(j.files[0].tensors.length).toBe(47);
      expect(j.bytes).toBe(1_044_992);
      expect(j.config).toMatchObject({
        hiddenSize: 64,
        numLayers: 5,
        numHeads: 8,
        numKvHeads: 4,
        headDim: 8,
        vocabSize: 512,
      });
    },
  );
});

// Figures typed in from ../shared/fixtures/peft/SOURCES.md (r, alpha, targets, LoRA parameter count).
const PEFT_FIXTURES: [string, number, number, string[], number][] = [
  ['gpt2-causal-cattn-cproj', 8, 32, ['c_attn', 'c_proj'], 811_008],
  ['gpt2-seqcls-score', 8, 8, ['c_attn'], 294_912],
  ['distilbert-seqcls', 8, 16, ['q_lin', 'v_lin'], 147_456],
  [
    'roberta-seqcls-fullpath-targets',
    36,
    32,
    [
      'roberta.encoder.layer.0.attention.self.query',
      'roberta.encoder.layer.5.attention.self.query',
      'roberta.encoder.layer.0.attention.self.key',
      'roberta.encoder.layer.10.attention.self.query',
    ],
    221_184,
  ],
  ['qwen2.5-0.5b-qv', 8, 16, ['q_proj', 'v_proj'], 540_672],
  ['smollm2-360m-nested-prefix', 8, 16, ['v_proj', 'q_proj'], 819_200],
  ['flan-t5-small-qkv', 8, 16, ['k', 'q', 'v'], 516_096],
  ['open-calm-1b-fp16-r1', 1, 32, ['query_key_value'], 196_608],
];
const peftDir = join(shared, 'fixtures/peft');
const havePeft = existsSync(peftDir);
if (!havePeft)
  console.warn(`SKIPPED: ${peftDir} is absent; the PEFT adapter inspect tests do not run.`);

describe.skipIf(!havePeft)('lora inspect on real PEFT adapters', () => {
  for (const [name, r, alpha, targets, params] of PEFT_FIXTURES) {
    it(`${name}: r ${r}, alpha ${alpha}, ${params.toLocaleString('en-US')} LoRA parameters`, async () => {
      const res = await runCli(['inspect', join(peftDir, name), '--json']);
      expect(res.code).toBe(0);
      const { adapter } = JSON.parse(res.stdout);
      expect(adapter.r).toBe(r);
      expect(adapter.alpha).toBe(alpha);
      expect(adapter.scaling).toBe(alpha / r);
      expect([...adapter.targets].sort()).toEqual([...targets].sort());
      expect(adapter.loraParameterCount).toBe(params);
    });
  }

  it.skipIf(!haveStories)('--base prints the PEFT trainable summary line', async () => {
    // Not a real pairing (the adapter is for Qwen2.5); only PEFT's arithmetic is checked:
    // trainable / (base + LoRA), with 260,032 base parameters from the fixture's SOURCE.md.
    const res = await runCli([
      'inspect',
      join(peftDir, 'qwen2.5-0.5b-qv'),
      '--base',
      stories,
      '--json',
    ]);
    const { trainable } = JSON.parse(res.stdout);
    expect(trainable.trainableParams).toBe(540_672);
    expect(trainable.allParams).toBe(260_032 + 540_672);
    expect(trainable.summary).toBe(
      `trainable params: 540,672 || all params: 800,704 || trainable%: ${((100 * 540_672) / 800_704).toFixed(4)}`,
    );
  });
});

describe.skipIf(!haveStories)('lora inspect on a 4-bit model', () => {
  it('counts quantized weights by their logical shape and reports their bits per parameter', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-inspect-q-'));
    try {
      const out = join(dir, 'nf4');
      const q = await runCli([
        'quantize',
        stories,
        '-o',
        out,
        '--format',
        'nf4',
        '--double-quant',
        '--json',
      ]);
      expect(q.code).toBe(0);
      const r = await runCli(['inspect', out, '--json']);
      expect(r.code).toBe(0);
      const j = JSON.parse(r.stdout);
      // Same parameter count as the f32 model (260,032 per its SOURCE.md): 4-bit weights count as weights.
      expect(j.params).toBe(260_032);
      const weights = j.quantized[0].weights;
      // stories260K: 5 layers x 7 linears are quantized by default (embeddings and norms stay f32).
      expect(weights.length).toBe(35);
      const q0 = weights.find(
        (w: { name: string }) => w.name === 'model.layers.0.self_attn.q_proj.weight',
      );
      expect(q0).toMatchObject({
        format: 'nf4',
        blockSize: 64,
        doubleQuant: true,
        shape: [64, 64],
        params: 4096,
      });
      // Hand count for one 64x64 weight, block 64, double quant: 2048 packed bytes, 64 u8 codes,
      // 1 f32 nested absmax, 16 + 256 f32 code tables, plus the quant_state JSON bytes.
      expect(q0.storedBytes).toBeGreaterThan(2048 + 64 + 4 + 16 * 4 + 256 * 4);
      expect(q0.storedBytes).toBeLessThan(2048 + 64 + 4 + 16 * 4 + 256 * 4 + 400);
      // The single file says the same.
      const file = JSON.parse(
        (await runCli(['inspect', join(out, 'model.safetensors'), '--json'])).stdout,
      );
      expect(file.quantized.params).toBe(260_032);
      expect(file.quantized.weights.length).toBe(35);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!haveStories)('lora inspect on an ONNX file', () => {
  it('lists the exported decoder interface and one MatMulNBits per quantized linear', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-inspect-onnx-'));
    try {
      const out = join(dir, 'int4.onnx');
      const e = await runCli([
        'export-onnx',
        '--model',
        stories,
        '--quant',
        'int4',
        '-o',
        out,
        '--json',
      ]);
      expect(e.code).toBe(0);
      const r = await runCli(['inspect', out, '--json']);
      expect(r.code).toBe(0);
      const { model } = JSON.parse(r.stdout);
      // The documented interface: ids, mask, positions and a key/value cache per layer (5 layers).
      const inputs = new Map(
        model.inputs.map((v: { name: string; dtype: string }) => [v.name, v.dtype]),
      );
      expect(inputs.get('input_ids')).toBe('i64');
      expect(inputs.get('attention_mask')).toBe('i64');
      expect(inputs.size).toBe(3 + 2 * 5);
      expect(model.outputs.map((v: { name: string }) => v.name)).toContain('logits');
      expect(model.outputs.length).toBe(1 + 2 * 5);
      // 5 layers x 7 linears (q, k, v, o, gate, up, down), each one MatMulNBits node.
      expect(model.ops['com.microsoft.MatMulNBits']).toBe(35);
      const human = await runCli(['inspect', out]);
      expect(human.stdout).toContain('com.microsoft.MatMulNBits 35');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a file that is not ONNX with a clear error', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-inspect-onnx-'));
    try {
      const { writeFile } = await import('node:fs/promises');
      await writeFile(join(dir, 'bad.onnx'), new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f]));
      const r = await runCli(['inspect', join(dir, 'bad.onnx')]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('not an ONNX model');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

// Tiny models and adapters saved by the real PEFT (scripts/reference/fidelity.py).
const peftData = fileURLToPath(
  new URL('../../../../packages/adapters/src/testdata/', import.meta.url),
);

describe('lora inspect counts what PEFT and the weights say', () => {
  it('--base: trainable and all params equal PEFT print_trainable_parameters (modules_to_save, base_layer)', async () => {
    for (const name of ['peft-modules-to-save', 'peft-embedding']) {
      const dir = join(peftData, name);
      const want = JSON.parse(await readFile(join(dir, 'trainable.json'), 'utf8'));
      const res = await runCli([
        'inspect',
        join(dir, 'adapter'),
        '--base',
        join(dir, 'base'),
        '--json',
      ]);
      expect(res.code, res.stderr).toBe(0);
      const { trainable } = JSON.parse(res.stdout);
      expect(trainable, name).toMatchObject({
        trainableParams: want.trainable_params,
        allParams: want.all_params,
      });
    }
  });

  it('a merged folder: the unmerge residual is reported apart, not counted as parameters', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-inspect-merged-'));
    try {
      const root = join(peftData, 'peft-embedding');
      const out = join(dir, 'merged');
      const m = await runCli([
        'merge',
        '--base',
        join(root, 'base'),
        '--adapter',
        join(root, 'adapter'),
        '-o',
        out,
        '--quiet',
      ]);
      expect(m.code, m.stderr).toBe(0);
      expect(existsSync(join(out, 'unmerge-residual.safetensors'))).toBe(true);
      const base = JSON.parse((await runCli(['inspect', join(root, 'base'), '--json'])).stdout);
      const merged = JSON.parse((await runCli(['inspect', out, '--json'])).stdout);
      expect(merged.params).toBe(base.params);
      expect(merged.files.map((f: { path: string }) => f.path)).toEqual([
        join(out, 'model.safetensors'),
      ]);
      expect(merged.residualBytes).toBeGreaterThan(0);
      expect((await runCli(['inspect', out])).stdout).toMatch(
        /unmerge-residual.safetensors: .* not counted as weights/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a sharded folder is read through its index (a stray consolidated file is not counted); a missing shard exits 2', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-inspect-shards-'));
    try {
      await writeFile(join(dir, 'config.json'), JSON.stringify({ model_type: 'llama' }));
      await writeSafetensors(
        join(dir, 'model-00001-of-00002.safetensors'),
        new Map([['a.weight', tensor('f32', [3, 4])]]),
      );
      await writeSafetensors(
        join(dir, 'model-00002-of-00002.safetensors'),
        new Map([['b.weight', tensor('f32', [5])]]),
      );
      // Mistral-style repositories ship the same weights once more in another layout.
      await writeSafetensors(
        join(dir, 'consolidated.safetensors'),
        new Map([
          ['a', tensor('f32', [3, 4])],
          ['b', tensor('f32', [5])],
        ]),
      );
      await writeFile(
        join(dir, 'model.safetensors.index.json'),
        JSON.stringify({
          metadata: { total_size: 68 },
          weight_map: {
            'a.weight': 'model-00001-of-00002.safetensors',
            'b.weight': 'model-00002-of-00002.safetensors',
          },
        }),
      );
      const r = await runCli(['inspect', dir, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).params).toBe(17);
      await rm(join(dir, 'model-00002-of-00002.safetensors'));
      const missing = await runCli(['inspect', dir]);
      expect(missing.code).toBe(2);
      expect(missing.stderr).toMatch(
        /lists shard\(s\) that are not in the folder: model-00002-of-00002.safetensors/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(!haveStories)(
    'a 4-bit onnxruntime-layout folder counts weights by their logical shape',
    async () => {
      const dir = await mkdtemp(join(tmpdir(), 'lora-inspect-ort-'));
      try {
        const out = join(dir, 'int4');
        const q = await runCli(['quantize', stories, '-o', out, '--format', 'int4', '--quiet']);
        expect(q.code, q.stderr).toBe(0);
        const j = JSON.parse((await runCli(['inspect', out, '--json'])).stdout);
        // 260,032 parameters per the fixture's SOURCE.md, as for the f32 model.
        expect(j.params).toBe(260_032);
        const q0 = j.quantized[0].weights.find(
          (w: { name: string }) => w.name === 'model.layers.0.self_attn.q_proj.weight',
        );
        expect(q0).toMatchObject({
          layout: 'MatMulNBits',
          format: 'int4',
          shape: [64, 64],
          params: 4096,
        });
        // 64x64 int4, block 32: 2048 packed bytes + 128 f32 scales, plus the state JSON.
        expect(q0.storedBytes).toBeGreaterThan(2048 + 128 * 4);
        expect(q0.storedBytes).toBeLessThan(2048 + 128 * 4 + 400);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});
