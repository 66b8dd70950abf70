import { createRng, type Tensor, tensor } from '@lora/core';
import type { Tokenizer } from '@lora/runtime-onnx';
import { medianMs } from './timing.js';
import type { BenchSection } from './types.js';

/**
 * Generation speed of a LLaMA-shaped model with random weights (a stand-in of realistic
 * proportions: the numbers depend on shapes, not on what the weights learned): prefill and
 * decode for f32 and 4-bit bases, and what sampling adds to each decode step.
 */
export const generateBench: BenchSection = {
  name: 'generate',
  title: 'generation: prefill and decode speed, f32 vs 4-bit bases, sampling overhead (CPU)',
  async run(ctx) {
    const { LlamaModel, generate, memoryWeights, parseLlamaConfig, llamaWeightSpec, sampleToken } =
      await import('@lora/runtime-onnx');
    const shape = ctx.quick
      ? {
          hidden_size: 128,
          intermediate_size: 344,
          num_hidden_layers: 2,
          num_attention_heads: 4,
          num_key_value_heads: 2,
          vocab_size: 4096,
        }
      : {
          hidden_size: 512,
          intermediate_size: 1376,
          num_hidden_layers: 8,
          num_attention_heads: 8,
          num_key_value_heads: 4,
          vocab_size: 32000,
        };
    const config = parseLlamaConfig({
      model_type: 'llama',
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      tie_word_embeddings: false,
      ...shape,
    });
    const rng = createRng(7);
    const weights = new Map<string, Tensor>();
    let params = 0;
    for (const { name, shape: s } of llamaWeightSpec(config)) {
      const n = s.reduce((a, b) => a * b, 1);
      params += n;
      const scale = name.endsWith('norm.weight')
        ? 0
        : name.includes('embed')
          ? 1
          : 1 / Math.sqrt(s[s.length - 1]);
      const data = rng.uniformArray(n, -scale, scale, 'f32');
      if (name.endsWith('norm.weight')) data.fill(1);
      weights.set(name, tensor('f32', s, data));
    }
    const promptLength = ctx.quick ? 16 : 64;
    const newTokens = ctx.quick ? 16 : 64;
    const prompt = Array.from(
      { length: promptLength },
      (_, i) => 3 + ((i * 37) % (config.vocabSize - 3)),
    );
    // Ids in, letters out: enough to exercise the detokenizer without a vocabulary file.
    const tokenizer: Tokenizer = {
      kind: 'byte',
      vocabSize: config.vocabSize,
      bosId: undefined,
      eosId: undefined,
      encode: () => [...prompt],
      decode: (ids) => ids.map((id) => String.fromCharCode(97 + (id % 26))).join(''),
    };
    const rows: (string | number)[][] = [];
    let f32Decode = 0;
    let f32StepMs = 0;
    const repeats = ctx.quick ? 2 : 3;
    for (const quant of [undefined, 'nf4', 'int4'] as const) {
      ctx.log(`building ${quant ?? 'f32'} model (${(params / 1e6).toFixed(1)}M parameters)`);
      const model = await LlamaModel.create(config, memoryWeights(weights), {
        device: 'cpu',
        quant,
        logits: 'last',
      });
      const prefills: number[] = [];
      const decodes: number[] = [];
      await medianMs(async () => {
        const r = await generate(model.stepper(), tokenizer, {
          prompt: 'x',
          maxTokens: newTokens,
          temperature: 0,
        });
        prefills.push(r.timings.prefillMs);
        decodes.push(r.timings.tokensPerSecond);
      }, repeats);
      const prefill = median(prefills);
      const decode = median(decodes);
      await model.release();
      if (!quant) {
        f32Decode = decode;
        f32StepMs = 1000 / decode;
      }
      rows.push([
        quant ?? 'f32',
        prefill,
        (promptLength / prefill) * 1000,
        decode,
        decode / f32Decode,
      ]);
    }
    // Sampling cost per token, against the f32 decode step measured above.
    const logits = rng.normalArray(config.vocabSize, 0, 3, 'f32');
    const u = () => rng.uniform();
    const greedyMs =
      (await medianMs(() => {
        for (let i = 0; i < 20; i++) sampleToken(logits, { temperature: 0 }, u);
      }, 5)) / 20;
    const nucleusMs =
      (await medianMs(() => {
        for (let i = 0; i < 20; i++)
          sampleToken(
            logits,
            { temperature: 0.8, topK: 50, topP: 0.95, repetitionPenalty: 1.1 },
            u,
            prompt,
          );
      }, 5)) / 20;
    const fullMs =
      (await medianMs(() => {
        for (let i = 0; i < 20; i++) sampleToken(logits, { temperature: 0.8, topP: 0.95 }, u);
      }, 5)) / 20;
    const worstShare = Math.max(greedyMs, nucleusMs, fullMs) / f32StepMs;
    return {
      columns: ['base', 'prefill ms', 'prefill tokens/s', 'decode tokens/s', 'decode / f32 decode'],
      rows,
      notes: [
        `model: hidden ${config.hiddenSize}, ${config.numLayers} layers, ${config.numHeads}/${config.numKvHeads} heads, vocab ${config.vocabSize}, ${(params / 1e6).toFixed(1)}M parameters, random weights; prompt ${promptLength} tokens, ${newTokens} new tokens, greedy, batch 1`,
        `sampling per token over ${config.vocabSize.toLocaleString('en-US')} logits: greedy ${greedyMs.toFixed(3)} ms, top-p 0.95 ${fullMs.toFixed(3)} ms, top-k 50 + top-p + repetition penalty ${nucleusMs.toFixed(3)} ms; the f32 decode step is ${f32StepMs.toFixed(2)} ms`,
        `goal: sampling under 10% of an f32 decode step: worst ${(worstShare * 100).toFixed(1)}%, ${worstShare < 0.1 ? 'met' : 'NOT met'}`,
      ],
    };
  },
};

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}
