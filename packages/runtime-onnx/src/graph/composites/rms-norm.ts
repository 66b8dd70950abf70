import type { GraphBuilder } from '../builder.js';
import * as op from '../ops.js';
import type { Value } from '../types.js';
import { scalarLike, sumToShape } from '../vjp-helpers.js';

/**
 * RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight (LLaMA's; the same nodes the
 * inference graph has always emitted). x: [..., H], weight: [H].
 *
 * Backward as one rule, with n = x * r and r = 1 / sqrt(mean(x^2) + eps) from the forward pass:
 * dweight = sum(dy * n), dx = r * (dn - n * mean(dn * n)) where dn = dy * weight.
 */
export function rmsNorm(
  g: GraphBuilder,
  x: Value,
  weight: Value,
  eps: number,
  name: string,
): Value {
  const [y] = g.region(
    name,
    [x, weight],
    () => {
      const meanSquare = op.reduceMean(g, op.mul(g, x, x), [-1]); // [..., 1]
      const inv = op.reciprocal(g, op.sqrt(g, op.add(g, meanSquare, scalarLike(g, x, eps))));
      const normalized = op.mul(g, x, inv);
      return { outputs: [op.mul(g, normalized, weight, `${name}/Mul`)], saved: [inv, normalized] };
    },
    (g, { inputs: [, w], grads: [dy], saved: [inv, normalized], needs }) => {
      const d = dy as Value;
      const weightValue = w as Value;
      let dx: Value | undefined;
      if (needs[0]) {
        const dn = op.mul(g, d, weightValue);
        const projection = op.reduceMean(g, op.mul(g, dn, normalized), [-1]);
        dx = op.mul(g, inv, op.sub(g, dn, op.mul(g, normalized, projection)));
      }
      const dw = needs[1] ? sumToShape(g, op.mul(g, d, normalized), weightValue.shape) : undefined;
      return [dx, dw];
    },
  );
  return y;
}
