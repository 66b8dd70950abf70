import { type Tensor, tensor } from '@lora/core';
import { dequantizeBnb4, quantizeBnb4 } from '@lora/quant';
import type { InferenceSession } from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { llamaWeightSpec } from '../models/llama/config.js';
import { referenceForward } from '../models/llama/reference.js';
import { memoryWeights } from '../models/weights.js';
import { ortSessionFactory, type SessionFactory } from '../session/session.js';
import { expectClose } from '../test-utils/parity.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { randomLlamaWeights, tinyConfig } from '../test-utils/tiny-llama.js';
import { createTrainingSession, type TrainingSession } from './training-session.js';

const config = tinyConfig({ hidden_size: 32, intermediate_size: 48, vocab_size: 64 });
const weights = randomLlamaWeights(config, 7);
const model = () => ({ config, source: memoryWeights(weights) });
const lora = { rank: 4, alpha: 8, targets: ['q_proj', 'v_proj', 'down_proj'] };
const B = 2;
const T = 6;
const batch = {
  inputIds: [
    [1, 5, 9, 13, 17, 21],
    [2, 4, 6, 8, 0, 0],
  ],
  attentionMask: [
    [1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 0, 0],
  ],
  lossWeights: [
    [0, 0, 1, 1, 1, 1],
    [0, 1, 1, 1, 0, 0],
  ],
};

/** LoRA parameters: A random, B random or zero. */
function loraParams(session: TrainingSession, zeroB: boolean): Record<string, Float32Array> {
  const rand = seededRandom(3);
  const params: Record<string, Float32Array> = {};
  for (const p of session.parameters) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    params[p.name] =
      zeroB && p.name.endsWith('lora_B.weight') ? new Float32Array(n) : randomF32(n, rand, 0.3);
  }
  return params;
}

/** sum over labelled tokens of -log softmax(logits)[next token], from the float64 reference forward. */
function referenceLossSum(w: ReadonlyMap<string, Tensor>): number {
  let sum = 0;
  for (let b = 0; b < B; b++) {
    const real = batch.attentionMask[b].filter(Boolean).length;
    const tokens = batch.inputIds[b].slice(0, real); // right padding: the real tokens alone
    const logits = referenceForward(config, w, tokens);
    const V = config.vocabSize;
    for (let t = 1; t < real; t++) {
      if (!batch.lossWeights[b][t]) continue;
      const row = logits.subarray((t - 1) * V, t * V);
      const max = Math.max(...row);
      const logSum = Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) + max;
      sum += logSum - row[tokens[t]];
    }
  }
  return sum;
}

describe('createTrainingSession', () => {
  it('lora: parameters in PEFT layout, loss equal to the float64 reference when B = 0', async () => {
    const session = await createTrainingSession({
      model: model(),
      mode: 'lora',
      lora,
      microBatch: B,
      seqLen: T,
      intraOpNumThreads: 1,
    });
    try {
      expect(session.parameters.slice(0, 2)).toEqual([
        { name: 'model.layers.0.self_attn.q_proj.lora_A.weight', shape: [4, 32] },
        { name: 'model.layers.0.self_attn.q_proj.lora_B.weight', shape: [32, 4] },
      ]);
      expect(session.parameters.length).toBe(2 * 3 * config.numLayers);
      expect(session.loraSites[0].scale).toBe(2);
      const result = await session.step({ ...batch, params: loraParams(session, true) });
      expect(result.tokenCount).toBe(7);
      expect(Math.abs(result.lossSum - referenceLossSum(weights))).toBeLessThan(1e-4);
      // With B = 0 only dB is non-zero (dA = s B^T ... is exactly 0).
      const dA = result.grads['model.layers.1.mlp.down_proj.lora_A.weight'].data;
      const dB = result.grads['model.layers.1.mlp.down_proj.lora_B.weight'].data;
      expect(dA.every((v) => v === 0)).toBe(true);
      expect(dB.some((v) => v !== 0)).toBe(true);
    } finally {
      await session.release();
    }
  });

  it('full: every weight a parameter; loss equal to the float64 reference; gradients shaped like the weights', async () => {
    const session = await createTrainingSession({
      model: model(),
      mode: 'full',
      microBatch: B,
      seqLen: T,
      intraOpNumThreads: 1,
    });
    try {
      expect(session.parameters.map((p) => p.name)).toEqual(
        llamaWeightSpec(config).map((s) => s.name),
      );
      const params = Object.fromEntries(session.initialParameters ?? []);
      const result = await session.step({ ...batch, params });
      expect(Math.abs(result.lossSum - referenceLossSum(weights))).toBeLessThan(1e-4);
      for (const p of session.parameters) expect(result.grads[p.name].shape).toEqual(p.shape);
      // Rows of tokens that never occur get no embedding gradient.
      const dEmbed = result.grads['model.embed_tokens.weight'].data;
      const H = config.hiddenSize;
      expect(dEmbed.subarray(63 * H, 64 * H).every((v) => v === 0)).toBe(true);
      expect(dEmbed.subarray(5 * H, 6 * H).some((v) => v !== 0)).toBe(true);
    } finally {
      await session.release();
    }
  });

  it('qlora equals lora on the dequantized base (loss and gradients), with packed initializers', async () => {
    const dequantized = new Map(weights);
    for (const [name, t] of weights) {
      if (!/layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$/.test(name)) continue;
      const q = quantizeBnb4(t.data, t.shape, { format: 'nf4', name });
      dequantized.set(name, tensor('f32', t.shape, dequantizeBnb4(q)));
    }
    const options = { lora, microBatch: B, seqLen: T, intraOpNumThreads: 1 };
    const q = await createTrainingSession({ ...options, model: model(), mode: 'qlora' });
    const f = await createTrainingSession({
      ...options,
      model: { config, source: memoryWeights(dequantized) },
      mode: 'lora',
    });
    try {
      expect(q.initializerBytes).toBeLessThan(0.8 * f.initializerBytes);
      const params = loraParams(q, false);
      const a = await q.step({ ...batch, params });
      const b = await f.step({ ...batch, params });
      expect(Math.abs(a.lossSum - b.lossSum) / b.lossSum).toBeLessThan(1e-5);
      for (const p of q.parameters) {
        const want = b.grads[p.name].data;
        const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        expectClose(a.grads[p.name].data, want, { atol: 1e-5 * scale, rtol: 1e-4 }, p.name);
      }
    } finally {
      await q.release();
      await f.release();
    }
  });

  it('refuses bad options and feeds with clear errors', async () => {
    const base = { model: model(), microBatch: B, seqLen: T };
    await expect(createTrainingSession({ ...base, mode: 'lora' })).rejects.toMatchObject({
      code: 'TRAINING_OPTIONS',
    });
    await expect(
      createTrainingSession({ ...base, mode: 'lora', lora, quant: 'nf4' }),
    ).rejects.toMatchObject({ code: 'TRAINING_OPTIONS' });
    await expect(
      createTrainingSession({ ...base, mode: 'lora', lora: { ...lora, targets: ['nothing'] } }),
    ).rejects.toMatchObject({ code: 'LORA_OPTIONS' });
    await expect(createTrainingSession({ ...base, mode: 'full', seqLen: 1 })).rejects.toMatchObject(
      { code: 'TRAINING_OPTIONS' },
    );

    const session = await createTrainingSession({
      ...base,
      mode: 'lora',
      lora: { ...lora, dropout: 0.1 },
      intraOpNumThreads: 1,
    });
    try {
      const params = loraParams(session, false);
      const dropoutMasks = Object.fromEntries(
        session.loraSites.map((s) => [s.module, new Uint8Array(B * T * s.inFeatures).fill(1)]),
      );
      const ok = { ...batch, params, dropoutMasks };
      const { [session.parameters[0].name]: _, ...missing } = params;
      await expect(session.step({ ...ok, params: missing })).rejects.toThrow(/is missing/);
      await expect(
        session.step({
          ...ok,
          params: { ...params, [session.parameters[0].name]: new Float32Array(3) },
        }),
      ).rejects.toThrow(/has 3 values/);
      await expect(
        session.step({ ...ok, inputIds: [batch.inputIds[0], [1, 2, 3, 4, 5, 99]] }),
      ).rejects.toMatchObject({ code: 'TOKEN_RANGE' });
      await expect(session.step({ ...ok, dropoutMasks: {} })).rejects.toThrow(/keep mask/);
      await expect(session.step({ ...ok, lossWeights: [[1, 2]] })).rejects.toThrow(/rows/);
      // A 0/1 mask of all ones is no dropout but the 1 / (1 - p) factor.
      const kept = await session.step(ok);
      expect(Number.isFinite(kept.lossSum)).toBe(true);
    } finally {
      await session.release();
    }
  });

  it('cuda: the runtime device selection and its error', async () => {
    const noCuda: SessionFactory = {
      listSupportedBackends: () => [{ name: 'cpu', bundled: true }],
      create: (m, o: InferenceSession.SessionOptions) => ortSessionFactory.create(m, o),
    };
    const err = await createTrainingSession({
      model: model(),
      mode: 'lora',
      lora,
      microBatch: B,
      seqLen: T,
      device: 'cuda',
      factory: noCuda,
    }).catch((e) => e);
    expect(err).toMatchObject({ code: 'DEVICE_UNAVAILABLE' });
    const auto = await createTrainingSession({
      model: model(),
      mode: 'lora',
      lora,
      microBatch: B,
      seqLen: T,
      device: 'auto',
      factory: noCuda,
    });
    expect(auto.device).toBe('cpu');
    await auto.release();
  });
});
