import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { readSafetensors, type Tensor, toFloat32Array, toFloat64Array } from '@lora/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { createTrainingSession, type TrainingStepResult } from './training-session.js';

/**
 * One LoRA gradient step of a tiny LLaMA against transformers + PEFT on the same weights, adapter
 * and tokens (testdata/grad-step, written by scripts/reference/grad-step.py in float64).
 * transformers' loss is the MEAN over label tokens; the session returns the SUM and the count.
 */
const DATA = fileURLToPath(new URL('./testdata/grad-step/', import.meta.url));

interface Expected {
  input_ids: number[][];
  attention_mask: number[][];
  loss_weights: number[][];
  rank: number;
  alpha: number;
  targets: string[];
  cases: Record<string, { loss: number; label_count: number; rslora: boolean; dropout: number }>;
}

/** Relative difference of two tensors: max |a - b| / max |b| (the scale of the reference). */
function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    diff = Math.max(diff, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return diff / scale;
}

const PEFT_PREFIX = 'base_model.model.';
/**
 * Tolerance of the comparison (float32 onnxruntime vs float64 PyTorch), relative to each tensor's
 * largest value. Measured: loss 5e-8, gradients 2.2e-6.
 */
const RELATIVE = 1e-4;

let expected: Expected;
let adapter: Map<string, Tensor>;
let reference: Map<string, Tensor>;

beforeAll(async () => {
  expected = JSON.parse(await readFile(`${DATA}expected.json`, 'utf8'));
  adapter = (await readSafetensors(`${DATA}adapter/adapter_model.safetensors`)).tensors;
  reference = (await readSafetensors(`${DATA}expected.safetensors`)).tensors;
});

async function stepCase(name: string): Promise<TrainingStepResult> {
  const c = expected.cases[name];
  const session = await createTrainingSession({
    model: `${DATA}model`,
    mode: 'lora',
    lora: {
      rank: expected.rank,
      alpha: expected.alpha,
      targets: expected.targets,
      rslora: c.rslora,
      dropout: c.dropout,
    },
    microBatch: expected.input_ids.length,
    seqLen: expected.input_ids[0].length,
    intraOpNumThreads: 1,
  });
  try {
    const params: Record<string, Float32Array> = {};
    for (const p of session.parameters) {
      const t = adapter.get(PEFT_PREFIX + p.name);
      if (!t) throw new Error(`adapter has no ${PEFT_PREFIX + p.name}`);
      expect(t.shape).toEqual(p.shape);
      params[p.name] = toFloat32Array(t);
    }
    const dropoutMasks: Record<string, Uint8Array> = {};
    if (c.dropout > 0) {
      for (const site of session.loraSites) {
        const mask = reference.get(`mask.${site.module}`);
        if (!mask) throw new Error(`no dropout mask for ${site.module}`);
        dropoutMasks[site.module] = Uint8Array.from(toFloat32Array(mask), (v) => (v > 0 ? 1 : 0));
      }
    }
    return await session.step({
      inputIds: expected.input_ids,
      attentionMask: expected.attention_mask,
      lossWeights: expected.loss_weights,
      params,
      dropoutMasks,
    });
  } finally {
    await session.release();
  }
}

describe('one LoRA step equals transformers + PEFT', () => {
  for (const name of ['plain', 'dropout']) {
    it(`${name}: loss, dA, dB within ${RELATIVE} relative`, async () => {
      const c = expected.cases[name];
      const result = await stepCase(name);
      expect(result.tokenCount).toBe(c.label_count);
      const count = result.tokenCount;
      expect(Math.abs(result.lossSum / count - c.loss) / c.loss).toBeLessThan(RELATIVE);
      const grads = Object.entries(result.grads);
      expect(grads.length).toBe(2 * 7 * 2); // A and B of 7 linears in 2 layers
      for (const [param, grad] of grads) {
        const want = reference.get(`${name}.${PEFT_PREFIX}${param}`);
        if (!want) throw new Error(`reference has no gradient of ${param}`);
        expect(grad.shape, param).toEqual(want.shape);
        // transformers differentiates the mean loss: scale ours (of the sum) by 1 / count.
        const ours = Float64Array.from(grad.data, (v) => v / count);
        const err = relativeError(ours, toFloat64Array(want));
        expect(err, `${param}: relative error ${err}`).toBeLessThan(RELATIVE);
      }
    });
  }

  it('the comparison can fail: without rsLoRA the dropout case differs from PEFT', async () => {
    const rsloraOff = { ...expected.cases.dropout, rslora: false };
    const saved = expected.cases.dropout;
    expected.cases.dropout = rsloraOff;
    try {
      const result = await stepCase('dropout');
      const param = 'model.layers.0.self_attn.q_proj.lora_B.weight';
      const want = reference.get(`dropout.${PEFT_PREFIX}${param}`) as Tensor;
      const ours = Float64Array.from(result.grads[param].data, (v) => v / result.tokenCount);
      expect(relativeError(ours, toFloat64Array(want))).toBeGreaterThan(1e-2);
    } finally {
      expected.cases.dropout = saved;
    }
  });
});
