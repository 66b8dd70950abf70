import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectClose } from '../../test-utils/parity.js';
import { randomLlamaWeights, tinyConfigJson, writeHfModel } from '../../test-utils/tiny-llama.js';
import { parseLlamaConfig } from './config.js';
import { type LlamaModel, loadLlama } from './model.js';
import { referenceForward } from './reference.js';

// float32 session vs float64 reference on O(1) activations: errors are a few 1e-6; 1e-4 leaves room
// for accumulation order without hiding real mistakes (a wrong RoPE or mask moves logits by ~0.1).
const TOL = { atol: 1e-4, rtol: 1e-4 };

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'lora-llama-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Logits row t of a [1, T, V] or [B, T, V] result for batch row b. */
function row(
  logits: { shape: readonly number[]; data: Float32Array },
  b: number,
  t: number,
): Float32Array {
  const [, T, V] = logits.shape;
  return logits.data.subarray((b * T + t) * V, (b * T + t + 1) * V);
}

const variants: [string, Record<string, unknown>, { sharded?: boolean; dtype?: 'f16' | 'bf16' }][] =
  [
    ['GQA, untied, single file', {}, {}],
    [
      'tied embeddings, MHA, sharded',
      { tie_word_embeddings: true, num_key_value_heads: 4 },
      { sharded: true },
    ],
    ['Qwen2-style q/k/v bias', { model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'] }, {}],
    [
      'llama attention_bias + mlp_bias, head_dim != hidden/heads',
      { attention_bias: true, mlp_bias: true, head_dim: 16 },
      {},
    ],
    [
      'llama3 rope scaling, theta 500000',
      {
        rope_theta: 500000,
        rope_scaling: {
          rope_type: 'llama3',
          factor: 8,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 16,
        },
      },
      {},
    ],
    ['weights stored as bf16', {}, { dtype: 'bf16' }],
  ];

describe.each(variants)(
  'LLaMA session vs float64 reference: %s',
  (label, overrides, writeOptions) => {
    let model: LlamaModel;
    let weights: ReturnType<typeof randomLlamaWeights>;
    let config: ReturnType<typeof parseLlamaConfig>;
    const tokens = [1, 17, 5, 63, 22, 9, 40];

    beforeAll(async () => {
      const json = tinyConfigJson(overrides);
      config = parseLlamaConfig(json);
      weights = randomLlamaWeights(config, label.length);
      const dir = join(root, label.replace(/\W+/g, '-'));
      await writeHfModel(dir, json, weights, writeOptions);
      if (writeOptions.dtype) {
        // The reference sees exactly what the file holds.
        const { castFloat } = await import('@lora/core');
        for (const [k, t] of weights)
          weights.set(k, castFloat(castFloat(t, writeOptions.dtype), 'f32'));
      }
      model = await loadLlama(dir, { intraOpNumThreads: 1 });
    });
    afterAll(async () => {
      await model?.release();
    });

    it('full-sequence logits equal the reference', async () => {
      const want = referenceForward(config, weights, tokens);
      const { logits } = await model.forward({ inputIds: [tokens] });
      expect(logits.shape).toEqual([1, tokens.length, config.vocabSize]);
      expectClose(logits.data, want, TOL, 'logits');
    });

    it('prefill then KV-cache decode equals a full recompute', async () => {
      const full = await model.forward({ inputIds: [tokens] });
      const pre = await model.forward({ inputIds: [tokens.slice(0, 4)] });
      let past = pre.present;
      for (let t = 4; t < tokens.length; t++) {
        const mask = [new Array(t + 1).fill(1)];
        const step = await model.forward({ inputIds: [[tokens[t]]], attentionMask: mask, past });
        expect(step.present.keys[0].shape).toEqual([1, config.numKvHeads, t + 1, config.headDim]);
        expectClose(row(step.logits, 0, 0), row(full.logits, 0, t), TOL, `decode step ${t}`);
        past = step.present;
      }
    });
  },
);

describe('batches with left padding', () => {
  it('each row equals the row run alone, in prefill and in decode (stepper)', async () => {
    const json = tinyConfigJson();
    const config = parseLlamaConfig(json);
    const dir = join(root, 'batch');
    await writeHfModel(dir, json, randomLlamaWeights(config, 3));
    const model = await loadLlama(dir, { intraOpNumThreads: 1 });
    try {
      const prompts = [
        [5, 6, 7, 8, 9],
        [11, 12],
        [13, 14, 15],
      ];
      const nextTokens = [
        [3, 4, 5],
        [30, 31, 32],
      ];
      const batched = model.stepper();
      const batchLogits = [await batched.start(prompts)];
      for (const step of nextTokens) batchLogits.push(await batched.step(step));
      await batched.dispose();
      for (let b = 0; b < prompts.length; b++) {
        const alone = model.stepper();
        const aloneLogits = [await alone.start([prompts[b]])];
        for (const step of nextTokens) aloneLogits.push(await alone.step([step[b]]));
        for (let s = 0; s < aloneLogits.length; s++) {
          expect(batchLogits[s][b].length).toBe(config.vocabSize);
          expectClose(batchLogits[s][b], aloneLogits[s][0], TOL, `row ${b} step ${s}`);
        }
        // And the unpadded row agrees with the float64 reference over its whole history.
        const history = [...prompts[b], ...nextTokens.map((st) => st[b])];
        const ref = referenceForward(config, randomLlamaWeights(config, 3), history);
        const V = config.vocabSize;
        expectClose(
          aloneLogits[aloneLogits.length - 1][0],
          ref.subarray((history.length - 1) * V),
          TOL,
          `row ${b} ref`,
        );
      }
    } finally {
      await model.release();
    }
  });
});

describe('linear hook (how LoRA branches enter the graph)', () => {
  it('a branch y += x A on every v_proj, A fed as a graph input, matches the reference with the same hook', async () => {
    const json = tinyConfigJson();
    const config = parseLlamaConfig(json);
    const weights = randomLlamaWeights(config, 5);
    const { memoryWeights } = await import('../weights.js');
    const { LlamaModel } = await import('./model.js');
    const ops = await import('../../graph/ops.js');
    const seen: string[] = [];
    const outV = config.numKvHeads * config.headDim;
    const model = await LlamaModel.create(config, memoryWeights(weights), {
      intraOpNumThreads: 1,
      linearHook: (g, site) => {
        seen.push(site.module);
        if (!site.module.endsWith('v_proj')) return undefined;
        const A = g.input(`branch.${site.layer}.A`, 'f32', [site.inFeatures, site.outFeatures]);
        return ops.add(g, site.y, ops.matmul(g, site.x, A));
      },
    });
    try {
      expect(seen.slice(0, 7)).toEqual([
        'model.layers.0.self_attn.q_proj',
        'model.layers.0.self_attn.k_proj',
        'model.layers.0.self_attn.v_proj',
        'model.layers.0.self_attn.o_proj',
        'model.layers.0.mlp.gate_proj',
        'model.layers.0.mlp.up_proj',
        'model.layers.0.mlp.down_proj',
      ]);
      expect(seen).toHaveLength(7 * config.numLayers);
      const { f32 } = await import('@lora/core');
      const A = Array.from({ length: config.numLayers }, (_, l) =>
        f32(
          [config.hiddenSize, outV],
          Array.from({ length: config.hiddenSize * outV }, (_, i) => Math.sin(i + l) * 0.05),
        ),
      );
      const extraFeeds = Object.fromEntries(A.map((a, l) => [`branch.${l}.A`, a]));
      const tokens = [3, 1, 4, 1, 5, 9];
      const { logits } = await model.forward({ inputIds: [tokens], extraFeeds });
      const want = referenceForward(config, weights, tokens, {
        linearHook: (module, x, y, T) => {
          if (!module.endsWith('v_proj')) return;
          const a = A[Number(module.split('.')[2])].data;
          for (let t = 0; t < T; t++)
            for (let o = 0; o < outV; o++)
              for (let i = 0; i < config.hiddenSize; i++)
                y[t * outV + o] += x[t * config.hiddenSize + i] * a[i * outV + o];
        },
      });
      expectClose(logits.data, want, TOL, 'hooked logits');
      // And the branch matters: without it the reference differs.
      const plain = referenceForward(config, weights, tokens);
      expect(Math.max(...plain.map((v, i) => Math.abs(v - logits.data[i])))).toBeGreaterThan(1e-3);
    } finally {
      await model.release();
    }
  });
});
