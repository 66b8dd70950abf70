import type { GraphBuilder } from '../builder.js';
import * as op from '../ops.js';
import type { Value } from '../types.js';
import { scalarLike, shapeValue } from '../vjp-helpers.js';

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
 * Backward as one rule: dlogits = dloss * weight * (softmax(logits) - onehot(label)), the
 * one-hot subtraction a ScatterElements add of -1 at the labels (no one-hot tensor is built).
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
      const logProbs = op.logSoftmax(g, logits, -1);
      const picked = op.gatherElements(g, logProbs, labelIndex, -1); // [..., 1]
      const weighted = op.mul(g, picked, tokenWeights);
      return { outputs: [op.neg(g, op.reduceSum(g, weighted, [], false))], saved: [logProbs] };
    },
    (g, { grads: [dLoss], saved: [logProbs] }) => {
      const minusOne = op.expand(g, scalarLike(g, logits, -1), shapeValue(g, labelIndex));
      const softmaxMinusOneHot = op.scatterElements(
        g,
        op.exp(g, logProbs),
        labelIndex,
        minusOne,
        -1,
        'add',
      );
      const scale = op.mul(g, tokenWeights, dLoss as Value); // [..., 1]
      return [op.mul(g, softmaxMinusOneHot, scale)];
    },
  );
  return { loss, count: op.reduceSum(g, weights, [], false) };
}
