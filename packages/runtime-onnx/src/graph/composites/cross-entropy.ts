import type { GraphBuilder } from '../builder.js';
import * as op from '../ops.js';
import type { Value } from '../types.js';

/** The outputs of {@link crossEntropyLoss}. */
export interface CrossEntropy {
  /** Scalar: sum over tokens of weight * -log softmax(logits)[label]. */
  readonly loss: Value;
  /** Scalar: the sum of the weights (the number of counted tokens when weights are 0/1). */
  readonly count: Value;
}

/**
 * Weighted token cross-entropy: logits [..., V], labels int64 [...] (each in [0, V); a token
 * whose weight is 0 still needs a valid label, e.g. 0), weights [...] (0 for prompt and padding
 * tokens) -> the summed loss and the summed weights. Divide by `count` for the mean.
 *
 * Forward: loss = sum(weight * (logsumexp(logits) - logits[label])), so no [..., V] tensor is
 * made besides the logits (no log-probabilities). Backward as one rule:
 * dlogits = scale * softmax(logits) with -scale added at the labels, scale = dloss * weight
 * ([..., 1]): one fused Softmax, one Mul by the column, and a ScatterElements add (onnxruntime
 * runs it in place; no one-hot tensor). Every [..., V] tensor is a fresh allocation the size of
 * the logits (125 MiB at 1020 tokens x 32000), which costs more than the arithmetic on it.
 */
export function crossEntropyLoss(
  g: GraphBuilder,
  logits: Value,
  labels: Value,
  weights: Value,
): CrossEntropy {
  const labelIndex = op.unsqueeze(g, labels, [-1]); // [..., 1]
  const tokenWeights = op.unsqueeze(g, weights, [-1]); // [..., 1]
  const [loss] = g.region(
    'cross_entropy',
    [logits],
    () => {
      const logSumExp = op.reduceLogSumExp(g, logits, [-1]); // [..., 1]
      const picked = op.gatherElements(g, logits, labelIndex, -1); // [..., 1]
      const tokenLoss = op.mul(g, op.sub(g, logSumExp, picked), tokenWeights);
      return { outputs: [op.reduceSum(g, tokenLoss, [], false)], saved: [logits] };
    },
    (g, { grads: [dLoss], saved: [savedLogits] }) => {
      const scale = op.mul(g, tokenWeights, dLoss as Value); // [..., 1]
      const scaledSoftmax = op.mul(g, op.softmax(g, savedLogits, -1), scale);
      return [op.scatterElements(g, scaledSoftmax, labelIndex, op.neg(g, scale), -1, 'add')];
    },
  );
  return { loss, count: op.reduceSum(g, weights, [], false) };
}
