import type { GraphBuilder } from '../builder.js';
import * as op from '../ops.js';
import type { Value } from '../types.js';
import { scalarLike } from '../vjp-helpers.js';

/** The head layout of an attention block (a LLaMA config has these fields). */
export interface AttentionHeads {
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
}

/**
 * Softmax attention with grouped key/value heads (GQA) and an additive mask, without copying
 * keys and values per query head: the query heads of one kv head become extra rows.
 * q [B, nH, T, D], keys/values [B, kvH, S, D], bias [B or 1, 1, T, S] (0 where a query may attend,
 * a large negative number elsewhere: the causal and padding masks) -> context [B, T, nH * D].
 * The same nodes LLaMA's inference graph emits.
 *
 * Backward as one rule over the grouped layout, with P the attention probabilities and
 * qs = q / sqrt(D) from the forward pass (dC the context gradient per kv group):
 * dV = Pᵀ dC, dP = dC Vᵀ, dS = P * (dP - rowsum(dC * C)), dq = dS K / sqrt(D), dK = dSᵀ qs,
 * where rowsum(dC * C) equals the softmax term rowsum(dP * P) at D instead of S columns.
 * The mask is not differentiated. Every product is a FusedMatMul with transpose flags.
 */
export function causalAttention(
  g: GraphBuilder,
  heads: AttentionHeads,
  q: Value,
  keys: Value,
  values: Value,
  bias: Value,
): Value {
  const { numHeads, numKvHeads, headDim } = heads;
  const grouped = (x: Value) => op.reshape(g, x, [0, numKvHeads, -1, headDim]); // [B, kvH, G*T, D]
  const [out] = g.region(
    'attention',
    [q, keys, values],
    () => {
      const scale = scalarLike(g, q, 1 / Math.sqrt(headDim));
      const qGrouped = grouped(op.mul(g, q, scale));
      const scores = op.matmul(g, qGrouped, op.transpose(g, keys, [0, 1, 3, 2])); // [B, kvH, G*T, S]
      const biased = op.add(g, op.reshape(g, scores, [0, numHeads, -1, 0]), bias); // [B, nH, T, S]
      const probs = op.reshape(g, op.softmax(g, biased, -1), [0, numKvHeads, -1, 0]); // [B, kvH, G*T, S]
      const contextGrouped = op.matmul(g, probs, values); // [B, kvH, G*T, D]
      const context = op.reshape(g, contextGrouped, [0, numHeads, -1, headDim]); // [B, nH, T, D]
      const merged = op.reshape(g, op.transpose(g, context, [0, 2, 1, 3]), [
        0,
        0,
        numHeads * headDim,
      ]); // [B, T, nH*D]
      return { outputs: [merged], saved: [qGrouped, probs, contextGrouped] };
    },
    (g, { grads: [dy], saved: [qGrouped, probs, contextGrouped], needs }) => {
      const d = dy as Value; // [B, T, nH*D]
      const dContext = op.transpose(g, op.reshape(g, d, [0, 0, numHeads, headDim]), [0, 2, 1, 3]);
      const dGrouped = grouped(dContext); // [B, kvH, G*T, D]
      const dValues = needs[2] ? op.fusedMatMul(g, probs, dGrouped, { transA: true }) : undefined;
      if (!needs[0] && !needs[1]) return [undefined, undefined, dValues];
      const dProbs = op.fusedMatMul(g, dGrouped, values, { transB: true }); // [B, kvH, G*T, S]
      // rowsum(dP * P) = rowsum(dC * C) (as FlashAttention): a pass over [.., D], not [.., S].
      const rowDot = op.reduceSum(g, op.mul(g, dGrouped, contextGrouped), [-1]); // [B, kvH, G*T, 1]
      const dScores = op.mul(g, probs, op.sub(g, dProbs, rowDot));
      const dq = needs[0]
        ? op.reshape(g, op.fusedMatMul(g, dScores, keys, { alpha: 1 / Math.sqrt(headDim) }), [
            0,
            numHeads,
            -1,
            headDim,
          ])
        : undefined;
      const dKeys = needs[1] ? op.fusedMatMul(g, dScores, qGrouped, { transA: true }) : undefined;
      return [dq, dKeys, dValues];
    },
  );
  return out;
}
