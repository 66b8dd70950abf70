import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SafetensorsFile } from '@lora/core';
import { quantizeModel } from '@lora/quant';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TrainOptions, train } from './train.js';

// Made by scripts/reference/train-trajectory.py: the same 10 optimizer steps in PyTorch 2.13 +
// PEFT 0.21 with transformers' Trainer semantics (no shuffle, grad accumulation 2 across a partial
// last batch and an epoch boundary, clipping, AdamW with decay groups, cosine warmup), for LoRA
// from an init adapter, QLoRA nf4 + double quant (PyTorch on the dequantized base) and full.
const data = new URL('./testdata/trajectory/', import.meta.url).pathname;
const expected = JSON.parse(readFileSync(join(data, 'expected.json'), 'utf8')) as {
  settings: {
    steps: number;
    batch_size: number;
    grad_accum: number;
    lr: number;
    full_lr: number;
    weight_decay: number;
    betas: [number, number];
    eps: number;
    max_grad_norm: number;
    warmup: number;
  };
  methods: Record<
    'lora' | 'qlora' | 'full',
    { step: number; loss: number; lr: number; grad_norm: number; tokens: number }[]
  >;
};
const s = expected.settings;

let out: string;
beforeAll(async () => {
  out = await mkdtemp(join(tmpdir(), 'lora-train-trajectory-'));
});
afterAll(async () => {
  await rm(out, { recursive: true, force: true });
});

function options(method: 'lora' | 'qlora' | 'full', output: string): TrainOptions {
  return {
    model: join(data, 'model'),
    data: join(data, 'train.jsonl'),
    output,
    method,
    initAdapter: method === 'full' ? undefined : join(data, 'init-adapter'),
    quant: method === 'qlora' ? { format: 'nf4', blockSize: 64, doubleQuant: true } : undefined,
    steps: s.steps,
    batchSize: s.batch_size,
    gradAccum: s.grad_accum,
    shuffle: false,
    lr: method === 'full' ? s.full_lr : s.lr,
    weightDecay: s.weight_decay,
    betas: s.betas,
    eps: s.eps,
    maxGradNorm: s.max_grad_norm,
    schedule: 'cosine',
    warmupSteps: s.warmup,
    intraOpNumThreads: 1,
  };
}

async function readAll(path: string): Promise<Map<string, Float32Array>> {
  const f = await SafetensorsFile.open(path);
  try {
    const m = new Map<string, Float32Array>();
    for (const n of f.names()) m.set(n, (await f.read(n)).data as Float32Array);
    return m;
  } finally {
    await f.close();
  }
}

async function compare(method: 'lora' | 'qlora' | 'full') {
  const output = join(out, method);
  const result = await train(options(method, output));
  const ref = expected.methods[method];
  expect(result.steps.map((r) => r.tokens)).toEqual(ref.map((r) => r.tokens));
  result.steps.forEach((r, i) => {
    const e = ref[i];
    if (Math.abs(r.loss - e.loss) > 1e-4 * e.loss)
      throw new Error(`step ${i + 1}: loss ${r.loss} vs PyTorch ${e.loss}`);
    expect(r.lr).toBeCloseTo(e.lr, 12);
    expect(Math.abs(r.grad_norm - e.grad_norm)).toBeLessThan(1e-3 * e.grad_norm);
  });
  const mine = await readAll(
    join(output, method === 'full' ? 'model.safetensors' : 'adapter_model.safetensors'),
  );
  const theirs = await readAll(join(data, `expected-${method}.safetensors`));
  expect([...mine.keys()].sort()).toEqual([...theirs.keys()].sort());
  let worst = 0;
  for (const [name, t] of theirs) {
    const m = mine.get(name)!;
    for (let i = 0; i < t.length; i++)
      worst = Math.max(worst, Math.abs(m[i] - t[i]) / Math.max(1e-3, Math.abs(t[i])));
  }
  expect(worst).toBeLessThan(1e-3);
}

describe('10 optimizer steps against PyTorch + PEFT (tiny LLaMA)', () => {
  it('LoRA from an init adapter: per-step losses and the final adapter', async () =>
    compare('lora'));
  it('QLoRA nf4 + double quant: against PyTorch on the dequantized base', async () =>
    compare('qlora'));
  it('full fine-tuning: per-step losses and every final weight', async () => compare('full'));
  it('QLoRA on a folder written by lora quantize (nf4 + double quant) follows the same trajectory', async () => {
    const quantized = join(out, 'quantized-model');
    await quantizeModel(join(data, 'model'), quantized, { format: 'nf4', doubleQuant: true });
    const result = await train({
      ...options('qlora', join(out, 'qlora-stored')),
      model: quantized,
      quant: undefined,
    });
    result.steps.forEach((r, i) => {
      const e = expected.methods.qlora[i];
      expect(Math.abs(r.loss - e.loss)).toBeLessThan(1e-4 * e.loss);
    });
  });
});
