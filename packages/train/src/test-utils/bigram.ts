import type { MicroBatch } from '../data/micro-batch.js';
import type { GradientStep, GradientStepResult } from '../loop/gradient-step.js';
import { decaysWeight, type Parameter } from '../optim/parameters.js';

/**
 * A bigram language model as a {@link GradientStep}, for testing the loop without a graph:
 * logits of position t = W[token_t] + b, cross-entropy against labels[t + 1]. Loss and gradients
 * (softmax - onehot, scattered into W's row of the token) are computed in float64 by hand.
 */
export function bigramStep(
  vocab: number,
  init: { weight: readonly number[]; bias: readonly number[] },
  batchSize: number,
  seqLen: number,
): GradientStep {
  const weight: Parameter = {
    name: 'bigram.weight',
    shape: [vocab, vocab],
    data: Float32Array.from(init.weight),
    decay: decaysWeight('bigram.weight'),
  };
  const bias: Parameter = {
    name: 'bigram.bias',
    shape: [vocab],
    data: Float32Array.from(init.bias),
    decay: decaysWeight('bigram.bias'),
  };
  return {
    parameters: [weight, bias],
    batchSize,
    seqLen,
    async run(batch: MicroBatch): Promise<GradientStepResult> {
      const gW = new Float32Array(vocab * vocab);
      const gB = new Float32Array(vocab);
      const logits = new Float64Array(vocab);
      let lossSum = 0;
      let tokenCount = 0;
      for (let r = 0; r < batch.batchSize; r++) {
        for (let t = 0; t + 1 < batch.seqLen; t++) {
          const at = r * batch.seqLen + t;
          const label = batch.labels[at + 1];
          if (label === -100 || !batch.attentionMask[at]) continue;
          const token = batch.inputIds[at];
          let max = Number.NEGATIVE_INFINITY;
          for (let v = 0; v < vocab; v++) {
            logits[v] = weight.data[token * vocab + v] + bias.data[v];
            max = Math.max(max, logits[v]);
          }
          let z = 0;
          for (let v = 0; v < vocab; v++) z += Math.exp(logits[v] - max);
          lossSum += max + Math.log(z) - logits[label];
          tokenCount++;
          for (let v = 0; v < vocab; v++) {
            const d = Math.exp(logits[v] - max) / z - (v === label ? 1 : 0);
            gW[token * vocab + v] += d;
            gB[v] += d;
          }
        }
      }
      return { lossSum, tokenCount, grads: [gW, gB] };
    },
    async release() {},
  };
}
