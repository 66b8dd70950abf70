import { type Tensor, tensor } from '@lora/core';
import { describe, expect, it } from 'vitest';
import type { VjpRule } from '../graph/opset.js';
import {
  LLAMA_LINEARS,
  type LlamaConfig,
  llamaLinearShape,
  llamaModuleName,
} from '../models/llama/config.js';
import { prepareLlamaWeights } from '../models/llama/prepare.js';
import {
  emitLlamaFullTrainingForward,
  emitLlamaLoraTrainingForward,
  TRAINING_IO,
  type TrainingShape,
} from '../models/llama/training-graph.js';
import type { BaseQuantOptions } from '../models/quantize-linear.js';
import { memoryWeights } from '../models/weights.js';
import { checkGradients, GRADIENT_TOLERANCE } from '../test-utils/parity.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { randomLlamaWeights, tinyConfig } from '../test-utils/tiny-llama.js';
import type { TrainableLoraOptions } from './lora-branch.js';
import { QUANTIZED_BACKWARD } from './quantized-backward.js';

/**
 * Whole-model gradient checks of the training graphs, with the one checker of the op set
 * (`checkGradients`): the gradient graph evaluated in float64 equals central differences of the
 * float64 forward along random directions (relative 1e-6 of sum |g u|), and onnxruntime's
 * float32 gradients equal the float64 ones per element within the op set's tolerance
 * (|ort - ref| <= 1e-5 max(1, max|ref|) + 1e-4 |ref|). Measured: directional errors 4e-11 to 3e-9,
 * onnxruntime max errors 3e-7 to 1.1e-6 of the largest gradient.
 *
 * The model has every feature at once: GQA (4 query heads on 2 kv heads), q/k/v/o and MLP
 * biases, tied embeddings, a padded row and prompt tokens without loss.
 */
const config: LlamaConfig = tinyConfig({
  hidden_size: 16,
  intermediate_size: 24,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_hidden_layers: 2,
  vocab_size: 32,
  attention_bias: true,
  mlp_bias: true,
  tie_word_embeddings: true,
});
const shape: TrainingShape = { batch: 2, sequence: 5 };

/** Batch feeds: row 0 has a 2-token prompt (weight 0), row 1 is right-padded after 3 tokens. */
function batchFeeds(): Record<string, Tensor> {
  const ids = [3, 17, 5, 30, 8, 1, 9, 27, 0, 0];
  const mask = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
  const weights = [0, 0, 1, 1, 1, 0, 1, 1, 0, 0];
  const positions = [0, 1, 2, 3, 4, 0, 1, 2, 1, 1];
  const i64 = (v: number[]) => tensor('i64', [2, 5], BigInt64Array.from(v, BigInt));
  return {
    [TRAINING_IO.inputIds]: i64(ids),
    [TRAINING_IO.attentionMask]: i64(mask),
    [TRAINING_IO.positionIds]: i64(positions),
    [TRAINING_IO.lossWeights]: tensor('f32', [2, 5], Float32Array.from(weights)),
  };
}

const lora: TrainableLoraOptions = {
  rank: 2,
  alpha: 4,
  targets: 'all-linear',
  dropout: 0.25,
};

/** Random LoRA A, B (B non-zero, so dA matters) and dropout keep masks for every linear. */
function loraFeeds(rand: () => number): { feeds: Record<string, Tensor>; wrt: string[] } {
  const feeds: Record<string, Tensor> = {};
  const wrt: string[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    for (const linear of LLAMA_LINEARS) {
      const module = llamaModuleName(l, linear);
      const [out, inF] = llamaLinearShape(config, linear);
      const a = `${module}.lora_A.weight`;
      const b = `${module}.lora_B.weight`;
      feeds[a] = tensor('f32', [lora.rank, inF], randomF32(lora.rank * inF, rand, 0.4));
      feeds[b] = tensor('f32', [out, lora.rank], randomF32(out * lora.rank, rand, 0.4));
      const n = shape.batch * shape.sequence * inF;
      feeds[`${module}.lora_dropout.keep`] = tensor(
        'u8',
        [shape.batch, shape.sequence, inF],
        Uint8Array.from({ length: n }, () => (rand() < 0.25 ? 0 : 1)),
      );
      wrt.push(a, b);
    }
  }
  return { feeds, wrt };
}

async function checkLora(
  quant: BaseQuantOptions | undefined,
  overrides: Readonly<Record<string, VjpRule>> = QUANTIZED_BACKWARD,
) {
  const weights = await prepareLlamaWeights(config, memoryWeights(randomLlamaWeights(config, 3)), {
    quant,
  });
  const { feeds, wrt } = loraFeeds(seededRandom(11));
  return checkGradients(
    (g) => emitLlamaLoraTrainingForward(g, config, weights, shape, lora).loss,
    { ...batchFeeds(), ...feeds },
    { wrt, gradients: { overrides }, directions: 2 },
  );
}

describe('gradients of whole LLaMA training graphs', () => {
  it('uses the stated tolerances', () => {
    expect(GRADIENT_TOLERANCE).toMatchObject({
      fdStep: 1e-5,
      fdRtol: 1e-6,
      ortAtol: 1e-5,
      ortRtol: 1e-4,
    });
  });

  it('LoRA on a float32 base (all linears, dropout masks): dA, dB', async () => {
    const r = await checkLora(undefined);
    expect(r.ops).toContain('FusedMatMul');
  });

  it('QLoRA on an nf4 base: dX through the in-graph dequantize', async () => {
    const r = await checkLora({ format: 'nf4', blockSize: 32 });
    expect(r.ops).toContain('MatMulBnb4');
  });

  it('QLoRA on a uint4 base (MatMulNBits with zero points)', async () => {
    const r = await checkLora({ format: 'uint4', blockSize: 16 });
    expect(r.ops).toContain('MatMulNBits');
  });

  it('a wrong 4-bit backward is caught (fp4 table for an nf4 weight)', async () => {
    const wrongTable: VjpRule = (g, ctx) =>
      (QUANTIZED_BACKWARD.MatMulBnb4 as VjpRule)(g, {
        ...ctx,
        attrs: { ...ctx.attrs, quant_type: { int: 0 } },
      });
    await expect(
      checkLora(
        { format: 'nf4', blockSize: 32 },
        { ...QUANTIZED_BACKWARD, MatMulBnb4: wrongTable },
      ),
    ).rejects.toThrow(/directional derivative/);
  });

  it('full fine-tuning: every weight, embeddings through scatter-add, tied embeddings summed', async () => {
    const weights = randomLlamaWeights(config, 5);
    const feeds: Record<string, Tensor> = { ...batchFeeds() };
    for (const [name, t] of weights) feeds[name] = t;
    const wrt = [...weights.keys()];
    expect(wrt).toContain('model.embed_tokens.weight');
    expect(wrt).not.toContain('lm_head.weight');
    const r = await checkGradients(
      (g) => emitLlamaFullTrainingForward(g, config, shape).loss,
      feeds,
      { wrt, directions: 2 },
    );
    expect(r.ops).toContain('Gather');
  });
});
